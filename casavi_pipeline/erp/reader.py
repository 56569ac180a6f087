"""Read one ERP export file into a validated DataFrame (contract: `docs/export-format.md`).

The output frame has exactly the contract's columns in contract order: text and date columns are
Arrow-backed strings (`casavi_pipeline.frames.TEXT`; dates as ISO `YYYY-MM-DD` text, missing = NA),
decimal columns are `float64` (NaN = missing), rows in file order on a fresh RangeIndex. Anything that
breaks the contract raises one `ErpExportError` naming the file, where, and what to fix.

Two steps: reading a CSV file into a *text frame* (`read_entity`, `text_frame`), and `validated_frame`,
which turns a text frame of any origin (a CSV file here; a database table in `erp.sources`) into the
typed frame: whatever the origin, the same contract, broken with the same messages, located by the
`Origin` (file and row/line, or table and key), never by a person's value.

Parsing uses the `csv` module (C-implemented) rather than `pandas.read_csv`: pandas silently pads
rows with too few fields and has no record-to-line map, both of which the error messages need.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.errors

from casavi_pipeline.erp.contract import ColumnType, Entity
from casavi_pipeline.erp.errors import ErpExportError, place, row_label
from casavi_pipeline.erp.mapping_file import EntityMapping
from casavi_pipeline.erp.schemas import describe_failures, schema_for
from casavi_pipeline.frames import text_array

_DIALECT = {"delimiter": ";", "quotechar": '"', "doublequote": True, "strict": True}
#: A UTF-8 byte order mark, as itself and as it reads when the file is decoded as cp1252.
_BOMS = ("\ufeff", "ï»¿")
_MAX_LISTED_FOLDERS = 20
#: How much of a broken header a message echoes: a header of 100 000 columns must not become a 1 MB message.
_MAX_LISTED_COLUMNS = 20
_MAX_SHOWN_CHARS = 40
#: A header cell a message may echo: shaped like a contract column name (never a name, email or phone).
_COLUMN_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
#: ERP numbers (`*_nr`, the keys and references) become casavi reference ids, snapshot keys and parts
#: of log lines; a C0 control character or DEL in one is an export error, never a value to pass on. So
#: is a bidirectional control (LRM/RLM, ALM, the embeddings/overrides U+202A-U+202E and isolates
#: U+2066-U+2069): invisible, it makes an id display reversed in casavi's UI and in logs ("Trojan
#: Source"), so two different ids can look alike. `repr` escapes all of them (they are not printable).
_IDENTIFIER_SUFFIX = "_nr"
_FIELD_END = re.compile(r"[;\r\n]")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class ErpTable:
    """One entity of one Mandant, read and validated."""

    frame: pd.DataFrame
    origin: str  # the file, or the table/view/query and the database (URL without password)
    modified_at: datetime | None  # the file's mtime, UTC; None for a database
    row_count: int


@dataclass(frozen=True)
class Origin:
    """Where a text frame came from, in the words its messages use."""

    name: str  # `/export/0001/mieter.csv`, `table/view mieter of postgresql://erp@db/erp`
    path: Path | str  # what `ErpExportError.path` holds
    locate: Callable[[int], str]  # frame row → `row 3 (line 4)`; "" where rows have no place (a database)
    rows_note: str = ""  # how the locations read, appended to a message's summary
    source_columns: Mapping[str, str] = field(default_factory=dict)  # contract column → source column
    may_hold_nul: bool = True  # False when a NUL is known to be absent (a scan of the text found none)

    def column(self, name: str) -> str:
        """A contract column for a message, with the source's column where the mapping file renamed it."""
        source = self.source_columns.get(name)
        return f"{name} (source column {source})" if source and source != name else name


def read_entity(
    export_dir: Path,
    mandant: str,
    entity: Entity,
    encoding: str = "utf-8",
    mapping: EntityMapping | None = None,
) -> ErpTable:
    """Read, clean and validate `<export_dir>/<mandant>/<entity>.csv`; raise `ErpExportError` if broken.

    `mapping` (from `ERP_MAPPING_FILE`) renames and transforms the file's columns before the contract applies.
    """
    path = entity_path(export_dir, mandant, entity)
    modified_at = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    text = _decode(path.read_bytes(), path, encoding)
    header, records = _parse(text, path)
    lines = cache(lambda: record_start_lines(text))  # only computed when a message needs it

    def locate(index: int) -> str:
        return row_label(index + 1, lines()[index] if index < len(lines()) else None)

    origin = Origin(
        name=str(path),
        path=path,
        locate=locate,
        rows_note=" (rows count data records from 1; line 1 is the header)",
        source_columns=mapping.source_columns() if mapping else {},
        may_hold_nul="\x00" in text,
    )
    frame = text_frame(entity, header, records, origin, mapping)
    del records  # the Python strings of every field: the largest thing ingest holds
    frame = validated_frame(entity, frame, origin)
    return ErpTable(frame=frame, origin=str(path), modified_at=modified_at, row_count=len(frame))


