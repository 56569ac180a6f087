"""The ERP mapping file (`ERP_MAPPING_FILE`): how a real ERP's columns and codes become the export contract.

A real ERP rarely names its columns like the contract (`docs/export-format.md`) or uses its codes. One
YAML file says, per entity, where the rows come from (`source`, for a database), which source column is
which contract column (`columns`), which built-in normalisation a column gets (`normalize`) and how the
ERP's codes translate into ours (`values`). The transform runs on the text frame, between reading (CSV
or SQL) and validation, so every source meets the same contract and the same checks:

    rename (`columns`) → normalise (`normalize`) → translate codes (`values`) → contract columns

Every scalar of the file is read as text (YAML's "base" loader): `01` stays `01`, `no` stays `no`.
A broken file stops the load with one line: the file, the key path, and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import sqlparse
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from casavi_pipeline.erp.contract import ENTITIES, ENTITIES_BY_NAME, Entity


class MappingFileError(ValueError):
    """The mapping file cannot be used; the message names the file, the key path and what is allowed."""


#: A table or view, optionally schema-qualified (`dbo.v_casavi_mieter`); anything else must be a query.
_RELATION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$#]*(?:\.[A-Za-z_][A-Za-z0-9_$#]*)?")
_QUERY_START = re.compile(r"\s*(select|with)\b", re.IGNORECASE)
_MANDANT_PARAMETER = re.compile(r":mandant\b")


class SplitPostcodeTown(BaseModel):
    """`PLZ Ort` in one field (`12345 Berlin`, `D-12345 Berlin`) → the postcode and the town columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    split_postcode_town: tuple[str, str] = Field(description="[postcode column, town column]")


Normalization = Literal["salutation", "floor"] | SplitPostcodeTown


class EntityMapping(BaseModel):
    """How one entity's source rows become contract rows (all parts optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str | None = None  # SQL only: a table/view name, or a SELECT with the parameter :mandant
    columns: dict[str, str] = {}  # source column → contract column
    normalize: dict[str, Normalization] = {}  # column (after renaming) → built-in normalisation
    values: dict[str, dict[str, str]] = {}  # contract column → {source code: our code ('' = empty)}

    @field_validator("source")
    @classmethod
    def _source_shape(cls, value: str | None) -> str | None:
        if value is None or _RELATION_NAME.fullmatch(value.strip()):
            return value and value.strip()
        if not _QUERY_START.match(value):
            raise ValueError(
                "is neither a table/view name (letters, digits, _; optionally schema.name) nor a query "
                "starting with SELECT or WITH"
            )
        statements = _statements(value)
        if len(statements) > 1:
            # A second statement is never a read: `...; COMMIT; INSERT ...` would end the read-only
            # transaction and write. Refused here, when the code location loads, not when a run meets it.
            raise ValueError(
                f"holds {len(statements)} SQL statements (a `;` outside quotes and comments ends one); give "
                "one SELECT (or WITH ... SELECT): the ERP is only read"
            )
        if not _MANDANT_PARAMETER.search(value):
            raise ValueError("is a query without the parameter :mandant; select the Mandant's rows with it")
        return value

    @property
    def source_is_query(self) -> bool:
        return self.source is not None and not _RELATION_NAME.fullmatch(self.source)

    def renamed(self, header: list[str]) -> list[str]:
        """The source header with the contract names the file gives its columns."""
        return [self.columns.get(name, name) for name in header]

    @property
    def produced(self) -> dict[str, str]:
        """Columns a normalisation creates → the column they are made from."""
        return {
            target: column
            for column, how in self.normalize.items()
            if isinstance(how, SplitPostcodeTown)
            for target in how.split_postcode_town
        }

    def source_columns(self) -> dict[str, str]:
        """Contract column → the source column it comes from (for messages), where they differ."""
        renamed_from = {target: source for source, target in self.columns.items()}
        origins = {
            target: renamed_from.get(made_from, made_from) for target, made_from in self.produced.items()
        }
        return renamed_from | origins

    def apply(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Normalise, then translate codes, on text columns (str or None) already renamed."""
        for column, how in self.normalize.items():
            if column not in columns:
                continue  # an optional column the source does not have: nothing to normalise
            if isinstance(how, SplitPostcodeTown):
                postcode, town = how.split_postcode_town
                parts = [split_postcode_town(value) for value in columns[column]]
                columns[postcode] = _text_array([p for p, _ in parts])
                columns[town] = _text_array([t for _, t in parts])
            else:
                columns[column] = _text_array([_NORMALIZERS[how](value) for value in columns[column]])
        for column, codes in self.values.items():
            if column in columns:
                columns[column] = _text_array(
                    [(codes.get(v, v) or None) if v is not None else None for v in columns[column]]
                )
        return columns


def _statements(sql: str) -> list[str]:
    """The SQL statements of `sql` (sqlparse: `;` inside quotes, dollar quotes or comments ends none);
    a piece that is only comments or an empty `;` is none."""
    return [
        part
        for part in sqlparse.split(sql)
        if sqlparse.format(part, strip_comments=True).strip().strip(";").strip()
    ]


