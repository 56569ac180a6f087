"""Links back to the ERP: per Mandant, every object the sync manages, the ERP numbers its reference id was
composed from, and casavi's link that opens it (`appLink`), as files an ERP import job picks up.

Where a link comes from: the run's own read of casavi. The listing keeps each object's `appLink` beside
its body (`state/listing.py`, never hashed: a link never causes a write), and the Mandant's slice of it in
the snapshot (`remote`) holds the links as last read. So the links cost no request of their own, and an
unchanged night sends nothing but its reads. An object casavi has not listed since it was written (one
created in this run) has no link yet: it gets it from the next run's read, which lists every object
written since the last listing (a listing older than a write is never reused). Reading new objects back
one by one would cost a request each, and new objects come in batches (a first sync, a new estate), so
the next read is always the cheaper way.

Which objects: those casavi confirmed (the snapshot's `synced`) that the ERP still has (the mapped frames,
which carry the ERP numbers beside each id: `mapping.ids.ERP_NUMBERS`; no id is parsed). An object casavi
refused is not in casavi and not in the file.

The files, in `CASAVI_LINKS_DIR`: `casavi_links_<M>.csv` in the export's dialect (`;`, values with `;`,
`"` or a line break quoted with `"` and `""` inside, UTF-8 without byte order mark, `\\n`, a header row,
empty = none) and `casavi_links_<M>.parquet` (every column text). Each is written beside its target under
a hidden name (`.casavi_links_<M>.csv.<random>.tmp`) and moved over it with `os.replace`, so a reader sees
the old file or the new one, never half of one; a file whose bytes would not change is left alone, so its
modification time says when the links last changed. No personal data: kinds, ids, ERP numbers and links.
"""

from __future__ import annotations

import filecmp
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.mapping.ids import ERP_NUMBER_COLUMNS, ERP_NUMBERS
from casavi_pipeline.state.snapshot import Snapshot

#: The files' columns, in order. `mandant_nr`: ERP numbers are unique only within their Mandant.
COLUMNS: tuple[str, ...] = ("mandant_nr", "kind", "ref_id", *ERP_NUMBER_COLUMNS, "app_link")
#: How DuckDB writes each file: the CSV in the export's dialect (docs/export-format.md), Parquet as text.
_FORMATS = {
    "csv": "FORMAT csv, DELIMITER ';', QUOTE '\"', ESCAPE '\"', HEADER true, NULL ''",
    "parquet": "FORMAT parquet",
}
_TABLE = "casavi_links"  # the temp table of one collection, in the snapshot's connection


def file_path(directory: Path, mandant: str, suffix: str) -> Path:
    """Where the Mandant's links file of one format (`csv`, `parquet`) is."""
    return Path(directory) / f"casavi_links_{mandant}.{suffix}"


@dataclass(frozen=True)
class KindCounts:
    """One kind's objects in the links file (counts only)."""

    rows: int = 0
    with_link: int = 0
    not_listed: int = 0  # casavi has not listed them since they were written: the next read brings the link
    listed_without_link: int = 0  # casavi listed them, without an appLink


@dataclass(frozen=True)
class Written:
    """What `write_links` did for one Mandant: the files, which of them changed, and the counts."""

    mandant: str
    paths: dict[str, Path]  # format → file
    replaced: tuple[str, ...]  # the formats whose file was (re)written; the others were already current
    kinds: dict[str, KindCounts] = field(default_factory=dict)  # kind → counts, in upsert order

    @property
    def rows(self) -> int:
        return sum(counts.rows for counts in self.kinds.values())

    @property
    def with_link(self) -> int:
        return sum(counts.with_link for counts in self.kinds.values())

    @property
    def share_with_link(self) -> float:
        """The share of the objects that have a link (1.0 for none at all: nothing is missing)."""
        return self.with_link / self.rows if self.rows else 1.0

    @property
    def summary(self) -> str:
        """One line: the file, how many objects and links, and whether it changed."""
        state = "rewritten" if self.replaced else "unchanged, not rewritten"
        return (
            f"Mandant {self.mandant}: links of {self.rows} objects ({self.with_link} with a link, "
            f"{self.share_with_link:.0%}) in {self.paths['csv']} and {self.paths['parquet'].name} ({state})"
        )

    @property
    def missing_links(self) -> str | None:
        """One line when casavi listed objects without an `appLink`, naming the kinds; else None."""
        missing = {kind: c.listed_without_link for kind, c in self.kinds.items() if c.listed_without_link}
        if not missing:
            return None
        listed = sum(c.rows - c.not_listed for c in self.kinds.values())
        named = ", ".join(f"{n} {kind}" + ("" if n == 1 else "s") for kind, n in missing.items())
        return (
            f"Mandant {self.mandant}: casavi returned {sum(missing.values())} of {listed} objects it listed "
            f"without a link ({api.APP_LINK_FIELD}: {named}); their app_link is empty in the links file. "
            "`casavi-pipeline check-casavi` shows whether the account returns it."
        )

    @property
    def not_listed_yet(self) -> str | None:
        """One line when objects have no link because casavi has not listed them since they were written."""
        waiting = sum(c.not_listed for c in self.kinds.values())
        if not waiting:
            return None
        return (
            f"Mandant {self.mandant}: {waiting} objects written in this run have no link yet; the next run's "
            "read of casavi brings it (no request of its own)"
        )


