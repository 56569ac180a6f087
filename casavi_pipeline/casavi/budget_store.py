"""Where a casavi account's request budget lives: beside the state, one per account.

- `SqliteBudgetStore` (the embedded default): `casavi_budget.sqlite3` in the account's folder of
  CASAVI_SNAPSHOT_DB. pyrate-limiter's `SQLiteBucket` keeps the log of requests sent (a sliding window,
  under its file lock, `flock`), a table beside it the adaptive state. Every process on the machine shares
  it; the lock dies with its process.
- `PostgresBudgetStore` (CASAVI_STATE_URL set): rows in the state database, so processes on every
  machine share it. Table `casavi_budget` holds the adaptive state per account, `casavi_budget_log` the
  requests of the last seconds; each turn is one transaction under a transaction-level advisory lock per
  account, which PostgreSQL releases when the transaction ends or its connection dies (a killed process
  blocks no one). Times come from the database server's clock, so machines whose clocks differ a little
  still share one window. (A table under an advisory lock rather than pyrate-limiter's PostgreSQL bucket:
  benchmarks/RESULTS.md, "The budget in PostgreSQL".)

Either is found damaged when it cannot be read as a budget (a garbled or truncated file; a row that is no
state, a table of another shape): `AccountBudget` then moves it aside (`move_aside`: the file to
`….corrupt-<time>`, the row to account `<id>.corrupt-<time>`) with one line, and starts afresh. A state
database that goes away raises `StateUnavailableError` (`state/postgres.py`): the run stops in one line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pyrate_limiter import Rate, RateItem, SQLiteBucket

from casavi_pipeline import account as accounts
from casavi_pipeline.aside import MOVED_ASIDE, quarantine
from casavi_pipeline.casavi.ratelimit import (
    SENT_WINDOW_SECONDS,
    AccountBudget,
    BudgetDamagedError,
    RateState,
    window,
)

#: The budget's file in the account's folder of CASAVI_SNAPSHOT_DB.
BUDGET_FILE = "casavi_budget.sqlite3"
_LOG_TABLE = "casavi_requests"
_STATE_TABLE = "casavi_rate"
#: What SQLite says of a file that is not (or no longer) a database.
_SQLITE_DAMAGE = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _sent_rate(count: int, first: float | None, now: float) -> float | None:
    span = now - first if first is not None else 0.0
    return (count - 1) / span if count >= 10 and span >= 1.0 else None


class SqliteBudgetStore:
    """The budget as a SQLite file shared by the processes of one machine (see the module docstring)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._clock = clock  # wall time: the processes sharing the file compare their timestamps
        self._bucket: SQLiteBucket | None = None
        self._inode: int | None = None

    @contextlib.contextmanager
    def _damage(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", None) in _SQLITE_DAMAGE:
                raise BudgetDamagedError(str(exc).splitlines()[0]) from None
            raise

    def _open(self) -> SQLiteBucket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The file this process opens: a damaged one is moved aside only if it is still this one.
        self._inode = os.stat(self.path).st_ino if self.path.exists() else None
        with self._damage():
            bucket = SQLiteBucket.init_from_file(
                [Rate(1, 1000)], table=_LOG_TABLE, db_path=str(self.path), use_file_lock=True
            )
            try:
                with bucket.lock:
                    conn = bucket.conn
                    (check,) = conn.execute("PRAGMA quick_check").fetchone()
                    if check != "ok":
                        raise BudgetDamagedError(f"quick_check: {check}")
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {_STATE_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), "
                        "rate REAL NOT NULL, limit_rate REAL, paused_until REAL NOT NULL, "
                        "decreased_at REAL NOT NULL)"
                    )
                    conn.commit()
            except BaseException:
                bucket.close()
                raise
        self._inode = os.stat(self.path).st_ino  # created now if it was missing
        return bucket

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._bucket is not None, "used outside turn()"
        return self._bucket.conn

    @contextlib.contextmanager
    def turn(self) -> Iterator[float]:
        if self._bucket is None:
            self._bucket = self._open()
        self._bucket.lock.acquire(poll_interval=0.005)  # the file lock: other processes
        try:
            with self._damage():
                yield self._clock()
        finally:
            self._bucket.lock.release()

    def read(self) -> tuple[object, ...] | None:
        return self._conn.execute(
            f"SELECT rate, limit_rate, paused_until, decreased_at FROM {_STATE_TABLE}"
        ).fetchone()

    def write(self, state: RateState) -> None:
        self._conn.execute(
            f"INSERT OR REPLACE INTO {_STATE_TABLE} VALUES (1, ?, ?, ?, ?)",
            (state.rate, state.limit, state.paused_until, state.decreased_at),
        )
        self._conn.commit()

    def put(self, now: float, rate: float) -> float:
        assert self._bucket is not None
        per_window, seconds = window(rate)
        self._bucket.rates = [Rate(per_window, round(seconds * 1000))]
        item = RateItem(_LOG_TABLE, int(now * 1000))
        if self._bucket.put(item):
            return 0.0
        return max(1, self._bucket.waiting(item)) / 1000

    def sent_rate(self, now: float) -> float | None:
        count, first = self._conn.execute(
            f"SELECT COUNT(*), MIN(item_timestamp) FROM {_LOG_TABLE} WHERE item_timestamp >= ?",
            (int((now - SENT_WINDOW_SECONDS) * 1000),),
        ).fetchone()
        return _sent_rate(count, first / 1000 if first is not None else None, now)

    def leak(self, now: float) -> None:
        assert self._bucket is not None
        self._bucket.leak(int((now - SENT_WINDOW_SECONDS) * 1000))

    def move_aside(self) -> str:
        """Move the damaged file (and its WAL) aside, unless another process already did and made a new one."""
        lock = self._bucket.lock if self._bucket is not None else None
        self.close()
        with lock if lock is not None else contextlib.nullcontext():
            current = os.stat(self.path).st_ino if self.path.exists() else None
            if self._inode is not None and current != self._inode:
                return "a new file by another process"
            companions = [self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm")]
            return str(quarantine(self.path, *companions))

    def close(self) -> None:
        if self._bucket is not None:
            self._bucket.close()
            self._bucket = None


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS casavi_budget (
    account TEXT PRIMARY KEY, rate DOUBLE PRECISION NOT NULL, limit_rate DOUBLE PRECISION,
    paused_until DOUBLE PRECISION NOT NULL, decreased_at DOUBLE PRECISION NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS casavi_budget_log (account TEXT NOT NULL, sent_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS casavi_budget_log_sent ON casavi_budget_log (account, sent_at);
"""


class PostgresBudgetStore:
    """The budget as rows of the state database, shared by every machine (see the module docstring).

    `clock`: None takes the database server's clock (one clock for every machine); tests inject one.
    """

    def __init__(self, url: str, account: str, *, clock: Callable[[], float] | None = None) -> None:
        self.url = url
        self.account = account
        self.where = f"row {account} of table casavi_budget in the state database"
        self._clock = clock
        self._con: Any = None
        self._cur: Any = None
        self._row: tuple[object, ...] | None = None
        self._table_damaged = False

    def _connection(self) -> Any:
        from casavi_pipeline.database import connect, lock_key

        if self._con is None:
            con = connect(self.url)
            with con.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key("budget-schema")])
                cur.execute(_PG_SCHEMA)
                cur.execute("COMMIT")
            self._con = con
        return self._con

    @contextlib.contextmanager
    def turn(self) -> Iterator[float]:
        """One transaction: its first round trip begins it, takes the account's lock and reads the state;
        a turn costs three round trips (this, the grant, the commit), four when the state changes."""
        import psycopg2

        from casavi_pipeline.database import lock_key

        with self._connection().cursor() as cur:
            try:
                cur.execute(
                    "BEGIN; SELECT pg_advisory_xact_lock(%s), extract(epoch FROM clock_timestamp())::float8, "
                    "b.rate, b.limit_rate, b.paused_until, b.decreased_at "
                    "FROM (SELECT 1) AS one LEFT JOIN casavi_budget AS b ON b.account = %s",
                    [lock_key(f"budget/{self.account}"), self.account],
                )
                _, server_now, *row = cur.fetchone()
                self._row = None if row[0] is None else tuple(row)
                self._cur = cur
                yield self._clock() if self._clock is not None else server_now
            except (psycopg2.ProgrammingError, psycopg2.DataError) as exc:  # not our schema (a column
                # dropped, a type changed)
                self._rollback(cur)
                self._table_damaged = True
                raise BudgetDamagedError(f"table casavi_budget: {str(exc).strip().splitlines()[0]}") from None
            except BaseException:
                self._rollback(cur)
                raise
            finally:
                self._cur = None
            cur.execute("COMMIT")

    @staticmethod
    def _rollback(cur: Any) -> None:
        if not cur.connection.closed:
            cur.execute("ROLLBACK")

    def read(self) -> tuple[object, ...] | None:
        row = self._row  # read when the turn began
        if row is not None and not all(value is None or isinstance(value, float) for value in row):
            self._table_damaged = True  # a column's type was changed: every account's row is affected
            raise BudgetDamagedError("table casavi_budget: its columns are not numbers any more")
        return row

    def write(self, state: RateState) -> None:
        self._cur.execute(
            "INSERT INTO casavi_budget (account, rate, limit_rate, paused_until, decreased_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (account) DO UPDATE SET rate = excluded.rate, "
            "limit_rate = excluded.limit_rate, paused_until = excluded.paused_until, "
            "decreased_at = excluded.decreased_at, updated_at = now()",
            [self.account, state.rate, state.limit, state.paused_until, state.decreased_at],
        )

    def put(self, now: float, rate: float) -> float:
        per_window, seconds = window(rate)
        self._cur.execute(  # one round trip: count the window, and log the request if it has room
            "WITH window_ AS (SELECT count(*) AS n, min(sent_at) AS first FROM casavi_budget_log "
            "WHERE account = %(account)s AND sent_at > %(since)s), "
            "logged AS (INSERT INTO casavi_budget_log SELECT %(account)s, %(now)s FROM window_ WHERE n < %(room)s) "
            "SELECT n, first FROM window_",
            {"account": self.account, "since": now - seconds, "now": now, "room": per_window},
        )
        count, first = self._cur.fetchone()
        return 0.0 if count < per_window else max(0.001, first + seconds - now)

    def sent_rate(self, now: float) -> float | None:
        self._cur.execute(
            "SELECT count(*), min(sent_at) FROM casavi_budget_log WHERE account = %s AND sent_at >= %s",
            [self.account, now - SENT_WINDOW_SECONDS],
        )
        count, first = self._cur.fetchone()
        return _sent_rate(count, first, now)

    def leak(self, now: float) -> None:
        self._cur.execute(
            "DELETE FROM casavi_budget_log WHERE account = %s AND sent_at < %s",
            [self.account, now - SENT_WINDOW_SECONDS],
        )

    def move_aside(self) -> str:
        """Keep the damaged row (or table) under another name; the next turn starts an empty one."""
        from casavi_pipeline.database import lock_key

        aside = f"{self.account}{MOVED_ASIDE}{_stamp()}"
        with self._connection().cursor() as cur:
            cur.execute("BEGIN")
            if self._table_damaged:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key("budget-schema")])
                table = f"casavi_budget_corrupt_{_stamp().lower()}"
                cur.execute(f"ALTER TABLE casavi_budget RENAME TO {table}")
                cur.execute(_PG_SCHEMA)
                aside = f"table {table} in the state database"
            else:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(f"budget/{self.account}")])
                cur.execute("UPDATE casavi_budget SET account = %s WHERE account = %s", [aside, self.account])
                cur.execute("DELETE FROM casavi_budget_log WHERE account = %s", [self.account])
                aside = f"row {aside}"
            cur.execute("COMMIT")
        self._table_damaged = False
        return aside

    def close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(Exception):  # a connection the server dropped is closed already
                self._con.close()
            self._con = None


def budget_file(state_directory: Path, api_key: str) -> Path:
    """The account's budget file with the embedded state (CASAVI_SNAPSHOT_DB)."""
    return accounts.folder(Path(state_directory), accounts.account_id(api_key)) / BUDGET_FILE


def budget_store(state_directory: Path, state_url: str | None, api_key: str) -> SqliteBudgetStore | PostgresBudgetStore:
    """The account's budget where its state lives: PostgreSQL when `state_url` is set, else a file."""
    if state_url:
        return PostgresBudgetStore(state_url, accounts.account_id(api_key))
    return SqliteBudgetStore(budget_file(state_directory, api_key))


def open_budget(
    state_directory: Path,
    state_url: str | None,
    api_key: str,
    *,
    ceiling_per_minute: float | None,
    warn: Callable[[str], None],
) -> AccountBudget:
    """The account's budget, shared with every process using it (close it, or use it as a context)."""
    store = budget_store(state_directory, state_url, api_key)
    return AccountBudget(store, ceiling_per_minute=ceiling_per_minute, warn=warn)


def learned_rate(state_directory: Path, state_url: str | None, api_key: str) -> float | None:
    """The rate (requests/s) the account's budget holds, without taking part in it; None if none yet
    (or unreadable: the next budget opened moves a damaged one aside)."""
    store = budget_store(state_directory, state_url, api_key)
    if isinstance(store, SqliteBudgetStore) and not store.path.exists():
        return None
    try:
        with store.turn():
            row = store.read()
        return RateState.parsed(row).rate if row is not None else None
    except (BudgetDamagedError, ValueError):
        return None
    finally:
        store.close()
