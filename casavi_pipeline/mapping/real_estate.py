"""Wirtschaftseinheiten, Gebäude and Verwaltungseinheiten → casavi properties, addresses and units.

Field mapping exactly as rule 5 of `docs/export-format.md`. A building has no reference id in casavi:
it is an address of its property, identified by its street ("strasse hausnummer") within the property,
and a unit names its address by that street. Every function returns one row per source record, sorted
by `id` (then `erp_key`): two ERP records that compose to the same ID (or two buildings with the same
street) are kept side by side, never merged, so the checks can name both.

Which properties and units are sent depends on the sync rule: all of the export under `email`; under
`last-name` only those a synced contract links, so a vacant unit, and a property none of whose units is
rented by a synced tenant, stay out of casavi. `people.linked_units` says which (from `person_rows`,
the one statement of which rows are synced); `map_properties` and `map_units` keep those.
"""

from __future__ import annotations

import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.mapping.duck import DuckSession
from casavi_pipeline.mapping.ids import ERP_NUMBERS, sql_erp_key, sql_object_id, sql_ref_id

ADDRESS_COLUMNS: tuple[str, ...] = ("property_id", *(rule.name for rule in api.ADDRESS_RULES), "erp_key")
# The ERP numbers travel beside `erp_key`: the links back to the ERP list them (`ids.ERP_NUMBERS`).
PROPERTY_COLUMNS: tuple[str, ...] = (
    *api.DOMAIN_COLUMNS[ObjectKind.PROPERTY],
    "erp_key",
    *ERP_NUMBERS[ObjectKind.PROPERTY],
)
UNIT_COLUMNS: tuple[str, ...] = (*api.DOMAIN_COLUMNS[ObjectKind.UNIT], "erp_key", *ERP_NUMBERS[ObjectKind.UNIT])

DEFAULT_COUNTRY = "DE"
#: Unit name label per nutzungsart; any other value (SONSTIGE) is an "Einheit".
UNIT_LABELS: dict[str, str] = {
    "WOHNUNG": "Wohnung",
    "GEWERBE": "Gewerbe",
    "STELLPLATZ": "Stellplatz",
    "GARAGE": "Garage",
}
FALLBACK_UNIT_LABEL = "Einheit"
#: Only commercial units are COMMERCIAL in casavi; everything else is private use.
COMMERCIAL_NUTZUNGSARTEN = ("GEWERBE",)


def sql_street(alias: str = "") -> str:
    """ "strasse hausnummer" with one space, empty parts dropped, NULL when both are empty."""
    prefix = f"{alias}." if alias else ""
    return f"NULLIF(concat_ws(' ', {prefix}strasse, {prefix}hausnummer), '')"


def add_countries(duck: DuckSession) -> None:
    """View `countries` (code, name): ISO code → the name casavi shows; used by `sql_country`."""
    names = api.country_names()
    duck.add_frame("countries", pd.DataFrame({"code": list(names), "name": list(names.values())}))


def sql_country(alias: str = "") -> str:
    """The country name of a row's `land` (empty → Germany). An unknown code stays as it is: the ERP
    check refuses it before the mapping runs, and casavi's payload rules would see it, not a guess."""
    prefix = f"{alias}." if alias else ""
    code = f"COALESCE({prefix}land, '{DEFAULT_COUNTRY}')"
    return f"COALESCE((SELECT c.name FROM countries c WHERE c.code = {code}), {code})"


def _sql_linked(duck: DuckSession, linked: pd.DataFrame | None, alias: str, columns: tuple[str, ...]) -> str:
    """The condition that keeps a row (`alias`) whose `columns` are among the `linked` units; TRUE when
    `linked` is None (the rule sends all of the export)."""
    if linked is None:
        return "TRUE"
    duck.add_frame("linked", linked, [f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in ("we_nr", "ve_nr")])
    match = " AND ".join(f"l.{c} = {alias}.{c}" for c in columns)
    return f"EXISTS (SELECT 1 FROM linked l WHERE {match})"


def map_addresses(gebaeude: pd.DataFrame, *, mandant: str, separator: str) -> pd.DataFrame:
    """Gebäude → the addresses of their property (one per building), with `property_id` for grouping."""
    with DuckSession(mandant, separator) as duck:
        duck.add_erp("gebaeude", gebaeude)
        return duck.frame(
            f"""
            SELECT {sql_ref_id("we_nr")} AS property_id,
                   {sql_street()} AS street,
                   {sql_erp_key("we_nr", "geb_nr")} AS erp_key
            FROM gebaeude
            ORDER BY property_id, street, erp_key
            """
        )[list(ADDRESS_COLUMNS)]


