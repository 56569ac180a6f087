"""The state database (CASAVI_STATE_URL, PostgreSQL): connections, transactions and advisory locks, for
the sync's state (`state/postgres.py`) and the account's request budget (`casavi/budget_store.py`).

A connection is psycopg2's in autocommit mode; the URL's parts become libpq's parameters as SQLAlchemy
makes them (the psycopg2 dialect's own `create_connect_args`), so every form it takes works here too:
`user:password@host`, `?password=`, `?host=/run/postgresql` (a socket folder) or several hosts. Its
cursors raise `StateUnavailableError` — one line naming the database by `urls.shown_url`, never its
password — when the server cannot be reached or goes away under them (stopped, restarted, the network
gone), wherever in the state or the budget that happens. Needs the `postgres` extra (psycopg2).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

from casavi_pipeline.urls import scrubbed, shown_url


class StateUnavailableError(RuntimeError):
    """The state database cannot be reached, or went away; the message names it without its password."""


def connect(url: str) -> Any:
    """A psycopg2 connection in autocommit mode (each statement commits on its own unless in `transaction`)."""
    import psycopg2
    import psycopg2.extensions
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
    from sqlalchemy.engine import make_url

    where = shown_url(url)

    class Cursor(psycopg2.extensions.cursor):
        def execute(self, query: Any, vars: Any = None) -> Any:
            try:
                return super().execute(query, vars)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if isinstance(exc, psycopg2.InterfaceError) or self.connection.closed:
                    raise _gone(where, url, exc) from None
                raise

    class Connection(psycopg2.extensions.connection):
        def cursor(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().cursor(*args, **kwargs)
            except psycopg2.InterfaceError as exc:  # "connection already closed"
                raise _gone(where, url, exc) from None

    _, parameters = PGDialect_psycopg2().create_connect_args(make_url(url))
    parameters.setdefault("application_name", "casavi_pipeline")
    parameters.setdefault("connect_timeout", 30)
    try:
        con = psycopg2.connect(**parameters, connection_factory=Connection, cursor_factory=Cursor)
    except psycopg2.OperationalError as exc:
        raise StateUnavailableError(
            f"The state database CASAVI_STATE_URL={where} cannot be reached ({scrubbed(_first_line(exc), url)}); "
            "is PostgreSQL up, and are host, port, user and password right? Nothing was sent to casavi."
        ) from None
    con.autocommit = True
    return con


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _gone(where: str, url: str, exc: BaseException) -> StateUnavailableError:
    return StateUnavailableError(
        f"The state database CASAVI_STATE_URL={where} went away during the run ({scrubbed(_first_line(exc), url)}); "
        "the run stopped. What casavi confirmed until then is recorded; once PostgreSQL is back, the next run "
        "resumes with the rest."
    )


@contextlib.contextmanager
def transaction(con: Any) -> Iterator[Any]:
    """One transaction on an autocommit connection (psycopg2's `with con` does not make one there)."""
    with con.cursor() as cur:
        cur.execute("BEGIN")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.blake2b(f"casavi_pipeline/{name}".encode(), digest_size=8).digest(), "big", signed=True)
