"""Composite reference IDs (rule 3 of `shared/erp-export.md`) and the ERP keys that name their source.

casavi stores our composite ID as each object's `id`; it is built from the Mandant number and the ERP
numbers joined by the separator setting. The Python functions are the readable definition (and what
tests and other modules call); `sql_ref_id` writes the same composition as a DuckDB expression, so the
mapping SQL cannot drift from it (a test compares both).
"""

from __future__ import annotations

#: Literal kind tags that keep the ERP's two contract number ranges from colliding.
RENTAL_CONTRACT_TAG = "MV"
OWNER_CONTRACT_TAG = "EV"


def compose(mandant: str, separator: str, *numbers: str) -> str:
    """`M s n1 s n2 ...`: the Mandant first, so objects of all Mandanten can share one casavi account."""
    return separator.join((mandant, *numbers))


def property_id(mandant: str, separator: str, we_nr: str) -> str:
    return compose(mandant, separator, we_nr)


def address_id(mandant: str, separator: str, we_nr: str, geb_nr: str) -> str:
    return compose(mandant, separator, we_nr, geb_nr)


def unit_id(mandant: str, separator: str, we_nr: str, geb_nr: str, ve_nr: str) -> str:
    return compose(mandant, separator, we_nr, geb_nr, ve_nr)


def contact_id(mandant: str, separator: str, person_nr: str) -> str:
    return compose(mandant, separator, person_nr)


def rental_contract_id(mandant: str, separator: str, vertrag_nr: str) -> str:
    return compose(mandant, separator, RENTAL_CONTRACT_TAG, vertrag_nr)


def owner_contract_id(mandant: str, separator: str, ev_nr: str) -> str:
    return compose(mandant, separator, OWNER_CONTRACT_TAG, ev_nr)


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
