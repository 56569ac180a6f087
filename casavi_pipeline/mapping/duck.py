"""A small in-memory DuckDB session over the ERP frames, with the column types the contract promises.

DuckDB infers a pandas `object` column's type from its values, so a column that happens to be all
None (an optional column nobody fills, or an empty file) arrives as type NULL and breaks string
functions. Every ERP frame is therefore exposed as a view that casts each contract column explicitly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from casavi_pipeline import duck_memory
from casavi_pipeline.erp.contract import ENTITIES_BY_NAME, ColumnType
from casavi_pipeline.frames import from_arrow

_SQL_TYPES = {ColumnType.STRING: "VARCHAR", ColumnType.DATE: "VARCHAR", ColumnType.DECIMAL: "DOUBLE"}


class DuckSession:
    """One DuckDB connection holding typed views of the given frames; close it (or use `with`)."""

    def __init__(self, mandant: str, separator: str) -> None:
        # An in-memory database would spill into `.tmp` of the working directory: a private temporary
        # directory instead (the spilled rows hold names and emails), removed with the session.
        self._spill = tempfile.TemporaryDirectory(prefix="casavi-duck-")
        self.connection = duckdb.connect(config=duck_memory.config(self._spill.name))
        # Named parameters every mapping query may use: the ID parts of rule 3.
        self.params: dict[str, Any] = {"mandant": mandant, "sep": separator}

    def __enter__(self) -> DuckSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.close()
        self._spill.cleanup()

    def add_erp(self, name: str, frame: pd.DataFrame, extra: Mapping[str, str] | None = None) -> None:
        """Expose an ERP entity's frame as view `name`, contract columns cast to their SQL types.

        `extra` adds further columns of the frame (name → SQL type), e.g. the computed valid email.
        """
        entity = ENTITIES_BY_NAME[name]
        casts = [f'CAST("{c.name}" AS {_SQL_TYPES[c.type]}) AS "{c.name}"' for c in entity.columns]
        casts += [
            f'CAST("{column}" AS {sql_type}) AS "{column}"' for column, sql_type in (extra or {}).items()
        ]
        self.add_frame(name, frame, casts)

    def add_frame(self, name: str, frame: pd.DataFrame, casts: list[str] | None = None) -> None:
        """Expose any frame as view `name` (optionally only the given cast expressions)."""
        self.connection.register(f"{name}__frame", frame)
        select = ", ".join(casts) if casts else "*"
        self.connection.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT {select} FROM "{name}__frame"')

    def add_lists(self, name: str, sql: str, *, key: str, order: Sequence[str], item: str, alias: str) -> None:
        """View `name` (key, alias): per `key`, the list of `item` (a SQL expression over the query `sql`)
        ordered by `order` (ascending, NULLs last) — what `list(item ORDER BY ...) ... GROUP BY key` gives."""
        self.connection.register(name, self.sorted_lists(sql, key=key, order=order, item=item, alias=alias))

    def sorted_lists(self, sql: str, *, key: str, order: Sequence[str], item: str, alias: str) -> pa.Table:
        """The lists of `add_lists` as an Arrow table (`key`, `alias`), sorted by key.

        Built from one sorted scan: DuckDB's list aggregate keeps a state per group (~300 MiB for the
        contacts of a 100 000-unit Mandant); here the sorted items are cut into lists at each new key.
        """
        keys_order = ", ".join(f"{column} NULLS LAST" for column in [key, *order])
        used = {k: v for k, v in self.params.items() if f"${k}" in sql}
        rows = self.connection.sql(
            f"SELECT {key} AS key, {item} AS item FROM ({sql}) ORDER BY {keys_order}", params=used
        ).to_arrow_table()
        keys, items = rows.column("key").combine_chunks(), rows.column("item").combine_chunks()
        del rows
        changed = pc.fill_null(pc.not_equal(keys[1:], keys[:-1]), True).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.concatenate([[len(keys) > 0], changed]))
        offsets = pa.array(np.append(starts, len(keys)), type=pa.int32())
        return pa.table({key: keys.take(pa.array(starts)), alias: pa.ListArray.from_arrays(offsets, items)})

    def frame(self, sql: str) -> pd.DataFrame:
        """Run a query with the session's parameters; text and LIST columns come back Arrow-backed
        (`casavi_pipeline.frames`), iterating a LIST column yields Python lists of dicts."""
        used = {k: v for k, v in self.params.items() if f"${k}" in sql}
        return from_arrow(self.connection.sql(sql, params=used).to_arrow_table())


def lists_of(keys: pd.Series, lists: pa.Table) -> pd.api.extensions.ExtensionArray:
    """The list of each key in `keys` from a table of `DuckSession.sorted_lists` (its columns: key, list),
    an empty list for a key it lacks; Arrow-backed, in the order of `keys`.

    Joined here rather than in SQL: a join (and a sort after it) would copy every list through DuckDB's
    hash table and sort runs again.
    """
    found, column = lists.column(0), lists.column(1)
    taken = column.take(pc.index_in(pa.array(keys, type=found.type), value_set=found))
    empty = pa.scalar([], type=column.type)
    return pd.array(pc.fill_null(taken, empty), dtype=pd.ArrowDtype(column.type))