def _text_array(values: list[str | None]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


class MappingFile(BaseModel):
    """The whole file: one optional section per entity, named like the export files without `.csv`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    entities: dict[Literal[tuple(e.name for e in ENTITIES)], EntityMapping] = {}  # type: ignore[valid-type]

    def for_entity(self, entity: Entity) -> EntityMapping | None:
        return self.entities.get(entity.name)


def load_mapping_file(path: Path) -> MappingFile:
    """Read and check the mapping file; raise `MappingFileError` with one line when it is unusable."""
    where = f"ERP_MAPPING_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingFileError(f"{where} cannot be read ({exc.__class__.__name__}); check the path") from None
    try:
        # Base loader: every scalar stays text, so codes like 01 or "no" are never turned into numbers or booleans.
        data = yaml.load(text, Loader=yaml.BaseLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise MappingFileError(f"{where} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise MappingFileError(f"{where}: the top level must be a mapping of entity names (e.g. mieter:)")
    try:
        mapping = MappingFile(entities=data)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = [part for part in error["loc"][1:] if not _is_union_tag(part)]
        key_path = ".".join(str(part) for part in location if part != "[key]")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "literal_error" and "[key]" in location:
            message = "is not an entity; use one of " + ", ".join(e.name for e in ENTITIES)
        elif error["type"] == "extra_forbidden":
            message = "is not a known key; allowed: source, columns, normalize, values"
        elif "normalize" in location:
            message = "is not a normalisation; use salutation, floor or {split_postcode_town: [plz, ort]}"
        elif error["type"] == "dict_type":
            message = "must be a mapping (one `key: value` per line)"
        elif error["type"] == "string_type":
            message = "must be a single value (text)"
        raise MappingFileError(f"{where}: {key_path or '(top level)'} {message}") from None
    for name, entity_mapping in mapping.entities.items():
        _check_columns(where, ENTITIES_BY_NAME[name], entity_mapping)
    return mapping


def _is_union_tag(part: object) -> bool:
    """pydantic names the union member tried (`literal['salutation','floor']`) in an error's location."""
    return isinstance(part, str) and (
        part.startswith(("literal[", "function-")) or part == "SplitPostcodeTown"
    )


def _check_columns(where: str, entity: Entity, mapping: EntityMapping) -> None:
    """Each name the file gives must be a contract column of the entity (a typo must not drop data)."""
    contract = entity.column_names
    allowed = ", ".join(contract)
    split_inputs = {column for column, how in mapping.normalize.items() if isinstance(how, SplitPostcodeTown)}
    for source, target in mapping.columns.items():
        if target not in contract and target not in split_inputs:
            raise MappingFileError(
                f"{where}: {entity.name}.columns.{source} maps to {target!r}, which is not a column of "
                f"{entity.name}; use one of {allowed} (or a column that normalize splits)"
            )
    for column, how in mapping.normalize.items():
        targets = how.split_postcode_town if isinstance(how, SplitPostcodeTown) else (column,)
        for target in targets:
            if target not in contract:
                raise MappingFileError(
                    f"{where}: {entity.name}.normalize.{column} writes {target!r}, which is not a column of "
                    f"{entity.name}; use one of {allowed}"
                )
    for column in mapping.values:
        if column not in contract:
            raise MappingFileError(
                f"{where}: {entity.name}.values.{column} is not a column of {entity.name}; use one of {allowed}"
            )


# The built-in normalisations. Each takes a stripped value (or None) and returns our text (or None).

_SALUTATION_WORDS: Mapping[str, str] = {
    "herr": "Herr",
    "herrn": "Herr",
    "hr": "Herr",
    "hrn": "Herr",
    "frau": "Frau",
    "fr": "Frau",
    "divers": "Divers",
    "firma": "Firma",
    "fa": "Firma",
}
_WORD = re.compile(r"[^\W\d_]+")


def salutation(value: str | None) -> str | None:
    """Free-text Anrede → Herr, Frau, Divers, Firma, or empty when it names none or more than one.

    `Sehr geehrter Herr Müller` → Herr, `Frau Dr.` → Frau, `Herrn` → Herr, `Firma` → Firma;
    `Herr und Frau`, `Eheleute`, `Familie`, `Sehr geehrte Damen und Herren` → empty.
    """
    if value is None:
        return None
    found = {_SALUTATION_WORDS[word] for word in _WORD.findall(value.lower()) if word in _SALUTATION_WORDS}
    return found.pop() if len(found) == 1 else None


_BASEMENT = re.compile(r"\b(?:ug|kg|keller\w*|untergeschoss|souterrain)\b")
_BASEMENT_LEVEL = re.compile(r"(\d+)\s*\.?\s*(?:ug|untergeschoss)\b")
_GROUND = re.compile(r"\b(?:eg|erdgeschoss|parterre|hochparterre)\b")
_NUMBER = re.compile(r"\d+")


def floor(value: str | None) -> str | None:
    """Floor text → its number as text: `Erdgeschoss`/`EG` → 0, `Keller`/`UG` → -1 (`2. UG` → -2),
    `3. Etage, links`/`3. OG` → 3; no number (`Dachgeschoss`) → empty."""
    if value is None:
        return None
    text = value.lower()
    if _BASEMENT.search(text):
        level = _BASEMENT_LEVEL.search(text)
        return f"-{int(level.group(1))}" if level else "-1"
    if _GROUND.search(text):
        return "0"
    number = _NUMBER.search(text)
    return str(int(number.group())) if number else None


_POSTCODE_TOWN = re.compile(r"(?:[A-Za-z]{1,2}\s*-\s*)?(\d{4,5})\b[\s,]*(.*)")


def split_postcode_town(value: str | None) -> tuple[str | None, str | None]:
    """`12345 Berlin` → (12345, Berlin); `D-01067 Dresden` → (01067, Dresden); no postcode → (None, the text)."""
    if value is None:
        return None, None
    match = _POSTCODE_TOWN.fullmatch(value.strip())
    if match is None:
        return None, value.strip() or None
    return match.group(1), match.group(2).strip() or None


_NORMALIZERS: Mapping[str, Callable[[str | None], str | None]] = {"salutation": salutation, "floor": floor}
