"""Mieter and Eigentümer → casavi contacts (rules 2, 4 and 5 of `docs/export-format.md`).

Which rows make a contact is the sync rule (`CASAVI_SYNC_RULE`), stated once, in `person_rows`:
- `email` (the default): a tenant row when its email passes the rule (a tenant without one is not
  synced); an owner row always.
- `last-name` (Aareon Connect's rule since 2024-02-07): a tenant row when the tenant has a name casavi
  can address them by, `nachname` or, for a company, `firma`; an owner row only when a synced tenant
  row rents the same unit (the owner of a vacant unit is not synced). Properties and units follow:
  only those a synced contract links are sent (`linked_units`).
In both, a row counts only when its contract exists (a dangling row is reported by the foreign-key
check, not synced). Each such row is one synced contract of the person (`person_rows`, the one
statement of that scope: `mapping.contracts` builds the contracts from it), and a person with at least
one is one contact carrying all of them in `contracts`.

Which row wins when a person's rows differ: the row of the contract with the latest `beginn`. Ties
are broken by the higher contract number in *natural* order (leading zeros ignored, then shorter is
lower: `9` < `10` < `010a`; exactly numeric order for all-digit numbers) and, if still tied, by the
raw string (`7` over `007`). A tenant number (`vertrag_nr`) and an owner number (`ev_nr`) are
compared the same way although they come from separate ranges; only on identical numbers the tenant
row wins. One exception keeps the email rule intact: if the winning row has no valid email but the
person is a synced tenant, the contact keeps the valid email of their latest tenant row, so a contact
referenced by a rental contract always has the address that qualified them (under `last-name`: the valid
email of their latest tenant row that has one; with none the contact is reached by post).
"""

from __future__ import annotations

import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.erp.contract import MIETER
from casavi_pipeline.mapping.duck import DuckSession, lists_of
from casavi_pipeline.mapping.email import first_valid_emails
from casavi_pipeline.mapping.ids import sql_ref_id
from casavi_pipeline.mapping.real_estate import add_countries, sql_country, sql_street
from casavi_pipeline.mapping.scope import SyncRule

CONTACT_COLUMNS: tuple[str, ...] = (*api.DOMAIN_COLUMNS[ObjectKind.CONTACT], "erp_key")
#: ERP `anrede` (compared case-insensitively) → casavi salutation; empty → null.
SALUTATIONS: dict[str, str] = {
    "herr": api.Salutation.MR.value,
    "frau": api.Salutation.MS.value,
    "divers": api.Salutation.DIVERSE.value,
    "firma": api.Salutation.COMPANY.value,
}
VALID_EMAIL_COLUMN = "email_valid"
#: Whether a tenant row passes the sync rule (`tenant_rows_synced`).
SYNCED_COLUMN = "synced"
#: The person columns compared to decide whether a person's rows conflict (email as it would be sent).
_PERSON_DATA = [c.name for c in MIETER.columns if c.name not in ("vertrag_nr", "person_nr", "email")]


def with_valid_email(persons: pd.DataFrame) -> pd.DataFrame:
    """The frame plus `email_valid`: the address rule 2 picks from `email`, or None."""
    return persons.assign(**{VALID_EMAIL_COLUMN: first_valid_emails(persons["email"])})


def tenant_rows_synced(mieter: pd.DataFrame, rule: SyncRule) -> pd.Series:
    """Whether each tenant row passes the sync rule on its own (`mieter` with `email_valid`).

    `email`: the row has a valid email. `last-name`: the row has `nachname` or `firma`, the name casavi
    requires (lastName or companyName); a company tenant is named by its `firma`. Ingestion refuses a
    row with neither, so under `last-name` every tenant row of an existing contract is synced.
    """
    if rule is SyncRule.EMAIL:
        return mieter[VALID_EMAIL_COLUMN].notna()
    return mieter["nachname"].notna() | mieter["firma"].notna()


def open_person_session(
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    *,
    mandant: str,
    separator: str,
    rule: SyncRule,
) -> DuckSession:
    """A session with the four person/contract entities and view `person_rows`: the rows that feed contacts.

    `person_rows` has one row per synced (contract, person) under `rule` with `role` (MV/EV),
    `contract_nr`, `beginn`, `ende`, the contract's unit (`we_nr`, `ve_nr`), the person columns and
    `email_valid`, plus `rank` (1 = the row that wins for the person).
    """
    duck = DuckSession(mandant, separator)
    tenants = with_valid_email(mieter)
    tenants[SYNCED_COLUMN] = tenant_rows_synced(tenants, rule)
    duck.add_erp("mieter", tenants, {VALID_EMAIL_COLUMN: "VARCHAR", SYNCED_COLUMN: "BOOLEAN"})
    duck.add_erp("eigentuemer", with_valid_email(eigentuemer), {VALID_EMAIL_COLUMN: "VARCHAR"})
    duck.add_erp("mietvertraege", mietvertraege)
    duck.add_erp("eigentuemervertraege", eigentuemervertraege)
    person_columns = ", ".join(f"p.{c}" for c in [*_PERSON_DATA, VALID_EMAIL_COLUMN])
    contract_columns = "c.beginn, c.ende, c.we_nr, c.ve_nr"
    natural = "length(ltrim(contract_nr, '0')) DESC, ltrim(contract_nr, '0') DESC, contract_nr DESC"
    # email: every owner; last-name: only the owners of a unit a synced tenant rents (a view takes no
    # parameters, so the rule is a literal)
    all_owners = "TRUE" if rule is SyncRule.EMAIL else "FALSE"
    duck.connection.execute(
        f"""
        CREATE VIEW person_rows AS
        WITH tenant_rows AS (
            SELECT p.person_nr, 'MV' AS role, p.vertrag_nr AS contract_nr, {contract_columns}, {person_columns}
            FROM mieter p JOIN mietvertraege c USING (vertrag_nr)
            WHERE p.{SYNCED_COLUMN}
        ), synced AS (
            SELECT * FROM tenant_rows
            UNION ALL
            SELECT p.person_nr, 'EV' AS role, p.ev_nr AS contract_nr, {contract_columns}, {person_columns}
            FROM eigentuemer p JOIN eigentuemervertraege c USING (ev_nr)
            WHERE {all_owners}
               OR EXISTS (SELECT 1 FROM tenant_rows t WHERE t.we_nr = c.we_nr AND t.ve_nr = c.ve_nr)
        )
        SELECT *, row_number() OVER (
            PARTITION BY person_nr ORDER BY beginn DESC, {natural}, role DESC  -- 'MV' > 'EV': tenant wins
        ) AS rank
        FROM synced
        """
    )
    return duck


