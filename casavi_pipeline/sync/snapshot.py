"""The snapshot: what casavi is known to hold for one Mandant, in one DuckDB file per Mandant.

Tables
- `synced`  one row per object casavi confirmed: kind, reference id, content hash, payload (for previews).
- `pending` the current changeset (written by `changeset.compute_changeset`, consumed by `apply`).
- `meta`    key/value facts, e.g. the ID separator the snapshot was built with.

Why a journal beside the DuckDB file: the snapshot must advance with *every* confirmed write, so a
killed run resends only what casavi did not confirm. A DuckDB commit per write costs 1-3 ms (measured),
which would cap a sync at a few hundred writes per second; an appended, flushed journal line costs
microseconds and survives a killed process. The journal is folded into `synced` in one transaction
periodically, at the end of a sync and whenever a snapshot is opened, so a crash between a write and
the next fold loses nothing. Invariant: `synced` never claims an object casavi has not confirmed.

One file per Mandant lets Mandanten run in parallel (DuckDB allows one writer process per file).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import duckdb

from casavi_pipeline.casavi.api import ObjectKind

_SCHEMA = """
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
    action VARCHAR NOT NULL,      -- 'upsert' or 'delete'
    change VARCHAR NOT NULL,      -- 'create', 'update' or 'delete'
    ref_id VARCHAR NOT NULL,
    content_hash VARCHAR,
    payload VARCHAR
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
"""

META_SEPARATOR = "id_separator"
META_MANDANT = "mandant"


class SnapshotBusyError(RuntimeError):
    """Another process holds this Mandant's snapshot (a second run of the same Mandant)."""


@dataclass(frozen=True)
class PendingOp:
    seq: int
    kind: ObjectKind
    action: str
    change: str
    ref_id: str
    content_hash: str | None
    payload: str | None


class Snapshot:
    """One Mandant's snapshot. Use as a context manager; opening folds any journal a crash left."""

    #: Fold the journal into DuckDB after this many confirmations (bounds the replay work after a crash).
    FOLD_EVERY = 20_000

    def __init__(self, path: Path, mandant: str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.mandant = mandant
        self.journal_path = self.path.with_suffix(".journal")
        self._read_only = read_only
        self._journal = None
        self._unfolded = 0
        try:
            if read_only and not self.path.exists():
                self._con = duckdb.connect()  # an empty in-memory snapshot: nothing synced yet
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise SnapshotBusyError(
                    f"The snapshot of Mandant {mandant} ({self.path}) is in use by another process; "
                    "another run of this Mandant is probably still going. Wait for it, or stop it, then rerun."
                ) from exc
            raise
        if not read_only or not self.path.exists():
            self._con.execute(_SCHEMA)
        if not read_only:
            self._fold_journal()
            self._set_meta(META_MANDANT, mandant)

    # --- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._read_only:
            self._fold_journal()
        self._con.close()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, for the changeset's SQL."""
        return self._con

    # --- meta ----------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def set_separator(self, separator: str) -> None:
        self._set_meta(META_SEPARATOR, separator)

    @property
    def separator(self) -> str | None:
        return self.get_meta(META_SEPARATOR)

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

    def pending_total(self) -> int:
        return self._con.execute("SELECT count(*) FROM pending").fetchone()[0]  # type: ignore[index]

    def pending_ops(self, kind: ObjectKind, action: str, *, page_size: int = 5_000) -> Iterator[PendingOp]:
        """Pending operations of one kind and action, in changeset order, read page by page.

        Keyset paging (seq > last) stays correct while confirmations remove rows from `pending`.
        """
        last_seq = -1
        while True:
            rows = self._con.execute(
                "SELECT seq, kind, action, change, ref_id, content_hash, payload FROM pending "
                "WHERE kind = ? AND action = ? AND seq > ? ORDER BY seq LIMIT ?",
                [kind.value, action, last_seq, page_size],
            ).fetchall()
            if not rows:
                return
            for seq, k, a, change, ref_id, content_hash, payload in rows:
                yield PendingOp(seq, ObjectKind(k), a, change, ref_id, content_hash, payload)
            last_seq = rows[-1][0]

    # --- confirmed writes ----------------------------------------------------------------------------
    def confirm(self, kind: ObjectKind, action: str, ref_id: str, content_hash: str | None) -> None:
        """Record one write casavi confirmed. Durable against a killed process once this returns."""
        if self._journal is None:
            self._journal = self.journal_path.open("a", encoding="utf-8")
        # Reference IDs never contain tabs or newlines (ERP numbers are stripped single-line values).
        self._journal.write(f"{action}\t{kind.value}\t{ref_id}\t{content_hash or ''}\n")
        self._journal.flush()
        self._unfolded += 1
        if self._unfolded >= self.FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Apply the journal to `synced` and `pending` in one transaction, then empty the journal."""
        self._fold_journal()

    def _fold_journal(self) -> None:
        if self._journal is not None:
            os.fsync(self._journal.fileno())
            self._journal.close()
            self._journal = None
        self._unfolded = 0
        if not self.journal_path.exists() or self.journal_path.stat().st_size == 0:
            return
        con = self._con
        now = dt.datetime.now(dt.UTC)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE journal AS SELECT * FROM read_csv(?, delim='\t', header=false, "
                "quote='', escape='', all_varchar=true, "
                "columns={'action': 'VARCHAR', 'kind': 'VARCHAR', 'ref_id': 'VARCHAR', 'content_hash': 'VARCHAR'})",
                [str(self.journal_path)],
            )
            # Replaying a journal whose fold already committed is harmless: the payload comes from
            # `pending` and falls back to what `synced` already holds.
            con.execute(
                """
                INSERT INTO synced BY NAME
                SELECT j.kind, j.ref_id, j.content_hash, p.payload, ?::TIMESTAMPTZ AS synced_at
                FROM (SELECT DISTINCT ON (kind, ref_id) * FROM journal WHERE action = 'upsert') j
                LEFT JOIN pending p
                  ON p.kind = j.kind AND p.ref_id = j.ref_id AND p.action = 'upsert'
                     AND p.content_hash = j.content_hash
                ON CONFLICT (kind, ref_id) DO UPDATE SET
                    content_hash = excluded.content_hash,
                    payload = coalesce(excluded.payload, synced.payload),
                    synced_at = excluded.synced_at
                """,
                [now],
            )
            con.execute(
                "DELETE FROM synced s USING journal j "
                "WHERE j.action = 'delete' AND s.kind = j.kind AND s.ref_id = j.ref_id"
            )
            con.execute(
                "DELETE FROM pending p USING journal j "
                "WHERE p.kind = j.kind AND p.ref_id = j.ref_id AND p.action = j.action"
            )
            con.execute("DROP TABLE journal")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        con.execute("CHECKPOINT")
        # Only after the commit is durable may the journal go: a crash before this line replays it.
        self.journal_path.unlink()
