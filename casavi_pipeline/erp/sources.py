"""Where the ERP's data comes from: the CSV export folder (the default) or the ERP's database.

Both sources hand out the same thing, one validated frame per entity and Mandant (`ErpTable`), through
the same validation (`reader.text_frame` and `reader.validated_frame`): the same contract, the same
located messages, and for the same data the same frame. The mapping file (`ERP_MAPPING_FILE`,
`casavi_pipeline.erp.mapping_file`) applies to both.

The database source (`ERP_SOURCE_URL`, a SQLAlchemy URL) reads per entity a table or view named like the
export file without `.csv` (`mieter`, `mietvertraege`, ...) in the database's default schema, selecting
the Mandant by its `mandant_nr` column, or what the mapping file names instead (another table/view, or a
SELECT with the parameter `:mandant`). It is read-only by construction: it issues nothing but SELECTs
(and the statement that makes its transaction read-only where the database has one), a mapping file's
query is one statement (`erp.mapping_file`), and on PostgreSQL the whole session is read-only, not only
its transaction. It reads the seven entities of a Mandant in one transaction, so they are one consistent
state of the ERP. Values become text the way the CSV reader sees them (dates `YYYY-MM-DD`, decimals with
`.`, NULL missing), and rows are ordered by their key: a database has no file order.

A read cannot hang a run: on PostgreSQL, connecting, waiting for a lock and each query are bounded by
`timeout_seconds` (ERP_QUERY_TIMEOUT_SECONDS), and an interrupt (Ctrl-C, SIGTERM, Dagster terminating
the run) cancels the query on the server at once (`_cancellable`). A URL is shown as `urls.shown_url`
shows it, never with a secret; run metadata names the table, not the URL.
"""

from __future__ import annotations

import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from casavi_pipeline.erp.contract import ENTITIES, Entity
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.mapping_file import MappingFile
from casavi_pipeline.erp.reader import ErpTable, Origin, read_entity, text_frame, validated_frame
from casavi_pipeline.urls import scrubbed, shown_url

_T = TypeVar("_T")

#: The column of every default table/view that selects the Mandant (compared with a bound parameter).
MANDANT_COLUMN = "mandant_nr"
#: A query's own bound lies this far beyond the lock wait's, so that a query that waited the whole time
#: for a lock says so (PostgreSQL reports the timeout due first).
_LOCK_MARGIN_SECONDS = 1.0
#: After an interrupt, how long the cancelled query may take to return before the interrupt goes on anyway.
_CANCEL_WAIT_SECONDS = 10.0
#: SQLSTATEs: lock_not_available (lock_timeout), query_canceled (statement_timeout), insufficient_privilege.
_LOCK_TIMEOUT, _STATEMENT_TIMEOUT, _NO_PRIVILEGE = "55P03", "57014", "42501"
#: A refused read as other databases word it (SQL Server, MySQL, Oracle).
_PERMISSION_DENIED = re.compile(r"permission (was )?denied|command denied|insufficient privileges", re.IGNORECASE)


class ErpSource(ABC):
    """The ERP's data, entity by entity, for one Mandant at a time."""

    @abstractmethod
    def read(self, mandant: str, entities: Iterable[Entity] = ENTITIES) -> Iterator[ErpTable]:
        """The validated tables of `entities`, in that order; raise `ErpExportError` on a broken one."""


class CsvSource(ErpSource):
    """`<export_dir>/<Mandant>/<entity>.csv` (`docs/export-format.md`)."""

    def __init__(self, export_dir: Path, encoding: str = "utf-8", mapping: MappingFile | None = None) -> None:
        self.export_dir = Path(export_dir)
        self.encoding = encoding
        self.mapping = mapping or MappingFile()

    def read(self, mandant: str, entities: Iterable[Entity] = ENTITIES) -> Iterator[ErpTable]:
        for entity in entities:
            yield read_entity(self.export_dir, mandant, entity, self.encoding, self.mapping.for_entity(entity))


