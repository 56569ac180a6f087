"""Where the ERP's data comes from: the CSV export folder (the default) or the ERP's database.

Both sources hand out the same thing, one validated frame per entity and Mandant (`ErpTable`), through
the same validation (`reader.text_frame` and `reader.validated_frame`): the same contract, the same
located messages, and for the same data the same frame. The mapping file (`ERP_MAPPING_FILE`,
`casavi_pipeline.erp.mapping_file`) applies to both.

The database source (`ERP_SOURCE_URL`, a SQLAlchemy URL) reads per entity a table or view named like the
export file without `.csv` (`mieter`, `mietvertraege`, ...) in the database's default schema, selecting
the Mandant by its `mandant_nr` column, or what the mapping file names instead (another table/view, or a
SELECT with the parameter `:mandant`). It is read-only by construction: it issues nothing but SELECTs
(and the statement that makes its transaction read-only where the database has one), and reads the seven
entities of a Mandant in one transaction, so they are one consistent state of the ERP. Values become
text the way the CSV reader sees them (dates `YYYY-MM-DD`, decimals with `.`, NULL missing), and rows
are ordered by their key: a database has no file order. The URL's password never appears in a message.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from casavi_pipeline.erp.contract import ENTITIES, Entity
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.mapping_file import MappingFile
from casavi_pipeline.erp.reader import ErpTable, Origin, read_entity, text_frame, validated_frame

#: The column of every default table/view that selects the Mandant (compared with a bound parameter).
MANDANT_COLUMN = "mandant_nr"


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

    def __init__(self, url: str, mapping: MappingFile | None = None) -> None:
        self._url = url
        self.mapping = mapping or MappingFile()
        self.shown_url = shown_url(url)

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
            return sa.create_engine(self._url, poolclass=NullPool)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise ErpExportError(
                self.shown_url,
                f"ERP_SOURCE_URL {self.shown_url} cannot be used ({self._reason(exc)}); write it as "
                "dialect+driver://user:password@host:port/database and install the driver "
                "(docs/erp-sources.md)",
            ) from None

    def _connect(self, engine: sa.Engine) -> Connection:
        try:
            connection = engine.connect()
        except SQLAlchemyError as exc:
            raise ErpExportError(
                self.shown_url,
                f"cannot connect to the ERP database {self.shown_url} ({self._reason(exc)}); check "
                "ERP_SOURCE_URL (host, port, database, user, password) and that the database accepts "
                "connections from this machine",
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
        try:
            result = connection.execute(statement, {"mandant": mandant})
            header = [str(name) for name in result.keys()]  # noqa: SIM118 (iterating a Result reads rows)
            rows = [[_as_text(value) for value in row] for row in result]
        except SQLAlchemyError as exc:
            hint = (
                "fix the query in ERP_MAPPING_FILE"
                if is_query
                else f"create it (with a column {MANDANT_COLUMN}) or name the ERP's own in "
                f"ERP_MAPPING_FILE ({entity.name}: source:)"
            )
            raise ErpExportError(
                where, f"reading {entity.name} from {where} failed ({self._reason(exc)}); {hint}"
            ) from None
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
        return ErpTable(frame=frame, origin=where, modified_at=None, row_count=len(frame))

    def _reason(self, exc: BaseException) -> str:
        """The driver's first line, with the password blanked should a driver ever echo it."""
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        password = _password(self._url)
        return reason.replace(password, "***") if password else reason


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


def shown_url(url: str) -> str:
    """The URL for messages and logs: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<ERP_SOURCE_URL: not a database URL>"  # unparsable: it may hold the password anywhere


def _password(url: str) -> str | None:
    try:
        password = make_url(url).password
    except ArgumentError:
        return None
    return str(password) if password else None
