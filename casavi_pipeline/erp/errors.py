"""The one error the ERP reader raises, and how its problem lists read.

Every message names the file and says what to fix, so an operator can repair the export without a
traceback. Messages carry ERP keys, row/line numbers and column names, never person data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: How many problems the first line names: every one when there are this few, else these and where the rest are.
FIRST_LINE_PROBLEMS = 5
#: How many problems one message lists in all; the rest are counted, so a broken file stays readable.
MAX_LISTED_PROBLEMS = 20


class ErpExportError(ValueError):
    """An ERP export file (or folder, or database table/view) breaks the contract in `docs/export-format.md`.

    `path` is the file or folder at fault (for a database: the table/view and the URL as shown); `problems`
    lists every problem found (the message shows the first `MAX_LISTED_PROBLEMS`).
    """

    def __init__(self, path: Path | str, summary: str, problems: Sequence[str] = ()) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(_format(summary, self.problems))


def _format(summary: str, problems: list[str]) -> str:
    """The summary with up to `FIRST_LINE_PROBLEMS` problems on its line, any further ones below it.

    The first line alone must say what is wrong and where (file or table, row, key, column): a run's
    failure reason, its tag, the CLI and the alerts show only that line. So it names every problem when
    they are few, and otherwise says how many more there are and where they are listed.
    """
    if not problems:
        return summary
    first = "; ".join(problems[:FIRST_LINE_PROBLEMS])
    rest = problems[FIRST_LINE_PROBLEMS:MAX_LISTED_PROBLEMS]
    if len(problems) > FIRST_LINE_PROBLEMS:
        listed = f"the next {len(rest)}" if len(problems) > MAX_LISTED_PROBLEMS else "all of them"
        first += (
            f"; and {len(problems) - FIRST_LINE_PROBLEMS} more ({listed} in the full error: the erp_export "
            "step of the run in the Dagster UI)"
        )
    lines = [f"{summary} {first}", *(f"  - {p}" for p in rest)]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more problem(s) of the same file")
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
