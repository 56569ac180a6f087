"""The real estate of one sample Mandant: Wirtschaftseinheiten, Gebäude, Verwaltungseinheiten (vectorised).

Besides the contract columns the frames carry positional helper columns (prefixed `_`) that the
contract step joins on; the writer only writes the contract's columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from casavi_harness.sample.people import as_text, pick
from casavi_harness.sample.pools import Pools

#: Nutzungsart shares of a German residential portfolio: mostly flats, some shops, parking, other.
NUTZUNGSARTEN = np.array(["WOHNUNG", "GEWERBE", "STELLPLATZ", "GARAGE", "SONSTIGE"], dtype=object)
NUTZUNGSART_SHARES = (0.80, 0.06, 0.08, 0.04, 0.02)
WEG_SHARE = 0.35  # economic units held as Wohnungseigentümergemeinschaft (ownership), the rest rental
OTHER_ROOMS = np.array(["Keller", "Hobbyraum", "Dachboden", "Lager UG"], dtype=object)


@dataclass(frozen=True)
class Estate:
    wirtschaftseinheiten: pd.DataFrame  # + _weg
    gebaeude: pd.DataFrame
    verwaltungseinheiten: pd.DataFrame  # + _we (row of its WE), _building (row in gebaeude)


def numbers(values: np.ndarray, width: int) -> np.ndarray:
    """ERP numbers: integers as zero-padded strings (`7` → `0007`)."""
    if not len(values):  # np.char.zfill cannot size an empty array
        return np.empty(0, dtype=object)
    return np.char.zfill(values.astype(str), width).astype(object)


def width_for(count: int, minimum: int) -> int:
    """Digits for numbering `count` records: the ERP's usual width, wider when the Mandant is huge."""
    return max(minimum, len(str(count)))


