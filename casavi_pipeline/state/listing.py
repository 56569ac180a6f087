"""Reading casavi back: what the account holds, normalised and hashed exactly like what the sync sends.

casavi's lists are account-wide (no filter by reference-id prefix) and every Mandant shares the account,
so the account is listed into ONE cache file (`casavi_remote.duckdb` beside the snapshots), shared by all
Mandanten, and each Mandant takes its slice (the ids with its prefix) into its own snapshot. 20 Mandanten
in one night cost one listing, not 20: a refresh within `max_age` of the last one reuses it.

A read is incremental when it can be: `modifiedAfter` = the last listing's high-water mark (casavi's own
`modified` stamps, minus a small overlap), patching only what changed. Deletions in casavi show only as
ids missing from a full listing, so a full listing runs when asked, when the cache has none, and at least
every `full_every` (the nightly runs then see deletions within a week by default).

Every access holds the listing's home (`state.homes`) exclusively: an `flock` on a lock file beside it,
or PostgreSQL's advisory lock, so two Mandant runs never open it at once (the second waits, then reuses
the fresh listing). A listing DuckDB cannot read (a truncated file opens, then fails on a later read) is
found on open, moved aside with a warning naming where (`RemoteCache.moved_aside`) and rebuilt by a
full listing: it is a copy of what casavi holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd

from casavi_pipeline import duck_memory
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state.files import StateCorruptError, open_duckdb, rewrite_compacted
from casavi_pipeline.state.hashing import hashed_payloads_sql
from casavi_pipeline.state.homes import Home, LocalHome
from casavi_pipeline.state.snapshot import Snapshot

CACHE_FILE = "casavi_remote.duckdb"
#: Rows normalised in Python before they go to DuckDB in one batch: bounds memory on huge accounts.
BATCH_ROWS = 50_000
#: A later incremental read starts this much before the earlier of the newest stamp seen and the start of
#: the last listing: it covers clock skew between casavi and us and objects changed while that listing ran.
#: Re-reading a few unchanged objects is harmless: they are counted as listed, not as changed.
OVERLAP = dt.timedelta(minutes=1)

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
_META_SCOPE = "prefixes"  # the id prefixes the listing kept; another set needs a full listing
_META_SINCE = "since/"  # + kind: where the next incremental read of that kind starts
_META_MODEL = "model_revision"  # the casavi model (`api.MODEL_REVISION`) the bodies were normalised with


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
    skipped: dict[str, int] = field(default_factory=dict)  # kind → ours, but not readable by our model
    removed: dict[str, int] = field(default_factory=dict)  # kind → gone from a full listing
    account_objects: int = 0
    seconds: float = 0.0
    why: str = ""  # why this kind of listing: the reason for a full one, the age of a reused one
    moved_aside: list[str] = field(default_factory=list)  # unreadable listings moved aside (and rebuilt)


def _age(delta: dt.timedelta) -> str:
    """A duration as a person says it: 40 s, 12 min, 5.5 h, 3.0 days."""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def _utc(stamp: str | None) -> dt.datetime | None:
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(dt.UTC)
    except ValueError:
        return None


class RemoteCache:
    """The account-wide listing of casavi, one file shared by every Mandant of the account."""

    def __init__(self, directory: Path, home: Home | None = None) -> None:
        self.path = Path(directory) / CACHE_FILE
        self.home = home or LocalHome(self.path, lock_file=self.path.with_suffix(".lock"))
        #: Unreadable listings this cache moved aside (and started afresh), for a warning.
        self.moved_aside: list[str] = []

    @contextlib.contextmanager
    def _open(self, *, write: bool = True, compact: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The listing, held exclusively; an unreadable one is moved aside and a new one starts empty.

        `write`: what the block changed is saved to the home when it ends without an error; `compact`:
        the file is rewritten first, so values set to NULL leave no bytes behind (`files.rewrite_compacted`).
        """
        try:
            self.home.open(read_only=False)
        except StateCorruptError as exc:  # the stored copy could not be fetched; it was moved aside
            self.moved_aside.append(str(exc.moved_to))
            self.home.open(read_only=False)
        try:
            con = self._open_file()
            try:
                con.execute(_SCHEMA)
                self._forget_older_model(con)
                yield con
                if write:
                    con.execute("CHECKPOINT").fetchall()
            finally:
                con.close()
            if compact:
                rewrite_compacted(self.path)
            if write:
                self.home.saved([])
        finally:
            self.home.close()

    def _open_file(self) -> duckdb.DuckDBPyConnection:
        """The local file, read through once. A damaged working copy is fetched again from the home (the
        state is intact there); a damaged state is moved aside and the listing starts empty (the next
        refresh lists everything anew)."""
        try:
            return open_duckdb(self.path, "casavi listing")
        except StateCorruptError as exc:
            damaged = exc
            if self.home.moved_aside(exc):
                try:
                    return open_duckdb(self.path, "casavi listing")
                except StateCorruptError as again:  # fetched just now: the stored copy itself is damaged
                    self.home.moved_aside(again)
                    damaged = again
        self.moved_aside.append(str(damaged.moved_to))
        return duckdb.connect(str(self.path), config=duck_memory.config())

    @staticmethod
    def _forget_older_model(con: duckdb.DuckDBPyConnection) -> None:
        """A listing normalised under an earlier casavi model is dropped whole (with its high-water marks):
        its hashes cannot match today's bodies, and the next refresh lists everything anew."""
        row = con.execute("SELECT value FROM meta WHERE key = ?", [_META_MODEL]).fetchone()
        if row and row[0] == api.MODEL_REVISION:
            return
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM objects")
        con.execute("DELETE FROM meta")
        con.execute("INSERT INTO meta VALUES (?, ?)", [_META_MODEL, api.MODEL_REVISION])
        con.execute("COMMIT")

    def refresh(
        self,
        client: ListingClient,
        *,
        prefixes: tuple[str, ...],
        full: bool = False,
        why_full: str = "asked for",
        max_age: dt.timedelta = dt.timedelta(minutes=10),
        full_every: dt.timedelta = dt.timedelta(days=7),
        now: dt.datetime | None = None,
    ) -> ReadReport:
        """Bring the cache up to date with casavi: reuse, patch incrementally, or list everything.

        Only objects whose reference id starts with one of `prefixes` (the configured Mandanten with any
        separator) are kept: the others are not ours and are never normalised or stored. `full` asks for
        a listing that also sees deletions (a full one within `max_age` is reused), `why_full` says why.
        Otherwise a listing within `max_age` is reused, unless the sync wrote to casavi since
        (`mark_written`), and a full listing runs when the last one is older than `full_every` or the
        prefixes changed. The report says which kind of listing ran and why.
        """
        started = time.monotonic()
        now = now or dt.datetime.now(dt.UTC)
        scope = ",".join(sorted(prefixes))
        with self._open() as con:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            read_at, full_at = _utc(meta.get(_META_READ_AT)), _utc(meta.get(_META_FULL_AT))
            written_at = _utc(meta.get(_META_WRITTEN_AT))

            def fresh(stamp: dt.datetime | None) -> bool:
                return (
                    stamp is not None
                    and now - stamp < max_age
                    and (written_at is None or stamp >= written_at)
                )

            if full_at is None:
                why = "the account's first listing here"
            elif meta.get(_META_SCOPE) != scope:
                why = "the configured Mandanten changed"
            elif now - full_at >= full_every:
                why = f"the last full listing is {_age(now - full_at)} old (CASAVI_FULL_READ_EVERY_DAYS)"
            elif full and not fresh(full_at):
                why = why_full
            else:
                why = None
            need_full = why is not None
            if not need_full and fresh(read_at):
                total = con.execute("SELECT count(*) FROM objects").fetchone()[0]  # type: ignore[index]
                return ReadReport(
                    full=False, reused=True, account_objects=total, moved_aside=list(self.moved_aside),
                    why=f"listed {_age(now - read_at)} ago (CASAVI_READ_MAX_AGE_MINUTES) and nothing written since",
                )  # fmt: skip
            report = ReadReport(
                full=need_full,
                reused=False,
                why=why or f"changes since the last listing; full every {_age(full_every)} (CASAVI_FULL_READ_EVERY_DAYS)",
            )
            for kind in api.UPSERT_ORDER:
                since = None if need_full else _utc(meta.get(_META_SINCE + kind.value))
                listing_started = dt.datetime.now(dt.UTC)
                listed, changed, skipped, newest = self._list_kind(con, client, kind, since, prefixes)
                report.listed[kind.value], report.changed[kind.value] = listed, changed
                report.skipped[kind.value] = skipped
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
                # The next incremental read of this kind starts here — recorded only now that the kind
                # was listed completely (a listing that failed half-way starts again where it started).
                # Not after the newest stamp seen: an object changed on an earlier page while this listing
                # ran has an older stamp than one on a later page, and must not be skipped for good.
                mark = min(filter(None, [newest, listing_started])) - OVERLAP
                if since is not None:
                    mark = max(mark, since)
                con.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_SINCE + kind.value, mark.isoformat()]
                )
            stamp = now.isoformat()
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_READ_AT, stamp])
            if need_full:
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_FULL_AT, stamp])
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_SCOPE, scope])
            report.account_objects = con.execute("SELECT count(*) FROM objects").fetchone()[0]  # type: ignore[index]
        report.seconds = time.monotonic() - started
        report.moved_aside = list(self.moved_aside)
        return report

    def _list_kind(
        self,
        con: duckdb.DuckDBPyConnection,
        client: ListingClient,
        kind: ObjectKind,
        since: dt.datetime | None,
        prefixes: tuple[str, ...],
    ) -> tuple[int, int, int, dt.datetime | None]:
        """List one kind (page by page), normalise, hash and upsert what is ours; remember the ids seen.

        Returns (objects listed, of those new or changed, skipped as not matching our model, newest
        `modified` seen). A read is compared as read: a value casavi holds that we would not send (a
        unit usage its UI sets, an empty required field) is just a difference. Only a read our model
        cannot hold at all (a number field that is text, say: `api.unholdable_fields`) is skipped and
        counted instead of stopping the read: it then counts as missing.
        """
        con.execute("CREATE OR REPLACE TEMP TABLE listed (ref_id VARCHAR)")
        batch: list[dict[str, Any]] = []
        total = changed = skipped = 0
        newest: dt.datetime | None = None
        for obj in client.list_objects(kind, page_size=api.MAX_PAGE_SIZE, modified_after=since):
            total += 1
            stamp = (
                _utc(obj.get(api.MODIFIED_FIELD)) if isinstance(obj.get(api.MODIFIED_FIELD), str) else None
            )
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
            reference = obj.get(api.ID_FIELD)
            if not isinstance(reference, str) or not reference.startswith(prefixes):
                continue  # not a configured Mandant's (or made by hand without a reference id): not ours
            record = api.record_from_read(kind, obj)
            if api.unholdable_fields(api.FIELD_RULES[kind], api.to_payload(kind, record)):
                skipped += 1
                continue
            record["_internal_id"] = obj.get(api.INTERNAL_ID_FIELD)
            record["_modified"] = obj.get(api.MODIFIED_FIELD)
            batch.append(record)
            if len(batch) >= BATCH_ROWS:
                changed += self._store(con, kind, batch)
                batch = []
        changed += self._store(con, kind, batch)
        return total, changed, skipped, newest

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
        """The sync writes to casavi: no listing before `at` may be reused (it misses those writes)."""
        stamp = (at or dt.datetime.now(dt.UTC)).isoformat()
        with self._open() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_WRITTEN_AT, stamp])

    def forget(self, deleted: list[tuple[ObjectKind, str]]) -> None:
        """Objects casavi confirmed deleted: an incremental read never shows a deletion, so drop them here,
        or they would look like ours-but-unknown drift until the next full listing."""
        if not deleted:
            return
        with self._open() as con:
            con.executemany(
                "DELETE FROM objects WHERE kind = ? AND ref_id = ?", [(k.value, ref) for k, ref in deleted]
            )

    def erase_payloads(self, prefixes: list[str]) -> int:
        """Drop the stored bodies of the objects whose id has one of `prefixes` (a Mandant's personal
        data), and rewrite the file so no old bytes stay; return how many bodies went."""
        erased = 0
        with self._open(compact=True) as con:
            for prefix in prefixes:
                erased += con.execute(
                    "SELECT count(*) FROM objects WHERE starts_with(ref_id, ?) AND payload IS NOT NULL", [prefix]
                ).fetchone()[0]  # type: ignore[index]
                con.execute("UPDATE objects SET payload = NULL WHERE starts_with(ref_id, ?)", [prefix])
        return erased

    def take_slice(self, snapshot: Snapshot, separators: tuple[str, ...]) -> int:
        """Replace the snapshot's `remote` table with its Mandant's objects: ids `mandant` + any of
        `separators` + …, so a slice also holds what was written under an earlier separator."""
        mandant = snapshot.mandant
        with self._open(write=False) as con:
            rows = con.execute(
                "SELECT kind, ref_id, content_hash, payload, modified FROM objects "
                "WHERE starts_with(ref_id, ?) AND substr(ref_id, length(?) + 1, 1) IN ?",
                [mandant, mandant, list(separators)],
            ).df()
        # A cursor of its own: the snapshot's connection may hold a result not read to its end.
        with snapshot.connection.cursor() as target:
            target.register("listing_slice", rows)
            target.execute("BEGIN TRANSACTION")
            target.execute("DELETE FROM remote")
            target.execute("INSERT INTO remote SELECT * FROM listing_slice")
            target.execute("COMMIT")
        return len(rows)

    def prefix_counts(self, prefixes: dict[str, str]) -> dict[str, int]:
        """How many objects start with each prefix (separator → prefix), e.g. to detect the separator."""
        with self._open(write=False) as con:
            return {
                name: con.execute(
                    "SELECT count(*) FROM objects WHERE starts_with(ref_id, ?)", [prefix]
                ).fetchone()[0]  # type: ignore[index]
                for name, prefix in prefixes.items()
            }