def _numbers_sql(kind: ObjectKind, view: str) -> str:
    """(kind, ref_id, we_nr, geb_nr, ve_nr, person_nr) of one mapped frame; the numbers a kind's id is not
    composed from are NULL."""
    numbers = [
        f"CAST({c} AS VARCHAR) AS {c}" if c in ERP_NUMBERS[kind] else f"CAST(NULL AS VARCHAR) AS {c}"
        for c in ERP_NUMBER_COLUMNS
    ]
    return f"SELECT '{kind.value}' AS kind, CAST(id AS VARCHAR) AS ref_id, {', '.join(numbers)} FROM {view}"


def _collect(cursor: duckdb.DuckDBPyConnection, mandant: str, mapped: Mapping[ObjectKind, pd.DataFrame]) -> None:
    """Temp table `casavi_links`: the file's rows in its order, and `listed` (casavi listed the object)."""
    selects = []
    for kind, frame in mapped.items():
        view = f"numbers_{kind.value}"
        cursor.register(view, frame[["id", *ERP_NUMBERS[kind]]])
        selects.append(_numbers_sql(kind, view))
    order = ", ".join(f"'{kind.value}'" for kind in api.UPSERT_ORDER)
    cursor.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {_TABLE} AS
        WITH numbers AS ({" UNION ALL ".join(selects)})
        SELECT CAST($mandant AS VARCHAR) AS mandant_nr, n.*, r.app_link, r.ref_id IS NOT NULL AS listed
        FROM numbers n
        JOIN synced s USING (kind, ref_id)
        LEFT JOIN remote r USING (kind, ref_id)
        ORDER BY list_position([{order}], n.kind), n.ref_id
        """,
        {"mandant": mandant},
    )


def _counts(cursor: duckdb.DuckDBPyConnection) -> dict[str, KindCounts]:
    rows = cursor.execute(
        f"""
        SELECT kind, count(*), count(app_link), count(*) FILTER (WHERE NOT listed),
               count(*) FILTER (WHERE listed AND app_link IS NULL)
        FROM {_TABLE} GROUP BY kind
        """
    ).fetchall()
    found = {kind: KindCounts(*counts) for kind, *counts in rows}
    return {kind.value: found.get(kind.value, KindCounts()) for kind in api.UPSERT_ORDER}


def _replace_if_changed(cursor: duckdb.DuckDBPyConnection, target: Path, options: str) -> bool:
    """Write the file beside `target` and move it over `target`, unless `target` holds these very bytes
    already; True when `target` was replaced."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    columns = ", ".join(COLUMNS)
    try:
        quoted = str(temp).replace("'", "''")
        cursor.execute(f"COPY (SELECT {columns} FROM {_TABLE}) TO '{quoted}' ({options})")
        if target.is_file() and filecmp.cmp(temp, target, shallow=False):
            return False
        with temp.open("rb") as written:  # on disk before it takes the name: a crash leaves old or new
            os.fsync(written.fileno())
        os.replace(temp, target)
        return True
    finally:
        temp.unlink(missing_ok=True)


def write_links(
    snapshot: Snapshot, mapped: Mapping[ObjectKind, pd.DataFrame], directory: Path
) -> Written:
    """Write the Mandant's links files into `directory` (created if missing) from its snapshot and its
    mapped frames (one per kind, with `id` and the kind's `ERP_NUMBERS` columns); see the module docstring."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mandant = snapshot.mandant
    paths = {suffix: file_path(directory, mandant, suffix) for suffix in _FORMATS}
    for path in paths.values():  # a killed run's leftovers (hidden names: no import job picks them up)
        for leftover in directory.glob(f".{path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    # A cursor of its own: the temp table and the registered frames go with it.
    with snapshot.connection.cursor() as cursor:
        _collect(cursor, mandant, mapped)
        replaced = tuple(
            suffix for suffix, path in paths.items() if _replace_if_changed(cursor, path, _FORMATS[suffix])
        )
        kinds = _counts(cursor)
    if replaced:  # the new names on disk too
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return Written(mandant, paths, replaced, kinds)
