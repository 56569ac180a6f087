"""Composite reference IDs (rule 3 of `docs/export-format.md`) and the ERP keys that name their source.

casavi stores our composite ID as each object's `id`; it is built from the Mandant number and the ERP
numbers joined by the separator setting. The mapping builds IDs in DuckDB (`sql_ref_id`); `compose`
and `rental_contract_id` are the same composition in Python, for the few places that need one ID
outside SQL (a data-quality message naming a contract).
"""

from __future__ import annotations

#: Literal kind tags that keep the ERP's two contract number ranges from colliding.
RENTAL_CONTRACT_TAG = "MV"
OWNER_CONTRACT_TAG = "EV"


def compose(mandant: str, separator: str, *numbers: str) -> str:
    """`M s n1 s n2 ...`: the Mandant first, so objects of all Mandanten can share one casavi account."""
    return separator.join((mandant, *numbers))


def rental_contract_id(mandant: str, separator: str, vertrag_nr: str) -> str:
    return compose(mandant, separator, RENTAL_CONTRACT_TAG, vertrag_nr)


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
