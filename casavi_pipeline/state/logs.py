"""Append-only logs of ASCII lines, durable when `append` returns: the journal of confirmed writes and
the audit lines of a snapshot, kept until a fold has them in the snapshot's tables.

Why logs beside DuckDB: the state must advance with *every* confirmed write, so a killed run resends
only what casavi did not confirm. A DuckDB commit per write costs 1-3 ms (measured), which would cap a
sync at a few hundred writes per second; an appended, flushed line costs microseconds (a file) or one
small INSERT (PostgreSQL) and survives a killed process. The snapshot folds its logs into its tables
in one transaction periodically, at the end of a sync and whenever it is opened, and only then clears
them (`Log.clear` up to what it read), so a crash between a write and the next fold loses nothing.

Lines are ASCII JSON (`json.dumps` escapes every control character), so a line break is never part of
a value, and a line torn by a crash or a full disk is simply not valid JSON: the reader drops it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, TextIO


class Log(Protocol):
    def append(self, line: str) -> None:
        """Add one line (no line break in it); it survives a killed process once this returns."""

    def read(self) -> tuple[list[bytes], int]:
        """Every line held, in append order, and a mark for `clear` (what was read, nothing later)."""

    def clear(self, mark: int) -> None:
        """Drop the lines up to `mark` (after the fold that holds them committed)."""

    def close(self) -> None: ...


class FileLog:
    """A log in a file beside the snapshot (`<snapshot>.journal`, `<snapshot>.audit`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: TextIO | None = None

    def append(self, line: str) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.write(line + "\n")
        self._file.flush()

    def _open(self) -> TextIO:
        file = self.path.open("a", encoding="ascii", newline="\n")
        # A file whose last line was torn (a fold that failed after a crash left it): end that line, so
        # the next entry starts a line of its own instead of being glued to the broken one.
        if file.tell() > 0:
            with self.path.open("rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    file.write("\n")
        return file

    def read(self) -> tuple[list[bytes], int]:
        self.close()
        if not self.path.exists():
            return [], 0
        # Split on b"\n" only: the lines are ASCII JSON, so a line break is never part of a value.
        lines = [line for line in self.path.read_bytes().split(b"\n") if line.strip()]
        return lines, len(lines)

    def clear(self, mark: int) -> None:
        # One process appends and folds (the state lock), and `read` closed the file: all was read.
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
