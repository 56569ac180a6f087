"""Reading casavi back: what the account holds, normalised and hashed exactly like what the sync sends.

casavi's lists are account-wide (no filter by reference-id prefix) and every Mandant shares the account,
so the account is listed into ONE cache file (`casavi_remote.duckdb` beside the snapshots), shared by all
Mandanten, and each Mandant takes its slice (the ids with its prefix) into its own snapshot. 20 Mandanten
in one night cost one listing, not 20: a refresh within `max_age` of the last one reuses it.

A read is incremental when it can be: `modifiedAfter` = the last listing's high-water mark (casavi's own
`modified` stamps, minus a small overlap), patching only what changed. Deletions in casavi show only as
ids missing from a full listing, so a full listing runs when asked, when the cache has none, and at least
every `full_every` (the nightly runs then see deletions within a week by default).

DuckDB allows one writer per file: every access to the cache holds an exclusive lock on a lock file
beside it, so two Mandant runs never open it at once (the second waits, then reuses the fresh listing).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.sync.changeset import hashed_payloads_sql

CACHE_FILE = "casavi_remote.duckdb"
#: Rows normalised in Python before they go to DuckDB in one batch: bounds memory on huge accounts.
BATCH_ROWS = 50_000
#: A later incremental read starts this much before the high-water mark, so an object changed in the same
#: second as the last one listed (or while that listing ran) is not missed. Re-reading a few unchanged
#: objects is harmless: they are counted as listed, not as changed.
OVERLAP = dt.timedelta(seconds=1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind VARCHAR NOT NULL,
    ref_id VARCHAR NOT NULL,
    internal_id BIGINT,
    modified VARCHAR,              -- casavi's ISO UTC stamp of the last change
    content_hash VARCHAR NOT NULL, -- the changeset's hash of the normalised body
    payload VARCHAR,               -- the normalised body (for previews of what differs); erasable
    PRIMARY KEY (kind, ref_id)
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
"""
_META_READ_AT = "read_at"
_META_FULL_AT = "full_at"
_META_WRITTEN_AT = "written_at"


class ListingClient(Protocol):
    def list_objects(
        self, kind: ObjectKind, *, page_size: int = ..., modified_after: dt.datetime | None = ...
    ) -> Iterator[dict[str, Any]]: ...


@dataclass
class ReadReport:
    """What one refresh of the account cache did (ids and counts only)."""

    full: bool
    reused: bool  # the cache was fresh enough: nothing was listed
    listed: dict[str, int] = field(default_factory=dict)  # kind → objects casavi returned
    changed: dict[str, int] = field(default_factory=dict)  # kind → of those, new or different from the cache
    removed: dict[str, int] = field(default_factory=dict)  # kind → gone from a full listing
    account_objects: int = 0
    seconds: float = 0.0


def _utc(stamp: str | None) -> dt.datetime | None:
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(dt.UTC)
    except ValueError:
        return None


