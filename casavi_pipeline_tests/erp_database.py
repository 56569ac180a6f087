"""An ERP export as other ERPs hold it, for the tests of the ERP sources (`casavi_pipeline.erp.sources`):

- `load_into_database`: the export in a database, as tables `erp_<entity>` with the ERP's own column
  names and types, and over each a view named like the export file with the contract's column names;
- `write_foreign_export`: the export written like a real ERP's CSV export (its own column names, PLZ and
  Ort in one column, free-text Anrede, its own codes of the use, floors as text) and the mapping file
  (`ERP_MAPPING_FILE`) that reads it as the contract export.

Both take the data from a contract export (`read_entity`), so what they hold is known to equal it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from casavi_pipeline.erp.contract import ENTITIES, ColumnType, Entity
from casavi_pipeline.erp.reader import read_entity


def _sql_type(entity: Entity, name: str) -> sa.types.TypeEngine:
    kind = next(c.type for c in entity.columns if c.name == name)
    return {ColumnType.DATE: sa.Date(), ColumnType.DECIMAL: sa.Numeric()}.get(kind, sa.String(200))


def _db_value(value: object, kind: ColumnType) -> object:
    if pd.isna(value):
        return None
    if kind is ColumnType.DATE:
        return pd.Timestamp(value).date()
    if kind is ColumnType.DECIMAL:
        return Decimal(repr(value))
    return value


def load_into_database(url: str, export_dir: Path, mandanten: Iterable[str]) -> None:
    """The export's Mandanten as an ERP database would hold them: tables `erp_<entity>` with the ERP's
    own column names (`c_<column>`) and typed columns (date, numeric), all Mandanten in one table selected
    by `mandant_nr`, and over each a view named like the export file with the contract's column names."""
    mandanten = list(mandanten)
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    try:
        with engine.begin() as connection:
            for entity in ENTITIES:
                table = sa.Table(
                    f"erp_{entity.name}",
                    metadata,
                    sa.Column("mandant_nr", sa.String(16)),
                    *(sa.Column(f"c_{name}", _sql_type(entity, name)) for name in entity.column_names),
                )
                table.create(connection)
                kinds = {c.name: c.type for c in entity.columns}
                rows = [
                    {"mandant_nr": m} | {f"c_{k}": _db_value(v, kinds[k]) for k, v in record.items()}
                    for m in mandanten
                    for record in read_entity(export_dir, m, entity).frame.to_dict("records")
                ]
                if rows:
                    connection.execute(table.insert(), rows)
                selected = ", ".join(f"c_{name} AS {name}" for name in entity.column_names)
                connection.exec_driver_sql(
                    f"CREATE VIEW {entity.name} AS SELECT mandant_nr, {selected} FROM erp_{entity.name}"
                )
    finally:
        engine.dispose()


# The foreign export: the ERP's own column names, codes and free text.

_ANREDE_TEXT = {"Herr": "Sehr geehrter Herr", "Frau": "Frau Dr.", "Firma": "Firma", "Divers": "Divers"}
_NUTZUNG = {
    "WOHNUNG": "Wohnraum",
    "GEWERBE": "Gewerbe",
    "STELLPLATZ": "TG-Platz",
    "GARAGE": "Garage",
    "SONSTIGE": "Sonst.",
}
_POSTCODE_TOWN = {"plz", "ort"}

_MAPPING_YAML = """\
# The ERP calls its columns ERP_<NAME>, writes PLZ and Ort into one field, Anreden as free text,
# and its own codes of the use.
{columns}
verwaltungseinheiten:
  columns:
    ERP_WE_NR: we_nr
    ERP_VE_NR: ve_nr
    ERP_GEB_NR: geb_nr
    NUTZUNG: nutzungsart
    ERP_LAGE: lage
    ERP_FLAECHE_M2: flaeche_m2
    ERP_ZIMMER: zimmer
  values:
    nutzungsart: {{Wohnraum: WOHNUNG, Gewerbe: GEWERBE, TG-Platz: STELLPLATZ, Garage: GARAGE, Sonst.: SONSTIGE}}
{floor}"""


def _floor_text(lage: object) -> str:
    """A floor number (the contract export's `lage`) as an ERP writes the floor: `0` → Erdgeschoss."""
    if pd.isna(lage):
        return ""
    if not re.fullmatch(r"-?\d+", lage):
        raise ValueError(f"floors_as_text needs floor numbers in lage, not {lage!r}")
    number = int(lage)
    if number == 0:
        return "Erdgeschoss"
    if number == -1:
        return "Keller"
    return f"{-number}. UG" if number < 0 else f"{number}. Etage"


def write_foreign_export(
    source_dir: Path, root: Path, mandanten: Iterable[str], *, floors_as_text: bool = False
) -> Path:
    """The contract export in `source_dir` written to `root` like a real ERP's; returns the mapping file
    that reads it as the contract export. With `floors_as_text` the export's `lage` must be floor numbers
    (`0`, `1`, `-1`): the ERP writes them as text (`Erdgeschoss`, `1. Etage`, `Keller`), the mapping file
    turns them back with the `floor` normalisation."""
    sections = []
    for entity in ENTITIES:
        if entity.name == "verwaltungseinheiten":
            continue
        combined = set(entity.column_names) >= _POSTCODE_TOWN
        renames = [
            f"    ERP_{n.upper()}: {n}" for n in entity.column_names if not (combined and n in _POSTCODE_TOWN)
        ]
        section = [f"{entity.name}:", "  columns:", *renames]
        if combined:
            section += ["  normalize:", "    PLZ_ORT: {split_postcode_town: [plz, ort]}"]
            if "anrede" in entity.column_names:
                section += ["    anrede: salutation"]
        sections.append("\n".join(section))
    for mandant in mandanten:
        for entity in ENTITIES:
            frame = read_entity(source_dir, mandant, entity).frame
            text = pd.read_csv(
                source_dir / mandant / entity.file_name, sep=";", dtype=str, keep_default_na=False
            )
            out = pd.DataFrame(index=frame.index)
            for name in entity.column_names:
                if name == "nutzungsart":
                    out["NUTZUNG"] = frame[name].map(_NUTZUNG)
                elif name == "anrede":
                    out["ERP_ANREDE"] = [
                        _ANREDE_TEXT.get(v, "") if not pd.isna(v) else "" for v in frame[name]
                    ]
                elif name == "lage" and floors_as_text:
                    out["ERP_LAGE"] = [_floor_text(v) for v in frame[name]]
                elif name in _POSTCODE_TOWN and set(entity.column_names) >= _POSTCODE_TOWN:
                    continue
                else:
                    out[f"ERP_{name.upper()}"] = text.get(name, "")
            if set(entity.column_names) >= _POSTCODE_TOWN:
                out["PLZ_ORT"] = [
                    " ".join(v for v in pair if not pd.isna(v))
                    for pair in zip(frame["plz"], frame["ort"], strict=True)
                ]
            path = root / mandant / entity.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            out.to_csv(path, sep=";", index=False)
    mapping = root / "mapping.yaml"
    floor = "  normalize:\n    lage: floor\n" if floors_as_text else ""
    mapping.write_text(_MAPPING_YAML.format(columns="\n".join(sections), floor=floor), encoding="utf-8")
    return mapping