class SqlSource(ErpSource):
    """Tables, views or queries of the ERP's database (any SQLAlchemy URL whose driver is installed)."""

    def __init__(self, url: str, mapping: MappingFile | None = None, *, timeout_seconds: float) -> None:
        self._url = url
        self.mapping = mapping or MappingFile()
        self.shown_url = shown_url(url)
        self.timeout_seconds = timeout_seconds

    def read(self, mandant: str, entities: Iterable[Entity] = ENTITIES) -> Iterator[ErpTable]:
        engine = self._engine()
        try:
            with self._connect(engine) as connection, connection.begin():
                _make_read_only(connection)
                for entity in entities:
                    yield self._read_entity(connection, mandant, entity)
        finally:
            engine.dispose()

    def _engine(self) -> sa.Engine:
        try:
            # NullPool: one connection per read, closed afterwards; nothing lingers between nightly runs.
            return sa.create_engine(self._url, poolclass=NullPool, connect_args=self._connect_args())
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise ErpExportError(
                self.shown_url,
                f"ERP_SOURCE_URL {self.shown_url} cannot be used ({self._reason(exc)}); write it as "
                "dialect+driver://user:password@host:port/database and install the driver "
                "(docs/erp-sources.md)",
            ) from None

    def _connect_args(self) -> dict[str, object]:
        """PostgreSQL: the session read-only (every transaction, also one a query's COMMIT would begin) and
        bounded (connect, lock wait, each statement), set in the connection's startup packet. Options
        the URL gives (`?options=-c ...`) stay; ours come last, so they win."""
        url = make_url(self._url)
        if url.get_backend_name() != "postgresql" or url.get_driver_name() not in ("psycopg2", "psycopg"):
            return {}  # libpq's parameters; other drivers take none of them
        milliseconds = round(self.timeout_seconds * 1000)
        ours = (
            f"-c default_transaction_read_only=on -c lock_timeout={milliseconds} "
            f"-c statement_timeout={milliseconds + round(_LOCK_MARGIN_SECONDS * 1000)}"
        )
        given = url.query.get("options")
        given = " ".join(given) if isinstance(given, tuple) else given
        connect = max(2, math.ceil(self.timeout_seconds))  # whole seconds, and libpq takes 1 as 2 anyway
        return {"connect_timeout": connect, "options": f"{given or ''} {ours}".strip()}

    def _connect(self, engine: sa.Engine) -> Connection:
        try:
            connection = engine.connect()
        except SQLAlchemyError as exc:
            raise ErpExportError(
                self.shown_url,
                f"cannot connect to the ERP database {self.shown_url} ({self._reason(exc)}); check "
                "ERP_SOURCE_URL (host, port, database, user, password) and that the database accepts "
                "connections from this machine within ERP_QUERY_TIMEOUT_SECONDS",
            ) from None
        if connection.dialect.name == "postgresql":
            # Set before the transaction begins: one snapshot for all seven entities, writes refused.
            return connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        return connection

    def _read_entity(self, connection: Connection, mandant: str, entity: Entity) -> ErpTable:
        entity_mapping = self.mapping.for_entity(entity)
        relation = entity_mapping.source if entity_mapping and entity_mapping.source else entity.name
        is_query = entity_mapping is not None and entity_mapping.source_is_query
        where = (
            f"the query of {entity.name} (ERP_MAPPING_FILE) on {self.shown_url}"
            if is_query
            else f"table/view {relation} of {self.shown_url}"
        )
        statement = sa.text(relation) if is_query else _select_mandant(relation)

        def fetch() -> tuple[list[str], list[list[str]]]:
            result = connection.execute(statement, {"mandant": mandant})
            header = [str(name) for name in result.keys()]  # noqa: SIM118 (iterating a Result reads rows)
            return header, [[_as_text(value) for value in row] for row in result]

        try:
            header, rows = _cancellable(connection, fetch)
        except SQLAlchemyError as exc:
            raise ErpExportError(where, self._failure(entity, relation, where, is_query, exc)) from None
        origin = Origin(
            name=f"{where}, Mandant {mandant}",
            path=where,
            locate=lambda index: "",  # rows are ordered by key, which each message names
            source_columns=entity_mapping.source_columns() if entity_mapping else {},
        )
        frame = text_frame(entity, header, rows, origin, entity_mapping)
        # A database has no file order: the key orders the rows, so a run sees the same frame every night.
        frame = frame.sort_values(list(entity.key), kind="stable", na_position="last", ignore_index=True)
        frame = validated_frame(entity, frame, origin)
        # Run metadata names the table, never the URL (even shown, a URL is no metadata's business).
        named = f"the query of {entity.name} (ERP_MAPPING_FILE)" if is_query else f"table/view {relation}"
        return ErpTable(frame=frame, origin=f"{named} (ERP_SOURCE_URL)", modified_at=None, row_count=len(frame))

    def _failure(self, entity: Entity, relation: str, where: str, is_query: bool, exc: SQLAlchemyError) -> str:
        """One line: what failed, where, and what to do about it."""
        cause = getattr(exc, "orig", None) or exc
        code = getattr(cause, "pgcode", None)
        reading = f"reading {entity.name} from {where}"
        limit = f"ERP_QUERY_TIMEOUT_SECONDS ({self.timeout_seconds:g} s)"
        if code == _LOCK_TIMEOUT:
            return (
                f"{reading} waited longer than {limit} for a lock another session holds on it (an ERP batch "
                "job?); run the Mandant again when that is done, or raise ERP_QUERY_TIMEOUT_SECONDS"
            )
        if code == _STATEMENT_TIMEOUT:
            return (
                f"{reading} took longer than {limit} and was cancelled; make it faster (an index on "
                f"{MANDANT_COLUMN}?) or raise ERP_QUERY_TIMEOUT_SECONDS"
            )
        reason = self._reason(exc)
        if code == _NO_PRIVILEGE or _PERMISSION_DENIED.search(reason):
            user = make_url(self._url).username or "the user of ERP_SOURCE_URL"
            grant = (
                f"GRANT SELECT ON {relation} TO {user}"
                if not is_query
                else f"GRANT SELECT on each table/view the query reads TO {user}"
            )
            return f"{reading} was refused ({reason}); let the pipeline's database user read it: {grant}"
        hint = (
            "fix the query in ERP_MAPPING_FILE"
            if is_query
            else f"create it (with a column {MANDANT_COLUMN}) or name the ERP's own in "
            f"ERP_MAPPING_FILE ({entity.name}: source:)"
        )
        return f"{reading} failed ({reason}); {hint}"

    def _reason(self, exc: BaseException) -> str:
        """The driver's first line, with the URL's secrets blanked should a driver ever echo them."""
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        return scrubbed(f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": "), self._url)


