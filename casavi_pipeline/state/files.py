"""The one owner of DuckDB files' lifecycle: open (busy or damaged, told apart once), move aside, compact.

Every DuckDB file of the state (a Mandant's snapshot, the shared casavi listing) is opened through
`open_duckdb`, so all of them answer the same way: another process holding the file is `StateBusyError`
(one line, nothing moved), a file DuckDB cannot read is moved aside (`quarantine`, never deleted) and
reported as `StateCorruptError`, and anything else (permissions, a full disk) is raised as it is, since
moving a healthy file aside would cost a full rebuild from casavi.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import duckdb

from casavi_pipeline import duck_memory

#: What DuckDB 2.0 says about a file that is not (or no longer) a readable database.
_CORRUPTION_SIGNS = (
    "not a valid DuckDB database file",
    "Could not read enough bytes",
    "Corrupt database file",
    "checksum",
)
#: The name part of a moved-aside file: `<file>.corrupt-<UTC stamp>[-n]`.
MOVED_ASIDE = ".corrupt-"
#: Where a fresh copy is built before it replaces the file (same folder: `os.replace` stays atomic).
_REWRITE_SUFFIX = ".erase-rewrite"


class StateBusyError(RuntimeError):
    """Another process holds this part of the state (a second run of the same Mandant, say)."""


class StateCorruptError(RuntimeError):
    """A state file was unreadable; it was moved aside to `moved_to` (never deleted)."""

    def __init__(self, path: Path, what: str, moved_to: Path, reason: str) -> None:
        self.path = path
        self.moved_to = moved_to
        super().__init__(
            f"The {what} ({path}) is unreadable ({reason}); it was moved to {moved_to}, and the next run "
            "starts a fresh one and rebuilds it from casavi, re-sending only what it cannot confirm "
            "(harmless: writes by reference id are idempotent). Keep the moved file for diagnosis; "
            "nothing needs repair."
        )


def is_corruption(exc: duckdb.Error) -> bool:
    if isinstance(exc, duckdb.SerializationException | duckdb.InternalException):
        return True
    return any(sign in str(exc) for sign in _CORRUPTION_SIGNS)


def is_busy(exc: duckdb.Error) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def read_every_table(con: duckdb.DuckDBPyConnection) -> None:
    """Read every value of every table once, so a damaged file fails on open, not in the middle of a run.

    DuckDB checks a block's checksum when it reads the block, and reads lazily: a truncated file opens
    and fails only on a later read. This pass costs about a second at 1.8 M objects.
    """
    tables: dict[str, list[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() "
        "JOIN duckdb_tables() USING (database_name, schema_name, table_name) "
        "WHERE database_name = current_database() ORDER BY table_name, column_index"
    ).fetchall():
        tables.setdefault(table, []).append(column)
    for table, columns in tables.items():
        probes = ", ".join(f'max(hash("{column}"))' for column in columns)
        con.execute(f'SELECT count(*), {probes} FROM "{table}"').fetchall()


def open_duckdb(
    path: Path, what: str, *, read_only: bool = False, busy_hint: str = "", companions: Sequence[Path] = ()
) -> duckdb.DuckDBPyConnection:
    """Open a state file and read it through once; see the module docstring for what is raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = None
    try:
        con = duckdb.connect(str(path), read_only=read_only, config=duck_memory.config())
        read_every_table(con)
        return con
    except duckdb.Error as exc:
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.close()
        if is_busy(exc):
            raise StateBusyError(f"The {what} ({path}) is in use by another process. {busy_hint}".strip()) from exc
        if is_corruption(exc):
            raise moved_aside_error(path, what, exc, companions) from exc
        raise


def moved_aside_error(
    path: Path, what: str, exc: duckdb.Error, companions: Sequence[Path] = ()
) -> StateCorruptError:
    """Move a file found damaged aside (its connection closed) and say so: the error to raise."""
    return StateCorruptError(path, what, quarantine(path, *companions), first_line(exc))


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def quarantine(path: Path, *companions: Path) -> Path:
    """Move an unreadable file aside, to `<path>.corrupt-<UTC timestamp>`; return the new path.

    Its `.wal` goes first (to `<new path>.wal`, so the moved file opens with it for diagnosis): a WAL
    left beside a fresh file would be replayed into it. `companions` (a journal, say) go last, each to
    `<companion>.corrupt-<same stamp>`. Nothing is deleted, and nothing existing is overwritten.
    """
    path = Path(path)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    moved_to = path.with_name(f"{path.name}{MOVED_ASIDE}{stamp}")
    counter = 0
    while moved_to.exists() or moved_to.with_name(f"{moved_to.name}.wal").exists():
        counter += 1
        moved_to = path.with_name(f"{path.name}{MOVED_ASIDE}{stamp}-{counter}")
    suffix = moved_to.name.removeprefix(path.name)
    wal = path.with_name(f"{path.name}.wal")
    if wal.exists():
        wal.rename(moved_to.with_name(f"{moved_to.name}.wal"))
    if path.exists():
        path.rename(moved_to)
    for companion in companions:
        if companion.exists():
            companion.rename(companion.with_name(companion.name + suffix))
    return moved_to


def moved_aside(path: Path) -> list[Path]:
    """Every file moved aside from `path` (and their WALs): what an erasure must reach too."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.name}{MOVED_ASIDE}*"))


def delete_files(paths: Sequence[Path], folder: Path) -> None:
    """Delete `paths` (an erasure), all or none: each must lie inside `folder`, no link followed out of it."""
    root = Path(folder).resolve()
    for path in paths:
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise ValueError(f"refusing to delete {path}: it resolves outside {folder}")
    for path in paths:
        path.unlink(missing_ok=True)


def rewrite_compacted(path: Path) -> None:
    """Replace the DuckDB file at `path` by a fresh copy of its contents, so freed blocks are gone.

    `UPDATE … SET payload = NULL` and a CHECKPOINT leave the old values in blocks DuckDB marks free
    but does not overwrite. The file is opened for writing (DuckDB's lock keeps any other process
    out), checkpointed (its WAL folded in and gone), copied table by table into a new file beside it,
    and the new file atomically takes its name while the old one is still held.
    """
    fresh = path.with_name(path.name + _REWRITE_SUFFIX)
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    with contextlib.closing(duckdb.connect(str(path))) as con:
        con.execute("CHECKPOINT").fetchall()
        name = con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        quoted_path, quoted_name = str(fresh).replace("'", "''"), name.replace('"', '""')
        con.execute(f"ATTACH '{quoted_path}' AS erase_rewrite")
        try:
            con.execute(f'COPY FROM DATABASE "{quoted_name}" TO erase_rewrite')
        finally:
            con.execute("DETACH erase_rewrite")
        # A WAL beside the new file would be replayed into it; after the CHECKPOINT it holds nothing.
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
        fresh.with_name(fresh.name + ".wal").unlink(missing_ok=True)
        os.replace(fresh, path)
