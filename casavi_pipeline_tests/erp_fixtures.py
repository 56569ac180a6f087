"""A tiny hand-written ERP export for tests, in exactly the contract's format (`docs/export-format.md`).

    root = write_export(tmp_path)                                   # Mandant 0001, default rows
    root = write_export(tmp_path, {"0001": {}, "0420": {}})         # two Mandanten, same defaults
    rows = default_rows(); rows["verwaltungseinheiten"][0]["nutzungsart"] = "BUERO"
    root = write_export(tmp_path, {"0001": rows})                   # change a default row
    write_export(tmp_path, {"0001": {"mieter": Append([{"vertrag_nr": "100002", "person_nr": "00045",
                                                          "nachname": "Özdemir"}])}})  # add rows
    write_export(tmp_path, {"0001": {"gebaeude": []}})              # header-only file
    write_export(tmp_path, {"0001": {"gebaeude": None}})            # file missing
    write_export(tmp_path, drop_columns={"gebaeude": ["plz"]})      # column missing from the header

Per Mandant, an entity maps to a list (replaces the defaults), an `Append` (added after the defaults),
`None` (no file) or is left out (defaults). A row names only the columns it fills; a key that is not a
contract column becomes an extra column. The defaults: 1 Wirtschaftseinheit, 2 buildings, 3 units,
2 rental contracts (3 tenants, one without email) and 1 ownership contract with 1 owner.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

from casavi_pipeline.erp.contract import ENTITIES

Row = dict[str, object]


class Append(list):
    """Rows to write after an entity's default rows."""


_DEFAULT_ROWS: dict[str, list[Row]] = {
    "wirtschaftseinheiten": [
        {
            "we_nr": "001",
            "bezeichnung": "Wohnanlage Müllerstraße",
            "strasse": "Müllerstraße",
            "hausnummer": "12",
            "plz": "01067",
            "ort": "Dresden",
            "land": "DE",
        }
    ],
    "gebaeude": [
        {
            "we_nr": "001",
            "geb_nr": "01",
            "strasse": "Müllerstraße",
            "hausnummer": "12",
            "plz": "01067",
            "ort": "Dresden",
            "land": "DE",
        },
        {
            "we_nr": "001",
            "geb_nr": "02",
            "strasse": "Weißdornweg",
            "hausnummer": "3a",
            "plz": "01067",
            "ort": "Dresden",
        },
    ],
    "verwaltungseinheiten": [
        {
            "we_nr": "001",
            "ve_nr": "0001",
            "geb_nr": "01",
            "nutzungsart": "WOHNUNG",
            "lage": "EG links",
            "flaeche_m2": "62.5",
            "zimmer": "2.5",
        },
        {
            "we_nr": "001",
            "ve_nr": "0002",
            "geb_nr": "01",
            "nutzungsart": "GEWERBE",
            "lage": "EG rechts",
            "flaeche_m2": "80",
        },
        {"we_nr": "001", "ve_nr": "0003", "geb_nr": "02", "nutzungsart": "STELLPLATZ"},
    ],
    "mietvertraege": [
        {"vertrag_nr": "100001", "we_nr": "001", "ve_nr": "0001", "beginn": "2020-01-01"},
        {
            "vertrag_nr": "100002",
            "we_nr": "001",
            "ve_nr": "0002",
            "beginn": "2019-05-01",
            "ende": "2024-12-31",
        },
    ],
    "mieter": [
        {
            "vertrag_nr": "100001",
            "person_nr": "00042",
            "anrede": "Herr",
            "vorname": "Jürgen",
            "nachname": "Müller",
            "email": "juergen.mueller@example.org",
            "telefon": "0351 1234567",
        },
        {
            "vertrag_nr": "100001",
            "person_nr": "00043",
            "anrede": "Frau",
            "titel": "Dr.",
            "vorname": "Anna",
            "nachname": "Weiß",
        },
        {
            "vertrag_nr": "100002",
            "person_nr": "00044",
            "anrede": "Firma",
            "firma": "Bäckerei Groß GmbH",
            "email": "info@baeckerei-gross.example.com",
            "strasse": "Müllerstraße",
            "hausnummer": "12",
            "plz": "01067",
            "ort": "Dresden",
        },
    ],
    "eigentuemervertraege": [
        {"ev_nr": "200001", "we_nr": "001", "ve_nr": "0003", "beginn": "2018-07-01"},
    ],
    "eigentuemer": [
        {
            "ev_nr": "200001",
            "person_nr": "00050",
            "anrede": "Frau",
            "vorname": "Erika",
            "nachname": "Schäfer",
            "email": "erika.schaefer@example.net",
            "strasse": "Lindenallee",
            "hausnummer": "7",
            "plz": "04109",
            "ort": "Leipzig",
        },
    ],
}


