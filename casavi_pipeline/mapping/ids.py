"""Composite reference IDs (rule 3 of `docs/export-format.md`) and the ERP keys that name their source.

casavi stores our composite ID as each object's `id`; it is built in DuckDB from the Mandant number and
the ERP numbers joined by the separator setting (`sql_ref_id`). Buildings and contracts have no ID of
their own in casavi (revision 2): they are a property's address and a contact's contract entry.
"""

from __future__ import annotations

from casavi_pipeline.casavi.api import ObjectKind

#: The separators a composite reference id may use (`CASAVI_ID_SEPARATOR`): Aareon Connect's choices.
ALLOWED_SEPARATORS = ("-", "_", ".", "/", "|")

#: The ERP numbers each kind's reference id is composed from, in order after the Mandant (rule 3). The
#: mapped frames carry them beside `id` as columns of these names, so what is built on the ids (the links
#: back to the ERP, `casavi_pipeline/links.py`) never parses one.
ERP_NUMBERS: dict[ObjectKind, tuple[str, ...]] = {
    ObjectKind.PROPERTY: ("we_nr",),
    ObjectKind.UNIT: ("we_nr", "geb_nr", "ve_nr"),
    ObjectKind.CONTACT: ("person_nr",),
}
#: Every kind's ERP number columns together, in the order the links file lists them.
ERP_NUMBER_COLUMNS: tuple[str, ...] = ("we_nr", "geb_nr", "ve_nr", "person_nr")


def sql_ref_id(*parts: str) -> str:
    """The DuckDB expression composing `$mandant`, then `parts` (SQL expressions), joined by `$sep`.

    `||` propagates NULL (unlike `concat_ws`, which would silently skip a missing number and build a
    shorter, wrong ID): a NULL part gives a NULL ID, which the payload check reports.
    """
    return " || $sep || ".join(("$mandant", *parts))


def sql_erp_key(*columns: str, alias: str = "") -> str:
    """The DuckDB expression for an ERP key like `we_nr=001 geb_nr=02` (key numbers only, never names)."""
    prefix = f"{alias}." if alias else ""
    return " || ' ' || ".join(f"'{column}=' || {prefix}{column}" for column in columns)


def sql_object_id(kind: ObjectKind, alias: str) -> str:
    """`<reference id> AS id, <alias>.we_nr AS we_nr, …`: an object's id and the ERP numbers it is composed
    from (`ERP_NUMBERS`), both from the one declaration."""
    numbers = ERP_NUMBERS[kind]
    parts = [f"{alias}.{number}" for number in numbers]
    named = (f"{part} AS {number}" for part, number in zip(parts, numbers, strict=True))
    return ", ".join([f"{sql_ref_id(*parts)} AS id", *named])
