"""Composite reference IDs (rule 3 of `docs/export-format.md`) and the ERP keys that name their source.

casavi stores our composite ID as each object's `id`; it is built in DuckDB from the Mandant number and
the ERP numbers joined by the separator setting (`sql_ref_id`). Buildings and contracts have no ID of
their own in casavi (revision 2): they are a property's address and a contact's contract entry.
"""

from __future__ import annotations

#: The separators a composite reference id may use (`CASAVI_ID_SEPARATOR`): Aareon Connect's choices.
ALLOWED_SEPARATORS = ("-", "_", ".", "/", "|")


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