def validated_frame(entity: Entity, frame: pd.DataFrame, origin: Origin) -> pd.DataFrame:
    """A text frame of `entity` → the typed frame of the module docstring; raise `ErpExportError`.

    `frame` holds the contract columns in contract order on a RangeIndex, every value a stripped `str`
    or None (object dtype), whatever read it. Checks: control characters in ERP numbers and NULs, then
    the contract's schema (`erp.schemas`); every problem is located by `origin`, never by a person's value.
    """
    # Before the schema: its messages quote keys, which must be known to be single-line by then.
    _reject_control_characters(entity, frame, origin)
    _validate(entity, frame, origin)
    typed = {}
    for column in entity.columns:
        values = frame[column.name]
        if column.type is ColumnType.DECIMAL:
            typed[column.name] = pd.to_numeric(values).astype("float64")
        else:
            typed[column.name] = text_array(values.tolist())
    return pd.DataFrame(typed, columns=list(entity.column_names))


def entity_path(export_dir: Path, mandant: str, entity: Entity) -> Path:
    """The entity's file of one Mandant; raise `ErpExportError` if the folder or the file is missing."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ErpExportError(
            export_dir,
            f"ERP export folder {export_dir} does not exist; set ERP_EXPORT_DIR to the folder "
            "that holds one sub-folder per Mandant",
        )
    folder = export_dir / mandant
    if not folder.is_dir():
        found = sorted(p.name for p in export_dir.iterdir() if p.is_dir())
        listed = ", ".join(found[:_MAX_LISTED_FOLDERS]) or "none"
        if len(found) > _MAX_LISTED_FOLDERS:
            listed += f", ... ({len(found)} in all)"
        raise ErpExportError(
            folder,
            f"Mandant folder {folder} is missing: Mandant {mandant} is configured in CASAVI_MANDANTEN but "
            f"the export has no folder for it (Mandant folders found in {export_dir}: {listed}). "
            "Export that Mandant, or remove it from CASAVI_MANDANTEN.",
        )
    path = folder / entity.file_name
    if not path.is_file():
        raise ErpExportError(
            path,
            f"ERP export file {path} is missing; every Mandant folder needs {entity.file_name} "
            "(a file with only the header row is a valid empty entity). Re-run the ERP export.",
        )
    # The export folder is the one place the pipeline reads from; a link out of it (to another
    # Mandant's folder, a system file) is refused rather than followed.
    resolved = path.resolve()
    if not resolved.is_relative_to(export_dir.resolve()):
        raise ErpExportError(
            path,
            f"ERP export file {path} resolves to {resolved}, outside the export folder {export_dir}; "
            "files outside the export folder are not read. Put the file itself into the Mandant folder "
            "instead of a link.",
        )
    return path


def _decode(raw: bytes, path: Path, encoding: str) -> str:
    is_utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    try:
        return raw.decode("utf-8-sig" if is_utf8 else encoding)
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        row = _row_of_line(raw[:line_start].decode(encoding, errors="replace"))
        where = f"{row_label(row, line)}" if row else f"line {line}"
        hint = (
            "if the ERP writes Windows-1252, set ERP_EXPORT_ENCODING=cp1252; otherwise re-export as UTF-8"
            if is_utf8
            else "check ERP_EXPORT_ENCODING (utf-8 or cp1252) against what the ERP writes"
        )
        raise ErpExportError(
            path,
            f"{path} is not valid {encoding}: {where}, byte offset {exc.start} "
            f"(byte 0x{raw[exc.start]:02x}); {hint}",
        ) from exc


def _row_of_line(text_before_line: str) -> int | None:
    """The data row that starts after `text_before_line`, or None if a quoted value is still open."""
    reader = csv.reader(io.StringIO(text_before_line, newline=""), **_DIALECT)
    try:
        records = sum(1 for record in reader if not _is_blank(record))
    except csv.Error:
        return None
    return max(records, 1)


def _is_blank(record: list[str]) -> bool:
    return not record or (len(record) == 1 and not record[0].strip())


def _parse(text: str, path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the data records (blank lines skipped); malformed CSV raises with its line."""
    try:
        records = [r for r in csv.reader(io.StringIO(text, newline=""), **_DIALECT) if not _is_blank(r)]
    except csv.Error as exc:
        line, reason = _csv_error(text)
        row = _row_of_line(text[: _offset_of_line(text, line)]) if line > 1 else None
        where = row_label(row, line) if row else f"line {line}"
        raise ErpExportError(path, f"{path} is not valid CSV at {where}: {reason}") from exc
    if not records:
        raise ErpExportError(path, f"{path} is empty; it needs at least the header row")
    header = [name.strip() for name in records[0]]
    for bom in _BOMS:
        header[0] = header[0].removeprefix(bom).strip()
    data = records[1:]
    width = len(header)
    bad = [index for index, record in enumerate(data) if len(record) != width]
    if bad:
        lines = record_start_lines(text)
        problems = [
            f"{row_label(i + 1, lines[i])}: {len(data[i])} fields, but the header has {width}; "
            "quote a value that contains ';' (\"...\") and check for missing or extra ';'"
            for i in bad
        ]
        raise ErpExportError(path, f"{path} has {len(bad)} row(s) with a wrong number of fields:", problems)
    return header, data


