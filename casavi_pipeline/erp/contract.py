"""The ERP export contract (`docs/export-format.md`) as data: files, columns, keys and value types.

Readers, schemas, the sample generator and tests all derive from this one table, so the contract is
written down once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

#: A Mandant number: 1-16 letters or digits (it names the export's folders and the state's files: never a
#: path or a glob). Use fullmatch.
MANDANT_PATTERN = re.compile(r"[0-9A-Za-z]{1,16}")


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
    description: str = ""  # what the column holds, shown in the Dagster UI (English)


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


def _key(name: str, description: str) -> Column:
    return Column(name, required=True, not_null=True, description=description)


_PERSON_COLUMNS = (
    Column("anrede", description="salutation: Herr, Frau, Divers, Firma or empty"),
    Column("titel", description="academic title, e.g. Dr."),
    Column("vorname", description="first name"),
    Column("nachname", description="last name (a person needs nachname or firma)"),
    Column("firma", description="company name (a person needs nachname or firma)"),
    Column(
        "email",
        description="email; the first valid address is used (under the sync rule email, tenants need one)",
    ),
    Column("telefon", description="telephone number"),
    Column("mobil", description="mobile number"),
    Column("strasse", description="street of the postal address"),
    Column("hausnummer", description="house number of the postal address"),
    Column("plz", description="postal code"),
    Column("ort", description="city"),
    Column("land", description="ISO 3166-1 alpha-2 country code; empty = DE"),
)

NUTZUNGSARTEN = ("WOHNUNG", "GEWERBE", "STELLPLATZ", "GARAGE", "SONSTIGE")
ANREDEN = ("Herr", "Frau", "Divers", "Firma")

WIRTSCHAFTSEINHEITEN = Entity(
    "wirtschaftseinheiten",
    (
        _key("we_nr", "economic unit number (key within the Mandant)"),
        Column("bezeichnung", required=True, not_null=True, description="display name of the property"),
        Column("strasse", description="street of the main address"),
        Column("hausnummer", description="house number of the main address"),
        Column("plz", description="postal code of the main address"),
        Column("ort", description="city of the main address"),
        Column("land", description="ISO 3166-1 alpha-2 country code; empty = DE"),
    ),
    key=("we_nr",),
    description="Wirtschaftseinheiten (economic units) → casavi properties (Liegenschaften)",
)
GEBAEUDE = Entity(
    "gebaeude",
    (
        _key("we_nr", "economic unit the building belongs to"),
        _key("geb_nr", "building number (key within the economic unit)"),
        Column("strasse", required=True, not_null=True, description="street of the building"),
        Column("hausnummer", required=True, not_null=True, description="house number, e.g. 12a"),
        Column("plz", required=True, not_null=True, description="postal code"),
        Column("ort", required=True, not_null=True, description="city"),
        Column("land", description="ISO 3166-1 alpha-2 country code; empty = DE"),
    ),
    key=("we_nr", "geb_nr"),
    description="Gebäude (buildings) → addresses of their casavi property",
)
VERWALTUNGSEINHEITEN = Entity(
    "verwaltungseinheiten",
    (
        _key("we_nr", "economic unit the unit belongs to"),
        _key("ve_nr", "unit number (key within the economic unit)"),
        _key("geb_nr", "building the unit is in (must exist in gebaeude)"),
        Column(
            "nutzungsart",
            required=True,
            not_null=True,
            description="use: WOHNUNG, GEWERBE, STELLPLATZ, GARAGE or SONSTIGE",
        ),
        Column("lage", description="position in the building, e.g. 2. OG links"),
        Column(
            "flaeche_m2", ColumnType.DECIMAL, description="living/usable area in m², '.' as decimal point"
        ),
        Column("zimmer", ColumnType.DECIMAL, description="number of rooms, e.g. 2.5"),
    ),
    key=("we_nr", "ve_nr"),
    description="Verwaltungseinheiten (rentable/ownable units) → casavi units (Einheiten)",
)
MIETVERTRAEGE = Entity(
    "mietvertraege",
    (
        _key("vertrag_nr", "rental contract number (key within the Mandant)"),
        _key("we_nr", "economic unit of the rented unit"),
        _key("ve_nr", "the rented unit (must exist in verwaltungseinheiten)"),
        Column("beginn", ColumnType.DATE, required=True, not_null=True, description="start date, YYYY-MM-DD"),
        Column("ende", ColumnType.DATE, description="end date, YYYY-MM-DD; empty = open-ended"),
    ),
    key=("vertrag_nr",),
    description="Mietverträge (rental contracts) → casavi contracts of type RENTER",
)
MIETER = Entity(
    "mieter",
    (
        _key("vertrag_nr", "the rental contract (must exist in mietvertraege)"),
        _key("person_nr", "person number (key within the Mandant; one person, one contact)"),
        *_PERSON_COLUMNS,
    ),
    key=("vertrag_nr", "person_nr"),
    description="Mieter (tenants), one row per contract and person → casavi contacts",
)
EIGENTUEMERVERTRAEGE = Entity(
    "eigentuemervertraege",
    (
        _key("ev_nr", "ownership contract number (key within the Mandant)"),
        _key("we_nr", "economic unit of the owned unit"),
        _key("ve_nr", "the owned unit (must exist in verwaltungseinheiten)"),
        Column("beginn", ColumnType.DATE, required=True, not_null=True, description="start date, YYYY-MM-DD"),
        Column("ende", ColumnType.DATE, description="end date, YYYY-MM-DD; empty = open-ended"),
    ),
    key=("ev_nr",),
    description="Eigentümerverträge (ownership contracts) → casavi contracts of type OWNER",
)
EIGENTUEMER = Entity(
    "eigentuemer",
    (
        _key("ev_nr", "the ownership contract (must exist in eigentuemervertraege)"),
        _key("person_nr", "person number (key within the Mandant; one person, one contact)"),
        *_PERSON_COLUMNS,
    ),
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
