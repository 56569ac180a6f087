"""Mietverträge and Eigentümerverträge → casavi contracts of type RENTER and OWNER (rules 2–5).

A rental contract is sent only with at least one synced tenant (valid email), and then with exactly
its synced tenants; an ownership contract always, with all its owners. The unit ID needs the unit's
building number, which only the Verwaltungseinheit knows: a contract whose unit is missing from the
export keeps `unit_id` NULL, so the payload and reference checks block it instead of sending a guess.
"""

from __future__ import annotations

import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.mapping.duck import DuckSession
from casavi_pipeline.mapping.ids import OWNER_CONTRACT_TAG, RENTAL_CONTRACT_TAG, sql_erp_key, sql_ref_id
from casavi_pipeline.mapping.people import VALID_EMAIL_COLUMN, with_valid_email

CONTRACT_COLUMNS: tuple[str, ...] = (*api.DOMAIN_COLUMNS[ObjectKind.CONTRACT], "erp_key")


def map_contracts(
    mietvertraege: pd.DataFrame,
    mieter: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    verwaltungseinheiten: pd.DataFrame,
    *,
    mandant: str,
    separator: str,
) -> pd.DataFrame:
    """Rental contracts with ≥1 synced tenant and all ownership contracts, `contact_ids` sorted."""
    with DuckSession(mandant, separator) as duck:
        duck.add_erp("mieter", with_valid_email(mieter), {VALID_EMAIL_COLUMN: "VARCHAR"})
        duck.add_erp("eigentuemer", eigentuemer)
        duck.add_erp("mietvertraege", mietvertraege)
        duck.add_erp("eigentuemervertraege", eigentuemervertraege)
        duck.add_erp("verwaltungseinheiten", verwaltungseinheiten)
        duck.params.update(
            renter=api.ContractType.RENTER.value,
            owner=api.ContractType.OWNER.value,
            mv=RENTAL_CONTRACT_TAG,
            ev=OWNER_CONTRACT_TAG,
        )
        contact = sql_ref_id("person_nr")
        contract_columns = f"""
            {sql_ref_id("u.we_nr", "u.geb_nr", "u.ve_nr")} AS unit_id,
            c.beginn AS start_date,
            c.ende AS end_date"""
        return duck.frame(
            f"""
            WITH tenants AS (
                SELECT vertrag_nr, list({contact} ORDER BY {contact}) AS contact_ids
                FROM mieter WHERE {VALID_EMAIL_COLUMN} IS NOT NULL GROUP BY vertrag_nr
            ), owners AS (
                SELECT ev_nr, list({contact} ORDER BY {contact}) AS contact_ids
                FROM eigentuemer GROUP BY ev_nr
            )
            SELECT {sql_ref_id("$mv", "c.vertrag_nr")} AS id, $renter AS contract_type,
                   t.contact_ids, c.vertrag_nr AS number, {contract_columns},
                   {sql_erp_key("vertrag_nr", alias="c")} AS erp_key
            FROM mietvertraege c
            JOIN tenants t USING (vertrag_nr)
            LEFT JOIN verwaltungseinheiten u USING (we_nr, ve_nr)
            UNION ALL
            -- an ownership contract without any owner row keeps an empty list: the payload check blocks it
            SELECT {sql_ref_id("$ev", "c.ev_nr")}, $owner,
                   COALESCE(o.contact_ids, []), c.ev_nr, {contract_columns},
                   {sql_erp_key("ev_nr", alias="c")}
            FROM eigentuemervertraege c
            LEFT JOIN owners o USING (ev_nr)
            LEFT JOIN verwaltungseinheiten u USING (we_nr, ve_nr)
            ORDER BY id, erp_key
            """,
            list_columns=("contact_ids",),
        )[list(CONTRACT_COLUMNS)]
