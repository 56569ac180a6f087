"""The snapshot: what casavi is known to hold for one Mandant, in one DuckDB file per Mandant.

Tables
- `synced`  one row per object casavi confirmed: kind, reference id, content hash, payload (for previews).
- `pending` the current changeset (written by `changeset.compute_changeset`, consumed by `apply`).
- `leaving` the current changeset's objects that leave the scope, each with its fate under
            CASAVI_DELETIONS (written with `pending`; `state/deletions.py`).
- `deletions` the pending deletions: objects out of scope that casavi still holds, since when, why, and
            who approved their deletion (kept across runs: the Mandant's state, not the run's).
- `meta`    key/value facts, e.g. the ID separator the snapshot was built with.
- `remote`  the Mandant's slice of the casavi listing as last read: hashes, bodies, casavi's links.
- `audit`   one row per write attempt casavi answered (names and statuses only; `state/audit.py`).

Every confirmed write is appended to the snapshot's journal (`state.logs`: durable when appended,
microseconds instead of a DuckDB commit) and folded into `synced` in one transaction periodically, at
the end of a sync and whenever a snapshot is opened, so a crash between a write and the next fold loses
nothing. Invariant: `synced` never claims an object casavi has not confirmed.

The journal holds one JSON array per line, `["upsert", "contact", "<ref id>", "<hash>"]`. A line torn
by a crash or a full disk is dropped on the fold and counted (`Snapshot.dropped_journal_lines`); its
write is re-sent next run, which is safe because PUT and DELETE by reference id are idempotent. The
lines are parsed in Python against a fixed shape, never sniffed.

Where the file and its logs persist, and who may hold them, is the snapshot's home (`state.homes`): a
local file (the default) or PostgreSQL. A file DuckDB cannot read is moved aside (never deleted) and
reported as `StateCorruptError`; the file is a record of what casavi holds, so it can be rebuilt.

One file per Mandant lets Mandanten run in parallel (DuckDB allows one writer process per file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import duckdb
import pandas as pd

from casavi_pipeline import duck_memory
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.database import StateUnavailableError
from casavi_pipeline.interrupts import held
from casavi_pipeline.state import audit
from casavi_pipeline.state.files import (
    StateCorruptError,
    is_corruption,
    moved_aside_error,
    open_duckdb,
    rewrite_compacted,
)
from casavi_pipeline.state.homes import AUDIT, JOURNAL, Home, LocalHome

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS synced (
    kind VARCHAR NOT NULL,
    ref_id VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    payload VARCHAR,
    synced_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, ref_id)
);
CREATE TABLE IF NOT EXISTS pending (
    seq BIGINT NOT NULL,
    kind VARCHAR NOT NULL,
    action VARCHAR NOT NULL,      -- 'upsert', 'delete' or 'settle' (a property's second PUT)
    change VARCHAR NOT NULL,      -- 'create', 'update' or 'delete'
    ref_id VARCHAR NOT NULL,
    content_hash VARCHAR,
    payload VARCHAR
);
CREATE TABLE IF NOT EXISTS leaving (
    kind VARCHAR NOT NULL,
    ref_id VARCHAR NOT NULL,
    why VARCHAR NOT NULL,         -- 'removed from the export' or 'out of the sync rule'
    fate VARCHAR NOT NULL,        -- 'delete', 'wait', 'blocked' (approved, still referenced) or 'keep'
    held_by VARCHAR,              -- blocked: the waiting object that references it ("contact 0001-00050")
    PRIMARY KEY (kind, ref_id)
);
CREATE TABLE IF NOT EXISTS deletions (
    kind VARCHAR NOT NULL,
    ref_id VARCHAR NOT NULL,
    why VARCHAR NOT NULL,
    since TIMESTAMPTZ NOT NULL,   -- when a run first listed it
    since_run VARCHAR NOT NULL,   -- that run (its id): the alert tells of a run that listed new ones
    approved_at TIMESTAMPTZ,
    approved_by VARCHAR,          -- an OS or Dagster user name (never tenant data)
    PRIMARY KEY (kind, ref_id)
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS remote (
    kind VARCHAR NOT NULL,
    ref_id VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    payload VARCHAR,
    modified VARCHAR,
    app_link VARCHAR,             -- casavi's link to the object as last read (`casavi_pipeline/links.py`)
    PRIMARY KEY (kind, ref_id)
);
-- a snapshot kept before links were: the next read's slice fills the column
ALTER TABLE remote ADD COLUMN IF NOT EXISTS app_link VARCHAR;
{audit.SCHEMA}"""