def linked_units(
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    *,
    mandant: str,
    separator: str,
    rule: SyncRule,
) -> pd.DataFrame | None:
    """The units (`we_nr`, `ve_nr`) the synced contracts of `person_rows` link, when the rule sends only
    those (`last-name`); None when it sends every property and unit of the export (`email`).

    A property is sent when one of these units is in it (`real_estate.map_properties`).
    """
    if rule is SyncRule.EMAIL:
        return None
    with open_person_session(
        mieter,
        mietvertraege,
        eigentuemer,
        eigentuemervertraege,
        mandant=mandant,
        separator=separator,
        rule=rule,
    ) as duck:
        return duck.frame("SELECT DISTINCT we_nr, ve_nr FROM person_rows ORDER BY we_nr, ve_nr")


def map_contacts(
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    contracts: pd.DataFrame,
    *,
    mandant: str,
    separator: str,
    rule: SyncRule,
) -> pd.DataFrame:
    """Synced tenants and owners → one contact per person_nr, the winning row's data, carrying the
    person's synced contracts (the `contracts` frame of `mapping.contracts`) in casavi's order."""
    with open_person_session(
        mieter,
        mietvertraege,
        eigentuemer,
        eigentuemervertraege,
        mandant=mandant,
        separator=separator,
        rule=rule,
    ) as duck:
        duck.add_frame(
            "salutations",
            pd.DataFrame({"anrede": list(SALUTATIONS), "salutation": list(SALUTATIONS.values())}),
        )
        contract_rule = api.rule_of(ObjectKind.CONTACT, "contracts")
        items = [item.name for item in contract_rule.items]
        duck.add_frame(
            "contracts", contracts, [f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in ("contact_id", *items)]
        )
        add_countries(duck)
        duck.params["online"] = api.WayOfContact.ONLINE.value
        duck.params["postal"] = api.WayOfContact.POSTAL.value
        by_contact = duck.sorted_lists(
            "SELECT * FROM contracts", key="contact_id", order=contract_rule.order,
            item=f"struct_pack({', '.join(f'{name} := {name}' for name in items)})", alias="contracts",
        )  # fmt: skip
        contacts = duck.frame(
            f"""
            WITH tenant_email AS (
                SELECT person_nr, arg_min({VALID_EMAIL_COLUMN}, rank) AS email
                FROM person_rows WHERE role = 'MV' GROUP BY person_nr
            ), winner AS (
                SELECT w.*, COALESCE(w.{VALID_EMAIL_COLUMN}, t.email) AS email
                FROM person_rows w LEFT JOIN tenant_email t USING (person_nr)
                WHERE w.rank = 1
            )
            SELECT {sql_ref_id("w.person_nr")} AS id,
                   -- an unknown anrede is passed on unchanged so the payload check reports it
                   CASE WHEN w.anrede IS NULL THEN NULL ELSE COALESCE(s.salutation, w.anrede) END
                       AS salutation,
                   w.titel AS title,
                   w.vorname AS first_name,
                   w.nachname AS last_name,
                   w.firma AS company_name,
                   w.email,
                   w.telefon AS telephone,
                   w.mobil AS mobile,
                   {sql_street("w")} AS street,
                   w.plz AS postal_code,
                   w.ort AS city,
                   {sql_country("w")} AS country,
                   CASE WHEN w.email IS NULL THEN $postal ELSE $online END AS preferred_way_of_contact,
                   'person_nr=' || w.person_nr AS erp_key
            FROM winner w
            LEFT JOIN salutations s ON s.anrede = lower(w.anrede)
            ORDER BY id
            """
        )
    contacts["contracts"] = lists_of(contacts["id"], by_contact)
    return contacts[list(CONTACT_COLUMNS)]


def conflicting_persons(
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    *,
    mandant: str,
    separator: str,
    rule: SyncRule,
) -> pd.DataFrame:
    """Persons whose synced rows differ (so the latest-`beginn` rule chose): `contact_id`, `rows`, sorted.

    Compared are the person columns as they reach casavi (email as the valid address picked by rule 2).
    """
    distinct_data = ", ".join(f"{c} := {c}" for c in [*_PERSON_DATA, VALID_EMAIL_COLUMN])
    with open_person_session(
        mieter,
        mietvertraege,
        eigentuemer,
        eigentuemervertraege,
        mandant=mandant,
        separator=separator,
        rule=rule,
    ) as duck:
        return duck.frame(
            f"""
            SELECT {sql_ref_id("person_nr")} AS contact_id, count(*) AS rows
            FROM person_rows
            GROUP BY person_nr
            HAVING count(DISTINCT struct_pack({distinct_data})) > 1
            ORDER BY contact_id
            """
        )
