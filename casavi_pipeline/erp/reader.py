"""Read one ERP export file into a validated DataFrame (contract: `docs/export-format.md`).

The output frame has exactly the contract's columns in contract order: text and date columns are
Arrow-backed strings (`casavi_pipeline.frames.TEXT`; dates as ISO `YYYY-MM-DD` text, missing = NA),
decimal columns are `float64` (NaN = missing), rows in file order on a fresh RangeIndex. Anything that
breaks the contract raises one `ErpExportError` naming the file, where, and what to fix.

Two steps: reading a CSV file into a *text frame* (`read_entity`), and `validated_frame`, which turns a
text frame of any origin (a CSV file here; a database table elsewhere) into the typed frame. Its errors
are located by the `Origin` (file and row/line, or table and key), never by a person's value.

Parsing uses the `csv` module (C-implemented) rather than `pandas.read_csv`: pandas silently pads
rows with too few fields and has no record-to-line map, both of which the error messages need.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pandera.errors

from casavi_pipeline.erp.contract import ColumnType, Entity
from casavi_pipeline.erp.errors import ErpExportError, row_label
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
    path: Path
    modified_at: datetime  # the file's mtime, UTC
    row_count: int


def read_entity(export_dir: Path, mandant: str, entity: Entity, encoding: str = "utf-8") -> ErpTable:
    """Read, clean and validate `<export_dir>/<mandant>/<entity>.csv`; raise `ErpExportError` if broken."""
    path = entity_path(export_dir, mandant, entity)
    modified_at = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    text = _decode(path.read_bytes(), path, encoding)
    header, records = _parse(text, path)
    frame = _text_frame(entity, header, records, path)
    del records  # the Python strings of every field: the largest thing ingest holds
    frame = validated_frame(entity, frame, CsvOrigin(path, text))
    return ErpTable(frame=frame, path=path, modified_at=modified_at, row_count=len(frame))


# --- validating a text frame of any origin ----------------------------------------------------------
class Origin(Protocol):
    """Where a text frame came from, for the messages of `validated_frame`.

    `path` is what `ErpExportError.path` names (a file, or whatever names a table); `locate(index)`
    labels frame row `index` (e.g. `row 3 (line 4)` of a file); `may_hold_nul()` may answer False only
    when no value can contain a NUL (a cheap scan of the whole source said so).
    """

    path: Path

    def locate(self, index: int) -> str: ...

    def may_hold_nul(self) -> bool: ...


@dataclass
class CsvOrigin:
    """A CSV file's text: rows are data records counted from 1, lines are the file's (header = line 1)."""

    path: Path
    text: str = field(repr=False)

    @cached_property
    def _lines(self) -> list[int]:
        return record_start_lines(self.text)  # only when a message needs it

    def locate(self, index: int) -> str:
        lines = self._lines
        return row_label(index + 1, lines[index] if index < len(lines) else None)

    def may_hold_nul(self) -> bool:
        return "\x00" in self.text


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


def _text_frame(entity: Entity, header: list[str], data: list[list[str]], path: Path) -> pd.DataFrame:
    """Contract columns in contract order, values stripped, "" as None; extra columns dropped."""
    position = {name: index for index, name in reversed(list(enumerate(header)))}
    counts = Counter(header)
    doubled = sorted(name for name in entity.column_names if counts[name] > 1)
    missing = [name for name in entity.required_columns if name not in position]
    if doubled or missing:
        problems = [f"required column {name} is missing" for name in missing]
        problems += [f"column {name} appears more than once in the header" for name in doubled]
        raise ErpExportError(
            path,
            f"{path} has a header that breaks the contract (header found: {_header_excerpt(header)}); "
            "fix the export so it has each contract column once:",
            problems,
        )
    values = list(zip(*data, strict=True)) if data else [() for _ in header]
    columns = {
        name: _clean(values[position[name]]) if name in position else np.full(len(data), None, dtype=object)
        for name in entity.column_names
    }
    return pd.DataFrame(columns, columns=list(entity.column_names))


def _header_excerpt(header: list[str]) -> str:
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
    has_nul = origin.may_hold_nul()
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
                    f"{where}, {key}: column {name} is {_quoted(frame.at[index, name])}, a number with a "
                    "control character (tab, line break, NUL, a bidirectional control such as U+202E, ...); "
                    "the ERP must not put control characters into numbers: correct the number in the ERP "
                    "and re-export"
                )
            else:  # the value may be a name or an address: only where it is
                problem = f"{where}: column {name} contains a NUL character (\\x00); remove it in the ERP"
            located.append((int(index), position, problem))
    problems = [problem for _, _, problem in sorted(located)]
    raise ErpExportError(
        origin.path,
        f"{origin.path} has {len(problems)} value(s) with a control character the contract does not allow:",
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
        problems = describe_failures(entity, frame, exc.failure_cases, origin.locate)
        # `from None`: pandera's own message quotes the failing values, which for tenants and owners
        # are names and emails; chaining it would carry them into Dagster's logs.
        raise ErpExportError(
            origin.path,
            f"{origin.path} breaks the ERP export contract in {len(problems)} place(s) "
            "(rows count data records from 1; line 1 is the header):",
            problems,
        ) from None
