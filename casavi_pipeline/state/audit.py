"""The audit trail: one row per write attempt casavi answered, kept in the Mandant's snapshot, and one
per deletion a person approved (`state/deletions.py`: change `approve`, no status, the user who approved).

A row says when, in which run, for which Mandant, which object (kind, reference id), what was attempted
(create, update or delete), what casavi answered (the HTTP status), for an update the names of the fields
that changed, and for a refusal the names of the fields casavi named. Never a value: the trail holds no
personal data, so erasing a Mandant's personal data (`casavi_pipeline.cli.erase`) leaves it as it is.

Written like the snapshot's journal, for the same reason (`state.logs`): each attempt is one ASCII JSON
line appended to the snapshot's audit log *before* the write is confirmed in the journal, so a write is
never counted without its row. The log is folded into the snapshot's `audit` table with the journal.
Each line carries a random id, so a fold replayed after a crash (committed, file not yet removed)
adds nothing twice; a torn line is dropped and counted, like a torn journal line.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    entry VARCHAR NOT NULL,       -- random id of the line (a replayed fold adds nothing twice)
    answered_at TIMESTAMPTZ NOT NULL,
    run_id VARCHAR NOT NULL,
    mandant VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    ref_id VARCHAR NOT NULL,
    change VARCHAR NOT NULL,      -- 'create', 'update' or 'delete'
    status INTEGER,               -- casavi's HTTP status (NULL: no answer)
    fields VARCHAR[] NOT NULL,    -- an update: the casavi field names that changed (names, never values)
    refused VARCHAR[] NOT NULL,   -- a refusal: the field names casavi named
    actor VARCHAR                 -- an approval: who approved (an OS or Dagster user name); NULL for writes
);
ALTER TABLE audit ADD COLUMN IF NOT EXISTS actor VARCHAR;  -- a trail begun before approvals existed
"""

#: The columns of a row, in the order of a line of the audit file.
COLUMNS = (
    "entry",
    "answered_at",
    "run_id",
    "mandant",
    "kind",
    "ref_id",
    "change",
    "status",
    "fields",
    "refused",
)
CHANGES = ("create", "update", "delete")
#: The change of an approval's row (`record_approvals`); approvals are no lines of the log.
APPROVE = "approve"


@dataclass(frozen=True)
class Attempt:
    """One write attempt as casavi answered it (names only, never values)."""

    run_id: str
    mandant: str
    kind: str
    ref_id: str
    change: str
    status: int | None
    fields: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def line(attempt: Attempt) -> str:
    """One attempt as a log line (ASCII JSON) with a random id and the time of casavi's answer."""
    now = dt.datetime.now(dt.UTC).isoformat()
    return json.dumps([secrets.token_hex(8), now, attempt.run_id, attempt.mandant, attempt.kind,
                       attempt.ref_id, attempt.change, attempt.status, list(attempt.fields),
                       list(attempt.refused)])  # fmt: skip


def _row(line: bytes) -> tuple | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(row, list) and len(row) == len(COLUMNS)):
        return None
    entry, at, run_id, mandant, kind, ref_id, change, status, fields, refused = row
    texts = (entry, at, run_id, mandant, kind, ref_id)
    if not all(isinstance(t, str) and t for t in texts) or change not in CHANGES:
        return None
    if not (status is None or isinstance(status, int)):
        return None
    if not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names) for names in (fields, refused)
    ):
        return None
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        return None
    return entry, when, run_id, mandant, kind, ref_id, change, status, fields, refused


def read_lines(lines: Iterable[bytes]) -> tuple[pd.DataFrame, int]:
    """The whole rows of audit lines, and how many lines were dropped as torn."""
    rows, dropped = [], 0
    for raw in lines:
        row = _row(raw)
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    return as_frame(rows), dropped


def as_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """Rows of log lines as a frame of the table's columns (a write attempt has no actor)."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    frame["answered_at"] = pd.to_datetime(frame["answered_at"], utc=True)
    frame["status"] = frame["status"].astype("Int64")
    frame["actor"] = pd.Series([None] * len(frame), dtype="object")
    return frame


def record_approvals(
    con: duckdb.DuckDBPyConnection, mandant: str, approved: Iterable[tuple[str, str]], *, by: str, run_id: str
) -> None:
    """One row per approved deletion (kind, ref_id), in the caller's transaction: straight into the table
    (an approval is made while no sync holds the snapshot, so there is no log to fold)."""
    now = dt.datetime.now(dt.UTC)
    rows = [(secrets.token_hex(8), now, run_id, mandant, kind, ref_id, APPROVE, None, [], [], by)
            for kind, ref_id in approved]  # fmt: skip
    if rows:
        names = [*COLUMNS, "actor"]
        con.executemany(
            f"INSERT INTO audit ({', '.join(names)}) VALUES ({', '.join(['?'] * len(names))})", rows
        )


def fold(con: duckdb.DuckDBPyConnection, lines: Iterable[bytes]) -> int:
    """Add the lines' rows to the `audit` table (in the caller's transaction); return the torn lines.

    The caller clears the log after its transaction committed.
    """
    frame, dropped = read_lines(lines)
    if frame.empty:
        return dropped
    con.register("audit_lines", frame)
    try:
        # Only rows at or after the batch's first are compared: DuckDB skips older row groups.
        con.execute(
            f"INSERT INTO audit ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM audit_lines l "
            "WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.answered_at >= (SELECT min(answered_at) FROM audit_lines) "
            "AND a.entry = l.entry)"
        )
    finally:
        con.unregister("audit_lines")
    return dropped


def prune(con: duckdb.DuckDBPyConnection, retention_days: float, now: dt.datetime | None = None) -> int:
    """Drop the rows older than the retention; return how many went."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days)
    (dropped,) = con.execute("SELECT count(*) FROM audit WHERE answered_at < ?", [cutoff]).fetchone()  # type: ignore[misc]
    if dropped:
        con.execute("DELETE FROM audit WHERE answered_at < ?", [cutoff])
    return dropped


def run_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """Attempts of one run per kind, change and status, e.g. {"contact/update/200": 1}."""
    rows = con.execute(
        "SELECT kind, change, coalesce(status::VARCHAR, 'none'), count(*) FROM audit WHERE run_id = ? "
        "GROUP BY ALL ORDER BY ALL",
        [run_id],
    ).fetchall()
    return {f"{kind}/{change}/{status}": n for kind, change, status, n in rows}


def nights_refused(
    con: duckdb.DuckDBPyConnection, objects: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """(kind, ref_id) → on how many days (UTC) casavi refused the object since it last accepted it."""
    keys = pd.DataFrame(list(objects), columns=["kind", "ref_id"], dtype="string")
    if keys.empty:
        return {}
    con.register("refused_objects", keys)
    try:
        rows = con.execute(
            """
            SELECT a.kind, a.ref_id, count(DISTINCT (a.answered_at AT TIME ZONE 'UTC')::DATE)
            FROM audit a JOIN refused_objects o ON o.kind = a.kind AND o.ref_id = a.ref_id
            WHERE a.status >= 400 AND a.answered_at > coalesce((
                SELECT max(b.answered_at) FROM audit b
                WHERE b.kind = a.kind AND b.ref_id = a.ref_id AND b.status BETWEEN 200 AND 299
            ), '-infinity'::TIMESTAMPTZ)
            GROUP BY ALL
            """
        ).fetchall()
    finally:
        con.unregister("refused_objects")
    return {(kind, ref_id): n for kind, ref_id, n in rows}
