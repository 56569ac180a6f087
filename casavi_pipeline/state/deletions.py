"""Deletions that wait for a person (rule 6 of `docs/export-format.md`, the setting CASAVI_DELETIONS).

Deleting in casavi cannot be undone: a unit takes its documents and every contract with it, a contact
loses its portal access and history. So under `approve` (the default) no run deletes on its own: an
object that leaves the scope (a property or unit gone from the export, a contact left without a synced
contract) stays in casavi exactly as it is and becomes a *pending deletion* until a person approves it
(`casavi-pipeline deletions --mandant M --approve ID`, or the job `casavi_approve_deletions`); the next
run of the Mandant deletes it. `delete` deletes at once (revision 2's behaviour); `keep` never does.

Per changeset (`decide`, from `diff.compute_changeset`), each synced object the mapping no longer wants
is a row of the snapshot's `leaving` table with why it left and its fate:

- `delete`: deleted by this changeset (CASAVI_DELETIONS=delete, or approved);
- `wait`: a pending deletion, not approved (yet);
- `blocked`: approved, but an object that stays in casavi (one waiting unapproved) still references it,
  so casavi would refuse the delete (409): it is not sent and waits, naming what holds it (`held_by`);
- `keep`: CASAVI_DELETIONS=keep.

Why: "out of the sync rule" when the export still holds the record — its id is among those the export
composes whatever the rule (`mapping.left_out`): a tenant without a valid email, under `last-name` a
vacant unit — else "removed from the export".

What stays must stay consistent in casavi: a waiting contact is not written at all, so it keeps its last
contracts; a property the mapping still wants keeps the street of each unit that stays
(`diff.keep_streets`), since casavi refuses a property that drops a street a unit still names.

The pending deletions (`deletions` table) are state of the Mandant, in its snapshot, so they travel with
it to PostgreSQL (CASAVI_STATE_URL). A sync that passed the guards merges its changeset into them
(`merge`): new ones are listed with the time, those back in scope (or gone from casavi) end, approval
and all; a confirmed delete ends its row (the snapshot's fold). Every approval is a row of the audit
trail with who approved (`approve`).

References are read from the bodies last confirmed (else casavi's read). After `erase-personal-data`
they are unknown until objects are written again: an approved unit a waiting contact references is then
sent, casavi refuses it (409) and it stays, reported as refused and sent again by the next run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import duckdb
import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state import audit
from casavi_pipeline.state.snapshot import Snapshot


class Deletions(StrEnum):
    """CASAVI_DELETIONS: what happens to an object that leaves the scope (the module's docstring)."""

    APPROVE = "approve"  # nothing is deleted by a run: it waits as a pending deletion for a person's approval
    DELETE = "delete"  # the run deletes it (revision 2's behaviour)
    KEEP = "keep"  # never deleted: left in casavi as it is, counted as no longer synced


WHY_REMOVED = "removed from the export"
WHY_RULE = "out of the sync rule"


class Fate(StrEnum):
    """What a changeset does with an object that leaves the scope (the module's docstring)."""

    DELETE = "delete"
    WAIT = "wait"
    BLOCKED = "blocked"
    KEEP = "keep"


#: Fates whose object stays in casavi after the run.
STAYING = (Fate.WAIT, Fate.BLOCKED, Fate.KEEP)


class UnknownDeletionError(ValueError):
    """An approval names no pending deletion (or names two); the message says which, in one line."""


def decide(
    con: duckdb.DuckDBPyConnection,
    policy: Deletions,
    kinds: Sequence[ObjectKind],
    left_out: pd.DataFrame | None,
) -> None:
    """Fill `leaving`: every synced object of `kinds` the temp table `desired` lacks, with why and fate.

    In the caller's transaction. `left_out` (kind, ref_id) are the ids the export composes but the sync
    rule leaves out (None: not known, every object counts as removed from the export).
    """
    ids = pd.DataFrame(
        left_out[["kind", "ref_id"]] if left_out is not None else None,
        columns=["kind", "ref_id"],
        dtype="string",
    )
    fate = {
        Deletions.DELETE: f"'{Fate.DELETE}'",
        Deletions.KEEP: f"'{Fate.KEEP}'",
        Deletions.APPROVE: f"CASE WHEN d.approved_at IS NULL THEN '{Fate.WAIT}' ELSE '{Fate.DELETE}' END",
    }[policy]
    con.execute("DELETE FROM leaving")
    con.register("left_out_ids", ids)
    try:
        con.execute(
            f"""
            INSERT INTO leaving
            SELECT s.kind, s.ref_id, CASE WHEN o.ref_id IS NULL THEN ? ELSE ? END, {fate}, NULL
            FROM synced s
            LEFT JOIN deletions d ON d.kind = s.kind AND d.ref_id = s.ref_id
            LEFT JOIN (SELECT DISTINCT kind, ref_id FROM left_out_ids) o ON o.kind = s.kind AND o.ref_id = s.ref_id
            WHERE list_contains(?, s.kind)
              AND NOT EXISTS (SELECT 1 FROM desired x WHERE x.kind = s.kind AND x.ref_id = s.ref_id)
            """,
            [WHY_REMOVED, WHY_RULE, [kind.value for kind in kinds]],
        )
    finally:
        con.unregister("left_out_ids")
    if policy is Deletions.APPROVE:
        _block_referenced(con)


def staying_bodies(con: duckdb.DuckDBPyConnection, kinds: Sequence[str]) -> list[tuple[str, str, dict]]:
    """(kind, ref_id, body) of the objects of `kinds` that leave the scope but stay in casavi, as last
    confirmed (else as casavi's read showed them); objects whose body is not known are left out."""
    rows = con.execute(
        """
        SELECT l.kind, l.ref_id, coalesce(s.payload, r.payload)
        FROM leaving l
        LEFT JOIN synced s ON s.kind = l.kind AND s.ref_id = l.ref_id
        LEFT JOIN remote r ON r.kind = l.kind AND r.ref_id = l.ref_id
        WHERE list_contains(?, l.fate) AND list_contains(?, l.kind)
        ORDER BY l.kind, l.ref_id
        """,
        [[str(fate) for fate in STAYING], list(kinds)],
    ).fetchall()
    return [(kind, ref_id, json.loads(payload)) for kind, ref_id, payload in rows if payload]


def _block_referenced(con: duckdb.DuckDBPyConnection) -> None:
    """Approved objects that an object staying in casavi references cannot be deleted (casavi: 409):
    they wait, naming the first that holds them. Targets in delete order, so a unit kept this way holds
    its property in turn."""
    for target in api.DELETE_ORDER:
        references = [ref for ref in api.REFERENCES if ref.target is target]
        approved = {
            ref_id
            for (ref_id,) in con.execute(
                "SELECT ref_id FROM leaving WHERE kind = ? AND fate = ?", [target.value, str(Fate.DELETE)]
            ).fetchall()
        }
        if not references or not approved:
            continue
        held: dict[str, str] = {}
        for kind, ref_id, body in staying_bodies(con, sorted({ref.kind.value for ref in references})):
            for reference in references:
                if reference.kind.value == kind:
                    for target_id in api.referenced_ids(reference, body):
                        if target_id in approved:
                            held.setdefault(target_id, f"{kind} {ref_id}")
        if held:
            con.executemany(
                "UPDATE leaving SET fate = ?, held_by = ? WHERE kind = ? AND ref_id = ?",
                [(str(Fate.BLOCKED), by, target.value, ref_id) for ref_id, by in held.items()],
            )


def guard_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Per kind, what of `leaving` the mass-deletion guard counts (`sync.guards` says why): objects not
    already waiting from an earlier run, and deletions nobody approved."""
    rows = con.execute(
        """
        SELECT l.kind, count(*) FROM leaving l
        LEFT JOIN deletions d ON d.kind = l.kind AND d.ref_id = l.ref_id
        WHERE d.ref_id IS NULL OR (l.fate = ? AND d.approved_at IS NULL)
        GROUP BY l.kind
        """,
        [str(Fate.DELETE)],
    ).fetchall()
    return dict(rows)


def fate_counts(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    """(kind, fate) → objects of the current changeset that leave the scope."""
    return {
        (k, f): n
        for k, f, n in con.execute("SELECT kind, fate, count(*) FROM leaving GROUP BY ALL").fetchall()
    }


def would_wait(con: duckdb.DuckDBPyConnection, limit: int) -> tuple[list[dict[str, object]], int]:
    """The objects of the current changeset that stay in casavi out of scope (the first `limit`, in
    delete order) with whether a real run would list them for the first time (`new`), and how many would
    be new in all: a dry run's view."""
    rows = con.execute(
        f"""
        SELECT l.kind, l.ref_id, l.why, l.fate, d.ref_id IS NULL AS new, count(*) FILTER (d.ref_id IS NULL) OVER ()
        FROM leaving l LEFT JOIN deletions d ON d.kind = l.kind AND d.ref_id = l.ref_id
        WHERE list_contains(?, l.fate)
        ORDER BY list_position({_delete_order()}, l.kind), l.ref_id LIMIT ?
        """,
        [[str(fate) for fate in STAYING], limit],
    ).fetchall()
    listed = [{"kind": k, "ref_id": r, "why": w, "fate": f, "new": n} for k, r, w, f, n, _ in rows]
    return listed, rows[0][-1] if rows else 0


@dataclass(frozen=True)
class Merged:
    """What a sync's merge changed in the pending deletions."""

    new: list[tuple[str, str]]  # (kind, ref_id) listed for the first time
    returned: list[tuple[str, str]]  # approved, but back in scope: synced, not deleted; approval dropped


def merge(snapshot: Snapshot, kinds: Sequence[str], run_id: str) -> Merged:
    """Take the changeset's `leaving` into the pending deletions (a sync that passed the guards does it,
    before it writes): new ones listed from now by the run `run_id`, ended ones (back in scope, or gone
    from casavi) removed. Only `kinds` (those the changeset covered) are touched."""
    con = snapshot.connection
    now = dt.datetime.now(dt.UTC)
    gone = "list_contains($kinds, d.kind) AND NOT EXISTS (SELECT 1 FROM leaving l WHERE l.kind = d.kind AND l.ref_id = d.ref_id)"
    con.execute("BEGIN TRANSACTION")
    try:
        returned = con.execute(
            f"SELECT d.kind, d.ref_id FROM deletions d WHERE {gone} AND d.approved_at IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM synced s WHERE s.kind = d.kind AND s.ref_id = d.ref_id) ORDER BY ALL",
            {"kinds": list(kinds)},
        ).fetchall()
        con.execute(f"DELETE FROM deletions d WHERE {gone}", {"kinds": list(kinds)})
        con.execute(
            "UPDATE deletions d SET why = l.why FROM leaving l "
            "WHERE l.kind = d.kind AND l.ref_id = d.ref_id AND l.why <> d.why"
        )
        fresh = (
            "FROM leaving l WHERE list_contains(?, l.fate) AND NOT EXISTS "
            "(SELECT 1 FROM deletions d WHERE d.kind = l.kind AND d.ref_id = l.ref_id)"
        )
        staying = [str(fate) for fate in STAYING]
        new = con.execute(f"SELECT l.kind, l.ref_id {fresh} ORDER BY ALL", [staying]).fetchall()
        con.execute(
            f"INSERT INTO deletions SELECT l.kind, l.ref_id, l.why, ?, ?, NULL, NULL {fresh}", [now, run_id, staying]
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return Merged(new=new, returned=returned)


@dataclass(frozen=True)
class PendingDeletion:
    kind: str
    ref_id: str
    since: dt.datetime
    since_run: str  # the run that first listed it
    why: str
    approved_at: dt.datetime | None
    approved_by: str | None
    held_by: str | None  # approved, but kept waiting: the waiting object that references it

    @property
    def waits_for_a_person(self) -> bool:
        """Not approved, or approved but held by an object that is not."""
        return self.approved_at is None or self.held_by is not None


def minute(when: dt.datetime) -> str:
    """A time as the listings show it: UTC, to the minute (`2025-01-31 02:14Z`)."""
    return f"{when.astimezone(dt.UTC):%Y-%m-%d %H:%M}Z"


def _delete_order() -> str:
    return "[" + ", ".join(f"'{kind.value}'" for kind in api.DELETE_ORDER) + "]"


def _has_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """A snapshot made before pending deletions existed, opened read-only, has not got their tables."""
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('deletions', 'leaving')"
    ).fetchone()
    return bool(found and found[0] == 2)


def pending(snapshot: Snapshot) -> list[PendingDeletion]:
    """The Mandant's pending deletions, in the order a run deletes them (contacts, units, properties)."""
    con = snapshot.connection
    if not _has_tables(con):
        return []
    rows = con.execute(
        f"""
        SELECT d.kind, d.ref_id, d.since, d.since_run, d.why, d.approved_at, d.approved_by, l.held_by
        FROM deletions d LEFT JOIN leaving l ON l.kind = d.kind AND l.ref_id = d.ref_id AND l.fate = ?
        ORDER BY list_position({_delete_order()}, d.kind), d.ref_id
        """,
        [str(Fate.BLOCKED)],
    ).fetchall()
    return [PendingDeletion(*row) for row in rows]


def set_hash(rows: Sequence[PendingDeletion]) -> str:
    """A short hash of the set of objects that wait for a person: it changes when that set does."""
    waiting = sorted(f"{row.kind} {row.ref_id}" for row in rows if row.waits_for_a_person)
    return hashlib.sha256("\n".join(waiting).encode()).hexdigest()[:16]


def _chosen(rows: list[PendingDeletion], ids: Sequence[str], mandant: str) -> list[PendingDeletion]:
    """The pending deletions `ids` name: a reference id, or `kind:id` where an id names two kinds."""
    chosen, unknown = [], []
    kinds = {kind.value for kind in ObjectKind}
    for given in ids:
        kind, _, ref_id = given.partition(":")
        if kind not in kinds or not ref_id:
            kind, ref_id = "", given
        matches = [row for row in rows if row.ref_id == ref_id and kind in ("", row.kind)]
        if not matches:
            unknown.append(given)
        elif len(matches) > 1:
            which = " or ".join(f"{row.kind}:{ref_id}" for row in matches)
            raise UnknownDeletionError(
                f"Mandant {mandant}: {ref_id} names {len(matches)} objects waiting for deletion; say which: "
                f"{which}. Nothing was approved."
            )
        else:
            chosen.append(matches[0])
    if unknown:
        raise UnknownDeletionError(
            f"Mandant {mandant}: no pending deletion with reference id {', '.join(unknown)} "
            f"(`casavi-pipeline deletions --mandant {mandant}` lists them). Nothing was approved."
        )
    return chosen


def approve(snapshot: Snapshot, ids: Sequence[str] | None, *, by: str, run_id: str) -> list[PendingDeletion]:
    """Approve the pending deletions `ids` names (None: all), recording who in the audit trail; return
    those newly approved (approving one again changes nothing). `UnknownDeletionError` when an id names
    no pending deletion: then nothing is approved. The next run of the Mandant deletes them."""
    rows = pending(snapshot)
    chosen = rows if ids is None else _chosen(rows, ids, snapshot.mandant)
    fresh = [row for row in chosen if row.approved_at is None]
    if not fresh:
        return []
    con = snapshot.connection
    now = dt.datetime.now(dt.UTC)
    con.execute("BEGIN TRANSACTION")
    try:
        con.executemany(
            "UPDATE deletions SET approved_at = ?, approved_by = ? WHERE kind = ? AND ref_id = ?",
            [(now, by, row.kind, row.ref_id) for row in fresh],
        )
        audit.record_approvals(
            con, snapshot.mandant, [(row.kind, row.ref_id) for row in fresh], by=by, run_id=run_id
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return fresh