META_SEPARATOR = "id_separator"
#: The casavi model revision (`api.MODEL_REVISION`) the hashes and bodies were made with.
META_MODEL = "model_revision"
#: When casavi's state was first taken as synced (a snapshot without it has never met casavi).
META_ADOPTED = "adopted_at"
META_MANDANT = "mandant"
#: The casavi account (`casavi_pipeline.account`) the snapshot's state is of.
META_ACCOUNT = "account"
#: The pending changeset's identity (the run that computed it) and how many objects it wanted per kind.
META_CHANGESET = "changeset"


_ACTIONS = frozenset({"upsert", "delete"})
_KINDS = frozenset(kind.value for kind in ObjectKind)


def _journal_entry(line: bytes) -> tuple[str, str, str, str | None] | None:
    """One journal line as (action, kind, ref_id, content_hash), or None if it is not a whole entry."""
    try:
        entry = json.loads(line)
    except ValueError:  # torn, garbage, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None
    if not (isinstance(entry, list) and len(entry) == 4):
        return None
    action, kind, ref_id, content_hash = entry
    if action not in _ACTIONS or kind not in _KINDS or not isinstance(ref_id, str) or not ref_id:
        return None
    if not (isinstance(content_hash, str) or (content_hash is None and action == "delete")):
        return None  # `synced` needs the hash of every object it holds
    return action, kind, ref_id, content_hash


def read_journal(lines: list[bytes]) -> tuple[list[tuple[str, str, str, str | None]], int]:
    """The whole entries of a journal's lines in write order, and how many lines were dropped as broken."""
    entries = []
    dropped = 0
    for line in lines:
        entry = _journal_entry(line)
        if entry is None:
            dropped += 1
        else:
            entries.append(entry)
    return entries, dropped


@dataclass(frozen=True)
class Drift:
    """(kind, 'changed' | 'deleted' | 'unknown') → (count, first reference ids)."""

    found: dict[tuple[str, str], tuple[int, list[str]]]

    def count(self, what: str | None = None) -> int:
        return sum(n for (_, kind_what), (n, _) in self.found.items() if what in (None, kind_what))

    def ids(self, what: str) -> list[str]:
        return sorted(i for (_, kind_what), (_, ids) in self.found.items() if kind_what == what for i in ids)


@dataclass(frozen=True)
class PendingOp:
    seq: int
    kind: ObjectKind
    action: str
    change: str
    ref_id: str
    content_hash: str | None
    payload: str | None
    synced_payload: str | None = None  # what casavi was last confirmed to hold (for the changed fields)