def default_rows() -> dict[str, list[Row]]:
    """A fresh, consistent copy of the default rows of one Mandant (entity name -> rows)."""
    return copy.deepcopy(_DEFAULT_ROWS)


def write_export(
    root: Path,
    mandanten: Mapping[str, Mapping[str, Iterable[Row] | None]] | None = None,
    *,
    encoding: str = "utf-8",
    bom: bool = False,
    newline: str = "\n",
    drop_columns: Mapping[str, Iterable[str]] | None = None,
) -> Path:
    """Write all seven files per Mandant under `root` (see the module docstring); return `root`."""
    root = Path(root)
    for mandant, overrides in (mandanten if mandanten is not None else {"0001": {}}).items():
        folder = root / mandant
        folder.mkdir(parents=True, exist_ok=True)
        for entity in ENTITIES:
            rows = _rows_for(entity.name, overrides)
            if rows is None:
                continue
            dropped = set((drop_columns or {}).get(entity.name, ()))
            header = [c for c in _header(entity.column_names, rows) if c not in dropped]
            write_csv(folder / entity.file_name, header, rows, encoding=encoding, bom=bom, newline=newline)
    return root


def _rows_for(entity_name: str, overrides: Mapping[str, Iterable[Row] | None]) -> list[Row] | None:
    if entity_name not in overrides:
        return default_rows()[entity_name]
    given = overrides[entity_name]
    if given is None:
        return None
    if isinstance(given, Append):
        return default_rows()[entity_name] + list(given)
    return list(given)


def _header(contract_columns: Iterable[str], rows: list[Row]) -> list[str]:
    header = list(contract_columns)
    for row in rows:
        header += [name for name in row if name not in header]
    return header


def write_csv(
    path: Path,
    header: list[str],
    rows: Iterable[Row],
    *,
    encoding: str = "utf-8",
    bom: bool = False,
    newline: str = "\n",
) -> Path:
    """One `;`-separated file with a header row; missing or None values are written empty."""
    file_encoding = "utf-8-sig" if bom else encoding
    with Path(path).open("w", encoding=file_encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter=";", quotechar='"', lineterminator=newline)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if row.get(name) is None else str(row.get(name)) for name in header])
    return Path(path)


def big_rows(contracts: int) -> dict[str, Append]:
    """The defaults plus `contracts` more units, each rented to its own tenant with an email (2 writes each:
    the unit, and the tenant's contact carrying the contract)."""
    units, leases, tenants = [], [], []
    for i in range(contracts):
        ve = f"{1000 + i:04d}"
        units.append(
            {"we_nr": "001", "ve_nr": ve, "geb_nr": "01", "nutzungsart": "WOHNUNG", "lage": f"{i}. OG"}
        )
        leases.append({"vertrag_nr": f"3{i:05d}", "we_nr": "001", "ve_nr": ve, "beginn": "2022-01-01"})
        tenants.append({"vertrag_nr": f"3{i:05d}", "person_nr": f"9{i:05d}", "nachname": "Schulze",
                        "email": f"mieter{i}@example.org"})  # fmt: skip
    return {"verwaltungseinheiten": Append(units), "mietvertraege": Append(leases), "mieter": Append(tenants)}
