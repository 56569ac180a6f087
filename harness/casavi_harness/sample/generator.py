"""A realistic German ERP export in the contract's format (`docs/export-format.md`), deterministic per seed.

Faker fills small pools once (`pools.py`); every row value is drawn from them with one seeded numpy
Generator per Mandant, a column at a time, and each Mandant is written before the next is built: about
1 s per 25 000 units, memory bounded by the largest Mandant (~3 KB per unit).

What the export contains, on purpose (the cases the sync rules exist for): WEG (ownership) and rental
economic units with 1-4 buildings, mixed Nutzungsarten, couples and flat shares on one contract, ended,
running and future contracts, vacant units, ~10 % tenants without or with an invalid email, email
fields holding two addresses, tenants who also own a unit, companies as owners, owners of several
units, and tenants on several contracts whose rows differ (a changed phone number, a new address).
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from casavi_harness.sample.estate import Estate, build_estate, numbers, width_for
from casavi_harness.sample.people import add_contact_details, names, new_phone_numbers, random_addresses
from casavi_harness.sample.pools import Pools
from casavi_pipeline.erp.contract import ENTITIES

#: The day the export is "taken": fixed, so the output does not depend on when it is generated.
AS_OF = np.datetime64("2026-11-01")
_EARLIEST = np.datetime64("1960-01-01")
_YEAR = 365
_ADDRESS = ["strasse", "hausnummer", "plz", "ort", "land"]
_PERSON = ["anrede", "titel", "vorname", "nachname", "firma", "email", "telefon", "mobil", *_ADDRESS]


def _days(values: np.ndarray | float) -> np.ndarray:
    return np.asarray(values).astype(np.int64).astype("timedelta64[D]")


def _iso(dates: np.ndarray) -> np.ndarray:
    text = np.datetime_as_string(dates, unit="D").astype(object)
    text[np.isnat(dates)] = ""
    return text


def _ensure_one(mask: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Rare cases (~5 %) could miss a small Mandant entirely; force one so every sample shows them."""
    if not mask.any() and eligible.any():
        mask = mask.copy()
        mask[np.argmax(eligible)] = True
    return mask


def _contracts(units: np.ndarray, begin: np.ndarray, end: np.ndarray, key: str) -> pd.DataFrame:
    """Contracts numbered in the order they began, as an ERP hands out numbers."""
    order = np.lexsort((units, begin))
    units, begin, end = units[order], begin[order], end[order]
    return pd.DataFrame(
        {
            key: numbers(np.arange(1, len(units) + 1), width_for(len(units), 7)),
            "_unit": units,
            "_begin": begin,
            "_end": end,
            "beginn": _iso(begin),
            "ende": _iso(end),
        }
    )


# --- rental contracts --------------------------------------------------------------------------------
def _leases(g: np.random.Generator, estate: Estate) -> pd.DataFrame:
    ve = estate.verwaltungseinheiten
    n = len(ve)
    weg = estate.wirtschaftseinheiten["_weg"].to_numpy()[ve["_we"].to_numpy()]
    rentable = ~weg | (g.random(n) < 0.4)  # most WEG units are owner-occupied
    state = g.random(n)
    vacant = rentable & (state < 0.06)
    let_soon = rentable & (state >= 0.06) & (state < 0.08)  # vacant now, signed for later
    let_soon = _ensure_one(let_soon, rentable & ~vacant)
    running = rentable & ~vacant & ~let_soon
    nat = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")

    begin = np.maximum(AS_OF - _days(14 + g.exponential(8 * _YEAR, n)), _EARLIEST)
    notice = running & (g.random(n) < 0.03)  # tenant leaving soon, the successor already signed
    notice_end = AS_OF + _days(g.integers(15, 75, n))
    predecessor_end = begin - _days(1 + g.integers(0, 60, n))
    predecessor_begin = predecessor_end - _days(g.integers(180, 10 * _YEAR, n))
    predecessor = running & (g.random(n) < 0.25) & (predecessor_begin >= _EARLIEST)
    moved_out = vacant & (g.random(n) < 0.5)
    moved_out_end = AS_OF - _days(g.integers(1, 2 * _YEAR, n))
    future_begin = AS_OF + _days(g.integers(14, 300, n))

    parts = [
        (running, begin, np.where(notice, notice_end, nat)),
        (notice, notice_end + _days(1), nat),
        (predecessor, predecessor_begin, predecessor_end),
        (moved_out, moved_out_end - _days(g.integers(180, 10 * _YEAR, n)), moved_out_end),
        (let_soon, future_begin, nat),
    ]
    units = np.concatenate([np.flatnonzero(mask) for mask, _, _ in parts])
    begins = np.concatenate([b[mask] for mask, b, _ in parts])
    ends = np.concatenate([e[mask] for mask, _, e in parts])
    contracts = _contracts(units, begins, ends, "vertrag_nr")
    return contracts.assign(
        we_nr=ve["we_nr"].to_numpy()[contracts["_unit"]], ve_nr=ve["ve_nr"].to_numpy()[contracts["_unit"]]
    )