def _unit_counts(g: np.random.Generator, units: int) -> np.ndarray:
    """Units per economic unit (4 to 60, mostly ~18), summing to exactly `units`."""
    if units <= 0:
        return np.zeros(0, dtype=np.int64)
    draws = g.triangular(4, 18, 60, units // 4 + 1).astype(np.int64)
    total = np.cumsum(draws)
    k = int(np.searchsorted(total, units)) + 1  # first k draws reach `units`
    sizes = draws[:k].copy()
    sizes[-1] -= total[k - 1] - units
    return sizes


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts


def _position_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each group of `counts` consecutive rows."""
    return np.arange(int(counts.sum())) - np.repeat(_starts(counts), counts)


def build_estate(g: np.random.Generator, pools: Pools, units: int) -> Estate:
    sizes = _unit_counts(g, units)
    k = len(sizes)
    weg = g.random(k) < WEG_SHARE
    if k >= 2:  # even a tiny sample has both kinds of economic unit
        weg[0], weg[-1] = True, False
    home_towns = g.choice(
        len(pools.plz), size=min(6, len(pools.plz)), replace=False
    )  # where the company operates
    town = home_towns[g.integers(0, len(home_towns), k)]
    street = pick(g, pools.streets, k)
    first_number = g.integers(1, 80, k)
    building_counts = np.clip(sizes // 10 + 1, 1, 4)

    # --- Gebäude: consecutive even house numbers, sometimes `12a`, sometimes round the corner
    we_of_building = np.repeat(np.arange(k), building_counts)
    b = len(we_of_building)
    building_pos = _position_within(building_counts)
    corner = (building_pos > 0) & (g.random(b) < 0.15)
    suffix = np.where(g.random(b) < 0.2, pick(g, np.array(["a", "b"], dtype=object), b), "")
    house_number = np.where(corner, g.integers(1, 60, b), first_number[we_of_building] + 2 * building_pos)
    gebaeude = pd.DataFrame(
        {
            "we_nr": numbers(np.arange(1, k + 1), width_for(k, 4))[we_of_building],
            "geb_nr": numbers(building_pos + 1, 2),
            "strasse": np.where(corner, pick(g, pools.streets, b), street[we_of_building]),
            "hausnummer": as_text(house_number) + suffix,
            "plz": pools.plz[town][we_of_building],
            "ort": pools.ort[town][we_of_building],
            "land": np.where(g.random(b) < 0.3, "", "DE").astype(object),  # empty means DE
        }
    )
    gebaeude["hausnummer"] = _distinct_house_numbers(gebaeude)
    first_building = gebaeude.iloc[_starts(building_counts)].reset_index(drop=True)
    last_number = first_number + 2 * (building_counts - 1)
    span = np.where(
        building_counts > 1, as_text(first_number) + "-" + as_text(last_number), as_text(first_number)
    )
    wirtschaftseinheiten = pd.DataFrame(
        {
            "we_nr": first_building["we_nr"],
            "bezeichnung": np.where(weg, "WEG ", "Wohnanlage ") + street + " " + span,
            "strasse": first_building["strasse"],
            "hausnummer": first_building["hausnummer"],
            "plz": first_building["plz"],
            "ort": first_building["ort"],
            "land": first_building["land"],
            "_weg": weg,
        }
    )
    return Estate(wirtschaftseinheiten, gebaeude, _units(g, sizes, building_counts, gebaeude))


def _distinct_house_numbers(gebaeude: pd.DataFrame) -> pd.Series:
    """House numbers such that no two buildings of one Wirtschaftseinheit share street and number.

    casavi tells a property's buildings apart by their street alone, so the pipeline blocks a WE with
    two buildings at one address. A corner building can draw the address of another (rarely: its street
    and number are random); the later of the two then takes the next letter (`36` → `36a` → `36b`).
    """
    numbers = gebaeude["hausnummer"].copy()
    while (taken := (gebaeude["we_nr"] + "\0" + gebaeude["strasse"] + "\0" + numbers).duplicated()).any():
        numbers[taken] = numbers[taken].map(_next_letter)
    return numbers


def _next_letter(number: str) -> str:
    return number[:-1] + chr(ord(number[-1]) + 1) if number[-1].isalpha() else number + "a"


def _units(
    g: np.random.Generator, sizes: np.ndarray, building_counts: np.ndarray, gebaeude: pd.DataFrame
) -> pd.DataFrame:
    n = int(sizes.sum())
    we = np.repeat(np.arange(len(sizes)), sizes)
    pos = _position_within(sizes)
    local_building = pos * building_counts[we] // sizes[we]  # units numbered building by building
    building = _starts(building_counts)[we] + local_building
    pos_in_building = np.arange(n) - np.searchsorted(building, building, side="left")
    kind = NUTZUNGSARTEN[g.choice(len(NUTZUNGSARTEN), n, p=NUTZUNGSART_SHARES)]

    floor = pos_in_building // 2
    floor_label = np.where(floor == 0, "EG", as_text(floor) + ". OG")
    side = np.where(pos_in_building % 2 == 0, " links", " rechts")
    lage = np.select(
        [kind == "WOHNUNG", kind == "GEWERBE", kind == "STELLPLATZ", kind == "GARAGE"],
        [floor_label + side, "EG" + side, "TG-Stellplatz " + as_text(pos + 1), "Garage " + as_text(pos + 1)],
        pick(g, OTHER_ROOMS, n),
    )
    flat_area = np.clip(g.normal(72, 24, n), 24, 180).round(2)
    area = np.select(
        [kind == "WOHNUNG", kind == "GEWERBE", kind == "STELLPLATZ", kind == "GARAGE"],
        [flat_area, g.uniform(35, 420, n).round(1), 12.5, 18.0],
        g.uniform(4, 30, n).round(2),
    )
    rooms = np.clip(np.round(flat_area / 26 * 2) / 2, 1, 6)
    missing_area = (kind == "WOHNUNG") & (g.random(n) < 0.02)  # ERP data has gaps
    return pd.DataFrame(
        {
            "we_nr": gebaeude["we_nr"].to_numpy()[building],
            "ve_nr": numbers(pos + 1, 4),
            "geb_nr": gebaeude["geb_nr"].to_numpy()[building],
            "nutzungsart": kind,
            "lage": np.where(g.random(n) < 0.08, "", lage),
            "flaeche_m2": np.where(missing_area, "", np.char.mod("%.2f", area).astype(object)),
            "zimmer": np.where(
                (kind == "WOHNUNG") & ~missing_area, np.char.mod("%g", rooms).astype(object), ""
            ),
            "_we": we,
            "_building": building,
        }
    )
