"""One sync of a Mandant as a run sees it: refuse when a guard fails, write, count every attempt of the run.

A run's sync step may be retried (casavi down, a timeout) and each attempt resumes with what is still
pending; what the run did is the sum of its attempts, kept in the snapshot's `meta` so a retried step
reports the whole run. A sync that passed the guards takes its changeset's objects out of scope into the
Mandant's pending deletions before it writes (`state/deletions.py`). A dry run writes nothing, lists
nothing as pending and previews the changeset instead, also past a failing guard (saying that a real
run would stop there).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass

from casavi_pipeline.casavi import api
from casavi_pipeline.interrupts import held
from casavi_pipeline.mapping.scope import SyncRule
from casavi_pipeline.state import deletions
from casavi_pipeline.state.deletions import Merged, PendingDeletion
from casavi_pipeline.state.diff import ChangesetSummary
from casavi_pipeline.state.listing import RemoteCache
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.sync.apply import SyncReport, WriteClient, apply_changeset
from casavi_pipeline.sync.guards import GuardPolicy, GuardResult, evaluate_guards, record_sync_rule
from casavi_pipeline.sync.rejections import RejectionPolicy, RejectionVerdict, assess

#: A dry run lists this many deletions by reference id (the mass-deletion guard keeps them few anyway).
DELETIONS_LISTED = 1_000
#: Snapshot meta: + run id → its attempts so far and the writes its first set out with (`begin_attempt`);
#: + run id / attempt → what that attempt sent, and casavi confirmed or rejected (`end_attempt`).
_ATTEMPTS = "run/"

#: Per run: name → label ("unit/create") → count; "attempts" → {"n": attempts}; "planned" → {"n": the
#: writes pending when its first attempt started}.
RunTotals = dict[str, dict[str, int]]


def refusal(snapshot: Snapshot, guards: GuardPolicy, identity: str) -> GuardResult | None:
    """Why nothing may be written: a guard failed, or the pending changeset is not of the run `identity`.

    The guards run as blocking checks too; repeating them here means materializing the sync alone cannot
    bypass them.
    """
    if failed := evaluate_guards(guards, snapshot).failures:
        return failed[0]
    return stale(snapshot, identity)


def stale(snapshot: Snapshot, identity: str) -> GuardResult | None:
    """Why the pending changeset may not be used by the run `identity`: it is another run's, and may be
    stale (the ERP or casavi changed since)."""
    if snapshot.changeset_identity() == identity:
        return None
    return GuardResult(
        False,
        f"Mandant {snapshot.mandant}: the pending changeset was not computed in this run (it is of run "
        f"{snapshot.changeset_identity() or 'none'}), so it may be stale; nothing was sent. Materialize "
        "casavi_changeset and casavi_sync together (the job casavi_sync_job does).",
    )


def begin_attempt(snapshot: Snapshot, run_id: str, *, planned: int) -> str:
    """Record that an attempt of the run starts writing, with `planned` writes (the run keeps its first
    attempt's), before its first write; return the attempt's id (for `end_attempt`)."""
    key = f"{_ATTEMPTS}{run_id}"
    previous = json.loads(snapshot.get_meta(key) or "{}")
    started = {"attempts": previous.get("attempts", 0) + 1, "planned": previous.get("planned", planned)}
    # Only this run's records are ever read again: earlier runs' rows go (a few rows, not some per run).
    snapshot.connection.execute(
        "DELETE FROM meta WHERE starts_with(key, ?) AND key <> ? AND NOT starts_with(key, ?)",
        [_ATTEMPTS, key, f"{key}/"],
    )
    snapshot.set_meta(key, json.dumps(started, sort_keys=True))
    return f"{key}/{started['attempts']}"


def end_attempt(snapshot: Snapshot, attempt: str, report: SyncReport) -> None:
    """Record what one attempt sent and casavi confirmed or rejected."""
    counts = {"sent": report.sent, "confirmed": report.confirmed, "rejected": report.rejected_counts()}
    snapshot.set_meta(attempt, json.dumps({name: dict(counter) for name, counter in counts.items()}, sort_keys=True))


def recorded_totals(snapshot: Snapshot, run_id: str) -> RunTotals | None:
    """What the run sent and casavi confirmed or rejected so far, summed over its attempts (None: it wrote
    nothing yet); also after an attempt failed or was interrupted. Read from the snapshot's local file
    alone: it is there when the state database is gone."""
    key = f"{_ATTEMPTS}{run_id}"
    started = snapshot.get_meta(key)
    if started is None:
        return None
    record = json.loads(started)
    totals: RunTotals = {"sent": {}, "confirmed": {}, "rejected": {}}
    for (value,) in snapshot.connection.execute(
        "SELECT value FROM meta WHERE starts_with(key, ?) ORDER BY key", [f"{key}/"]
    ).fetchall():
        for name, counts in json.loads(value).items():
            for label, n in counts.items():
                totals[name][label] = totals[name].get(label, 0) + n
    totals["attempts"] = {"n": record["attempts"]}
    totals["planned"] = {"n": record["planned"]}
    return totals


def confirmed_line(totals: RunTotals) -> str:
    """What casavi confirmed of a run that stopped half-way, for the lines that tell it."""
    return f"{sum(totals['confirmed'].values())} of {totals['planned']['n']} writes confirmed by casavi"


@dataclass(frozen=True)
class WriteOutcome:
    """What a sync attempt wrote, what its run wrote so far, and the verdict on casavi's refusals."""

    report: SyncReport  # this attempt
    totals: RunTotals  # the run: every attempt so far, this one included
    audit: dict[str, int]  # the run's rows of the audit trail per kind, change and status
    verdict: RejectionVerdict
    merged: Merged  # what this attempt changed in the pending deletions
    pending: list[PendingDeletion]  # the pending deletions after it

    @property
    def confirmed(self) -> int:
        return sum(self.totals["confirmed"].values())

    @property
    def rejected(self) -> int:
        return sum(self.totals["rejected"].values())

    @property
    def summary(self) -> str:
        return (
            f"Mandant {self.report.mandant}: {self.confirmed} writes confirmed in this run, "
            f"{self.rejected} rejected ({self.report.seconds:.1f}s this attempt)"
        )


def write_changeset(
    snapshot: Snapshot,
    cache: RemoteCache,
    client: WriteClient,
    *,
    writes: int,
    guards: GuardPolicy,
    rejections: RejectionPolicy,
    verify: bool,
    run_id: str,
    on_progress: Callable[[SyncReport], None],
) -> WriteOutcome:
    """Send the pending changeset (`writes` operations) after the guards passed; count the attempt.

    Whatever stops the writes (casavi down, an interrupt) propagates after this attempt's counts were
    recorded (`recorded_totals` sums the run's) and what casavi confirmed deleted left the listing.
    """
    if snapshot.synced_total() == 0 or guards.allow_separator_change:
        snapshot.set_separator(guards.separator)
    record_sync_rule(guards, snapshot)
    merged = deletions.merge(snapshot, snapshot.changeset_kinds(), run_id)
    if writes:
        # Marked before the first write (a kill gives no chance after it): a listing older than
        # this misses our writes and must not be reused.
        cache.mark_written()
    attempt = begin_attempt(snapshot, run_id, planned=writes)
    report = SyncReport(mandant=snapshot.mandant)
    try:
        apply_changeset(
            snapshot,
            client,
            report=report,
            verify=verify,
            on_progress=on_progress,
            progress_every=1,
            run_id=run_id,
        )
    finally:
        with held():  # whole also when a second interrupt arrives (`casavi_pipeline.interrupts`)
            end_attempt(snapshot, attempt, report)
            cache.forget(report.deleted)
    totals = recorded_totals(snapshot, run_id)
    assert totals is not None  # `begin_attempt` recorded the run
    audit = snapshot.audit_summary(run_id)
    nights = snapshot.nights_refused([(r.kind, r.ref_id) for r in report.rejections])
    return WriteOutcome(
        report,
        totals,
        audit,
        assess(report.rejections, report.total_sent, nights, rejections),
        merged,
        deletions.pending(snapshot),  # after the fold: a confirmed delete ended its row
    )


@dataclass(frozen=True)
class DryRun:
    line: str  # one line: the writes not sent, the first deletions and pending deletions by reference id
    deletions: list[dict[str, str]]  # kind, ref_id: the first `DELETIONS_LISTED` deletions
    waiting: list[dict[str, object]]  # kind, ref_id, why, fate, new: what would stay in casavi out of scope
    stop: str | None = None  # one line, when a guard would stop a real run


def _ids(rows: list[dict], total: int) -> str:
    first = ", ".join(str(row["ref_id"]) for row in rows[:10])
    return f" ({first}{', …' if total > 10 else ''})" if total else ""


def preview_dry_run(
    snapshot: Snapshot, summary: ChangesetSummary, sync_rule: SyncRule, stop: GuardResult | None = None
) -> DryRun:
    """What a sync would write, deletions by reference id, and what would wait for deletion (or be kept)
    instead: a person checks them before a real run. `stop` is the guard that would stop a real run."""
    listed = [
        {"kind": op.kind.value, "ref_id": op.ref_id}
        for op in itertools.islice(
            itertools.chain.from_iterable(snapshot.pending_ops(kind, "delete") for kind in api.DELETE_ORDER),
            DELETIONS_LISTED,
        )
    ]
    waiting, new_total = deletions.would_wait(snapshot.connection, DELETIONS_LISTED)
    deletes = sum(changes.delete for changes in summary.kinds.values())
    staying = sum(changes.waiting + changes.kept for changes in summary.kinds.values())
    new = [row for row in waiting if row["new"]]
    line = (
        f"DRY RUN for Mandant {snapshot.mandant} (sync rule {sync_rule.value}): {summary.total_writes} writes "
        f"not sent, {deletes} of them deletions{_ids(listed, deletes)}"
    )
    if staying:
        line += (
            f"; {staying} out of scope would stay in casavi, {new_total} of them new{_ids(new, new_total)}"
        )
    reason = f"Mandant {snapshot.mandant}: a real run would stop here: {stop.reason}" if stop else None
    return DryRun(line, listed, waiting, reason)
