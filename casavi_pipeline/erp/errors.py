"""The one error the ERP reader raises, and how its problem lists read.

Every message names the file and says what to fix, so an operator can repair the export without a
traceback. Messages carry ERP keys, row/line numbers and column names, never person data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: How many problems one message lists; the rest are counted, so a broken file stays readable.
MAX_LISTED_PROBLEMS = 10


class ErpExportError(ValueError):
    """An ERP export file (or folder, or database table/view) breaks the contract in `docs/export-format.md`.

    `path` is the file or folder at fault (for a database: the table/view and the URL without password); `problems` lists every problem found (the message shows the
    first `MAX_LISTED_PROBLEMS`).
    """

    def __init__(self, path: Path | str, summary: str, problems: Sequence[str] = ()) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(_format(summary, self.problems))


def _format(summary: str, problems: list[str]) -> str:
    """The summary with the first problem on its line, the others one a line below it.

    The first line alone must say what is wrong and where (file or table, row, key, column): a run's
    failure reason, its tag and the alerts show only that line.
    """
    if not problems:
        return summary
    listed = problems[:MAX_LISTED_PROBLEMS]
    lines = [f"{summary} {listed[0]}", *(f"  - {p}" for p in listed[1:])]
    if len(problems) > len(listed):
        lines.append(f"  ... and {len(problems) - len(listed)} more problem(s) of the same file")
    return "\n".join(lines)


def row_label(row: int, line: int | None) -> str:
    """`row 3 (line 4)`: rows count data records from 1; the header is line 1 of the file."""
    return f"row {row} (line {line})" if line is not None else f"row {row}"


def place(*parts: str) -> str:
    """`row 3 (line 4), we_nr=001`: the non-empty parts of a location (a database row has no line)."""
    return ", ".join(part for part in parts if part)


def key_label(key_columns: Sequence[str], values: Sequence[object]) -> str:
    """`we_nr=001, ve_nr=0003`; a missing key value shows as `<empty>`."""
    return ", ".join(
        f"{name}={value if isinstance(value, str) else '<empty>'}"
        for name, value in zip(key_columns, values, strict=True)
    )