class Snapshot:
    """One Mandant's snapshot. Use as a context manager; opening folds any journal a crash left."""

    #: Fold the journal into DuckDB after this many confirmations (bounds the replay work after a crash).
    FOLD_EVERY = 20_000

    def __init__(self, path: Path, mandant: str, *, read_only: bool = False, home: Home | None = None) -> None:
        """Open (or create) the snapshot and fold any journal a crash left.

        Raises `StateBusyError` if another process holds it, and `StateCorruptError` if DuckDB cannot
        read it (the file is then already moved aside; opening again starts afresh). Other DuckDB
        errors (permissions, a full disk) are raised as they are.
        """
        self.path = Path(path)
        self.mandant = mandant
        self.home = home or LocalHome(self.path)
        self._journal = self.home.log(JOURNAL)
        self._audit = self.home.log(AUDIT)
        self._read_only = read_only
        self._unfolded = 0
        #: Journal lines dropped as torn or unreadable since this snapshot was opened: their writes are
        #: re-sent next run. Worth a warning: more than one points at a disk or a crash loop.
        self.dropped_journal_lines = 0
        #: Audit lines dropped as torn since this snapshot was opened (their attempts are not in the trail).
        self.dropped_audit_lines = 0
        #: The snapshot held state of an earlier casavi model and was emptied to be rebuilt from casavi.
        self.rebuilt_for_model: str | None = None
        what = f"snapshot of Mandant {mandant}"
        if read_only and not self.home.exists():
            self._con = duckdb.connect()  # an empty in-memory snapshot: nothing synced yet
            self._con.execute(_SCHEMA)
            return
        self.home.open(read_only=read_only)
        #: The local working copy was unreadable and fetched again from where the state is kept (nothing lost).
        self.refetched = False
        try:
            try:
                self._open_file(what, read_only)
            except StateCorruptError as exc:
                if not self.home.moved_aside(exc):
                    raise
                self.refetched = True
                try:
                    self._open_file(what, read_only)
                except StateCorruptError as again:  # fetched just now: the stored copy itself is damaged
                    self.home.moved_aside(again)
                    raise
        except StateCorruptError:
            self.home.close()
            raise
        except BaseException:
            if hasattr(self, "_con"):
                with contextlib.suppress(duckdb.Error):
                    self._con.close()
            self.home.close()
            raise

    def _open_file(self, what: str, read_only: bool) -> None:
        """Open the local file (read through once) and, for writing, fold what a crash left."""
        companions = getattr(self.home, "companions", ())
        self._con = open_duckdb(
            self.path,
            what,
            read_only=read_only,
            busy_hint="Another run of this Mandant is probably still going; wait for it, or stop it, then rerun.",
            companions=companions,
        )
        if read_only:
            return
        try:
            self._con.execute(_SCHEMA)
            self.rebuilt_for_model = self._forget_older_model()
            self.fold()
            self.set_meta(META_MANDANT, self.mandant)
        except duckdb.Error as exc:
            # Index and meta blocks are read only when first used: a damage found by the first
            # writes on open is still the file's, not the run's.
            if not is_corruption(exc):
                raise
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            raise moved_aside_error(self.path, what, exc, companions) from exc

    def _forget_older_model(self) -> str | None:
        """Empty a snapshot made under an earlier casavi model (`api.MODEL_REVISION`); return its revision.

        Its hashes are of bodies casavi no longer takes (revision 1 had a contracts collection and
        addresses with ids), so none of them can be compared. Emptied, the snapshot has never met casavi
        and the next read adopts what casavi holds: only real differences are sent, nothing twice. The
        journal's entries are of the old model too and go with it.
        """
        revision = self.get_meta(META_MODEL)
        if revision == api.MODEL_REVISION:
            return None
        held = self._con.execute(
            "SELECT (SELECT count(*) FROM synced) + (SELECT count(*) FROM pending) + (SELECT count(*) FROM remote)"
        ).fetchone()[0]  # type: ignore[index]
        older = revision or "1"  # revision 1 did not record its revision
        lines, mark = self._journal.read()
        rebuilt = older if held or lines else None
        with self._transaction():
            # The pending deletions stay: reference ids outlive a model revision, and so do approvals.
            for table in ("synced", "pending", "leaving", "remote"):
                self._con.execute(f"DELETE FROM {table}")
            self._con.execute("DELETE FROM meta WHERE key = ?", [META_ADOPTED])  # the separator stays guarded
            self.set_meta(META_MODEL, api.MODEL_REVISION)
        self._journal.clear(mark)
        return rebuilt

    # --- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        # Leaving on an error: the state database gone too must not hide the error that ended the work
        # (it is usually the same one, told with its context). What the logs hold is durable and folded
        # by the next open.
        with contextlib.suppress(StateUnavailableError):
            self.close()

    def close(self) -> None:
        with held():  # the last fold and the save, whole (`casavi_pipeline.interrupts`)
            try:
                if not self._read_only:
                    self.fold()
            finally:
                self._con.close()
                self.home.close()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, for the changeset's SQL."""
        return self._con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One DuckDB transaction: committed when the block ends, rolled back when it raises."""
        self._con.execute("BEGIN TRANSACTION")
        try:
            yield
            self._con.execute("COMMIT")
        except BaseException:
            # A failed ROLLBACK (e.g. on a damaged file) must not hide the error that caused it.
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            raise

    # --- meta ----------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def set_separator(self, separator: str) -> None:
        self.set_meta(META_SEPARATOR, separator)

    @property
    def separator(self) -> str | None:
        return self.get_meta(META_SEPARATOR)

    # --- casavi read back (`state.listing` copies this Mandant's slice into `remote`) ---------------
    def remote_counts(self) -> dict[str, int]:
        rows = self._con.execute("SELECT kind, count(*) FROM remote GROUP BY kind").fetchall()
        return {kind: count for kind, count in rows}

    def adopt_remote(self, separator: str | None = None) -> dict[str, int]:
        """Record what casavi holds as synced: `synced` becomes the remote slice.

        Used when the snapshot knows nothing yet (a filled account, a lost snapshot) and to repair drift:
        the next changeset then holds exactly the differences between casavi and the ERP. `separator`,
        when given, is the one the adopted ids were built with: set in the same transaction, so a crash
        never leaves adopted objects without it (the separator guard would pass blind).
        """
        now = dt.datetime.now(dt.UTC)
        con = self._con
        with self._transaction():
            con.execute("DELETE FROM synced")
            con.execute(
                "INSERT INTO synced SELECT kind, ref_id, content_hash, payload, ?::TIMESTAMPTZ FROM remote",
                [now],
            )
            if separator is not None:
                self.set_separator(separator)
            self.set_meta(META_ADOPTED, now.isoformat())
        return self.synced_counts()

    def drift(self, *, listed: int = 10) -> Drift:
        """How casavi differs from what we confirmed: changed or deleted there, or ours but never written."""
        rows = self._con.execute(
            f"""
            WITH d AS (
                SELECT coalesce(s.kind, r.kind) AS kind, coalesce(s.ref_id, r.ref_id) AS ref_id,
                       CASE WHEN r.ref_id IS NULL THEN 'deleted'
                            WHEN s.ref_id IS NULL THEN 'unknown'
                            ELSE 'changed' END AS drift
                FROM synced s FULL OUTER JOIN remote r ON r.kind = s.kind AND r.ref_id = s.ref_id
                WHERE r.ref_id IS NULL OR s.ref_id IS NULL OR r.content_hash <> s.content_hash
            )
            SELECT kind, drift, count(*), list(ref_id ORDER BY ref_id)[1:{int(listed)}] FROM d GROUP BY ALL
            """
        ).fetchall()
        return Drift({(kind, what): (count, list(first)) for kind, what, count, first in rows})

    def erase_payloads(self) -> dict[str, int]:
        """Drop every stored body (names, emails, phones): kept are ids and hashes, all the sync needs.

        The pending changeset goes too (its bodies are the data); the next run computes it again.
        Previews then list no changed field names until objects are written again.
        """
        con = self._con
        erased = {
            "synced": con.execute("SELECT count(*) FROM synced WHERE payload IS NOT NULL").fetchone()[0],  # type: ignore[index]
            "pending": self.pending_total(),
            "remote": con.execute("SELECT count(*) FROM remote WHERE payload IS NOT NULL").fetchone()[0],  # type: ignore[index]
        }
        con.execute("UPDATE synced SET payload = NULL")
        con.execute("DELETE FROM pending")  # (`leaving` and `deletions` hold ids only: they stay)
        con.execute("UPDATE remote SET payload = NULL")
        # NULL leaves the old bytes in freed blocks: rewrite the file (this process keeps the home's lock).
        con.execute("CHECKPOINT").fetchall()
        con.close()
        rewrite_compacted(self.path)
        self._con = duckdb.connect(str(self.path), config=duck_memory.config())
        return erased

    # --- reads ---------------------------------------------------------------------------------------
    def synced_counts(self) -> dict[str, int]:
        rows = self._con.execute("SELECT kind, count(*) FROM synced GROUP BY kind").fetchall()
        return {kind: count for kind, count in rows}

    def synced_total(self) -> int:
        return self._con.execute("SELECT count(*) FROM synced").fetchone()[0]  # type: ignore[index]

    def synced_hashes(self) -> dict[tuple[str, str], str]:
        """(kind, ref_id) → hash; for tests and small diagnostics, not for large Mandanten."""
        rows = self._con.execute("SELECT kind, ref_id, content_hash FROM synced").fetchall()
        return {(kind, ref_id): h for kind, ref_id, h in rows}

    def pending_counts(self) -> dict[tuple[str, str], int]:
        """(kind, change) → number of pending operations."""
        rows = self._con.execute("SELECT kind, change, count(*) FROM pending GROUP BY ALL").fetchall()
        return {(kind, change): count for kind, change, count in rows}

    def changeset_identity(self) -> str | None:
        """The identity the pending changeset was computed with (`diff.compute_changeset`), if any."""
        return json.loads(self.get_meta(META_CHANGESET) or "{}").get("id")

    def changeset_kinds(self) -> list[str]:
        """The kinds the pending changeset covered (a kind it did not cover was left untouched)."""
        changeset = json.loads(self.get_meta(META_CHANGESET) or "{}")
        return list(changeset.get("kinds", changeset.get("desired", {})))

    def pending_total(self) -> int:
        return self._con.execute("SELECT count(*) FROM pending").fetchone()[0]  # type: ignore[index]

    def pending_ops(self, kind: ObjectKind, action: str, *, page_size: int = 5_000) -> Iterator[PendingOp]:
        """Pending operations of one kind and action, in changeset order, read page by page.

        Keyset paging (seq > last) stays correct while confirmations remove rows from `pending`.
        """
        last_seq = -1
        while True:
            rows = self._con.execute(
                "SELECT p.seq, p.kind, p.action, p.change, p.ref_id, p.content_hash, p.payload, s.payload "
                "FROM pending p LEFT JOIN synced s ON s.kind = p.kind AND s.ref_id = p.ref_id "
                "WHERE p.kind = ? AND p.action = ? AND p.seq > ? ORDER BY p.seq LIMIT ?",
                [kind.value, action, last_seq, page_size],
            ).fetchall()
            if not rows:
                return
            for seq, k, a, change, ref_id, content_hash, payload, synced_payload in rows:
                yield PendingOp(seq, ObjectKind(k), a, change, ref_id, content_hash, payload, synced_payload)
            last_seq = rows[-1][0]

    # --- confirmed writes ----------------------------------------------------------------------------
    def record_attempt(self, attempt: audit.Attempt) -> None:
        """Add one write attempt to the audit trail. Call it before `confirm`: no write is counted
        without its row (a crash in between leaves a row of a write that is re-sent, and rows again)."""
        self._audit.append(audit.line(attempt))

    def audit_summary(self, run_id: str) -> dict[str, int]:
        """The attempts of one run per kind, change and status (folded ones: call after `fold`)."""
        return audit.run_summary(self._con, run_id)

    def nights_refused(self, objects: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(kind, ref_id) → days on which casavi refused it since it last accepted it (after `fold`)."""
        return audit.nights_refused(self._con, objects)

    def prune_audit(self, retention_days: float) -> int:
        """Drop audit rows older than `retention_days`; return how many went."""
        return audit.prune(self._con, retention_days)

    def confirm(self, kind: ObjectKind, action: str, ref_id: str, content_hash: str | None) -> None:
        """Record one write casavi confirmed. Durable against a killed process once this returns."""
        # ASCII JSON: every control character in a reference id is escaped, so the line stays one line.
        self._journal.append(json.dumps([action, kind.value, ref_id, content_hash]))
        self._unfolded += 1
        if self._unfolded >= self.FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Apply the logs to `synced`, `pending` and `audit` in one transaction, save, then clear the logs;
        an interrupt meanwhile waits until it is done (`casavi_pipeline.interrupts`)."""
        with held():
            self._fold()

    def _fold(self) -> None:
        audit_lines, audit_mark = self._audit.read()
        journal_lines, journal_mark = self._journal.read()
        self._unfolded = 0
        entries, dropped = read_journal(journal_lines)
        self.dropped_journal_lines += dropped
        con = self._con
        with self._transaction():
            if audit_lines:
                self.dropped_audit_lines += audit.fold(con, audit_lines)
            if entries:
                self._fold_journal(entries)
        if audit_lines or journal_lines or self.home.saves_file:
            con.execute("CHECKPOINT").fetchall()  # the file alone (no WAL) holds the state now
        # Only once the fold is durable where the home keeps it may the log lines go: a crash before
        # this replays them (harmless: the fold is idempotent).
        self.home.saved([(self._audit, audit_mark), (self._journal, journal_mark)])

    def _fold_journal(self, entries: list[tuple[str, str, str, str | None]]) -> None:
        journal = pd.DataFrame(
            {
                "seq": pd.array(range(len(entries)), dtype="int64"),
                **{
                    name: pd.array([entry[i] for entry in entries], dtype="string")
                    for i, name in enumerate(("action", "kind", "ref_id", "content_hash"))
                },
            }
        )
        con = self._con
        now = dt.datetime.now(dt.UTC)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE journal (seq BIGINT NOT NULL, action VARCHAR NOT NULL, "
            "kind VARCHAR NOT NULL, ref_id VARCHAR NOT NULL, content_hash VARCHAR)"
        )
        con.register("journal_entries", journal)
        con.execute("INSERT INTO journal SELECT seq, action, kind, ref_id, content_hash FROM journal_entries")
        con.unregister("journal_entries")
        # The last entry of an object decides: an upsert after a delete (or the reverse) in one
        # journal ends as what casavi did last.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE latest AS SELECT * FROM journal "
            "QUALIFY row_number() OVER (PARTITION BY kind, ref_id ORDER BY seq DESC) = 1"
        )
        # Replaying a journal whose fold already committed is harmless: the payload comes from
        # `pending` and falls back to what `synced` already holds.
        con.execute(
            """
            INSERT INTO synced BY NAME
            SELECT j.kind, j.ref_id, j.content_hash, p.payload, ?::TIMESTAMPTZ AS synced_at
            FROM (SELECT * FROM latest WHERE action = 'upsert') j
            LEFT JOIN pending p
              ON p.kind = j.kind AND p.ref_id = j.ref_id AND p.action IN ('upsert', 'settle')
                 AND p.content_hash = j.content_hash
            ON CONFLICT (kind, ref_id) DO UPDATE SET
                content_hash = excluded.content_hash,
                payload = coalesce(excluded.payload, synced.payload),
                synced_at = excluded.synced_at
            """,
            [now],
        )
        for table in ("synced", "deletions"):  # a confirmed delete ends its pending deletion too
            con.execute(
                f"DELETE FROM {table} s USING latest j "
                "WHERE j.action = 'delete' AND s.kind = j.kind AND s.ref_id = j.ref_id"
            )
        # A confirmed upsert settles the pending PUT with that body: a property that drops a street
        # has two (`changeset.stage_street_moves`), and confirming the first must leave the second.
        con.execute(
            "DELETE FROM pending p USING journal j "
            "WHERE p.kind = j.kind AND p.ref_id = j.ref_id AND CASE WHEN j.action = 'delete' "
            "THEN p.action = 'delete' ELSE p.action IN ('upsert', 'settle') "
            "AND p.content_hash = j.content_hash END"
        )
        con.execute("DROP TABLE journal")
        con.execute("DROP TABLE latest")