def _csv_error(text: str) -> tuple[int, str]:
    """Where the csv module gives up (the line the broken record starts on) and a readable reason."""
    reader = csv.reader(io.StringIO(text, newline=""), **_DIALECT)
    last_line = 0
    try:
        for _ in reader:
            last_line = reader.line_num
    except csv.Error as exc:
        message = str(exc)
        if "expected after" in message:
            reason = 'text follows a closing quote; write a quote inside a quoted value as "" '
        elif "field larger" in message and not _quote_left_open(text, _offset_of_line(text, last_line + 1)):
            # A quote left open also ends here once the rest of the file outgrows the limit, so only
            # a record whose quotes all close has a field that is really this long. The limit stays
            # the csv module's default (128 KiB): no master-data value comes near it, and raising it
            # would change a process-wide setting for every other csv user.
            reason = (
                f"a field is longer than {csv.field_size_limit()} characters (the csv field limit); no "
                "master-data value is that long, so the export is broken there: check that row in the "
                "ERP and re-export"
            )
        elif "end of data" in message or "field larger" in message:
            reason = 'a quoted value is never closed (a closing " is missing)'
        else:
            reason = message
        return last_line + 1, reason
    return last_line, "unreadable CSV"


def _offset_of_line(text: str, line: int) -> int:
    """The character offset where `line` (1-based, counted as the csv module counts) starts."""
    offset = 0
    for _, physical in zip(range(line - 1), io.StringIO(text, newline=""), strict=False):
        offset += len(physical)
    return offset


def _quote_left_open(text: str, start: int) -> bool:
    """Does the record starting at `start` open a quoted value that is never closed (the dialect's rules)?"""
    position = start
    while True:
        if text.startswith('"', position):
            position += 1
            while True:  # find the closing quote; "" inside is an escaped quote
                quote = text.find('"', position)
                if quote < 0:
                    return True
                if text.startswith('""', quote):
                    position = quote + 2
                    continue
                position = quote + 1
                break
        field_end = _FIELD_END.search(text, position)
        if field_end is None or field_end.group() != ";":
            return False  # the record ends (line break or end of text) with every quote closed
        position = field_end.end()


def record_start_lines(text: str) -> list[int]:
    """The file line each data record starts on (index 0 = data row 1); header and blank lines skipped.

    Only computed when a message needs it: a value with a line break spans lines, so line = row + 1
    holds only for simple files.
    """
    reader = csv.reader(io.StringIO(text, newline=""), **_DIALECT)
    starts: list[int] = []
    previous_end = 0
    for record in reader:
        if not _is_blank(record):
            starts.append(previous_end + 1)
        previous_end = reader.line_num
    return starts[1:]


def text_frame(
    entity: Entity,
    header: Sequence[str],
    data: Sequence[Sequence[str]],
    origin: Origin,
    mapping: EntityMapping | None = None,
) -> pd.DataFrame:
    """Contract columns in contract order, values stripped, "" as None; extra columns dropped.

    `header` names the source's columns; `mapping` renames them before the header is checked, and
    transforms the values before the contract columns are taken.
    """
    names = mapping.renamed(list(header)) if mapping else list(header)
    produced = mapping.produced if mapping else {}
    position = {name: index for index, name in reversed(list(enumerate(names)))}
    counts = Counter([*names, *produced])
    doubled = sorted(name for name in entity.column_names if counts[name] > 1)
    missing = [name for name in entity.required_columns if name not in position and name not in produced]
    if doubled or missing:
        renamed = " after the renames of ERP_MAPPING_FILE" if mapping else ""
        problems = [f"required column {origin.column(name)} is missing{renamed}" for name in missing]
        problems += [f"column {origin.column(name)} appears more than once{renamed}" for name in doubled]
        raise ErpExportError(
            origin.path,
            f"{origin.name} has a header that breaks the contract (header found: {_header_excerpt(header)}); "
            "fix the export (or the columns of ERP_MAPPING_FILE) so it has each contract column once:",
            problems,
        )
    values = list(zip(*data, strict=True)) if data else [() for _ in header]
    wanted = [*entity.column_names, *(mapping.normalize if mapping else ())]
    columns = {name: _clean(values[position[name]]) for name in dict.fromkeys(wanted) if name in position}
    if mapping:
        columns = mapping.apply(columns)
    return pd.DataFrame(
        {name: columns.get(name, np.full(len(data), None, dtype=object)) for name in entity.column_names},
        columns=list(entity.column_names),
    )