def _tenants(g: np.random.Generator, pools: Pools, estate: Estate, leases: pd.DataFrame) -> pd.DataFrame:
    ve = estate.verwaltungseinheiten
    unit = leases["_unit"].to_numpy()
    kind = ve["nutzungsart"].to_numpy()[unit]
    homes = np.isin(kind, ["WOHNUNG", "SONSTIGE"])
    per_contract = np.where(homes, g.choice([1, 2, 3], len(unit), p=[0.6, 0.37, 0.03]), 1)
    row_contract = np.repeat(np.arange(len(unit)), per_contract)
    slot = np.arange(len(row_contract)) - np.repeat(np.cumsum(per_contract) - per_contract, per_contract)
    n = len(row_contract)
    company = (kind[row_contract] == "GEWERBE") & (g.random(n) < 0.8)
    people = names(g, pools, company)
    _couples_share_surname(g, people, slot)
    people = add_contact_details(g, pools, people)
    # tenants of running and future contracts live in the unit; those of ended ones moved away
    ended = (leases["_end"].to_numpy() < AS_OF)[row_contract]
    building = ve["_building"].to_numpy()[unit][row_contract]
    elsewhere = random_addresses(g, pools, n)
    for column in _ADDRESS:
        at_home = estate.gebaeude[column].to_numpy()[building]
        people[column] = np.where(ended, elsewhere[column], at_home if column != "land" else "DE")
    people["_person"] = np.arange(n)
    people["_row_contract"], people["_slot"] = row_contract, slot
    people["_we"] = ve["_we"].to_numpy()[unit][row_contract]
    running = ~ended & (leases["_begin"].to_numpy()[row_contract] <= AS_OF)
    _moved_within_mandant(
        g, pools, people, first=(slot == 0) & running & (kind[row_contract] == "WOHNUNG"), ended=ended
    )
    _rents_parking_too(g, pools, people, running, kind[row_contract])
    people["vertrag_nr"] = leases["vertrag_nr"].to_numpy()[row_contract]
    return people


def _couples_share_surname(g: np.random.Generator, people: pd.DataFrame, slot: np.ndarray) -> None:
    partner = np.flatnonzero((slot == 1) & (g.random(len(slot)) < 0.6))
    for column in ("nachname", "_last_ascii"):
        people.loc[partner, column] = people[column].to_numpy()[partner - 1]


def _copy_person(
    people: pd.DataFrame, targets: np.ndarray, sources: np.ndarray, columns: Sequence[str]
) -> None:
    for column in [*columns, "_person"]:
        people.loc[targets, column] = people[column].to_numpy()[sources]


def _moved_within_mandant(
    g: np.random.Generator, pools: Pools, people: pd.DataFrame, first: np.ndarray, ended: np.ndarray
) -> None:
    """A former tenant (ended contract) now rents another flat: same person_nr, new address, often a new phone."""
    sources = np.flatnonzero(ended)
    targets = np.flatnonzero(_ensure_one(first & (g.random(len(first)) < 0.03), first))
    if not len(sources) or not len(targets):
        return
    chosen = sources[g.integers(0, len(sources), len(targets))]
    _copy_person(
        people, targets, chosen, ["anrede", "titel", "vorname", "nachname", "firma", "email", "mobil"]
    )
    changed = g.random(len(targets)) < 0.6
    people.loc[targets[changed], "telefon"] = new_phone_numbers(g, pools, int(changed.sum()))