class RemoteCache:
    """The account-wide listing of casavi, one file shared by every Mandant of the account."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / CACHE_FILE
        self.lock_path = self.path.with_suffix(".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            yield

    def refresh(
        self,
        client: ListingClient,
        *,
        full: bool = False,
        max_age: dt.timedelta = dt.timedelta(minutes=10),
        full_every: dt.timedelta = dt.timedelta(days=7),
        now: dt.datetime | None = None,
    ) -> ReadReport:
        """Bring the cache up to date with casavi: reuse, patch incrementally, or list everything.

        `full` asks for a listing that also sees deletions (a full one within `max_age` is reused).
        Otherwise a listing within `max_age` is reused, unless the sync wrote to casavi since
        (`mark_written`: our own writes must be read back), and a full listing runs when the last one
        is older than `full_every`.
        """
        started = time.monotonic()
        now = now or dt.datetime.now(dt.UTC)
        with self._locked(), contextlib.closing(duckdb.connect(str(self.path))) as con:
            con.execute(_SCHEMA)
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            read_at, full_at = _utc(meta.get(_META_READ_AT)), _utc(meta.get(_META_FULL_AT))
            written_at = _utc(meta.get(_META_WRITTEN_AT))

            def fresh(stamp: dt.datetime | None) -> bool:
                return (
                    stamp is not None
                    and now - stamp < max_age
                    and (written_at is None or stamp >= written_at)
                )

            need_full = full_at is None or now - full_at >= full_every or (full and not fresh(full_at))
            if not need_full and fresh(read_at):
                total = con.execute("SELECT count(*) FROM objects").fetchone()[0]  # type: ignore[index]
                return ReadReport(full=False, reused=True, account_objects=total)
            report = ReadReport(full=need_full, reused=False)
            for kind in api.UPSERT_ORDER:
                since = None
                if not need_full:
                    mark = con.execute(
                        "SELECT max(modified) FROM objects WHERE kind = ?", [kind.value]
                    ).fetchone()[0]  # type: ignore[index]
                    since = (_utc(mark) - OVERLAP) if mark else None
                report.listed[kind.value], report.changed[kind.value] = self._list_kind(
                    con, client, kind, since
                )
                if need_full:
                    report.removed[kind.value] = con.execute(
                        "SELECT count(*) FROM objects o WHERE kind = ? AND NOT EXISTS "
                        "(SELECT 1 FROM listed l WHERE l.ref_id = o.ref_id)",
                        [kind.value],
                    ).fetchone()[0]  # type: ignore[index]
                    con.execute(
                        "DELETE FROM objects o WHERE kind = ? AND NOT EXISTS "
                        "(SELECT 1 FROM listed l WHERE l.ref_id = o.ref_id)",
                        [kind.value],
                    )
            stamp = now.isoformat()
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_READ_AT, stamp])
            if need_full:
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_FULL_AT, stamp])
            con.execute("CHECKPOINT")
            report.account_objects = con.execute("SELECT count(*) FROM objects").fetchone()[0]  # type: ignore[index]
        report.seconds = time.monotonic() - started
        return report

    def _list_kind(
        self,
        con: duckdb.DuckDBPyConnection,
        client: ListingClient,
        kind: ObjectKind,
        since: dt.datetime | None,
    ) -> tuple[int, int]:
        """List one kind (page by page), normalise, hash and upsert it; remember the ids seen.

        Returns (objects listed, of those new or changed)."""
        con.execute("CREATE OR REPLACE TEMP TABLE listed (ref_id VARCHAR)")
        batch: list[dict[str, Any]] = []
        total = changed = 0
        for obj in client.list_objects(kind, page_size=api.MAX_PAGE_SIZE, modified_after=since):
            reference = obj.get(api.ID_FIELD)
            if not isinstance(reference, str) or not reference:
                continue  # made by hand without a reference id: never ours to touch
            record = api.record_from_read(kind, obj)
            record["_internal_id"] = obj.get(api.INTERNAL_ID_FIELD)
            record["_modified"] = obj.get(api.MODIFIED_FIELD)
            batch.append(record)
            if len(batch) >= BATCH_ROWS:
                changed += self._store(con, kind, batch)
                total += len(batch)
                batch = []
        changed += self._store(con, kind, batch)
        return total + len(batch), changed

    @staticmethod
    def _store(con: duckdb.DuckDBPyConnection, kind: ObjectKind, records: list[dict[str, Any]]) -> int:
        """Upsert one batch; return how many of its objects were new or changed."""
        if not records:
            return 0
        frame = pd.DataFrame.from_records(
            records, columns=[*api.DOMAIN_COLUMNS[kind], "_internal_id", "_modified"]
        )
        frame["_internal_id"] = pd.to_numeric(frame["_internal_id"], errors="coerce").astype("Int64")
        frame["_modified"] = frame["_modified"].astype("string")
        con.register("read_batch", frame)
        try:
            hashed = hashed_payloads_sql(kind, "read_batch", keep=("_internal_id", "_modified"))
            con.execute(f"CREATE OR REPLACE TEMP TABLE read_hashed AS {hashed}")
            changed = con.execute(
                "SELECT count(*) FROM read_hashed r WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE "
                "o.kind = r.kind AND o.ref_id = r.ref_id AND o.content_hash = r.content_hash "
                'AND o.modified IS NOT DISTINCT FROM r."_modified")'
            ).fetchone()[0]  # type: ignore[index]
            con.execute(
                'INSERT OR REPLACE INTO objects SELECT kind, ref_id, "_internal_id", "_modified", '
                "content_hash, payload FROM read_hashed"
            )
            con.execute("INSERT INTO listed SELECT ref_id FROM read_hashed")
        finally:
            con.unregister("read_batch")
        return changed

    def mark_written(self, at: dt.datetime | None = None) -> None:
        """The sync wrote to casavi: no listing before `at` may be reused (it misses those writes)."""
        stamp = (at or dt.datetime.now(dt.UTC)).isoformat()
        with self._locked(), contextlib.closing(duckdb.connect(str(self.path))) as con:
            con.execute(_SCHEMA)
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_WRITTEN_AT, stamp])

    def erase_payloads(self, prefix: str) -> int:
        """Drop the stored bodies of the objects whose id has `prefix` (a Mandant's personal data)."""
        if not self.path.exists():
            return 0
        with self._locked(), contextlib.closing(duckdb.connect(str(self.path))) as con:
            erased = con.execute(
                "SELECT count(*) FROM objects WHERE starts_with(ref_id, ?) AND payload IS NOT NULL", [prefix]
            ).fetchone()[0]  # type: ignore[index]
            con.execute("UPDATE objects SET payload = NULL WHERE starts_with(ref_id, ?)", [prefix])
            con.execute("CHECKPOINT")
        return erased

    def copy_slice(self, target: duckdb.DuckDBPyConnection, table: str, prefix: str) -> int:
        """Replace `table` of the target connection with this account's objects whose id has `prefix`."""
        with self._locked():
            if not self.path.exists():
                target.execute(f"DELETE FROM {table}")
                return 0
            target.execute(f"ATTACH '{self.path}' AS account_cache (READ_ONLY)")
            try:
                target.execute(f"DELETE FROM {table}")
                target.execute(
                    f"INSERT INTO {table} SELECT kind, ref_id, content_hash, payload, modified "
                    "FROM account_cache.objects WHERE starts_with(ref_id, ?)",
                    [prefix],
                )
            finally:
                target.execute("DETACH account_cache")
        return target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]

    def prefix_counts(self, prefixes: dict[str, str]) -> dict[str, int]:
        """How many objects start with each prefix (separator → prefix), e.g. to detect the separator."""
        if not self.path.exists():
            return dict.fromkeys(prefixes, 0)
        with self._locked(), contextlib.closing(duckdb.connect(str(self.path), read_only=True)) as con:
            return {
                name: con.execute(
                    "SELECT count(*) FROM objects WHERE starts_with(ref_id, ?)", [prefix]
                ).fetchone()[0]  # type: ignore[index]
                for name, prefix in prefixes.items()
            }