def _header_excerpt(header: Sequence[str]) -> str:
    """The header as a message may echo it: the first columns, each on one line, only names echoed.

    A file whose first line is data (the header row lost) would otherwise put a person's name, email
    and phone number into the message; a cell that does not look like a column name is described, not
    shown.
    """
    shown = ";".join(_shown(index, name) for index, name in enumerate(header[:_MAX_LISTED_COLUMNS], start=1))
    if len(header) > _MAX_LISTED_COLUMNS:
        shown += f";... and {len(header) - _MAX_LISTED_COLUMNS} more column(s)"
    return shown


def _shown(index: int, text: str) -> str:
    """A header cell for a message: itself if it looks like a column name, otherwise its position and length."""
    if _COLUMN_NAME.fullmatch(text):
        return text
    return f"<cell {index}: {len(text)} chars>"


def _clean(values: Sequence[str]) -> np.ndarray:
    """Strip surrounding whitespace; an empty value is missing (None)."""
    cleaned = np.empty(len(values), dtype=object)
    cleaned[:] = [value.strip() or None for value in values]
    return cleaned


def _reject_control_characters(entity: Entity, frame: pd.DataFrame, origin: Origin) -> None:
    """Refuse a control character in an ERP number and a NUL in any value; other values stay unshown.

    A tab or line break arrives inside a quoted field. In a number it would become part of a casavi
    reference id; a NUL in any value is never data (C-based tools cut the string there). Each column
    is scanned joined into one string, so a clean file costs one regex pass per number column.
    """
    has_nul = origin.may_hold_nul
    suspects: list[tuple[int, str, bool]] = []  # (column position, column, is an ERP number)
    for position, name in enumerate(entity.column_names):
        is_number = name.endswith(_IDENTIFIER_SUFFIX)
        if is_number or has_nul:
            joined = "".join(filter(None, frame[name]))
            if _CONTROL_CHARACTER.search(joined) if is_number else "\x00" in joined:
                suspects.append((position, name, is_number))
    if not suspects:
        return
    located: list[tuple[int, int, str]] = []
    for position, name, is_number in suspects:
        pattern = _CONTROL_CHARACTER.pattern if is_number else "\x00"
        hits = frame[name].str.contains(pattern, regex=is_number, na=False).to_numpy(dtype=bool)
        for index in np.flatnonzero(hits):
            where = origin.locate(int(index))
            if is_number:
                key = ", ".join(_escaped_key(k, frame.at[index, k]) for k in entity.key)
                problem = (
                    f"{place(where, key)}: column {origin.column(name)} is {_quoted(frame.at[index, name])}, a number "
                    "with a control character (tab, line break, NUL, a bidirectional control such as U+202E, ...); "
                    "the ERP must not put control characters into numbers: correct the number in the ERP "
                    "and re-export"
                )
            else:  # the value may be a name or an address: only where it is
                key = ", ".join(_escaped_key(k, frame.at[index, k]) for k in entity.key)
                problem = f"{where or key}: column {origin.column(name)} contains a NUL character (\\x00); remove it in the ERP"
            located.append((int(index), position, problem))
    problems = [problem for _, _, problem in sorted(located)]
    raise ErpExportError(
        origin.path,
        f"{origin.name} has {len(problems)} value(s) with a control character the contract does not allow:",
        problems,
    )


def _escaped_key(column: str, value: object) -> str:
    """`vertrag_nr='1000\\t1'`: repr-style, so a key with a control character stays on one line."""
    return f"{column}={_quoted(value)}" if isinstance(value, str) else f"{column}=<empty>"


def _quoted(value: str) -> str:
    """An ERP number for a message: repr-style (control characters escaped), at most `_MAX_SHOWN_CHARS`."""
    if len(value) > _MAX_SHOWN_CHARS:
        return f"{value[:_MAX_SHOWN_CHARS]!r}... ({len(value)} characters)"
    return repr(value)


def _validate(entity: Entity, frame: pd.DataFrame, origin: Origin) -> None:
    try:
        schema_for(entity).validate(frame, lazy=True, inplace=True)
    except pandera.errors.SchemaErrors as exc:
        problems = describe_failures(entity, frame, exc.failure_cases, origin.locate, origin.column)
        # `from None`: pandera's own message quotes the failing values, which for tenants and owners
        # are names and emails; chaining it would carry them into Dagster's logs.
        raise ErpExportError(
            origin.path,
            f"{origin.name} breaks the ERP export contract in {len(problems)} place(s){origin.rows_note}:",
            problems,
        ) from None