def _rents_parking_too(
    g: np.random.Generator, pools: Pools, people: pd.DataFrame, running: np.ndarray, kind: np.ndarray
) -> None:
    """Most parking spaces go to a tenant of a flat in the same economic unit (a second contract)."""
    candidates = np.flatnonzero(running & (kind == "WOHNUNG"))
    targets = np.flatnonzero(running & np.isin(kind, ["STELLPLATZ", "GARAGE"]) & (g.random(len(kind)) < 0.5))
    we = people["_we"].to_numpy()
    candidates = candidates[np.argsort(we[candidates], kind="stable")]
    low = np.searchsorted(we[candidates], we[targets], side="left")
    high = np.searchsorted(we[candidates], we[targets], side="right")
    found = high > low
    targets, low, high = targets[found], low[found], high[found]
    chosen = candidates[low + (g.random(len(targets)) * (high - low)).astype(np.int64)]
    _copy_person(people, targets, chosen, [c for c in _PERSON if c != "telefon"])
    changed = g.random(len(targets)) < 0.3  # the ERP row of the older contract kept an old number
    people.loc[targets, "telefon"] = np.where(
        changed, new_phone_numbers(g, pools, len(targets)), people["telefon"].to_numpy()[chosen]
    )


# --- ownership ---------------------------------------------------------------------------------------
def _ownerships(g: np.random.Generator, estate: Estate, leases: pd.DataFrame) -> pd.DataFrame:
    """Every WEG unit has an owner since the declaration of division; about half were sold since."""
    ve = estate.verwaltungseinheiten
    we = estate.wirtschaftseinheiten
    founded = AS_OF - _days(g.integers(2 * _YEAR, 45 * _YEAR, len(we)))
    units = np.flatnonzero(we["_weg"].to_numpy()[ve["_we"].to_numpy()])
    n = len(units)
    first_begin = founded[ve["_we"].to_numpy()[units]]
    sold = g.random(n) < 0.5
    sale = first_begin + _days(
        1 + (g.random(n) * (AS_OF - first_begin - 30).astype(np.int64)).astype(np.int64)
    )
    nat = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    contracts = _contracts(
        np.concatenate([units, units[sold]]),
        np.concatenate([np.where(sold, sale, first_begin), first_begin[sold]]),
        np.concatenate([nat, sale[sold] - _days(1)]),
        "ev_nr",
    )
    rented = np.zeros(len(ve), dtype=bool)
    rented[leases["_unit"].to_numpy()] = True
    return contracts.assign(
        we_nr=ve["we_nr"].to_numpy()[contracts["_unit"]],
        ve_nr=ve["ve_nr"].to_numpy()[contracts["_unit"]],
        _occupied_by_owner=~rented[contracts["_unit"]],
    )