def _cancellable(connection: Connection, work: Callable[[], _T]) -> _T:
    """`work` (a query and its rows) in a helper thread, while this thread waits, interruptible.

    A driver blocked in C (psycopg2 waiting for a lock) runs no signal handler in its thread, so Ctrl-C,
    SIGTERM (the CLI maps it onto Ctrl-C) or Dagster terminating the run would wait for the query, and the
    Mandant's run slot with it. Here the interrupt reaches this thread at once: the query is cancelled on
    the server (the DBAPI connection's `cancel()`: psycopg2, oracledb; other drivers finish the query),
    the helper returns with the driver's error, and the interrupt goes on.
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome["error"] = exc

    helper = threading.Thread(target=run, name="erp-query", daemon=True)
    helper.start()
    try:
        while helper.is_alive():
            helper.join(0.5)  # a lock wait with a timeout: a signal's exception is raised here
    except BaseException:
        cancel = getattr(connection.connection.dbapi_connection, "cancel", None)
        if cancel is not None:
            cancel()
            helper.join(_CANCEL_WAIT_SECONDS)
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _select_mandant(relation: str) -> sa.Select:
    """`SELECT * FROM <relation> WHERE mandant_nr = :mandant`, the name quoted as the dialect needs."""
    schema, _, name = relation.rpartition(".")
    table = sa.table(name, sa.column(MANDANT_COLUMN), schema=schema or None)
    return sa.select(sa.text("*")).select_from(table).where(table.c[MANDANT_COLUMN] == sa.bindparam("mandant"))


def _make_read_only(connection: Connection) -> None:
    """Make the open transaction read-only where the database has such a thing (PostgreSQL: set on connect).

    SQL Server has none: there the database user's rights (db_datareader) and ApplicationIntent=ReadOnly
    do it (docs/erp-sources.md).
    """
    dialect = connection.dialect.name
    if dialect in ("oracle", "mysql", "mariadb"):
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    elif dialect == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")


def _as_text(value: object) -> str:
    """A database value as the CSV reader sees it: "" for NULL, dates ISO, decimals with `.`, no exponent."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):  # before `date`: a datetime is a date; ERP date columns are often datetimes
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return "" if math.isnan(value) else np.format_float_positional(value, trim="-")
    return str(value)


