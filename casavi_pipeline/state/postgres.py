"""The state in PostgreSQL (CASAVI_STATE_URL): for runs on several machines or in fresh containers.

What must persist lives in PostgreSQL; the diff still runs in DuckDB on a local working copy (it is
fastest there: see benchmarks/RESULTS.md, "State backends"). Per state file (a Mandant's snapshot, the
shared listing) PostgreSQL holds:

- `casavi_state_heads` / `casavi_state_chunks`: the file as of its last fold, zlib-compressed in chunks,
  with a generation number. A process whose local copy is of another generation (a fresh container,
  another machine, a run killed elsewhere) fetches it before use; after every fold it saves the file
  as the next generation and drops the older one in the same transaction.
- `casavi_state_log`: the journal of confirmed writes and the audit lines since that fold, one row per
  line, committed when appended (durable before the write is counted). A fold clears the rows it took,
  in the transaction that saves the file that holds them, so a kill at any point loses nothing.
- A session advisory lock per state file: one writer per Mandant, the listing one process at a time.
  It dies with its connection, so a killed run never blocks the next.

Moved-aside files (unreadable) are kept under `<name>.corrupt-<stamp>` until an erasure deletes them.
Needs the `postgres` extra (psycopg2).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from casavi_pipeline.state.files import (
    MOVED_ASIDE,
    StateBusyError,
    StateCorruptError,
    delete_files,
    moved_aside,
)
from casavi_pipeline.urls import scrubbed, shown_url

_SCHEMA = """
CREATE TABLE IF NOT EXISTS casavi_state_heads (
    name TEXT PRIMARY KEY, generation BIGINT NOT NULL, bytes BIGINT NOT NULL, saved_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS casavi_state_chunks (
    name TEXT NOT NULL, generation BIGINT NOT NULL, seq INTEGER NOT NULL, data BYTEA NOT NULL,
    PRIMARY KEY (name, generation, seq)
);
CREATE TABLE IF NOT EXISTS casavi_state_log (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, stream TEXT NOT NULL, line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS casavi_state_log_name ON casavi_state_log (name, stream, id);
"""
#: Raw bytes per stored chunk (a bytea value may hold 1 GB; smaller chunks keep memory flat).
CHUNK = 32 * 1024 * 1024
#: Local marker of the generation the working copy is (`<file>.generation`).
_MARKER = ".generation"


def _connect(url: str) -> Any:
    """A psycopg2 connection in autocommit mode (each log line commits on its own).

    The URL's parts become libpq's parameters as SQLAlchemy makes them (the psycopg2 dialect's own
    `create_connect_args`), so every form it takes works here too: `user:password@host`, `?password=`,
    `?host=/run/postgresql` (a socket folder) or several hosts; a parameter in the query wins.
    """
    import psycopg2
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
    from sqlalchemy.engine import make_url

    _, parameters = PGDialect_psycopg2().create_connect_args(make_url(url))
    parameters.setdefault("application_name", "casavi_pipeline")
    parameters.setdefault("connect_timeout", 30)
    try:
        con = psycopg2.connect(**parameters)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StateUnavailableError(
            f"The state database CASAVI_STATE_URL={shown_url(url)} cannot be reached ({scrubbed(reason, url)}); "
            "is PostgreSQL up, and are host, port, user and password right? Nothing was sent to casavi."
        ) from None
    con.autocommit = True
    return con


@contextlib.contextmanager
def _transaction(con: Any) -> Iterator[Any]:
    """One transaction on an autocommit connection (psycopg2's `with con` does not make one there)."""
    with con.cursor() as cur:
        cur.execute("BEGIN")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


class StateUnavailableError(RuntimeError):
    """The state database cannot be reached; the message names it without its password."""


@contextlib.contextmanager
def _answering(url: str) -> Iterator[None]:
    """A connection that broke while in use (the server stopped or restarted, the network went) as one
    line naming the database by host, port and name only; psycopg2's other errors stay bugs."""
    import psycopg2
    from sqlalchemy.engine import make_url

    try:
        yield
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        parsed = make_url(url)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StateUnavailableError(
            f"The state database of CASAVI_STATE_URL ({parsed.host}:{parsed.port or 5432}/{parsed.database}) "
            f"stopped answering ({reason}); is PostgreSQL up? What was recorded before is kept: rerun when it is"
        ) from None


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a state name."""
    return int.from_bytes(hashlib.blake2b(f"casavi_pipeline/{name}".encode(), digest_size=8).digest(), "big", signed=True)


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    hasher = hashlib.blake2b()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def stored_names(url: str) -> list[str]:
    """The names of the state files PostgreSQL holds (moved-aside ones included)."""
    con = _connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT name FROM casavi_state_heads ORDER BY name")
            return [name for (name,) in cur.fetchall()]
    finally:
        con.close()


def all_names(url: str) -> list[str]:
    """Every name the state database holds anything under: stored files and log rows not yet folded."""
    con = _connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT name FROM casavi_state_heads UNION SELECT DISTINCT name FROM casavi_state_log")
            return sorted(name for (name,) in cur.fetchall())
    finally:
        con.close()


def ensure_schema(url: str) -> None:
    con = _connect(url)
    try:
        with con.cursor() as cur:
            # Two processes creating the tables at once would race on the catalog: one at a time.
            cur.execute("SELECT pg_advisory_lock(%s)", [_lock_key("schema")])
            cur.execute(_SCHEMA)
            cur.execute("SELECT pg_advisory_unlock(%s)", [_lock_key("schema")])
    finally:
        con.close()


class PostgresLog:
    """A log as rows of `casavi_state_log` (one INSERT per line, committed when it returns)."""

    def __init__(self, home: PostgresHome, stream: str) -> None:
        self._home, self._stream = home, stream

    def append(self, line: str) -> None:
        with _answering(self._home.url), self._home.connection.cursor() as cur:
            cur.execute(
                "INSERT INTO casavi_state_log (name, stream, line) VALUES (%s, %s, %s)",
                [self._home.name, self._stream, line],
            )

    def read(self) -> tuple[list[bytes], int]:
        # Also while another process holds the state (the audit trail of a running sync): no lock needed.
        con = self._home._con or _connect(self._home.url)
        try:
            with _answering(self._home.url), con.cursor() as cur:
                cur.execute(
                    "SELECT id, line FROM casavi_state_log WHERE name = %s AND stream = %s ORDER BY id",
                    [self._home.name, self._stream],
                )
                rows = cur.fetchall()
        finally:
            if con is not self._home._con:
                con.close()
        return [line.encode("ascii", "replace") for _, line in rows], (rows[-1][0] if rows else 0)

    def clear(self, mark: int) -> None:
        with self._home.connection.cursor() as cur:
            self.clear_in(cur, mark)

    def clear_in(self, cur: Any, mark: int) -> None:
        cur.execute(
            "DELETE FROM casavi_state_log WHERE name = %s AND stream = %s AND id <= %s",
            [self._home.name, self._stream, mark],
        )

    def close(self) -> None:
        pass


class PostgresHome:
    """A state file whose truth is in PostgreSQL (see the module docstring); `wait`: queue for the lock."""

    saves_file = True

    def __init__(self, url: str, name: str, path: Path, *, what: str, wait: bool, busy_hint: str = "") -> None:
        self.url, self.name, self.path, self.what = url, name, Path(path), what
        self._wait, self._busy_hint = wait, busy_hint
        self._con: Any = None
        self._digest: str | None = None
        self._generation = 0
        self._fetched = False  # this open fetched the local file from PostgreSQL
        self._logs = {stream: PostgresLog(self, stream) for stream in ("journal", "audit")}

    @property
    def connection(self) -> Any:
        if self._con is None:
            raise RuntimeError(f"state {self.name} is not open")  # a bug: logs are used inside open/close
        return self._con

    def log(self, stream: str) -> PostgresLog:
        return self._logs[stream]

    def exists(self) -> bool:
        con = _connect(self.url)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT 1 FROM casavi_state_heads WHERE name = %s", [self.name])
                return cur.fetchone() is not None or self.path.exists()
        finally:
            con.close()

    def open(self, *, read_only: bool) -> None:
        self._con = _connect(self.url)
        with self._con.cursor() as cur:
            if self._wait:
                cur.execute("SELECT pg_advisory_lock(%s)", [_lock_key(self.name)])
            else:
                cur.execute("SELECT pg_try_advisory_lock(%s)", [_lock_key(self.name)])
                if not cur.fetchone()[0]:
                    self.close()
                    raise StateBusyError(
                        f"The {self.what} ({self.name} in the state database) is in use by another process, "
                        f"perhaps on another machine. {self._busy_hint}".strip()
                    )
            cur.execute("SELECT generation FROM casavi_state_heads WHERE name = %s", [self.name])
            row = cur.fetchone()
        self._generation = row[0] if row else 0
        self._fetched = False
        self._fetch_if_stale()

    def _fetch_if_stale(self, *, again: bool = False) -> None:
        try:
            self._fetch(again=again)
        except zlib.error as exc:  # the stored copy is damaged: like a file DuckDB cannot read
            self.path.with_name(self.path.name + ".fetching").unlink(missing_ok=True)
            aside = self._move_aside()
            self.close()
            raise StateCorruptError(self.path, self.what, Path(f"{aside} in the state database"), str(exc)) from None

    def _fetch(self, *, again: bool) -> None:
        """Make the local file the stored generation; `_digest` is then what PostgreSQL holds (None: the
        local file is not in PostgreSQL yet and the next `saved` stores it)."""
        marker = self.path.with_name(self.path.name + _MARKER)
        local = marker.read_text().strip() if marker.exists() else None
        if self._generation == 0:
            # Nothing in PostgreSQL yet. A local file that came from it (a marker) is of a database that
            # was reset: start afresh. One without a marker is a local state moving to PostgreSQL: kept,
            # and stored there by the next fold.
            if local is not None:
                self._drop_local()
            self._digest = None
            return
        if again or local != str(self._generation) or not self.path.exists():
            self._fetched = True
            self._drop_local()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".fetching")
            with self._con.cursor() as cur, partial.open("wb") as out:
                cur.execute(
                    "SELECT data FROM casavi_state_chunks WHERE name = %s AND generation = %s ORDER BY seq",
                    [self.name, self._generation],
                )
                for (data,) in cur:
                    out.write(zlib.decompress(bytes(data)))
            partial.replace(self.path)
            marker.write_text(str(self._generation))
        self._digest = _digest(self.path)

    def _drop_local(self) -> None:
        for path in (self.path, self.path.with_name(self.path.name + ".wal"), self.path.with_name(self.path.name + _MARKER)):
            path.unlink(missing_ok=True)

    def saved(self, clears: list[tuple[Any, int]]) -> None:
        digest = _digest(self.path)
        changed = digest is not None and digest != self._digest
        if not changed and not any(mark for _, mark in clears):
            return
        # One transaction: the new generation and the log rows it now holds go together.
        with _answering(self.url), _transaction(self.connection) as cur:
            if changed:
                self._store(cur)
            for log, mark in clears:
                if mark:
                    log.clear_in(cur, mark)
        if changed:
            self.path.with_name(self.path.name + _MARKER).write_text(str(self._generation))
            self._digest = digest

    def _store(self, cur: Any) -> None:
        generation = self._generation + 1
        size = 0
        with self.path.open("rb") as file:
            seq = 0
            while chunk := file.read(CHUNK):
                size += len(chunk)
                cur.execute(
                    "INSERT INTO casavi_state_chunks VALUES (%s, %s, %s, %s)",
                    [self.name, generation, seq, zlib.compress(chunk, 1)],
                )
                seq += 1
        cur.execute(
            "INSERT INTO casavi_state_heads VALUES (%s, %s, %s, now()) ON CONFLICT (name) DO UPDATE SET "
            "generation = excluded.generation, bytes = excluded.bytes, saved_at = excluded.saved_at",
            [self.name, generation, size],
        )
        cur.execute("DELETE FROM casavi_state_chunks WHERE name = %s AND generation < %s", [self.name, generation])
        self._generation = generation

    def moved_aside(self, error: StateCorruptError) -> bool:
        """The local file was unreadable (and moved aside to `error.moved_to`).

        A working copy that this open did not fetch was damaged here, not in PostgreSQL: it is deleted (it
        holds personal data, and PostgreSQL holds the state) and the stored generation fetched again; True
        says "open it again". A copy just fetched that DuckDB cannot read is PostgreSQL's own copy damaged:
        that one is kept under a moved-aside name and the state starts afresh (False).
        """
        if self._generation and not self._fetched:
            for path in (error.moved_to, error.moved_to.with_name(error.moved_to.name + ".wal")):
                path.unlink(missing_ok=True)
            self._fetch_if_stale(again=True)
            return True
        self._move_aside()
        return False

    def _move_aside(self) -> str:
        aside = f"{self.name}{MOVED_ASIDE}{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
        with _transaction(self.connection) as cur:
            cur.execute("UPDATE casavi_state_chunks SET name = %s WHERE name = %s", [aside, self.name])
            cur.execute("UPDATE casavi_state_heads SET name = %s WHERE name = %s", [aside, self.name])
            cur.execute(
                "UPDATE casavi_state_log SET name = %s WHERE name = %s AND stream = 'journal'", [aside, self.name]
            )
        self._generation = 0
        self._digest = None
        self.path.with_name(self.path.name + _MARKER).unlink(missing_ok=True)
        return aside

    def leftovers(self) -> list[str]:
        """What was moved aside: rows in PostgreSQL, and local copies (a machine that once held the state
        in files, or an older version that kept damaged working copies)."""
        con = _connect(self.url)
        try:
            with con.cursor() as cur:
                cur.execute(
                    "SELECT name FROM casavi_state_heads WHERE starts_with(name, %s) UNION "
                    "SELECT DISTINCT name FROM casavi_state_log WHERE starts_with(name, %s) ORDER BY 1",
                    [self.name + MOVED_ASIDE] * 2,
                )
                stored = [f"state database: {name}" for (name,) in cur.fetchall()]
        finally:
            con.close()
        return stored + [str(path) for path in moved_aside(self.path)]

    def erase_leftovers(self) -> int:
        doomed = self.leftovers()
        delete_files(moved_aside(self.path), self.path.parent)
        con = _connect(self.url)
        try:
            with _transaction(con) as cur:
                prefix = self.name + MOVED_ASIDE
                for table in ("casavi_state_chunks", "casavi_state_heads", "casavi_state_log"):
                    cur.execute(f"DELETE FROM {table} WHERE starts_with(name, %s)", [prefix])
        finally:
            con.close()
        return len(doomed)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()  # releases the advisory lock
            self._con = None


_TABLES = ("casavi_state_heads", "casavi_state_chunks", "casavi_state_log")


def count_old_rows(url: str) -> int:
    """Stored files and log rows under names of the layout before accounts were told apart (no `/`)."""
    con = _connect(url)
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM casavi_state_heads WHERE strpos(name, '/') = 0) + "
                "(SELECT count(*) FROM casavi_state_log WHERE strpos(name, '/') = 0)"
            )
            return int(cur.fetchone()[0])
    finally:
        con.close()


def prefix_old_rows(url: str, prefix: str) -> None:
    """Put every name of the old layout under `prefix` (an account's), in one transaction."""
    con = _connect(url)
    try:
        with _transaction(con) as cur:
            for table in _TABLES:
                cur.execute(f"UPDATE {table} SET name = %s || name WHERE strpos(name, '/') = 0", [prefix])
    finally:
        con.close()
