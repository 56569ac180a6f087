"""The ERP export contract (`shared/erp-export.md`) as data: files, columns, keys and value types.

Readers, schemas, the sample generator and tests all derive from this one table, so the contract is
written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ColumnType(StrEnum):
    STRING = "string"  # identifiers too: always strings, leading zeros kept
    DATE = "date"  # ISO YYYY-MM-DD, empty = none; kept as the ISO string after validation
    DECIMAL = "decimal"  # `.` as decimal point; float64 after parsing


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType = ColumnType.STRING
    required: bool = False  # the column must be in the header
    not_null: bool = False  # every row needs a value


@dataclass(frozen=True)
class Entity:
    name: str  # the asset name, e.g. "wirtschaftseinheiten"
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique within the Mandant
    description: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)


def _key(name: str) -> Column:
    return Column(name, required=True, not_null=True)


_PERSON_COLUMNS = (
    Column("anrede"),
    Column("titel"),
    Column("vorname"),
    Column("nachname"),
    Column("firma"),
    Column("email"),
    Column("telefon"),
    Column("mobil"),
    Column("strasse"),
    Column("hausnummer"),
    Column("plz"),
    Column("ort"),
    Column("land"),
)

NUTZUNGSARTEN = ("WOHNUNG", "GEWERBE", "STELLPLATZ", "GARAGE", "SONSTIGE")
ANREDEN = ("Herr", "Frau", "Divers", "Firma")

WIRTSCHAFTSEINHEITEN = Entity(
    "wirtschaftseinheiten",
    (
        _key("we_nr"),
        Column("bezeichnung", required=True, not_null=True),
        Column("strasse"),
        Column("hausnummer"),
        Column("plz"),
        Column("ort"),
        Column("land"),
    ),
    key=("we_nr",),
    description="Wirtschaftseinheiten (economic units) → casavi properties (Liegenschaften)",
)
GEBAEUDE = Entity(
    "gebaeude",
    (
        _key("we_nr"),
        _key("geb_nr"),
        Column("strasse", required=True, not_null=True),
        Column("hausnummer", required=True, not_null=True),
        Column("plz", required=True, not_null=True),
        Column("ort", required=True, not_null=True),
        Column("land"),
    ),
    key=("we_nr", "geb_nr"),
    description="Gebäude (buildings) → addresses of their casavi property",
)
VERWALTUNGSEINHEITEN = Entity(
    "verwaltungseinheiten",
    (
        _key("we_nr"),
        _key("ve_nr"),
        _key("geb_nr"),
        Column("nutzungsart", required=True, not_null=True),
        Column("lage"),
        Column("flaeche_m2", ColumnType.DECIMAL),
        Column("zimmer", ColumnType.DECIMAL),
    ),
    key=("we_nr", "ve_nr"),
    description="Verwaltungseinheiten (rentable/ownable units) → casavi units (Einheiten)",
)
MIETVERTRAEGE = Entity(
    "mietvertraege",
    (
        _key("vertrag_nr"),
        _key("we_nr"),
        _key("ve_nr"),
        Column("beginn", ColumnType.DATE, required=True, not_null=True),
        Column("ende", ColumnType.DATE),
    ),
    key=("vertrag_nr",),
    description="Mietverträge (rental contracts) → casavi contracts of type RENTER",
)
MIETER = Entity(
    "mieter",
    (_key("vertrag_nr"), _key("person_nr"), *_PERSON_COLUMNS),
    key=("vertrag_nr", "person_nr"),
    description="Mieter (tenants), one row per contract and person → casavi contacts",
)
EIGENTUEMERVERTRAEGE = Entity(
    "eigentuemervertraege",
    (
        _key("ev_nr"),
        _key("we_nr"),
        _key("ve_nr"),
        Column("beginn", ColumnType.DATE, required=True, not_null=True),
        Column("ende", ColumnType.DATE),
    ),
    key=("ev_nr",),
    description="Eigentümerverträge (ownership contracts) → casavi contracts of type OWNER",
)
EIGENTUEMER = Entity(
    "eigentuemer",
    (_key("ev_nr"), _key("person_nr"), *_PERSON_COLUMNS),
    key=("ev_nr", "person_nr"),
    description="Eigentümer (owners), one row per ownership contract and person → casavi contacts",
)

ENTITIES: tuple[Entity, ...] = (
    WIRTSCHAFTSEINHEITEN,
    GEBAEUDE,
    VERWALTUNGSEINHEITEN,
    MIETVERTRAEGE,
    MIETER,
    EIGENTUEMERVERTRAEGE,
    EIGENTUEMER,
)
ENTITIES_BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}

#: ERP foreign keys: (child entity, child columns, parent entity, parent columns).
FOREIGN_KEYS: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...]], ...] = (
    ("gebaeude", ("we_nr",), "wirtschaftseinheiten", ("we_nr",)),
    ("verwaltungseinheiten", ("we_nr",), "wirtschaftseinheiten", ("we_nr",)),
    ("verwaltungseinheiten", ("we_nr", "geb_nr"), "gebaeude", ("we_nr", "geb_nr")),
    ("mietvertraege", ("we_nr", "ve_nr"), "verwaltungseinheiten", ("we_nr", "ve_nr")),
    ("mieter", ("vertrag_nr",), "mietvertraege", ("vertrag_nr",)),
    ("eigentuemervertraege", ("we_nr", "ve_nr"), "verwaltungseinheiten", ("we_nr", "ve_nr")),
    ("eigentuemer", ("ev_nr",), "eigentuemervertraege", ("ev_nr",)),
)