def _owners(
    g: np.random.Generator, pools: Pools, estate: Estate, ownerships: pd.DataFrame, tenants: pd.DataFrame
) -> pd.DataFrame:
    k = len(ownerships)
    current = np.isnat(ownerships["_end"].to_numpy())
    company_contract = _ensure_one(g.random(k) < 0.08, np.ones(k, dtype=bool))
    per_contract = np.where(company_contract, 1, g.choice([1, 2], k, p=[0.7, 0.3]))
    row_contract = np.repeat(np.arange(k), per_contract)
    slot = np.arange(len(row_contract)) - np.repeat(np.cumsum(per_contract) - per_contract, per_contract)
    n = len(row_contract)
    people = names(g, pools, company_contract[row_contract])
    _couples_share_surname(g, people, slot)
    people = add_contact_details(g, pools, people)
    at_home = (current & ownerships["_occupied_by_owner"].to_numpy())[row_contract]
    building = estate.verwaltungseinheiten["_building"].to_numpy()[ownerships["_unit"].to_numpy()][
        row_contract
    ]
    elsewhere = random_addresses(g, pools, n)
    for column in _ADDRESS:
        home = estate.gebaeude[column].to_numpy()[building] if column != "land" else "DE"
        people[column] = np.where(at_home, home, elsewhere[column])
    people["_person"] = np.arange(n) + len(tenants)  # distinct from every tenant's
    landlord = (slot == 0) & (current & ~ownerships["_occupied_by_owner"].to_numpy())[row_contract]
    draw = g.random(n)
    investor = landlord & (draw < 0.1)
    tenant_owner = _ensure_one(landlord & (draw >= 0.1) & (draw < 0.2), landlord & ~investor)
    sources = np.flatnonzero(landlord & ~investor & ~tenant_owner)
    if len(sources):  # one owner of several let units (often a company)
        targets = np.flatnonzero(investor)
        _copy_person(people, targets, sources[g.integers(0, len(sources), len(targets))], _PERSON)
    home_tenants = np.flatnonzero(tenants["_slot"].to_numpy() == 0)
    if len(home_tenants):  # a tenant in one unit who owns (and lets) another one
        targets = np.flatnonzero(tenant_owner)
        chosen = home_tenants[g.integers(0, len(home_tenants), len(targets))]
        for column in [*_PERSON, "_person"]:
            people.loc[targets, column] = tenants[column].to_numpy()[chosen]
    people["ev_nr"] = ownerships["ev_nr"].to_numpy()[row_contract]
    return people


# --- assembling and writing --------------------------------------------------------------------------
def _number_persons(tenants: pd.DataFrame, owners: pd.DataFrame) -> None:
    """person_nr in order of first appearance, one per person across tenants and owners."""
    codes, uniques = pd.factorize(
        np.concatenate([tenants["_person"].to_numpy(), owners["_person"].to_numpy()])
    )
    person_nr = numbers(codes + 1, width_for(len(uniques), 6))
    tenants["person_nr"] = person_nr[: len(tenants)]
    owners["person_nr"] = person_nr[len(tenants) :]


def build_mandant(mandant: str, units: int, pools: Pools, seed: int) -> dict[str, pd.DataFrame]:
    """All seven entities of one Mandant (contract columns plus `_` helper columns)."""
    # one stream per (seed, Mandant): a Mandant's data does not change when others are added
    g = np.random.default_rng([seed, zlib.crc32(mandant.encode())])
    estate = build_estate(g, pools, units)
    leases = _leases(g, estate)
    tenants = _tenants(g, pools, estate, leases)
    ownerships = _ownerships(g, estate, leases)
    owners = _owners(g, pools, estate, ownerships, tenants)
    _number_persons(tenants, owners)
    return {
        "wirtschaftseinheiten": estate.wirtschaftseinheiten,
        "gebaeude": estate.gebaeude,
        "verwaltungseinheiten": estate.verwaltungseinheiten,
        "mietvertraege": leases,
        "mieter": tenants,
        "eigentuemervertraege": ownerships,
        "eigentuemer": owners,
    }


def mandant_numbers(count: int) -> list[str]:
    """`3` → `["0001", "0002", "0003"]`."""
    return [f"{i:04d}" for i in range(1, count + 1)]


def split_units(units: int, mandanten: Sequence[str]) -> dict[str, int]:
    """Units per Mandant: an even split, the remainder to the first Mandanten."""
    share, rest = divmod(units, len(mandanten))
    return {m: share + (1 if i < rest else 0) for i, m in enumerate(mandanten)}


def generate(
    out: Path, *, units: int, mandanten: Sequence[str], seed: int = 42, encoding: str = "utf-8"
) -> dict[str, int]:
    """Write the export under `out` (one folder per Mandant); return the number of units per Mandant."""
    pools = Pools.build(seed)
    per_mandant = split_units(units, mandanten)
    for mandant, count in per_mandant.items():
        frames = build_mandant(mandant, count, pools, seed)
        folder = out / mandant
        folder.mkdir(parents=True, exist_ok=True)
        for entity in ENTITIES:
            frames[entity.name].to_csv(
                folder / entity.file_name,
                columns=list(entity.column_names),
                sep=";",
                index=False,
                lineterminator="\n",
                encoding=encoding,
                quoting=csv.QUOTE_MINIMAL,
            )
    return per_mandant