def map_properties(
    wirtschaftseinheiten: pd.DataFrame,
    addresses: pd.DataFrame,
    linked: pd.DataFrame | None,
    *,
    mandant: str,
    separator: str,
) -> pd.DataFrame:
    """Wirtschaftseinheiten → properties, each with all its buildings' addresses (ordered by street).

    With `linked` (the units a synced contract links, `people.linked_units`) only the properties of
    those units; with None all of them.
    """
    address_fields = ", ".join(f"{rule.name} := {rule.name}" for rule in api.ADDRESS_RULES)
    with DuckSession(mandant, separator) as duck:
        duck.add_erp("wirtschaftseinheiten", wirtschaftseinheiten)
        duck.add_frame("addresses", addresses, [f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in ADDRESS_COLUMNS])
        add_countries(duck)
        in_scope = _sql_linked(duck, linked, "w", ("we_nr",))
        duck.add_lists(
            "by_property", "SELECT * FROM addresses", key="property_id", order=["street"],
            item=f"struct_pack({address_fields})", alias="addresses",
        )  # fmt: skip
        return duck.frame(
            f"""
            SELECT {sql_object_id(ObjectKind.PROPERTY, "w")},
                   w.bezeichnung AS name,
                   w.we_nr AS number,
                   w.plz AS postal_code,
                   w.ort AS city,
                   {sql_country("w")} AS country,
                   CAST(NULL AS VARCHAR) AS note,
                   COALESCE(b.addresses, []) AS addresses,
                   {sql_erp_key("we_nr", alias="w")} AS erp_key
            FROM wirtschaftseinheiten w
            LEFT JOIN by_property b ON b.property_id = {sql_ref_id("w.we_nr")}
            WHERE {in_scope}
            ORDER BY id, erp_key
            """
        )[list(PROPERTY_COLUMNS)]


def _labels_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "nutzungsart": list(UNIT_LABELS),
            "label": list(UNIT_LABELS.values()),
            "usage": [
                api.Usage.COMMERCIAL.value if n in COMMERCIAL_NUTZUNGSARTEN else api.Usage.PRIVATE.value
                for n in UNIT_LABELS
            ],
        }
    )


def map_units(
    verwaltungseinheiten: pd.DataFrame,
    gebaeude: pd.DataFrame,
    linked: pd.DataFrame | None,
    *,
    mandant: str,
    separator: str,
) -> pd.DataFrame:
    """Verwaltungseinheiten → units, linked to their property and, by street, to their building's address.

    With `linked` (the units a synced contract links, `people.linked_units`) only those; with None all.

    A unit whose building is missing from gebaeude.csv gets no address: the payload check blocks it
    (casavi requires one) and the ERP foreign-key check names the missing building.
    """
    with DuckSession(mandant, separator) as duck:
        duck.add_erp("verwaltungseinheiten", verwaltungseinheiten)
        duck.add_erp("gebaeude", gebaeude)
        duck.add_frame("unit_labels", _labels_frame())
        duck.params["fallback_label"] = FALLBACK_UNIT_LABEL
        duck.params["private"] = api.Usage.PRIVATE.value
        in_scope = _sql_linked(duck, linked, "v", ("we_nr", "ve_nr"))
        return duck.frame(
            f"""
            SELECT {sql_object_id(ObjectKind.UNIT, "v")},
                   {sql_ref_id("v.we_nr")} AS property_id,
                   {sql_street("g")} AS address,
                   COALESCE(l.label, $fallback_label) || ' ' || COALESCE(v.lage, v.ve_nr) AS name,
                   v.ve_nr AS number,
                   COALESCE(l.usage, $private) AS usage,
                   v.flaeche_m2 AS area,
                   v.zimmer AS rooms,
                   {sql_erp_key("we_nr", "geb_nr", "ve_nr", alias="v")} AS erp_key
            FROM verwaltungseinheiten v
            LEFT JOIN unit_labels l ON l.nutzungsart = v.nutzungsart
            LEFT JOIN gebaeude g ON g.we_nr = v.we_nr AND g.geb_nr = v.geb_nr
            WHERE {in_scope}
            ORDER BY id, erp_key
            """
        )[list(UNIT_COLUMNS)]
