"""Mietverträge and Eigentümerverträge → the contracts casavi keeps inside each contact (rules 2–5).

casavi has no contracts collection (revision 2): a contract is an entry of its contact's `contracts`,
one per (contract, synced person). Which (contract, person) pairs are synced is said once, by
`people.person_rows` under the sync rule: a rental contract only with its tenants who pass the rule (and
nowhere if none does); an ownership contract with all its owners (`email`) or only when a synced rental
contract rents its unit (`last-name`). The unit ID needs the unit's building number,
which only the Verwaltungseinheit knows: a contract whose unit is missing from the export keeps `unit_id`
NULL, so the contract check blocks it instead of sending a guess.
"""

from __future__ import annotations

import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.mapping.ids import sql_ref_id
from casavi_pipeline.mapping.people import open_person_session
from casavi_pipeline.mapping.scope import SyncRule

#: One row per synced (contract, person): the contact it belongs to, the entry's fields, the ERP key.
CONTRACT_COLUMNS: tuple[str, ...] = (
    "contact_id",
    *(item.name for item in api.rule_of(ObjectKind.CONTACT, "contracts").items),
    "erp_key",
)


def map_contracts(
    mietvertraege: pd.DataFrame,
    mieter: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    verwaltungseinheiten: pd.DataFrame,
    *,
    mandant: str,
    separator: str,
    rule: SyncRule,
) -> pd.DataFrame:
    """The synced contracts, one row per (contract, person), sorted by contact and casavi's entry order."""
    with open_person_session(
        mieter,
        mietvertraege,
        eigentuemer,
        eigentuemervertraege,
        mandant=mandant,
        separator=separator,
        rule=rule,
    ) as duck:
        duck.add_erp("verwaltungseinheiten", verwaltungseinheiten)
        duck.params.update(renter=api.ContractType.RENTER.value, owner=api.ContractType.OWNER.value)
        return duck.frame(
            f"""
            SELECT {sql_ref_id("r.person_nr")} AS contact_id,
                   CASE r.role WHEN 'MV' THEN $renter ELSE $owner END AS contract_type,
                   {sql_ref_id("r.we_nr")} AS property_id,
                   {sql_ref_id("u.we_nr", "u.geb_nr", "u.ve_nr")} AS unit_id,
                   r.contract_nr AS number,
                   r.beginn AS start_date,
                   r.ende AS end_date,
                   CASE r.role WHEN 'MV' THEN 'vertrag_nr=' ELSE 'ev_nr=' END || r.contract_nr
                       || ' person_nr=' || r.person_nr AS erp_key
            FROM person_rows r
            LEFT JOIN verwaltungseinheiten u USING (we_nr, ve_nr)
            ORDER BY contact_id, unit_id, contract_type, start_date, number
            """
        )[list(CONTRACT_COLUMNS)]
