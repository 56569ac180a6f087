"""How the sync's assets speak to Dagster: metadata, tables, check results, progress lines, and casavi's
expected failures as one-line `dg.Failure`s, built from the reports of `casavi_pipeline.sync`. Kept apart
from the assets so their bodies read as the steps they take.

Reference ids, kinds, counts and field names only: never a value of a record (personal data).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import dagster as dg

from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.casavi.errors import (
    CasaviAuthError,
    CasaviModelMismatchError,
    CasaviRateLimitedError,
    CasaviUnavailableError,
)
from casavi_pipeline.casavi.transport import ClientStats
from casavi_pipeline.database import StateUnavailableError
from casavi_pipeline.defs.resources import CasaviResource, SyncPolicy
from casavi_pipeline.interrupts import interrupted_query
from casavi_pipeline.state import deletions
from casavi_pipeline.state.deletions import Deletions, PendingDeletion
from casavi_pipeline.state.diff import ChangesetSummary
from casavi_pipeline.state.snapshot import Drift, Snapshot
from casavi_pipeline.sync.guards import GuardResult
from casavi_pipeline.sync.progress import Progress, duration
from casavi_pipeline.sync.read import RemoteRead
from casavi_pipeline.sync.rejections import RejectionVerdict
from casavi_pipeline.sync.run import DryRun, RunTotals, WriteOutcome, confirmed_line, recorded_totals

#: How a sync stopped by a person (Ctrl-C, SIGTERM, terminate) describes itself; the demo looks for it.
INTERRUPTED = "sync stopped by an interrupt"
#: The check on casavi_sync that lists what casavi refused (the alerts escalate on it).
REJECTIONS_CHECK = "casavi_rejections"
REJECTIONS_LISTED = 50
#: The check on casavi_sync naming the deletions that wait for a person (the deletions alert reads it).
PENDING_DELETIONS_CHECK = "casavi_pending_deletions"
#: Pending deletions named in the check's description (its table lists up to PENDING_TABLE_ROWS).
PENDING_NAMED = 10
PENDING_TABLE_ROWS = 1_000
DRIFT_LISTED = 10
#: What each kind of drift is called in the check's description.
DRIFT_LABELS = {
    "changed": "changed in casavi",
    "deleted": "deleted in casavi",
    "unknown": "with our prefix but never written by us",
}


def say(context: dg.AssetExecutionContext) -> Callable[[str], None]:
    """A line into the run's events: the UI's event log, Dagster's console logger (`dg launch`), and the
    terminal of `casavi-pipeline sync` and the demo, which follow the run (`cli.sync.Follower`)."""
    return context.log.info


@contextmanager
def casavi_client(
    casavi: CasaviResource, *, writes: bool = False, on_wait: Callable[[str], None] | None = None
) -> Iterator[CasaviClient]:
    """A client whose expected failures become one-line `dg.Failure`s naming casavi's URL.

    With `writes`, an interrupt is a person stopping the run (`interrupts_stop_the_step`): the retry
    policy must not start the writes again. What casavi confirmed is in the snapshot.
    `on_wait` hears when the client waits for a failing casavi, and when it answers again.
    """
    with casavi.get_client(on_wait) as client:
        try:
            with interrupts_stop_the_step() if writes else nullcontext():
                yield client
        except CasaviAuthError as exc:
            raise dg.Failure(
                description=f"casavi at {casavi.target} refused the credentials ({exc.status}): set valid "
                "CASAVI_API_KEY and CASAVI_API_SECRET (one login attempt per run; nothing was retried).",
                allow_retries=False,
            ) from None
        except CasaviRateLimitedError as exc:
            raise dg.Failure(
                description=f"casavi at {casavi.target} kept refusing with 429 ({exc}). Confirmed writes "
                "are recorded; the next attempt resumes.",
            ) from None
        except CasaviUnavailableError as exc:
            raise dg.Failure(
                description=f"casavi at {casavi.target} is unavailable ({exc}). Is it up and is "
                "CASAVI_BASE_URL right? Confirmed writes are recorded; the next attempt resumes.",
            ) from None
        except CasaviModelMismatchError as exc:  # every object of the kind would fail alike: stop
            raise dg.Failure(description=f"casavi at {casavi.target}: {exc}", allow_retries=False) from None


@contextmanager
def interrupts_stop_the_step() -> Iterator[None]:
    """An interrupt (Ctrl-C, SIGTERM, a terminate from the UI) is a person stopping the run: a Failure the
    retry policy leaves alone (Dagster retries a step it interrupted, and an interrupted DuckDB query is an
    ordinary RuntimeError to it: `casavi_pipeline.interrupts`). An interrupt that arrives while the step
    fails already (the state's cleanup delivers one it held) keeps that failure's words and counts.
    """
    try:
        yield
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not interrupted_query(exc):
            raise
        failing = exc.__context__
        if isinstance(failing, dg.Failure):
            description, metadata = failing.description, failing.metadata
        else:
            description = f"{INTERRUPTED}: what casavi confirmed is recorded; the next run sends the rest."
            metadata = {"interrupted": True}
        raise dg.Failure(description=description, metadata=metadata, allow_retries=False) from None


@contextmanager
def stopped_with_counts(context: dg.AssetExecutionContext, snapshot: Snapshot) -> Iterator[None]:
    """A sync stopped half-way (casavi gone, an interrupt, the state database gone) fails with what casavi
    confirmed in the run so far in its metadata (`totals_metadata`: every attempt, from the snapshot, where
    `write_changeset` recorded them before the error left it), so every summary can count it. An attempt
    the retry policy repeats says so, with when: the wait is no silence. The state database gone is named
    in one line and not retried: another attempt could not record anything either.
    """
    try:
        yield
    except dg.Failure as failure:
        totals = recorded_totals(snapshot, context.run.run_id)
        if totals is None:  # stopped before anything was sent
            raise
        _say_retry(context, failure, totals)
        raise dg.Failure(
            description=failure.description,
            metadata={**failure.metadata, **totals_metadata(totals)},
            allow_retries=failure.allow_retries,
        ) from None
    except StateUnavailableError as exc:
        totals = recorded_totals(snapshot, context.run.run_id)
        confirmed = f"{confirmed_line(totals)}; the next run sends the rest" if totals else "nothing confirmed yet"
        raise dg.Failure(
            description=f"{exc} ({confirmed}.)",
            metadata=totals_metadata(totals) if totals else {},
            allow_retries=False,
        ) from None


@contextmanager
def writing_client(
    context: dg.AssetExecutionContext, casavi: CasaviResource, snapshot: Snapshot
) -> Iterator[CasaviClient]:
    """The sync's client: its expected failures one line (`casavi_client`), its waits for casavi said, and
    a stop half-way counted (`stopped_with_counts`)."""
    with (
        stopped_with_counts(context, snapshot),
        casavi_client(casavi, writes=True, on_wait=say(context)) as client,
    ):
        yield client


def _say_retry(context: dg.AssetExecutionContext, failure: dg.Failure, totals: RunTotals) -> None:
    policy = context.op_def.retry_policy
    if not failure.allow_retries or policy is None or context.retry_number >= policy.max_retries:
        return
    attempt = context.retry_number + 1
    # Dagster adds jitter to this when it waits; without it, the wait it is about.
    delay = dg.RetryPolicy(delay=policy.delay, backoff=policy.backoff).calculate_delay(attempt)
    reason = (failure.description or "it failed").splitlines()[0].split(". ")[0]  # its first sentence
    say(context)(
        f"Mandant {context.partition_key}: attempt {attempt} of {policy.max_retries + 1} of casavi_sync "
        f"stopped ({reason}); {confirmed_line(totals)} so far; the next attempt starts in about {delay:.0f} s"
    )


@contextmanager
def state_database_failures() -> Iterator[None]:
    """The state database (CASAVI_STATE_URL) unreachable, or gone during the step: one line naming it.

    Not retried: without it the step can record neither what casavi confirms nor the account's request
    budget; what was confirmed before is recorded, and the next run resumes with the rest. Around the
    whole step body, so that a snapshot failing to save on the way out says the same line.
    """
    try:
        yield
    except StateUnavailableError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def progress(
    context: dg.AssetExecutionContext, casavi: CasaviResource, client: CasaviClient, total: int, every: float
) -> Progress:
    """The sync's progress lines, into the run's events (`say`)."""
    return Progress(
        context.partition_key,
        total,
        every=every,
        emit=say(context),
        expected_seconds=casavi.expected_seconds,
        stats=client.stats,
    )


def remote_metadata(read: RemoteRead, stats: ClientStats) -> dict[str, object]:
    listing = read.listing
    return {
        "listing": read.how,
        "full_listing": listing.full,
        "reused_listing": listing.reused,
        "account_objects": listing.account_objects,
        "requests": read.requests,
        "pages": read.pages,
        **stats.rate_figures(),
        "duration_s": round(listing.seconds, 2),
        "adopted": sum(read.adopted.values()),
        **{f"mandant/{kind}": n for kind, n in sorted(read.remote_counts.items())},
        **{f"listed/{kind}": n for kind, n in sorted(listing.listed.items())},
        **{f"changed/{kind}": n for kind, n in sorted(listing.changed.items())},
        **{f"skipped/{kind}": n for kind, n in sorted(listing.skipped.items()) if n},
        "outside_model": read.foreign.count,
        **({"first_outside_model": dg.MetadataValue.json(read.foreign.lines())} if read.foreign.count else {}),
    }


def drift_check_result(drift: Drift) -> dg.AssetCheckResult:
    """WARN naming how casavi drifted and how to restore the ERP's state; passed when it did not."""
    metadata: dict[str, object] = {
        f"{kind}/{what}": count for (kind, what), (count, _) in sorted(drift.found.items())
    }
    for key in DRIFT_LABELS:
        if drift.ids(key):
            metadata[f"first_{key}"] = dg.MetadataValue.json(drift.ids(key)[:DRIFT_LISTED])
    parts = [f"{drift.count(key)} {label}" for key, label in DRIFT_LABELS.items() if drift.count(key)]
    if not parts:
        return dg.AssetCheckResult(
            passed=True, description="casavi holds what we confirmed", metadata=metadata
        )
    first = (drift.ids("changed") + drift.ids("deleted") + drift.ids("unknown"))[0]
    reason = (
        f"casavi drifted: {'; '.join(parts)} (first: {first}). Left as it is; set CASAVI_REPAIR_DRIFT=true "
        "(or repair_drift in the changeset's config) to restore the ERP's state"
    )
    return dg.AssetCheckResult(
        passed=False, severity=dg.AssetCheckSeverity.WARN, description=reason, metadata=metadata
    )


def guard_check_result(result: GuardResult, spec: dg.AssetCheckSpec, *, dry_run: bool) -> dg.AssetCheckResult:
    """ERROR when a guard fails (it blocks the sync); in a dry run a WARN, so the preview still shows
    what the run would do (the preview says that a real run would stop here)."""
    reason = (
        f"{result.reason} (dry run: a real run would stop here)"
        if dry_run and not result.passed
        else result.reason
    )
    return dg.AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.WARN if dry_run else dg.AssetCheckSeverity.ERROR,
        description=reason,
        metadata={"reason": reason, **result.metadata},
    )


def held_lines(mandant: str, rows: list[PendingDeletion]) -> list[str]:
    """One line per approved deletion that is not sent because an unapproved object still references it."""
    return [
        f"Mandant {mandant}: {row.kind} {row.ref_id} is approved for deletion but kept waiting: {row.held_by} "
        f"(waiting for deletion, not approved) still references it, and casavi refuses to delete what is "
        f"referenced (409). Approve {row.held_by} too, or put it back into the export."
        for row in rows
        if row.held_by
    ]


def _approval(row: PendingDeletion) -> str:
    if row.approved_at is None:
        return "no"
    when = f"{row.approved_by}, {deletions.minute(row.approved_at)}"
    return f"yes ({when}), held by {row.held_by}" if row.held_by else f"yes ({when})"


def pending_deletions_table(rows: list[PendingDeletion]) -> dg.MetadataValue:
    """The pending deletions as a table: reference ids, times, reasons and user names only."""
    records = [
        dg.TableRecord({"kind": r.kind, "ref_id": r.ref_id, "since": deletions.minute(r.since), "why": r.why,
                        "approved": _approval(r)})
        for r in rows[:PENDING_TABLE_ROWS]
    ]  # fmt: skip
    columns = [dg.TableColumn(name) for name in ("kind", "ref_id", "since", "why", "approved")]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=columns))


def pending_deletions_check(
    mandant: str, rows: list[PendingDeletion], run_id: str | None, setting: Deletions
) -> dg.AssetCheckResult:
    """WARN naming the objects that wait for a person before casavi deletes them (ids only), and how to
    approve; passed when none waits. `new`: those the run `run_id` listed first, in any of its attempts
    (None: a dry run, which lists nothing). Under CASAVI_DELETIONS=keep nothing waits: it counts what
    casavi keeps unsynced."""
    new = sum(row.since_run == run_id for row in rows) if run_id else 0
    waiting = [row for row in rows if row.waits_for_a_person]
    metadata: dict[str, object] = {
        "setting": setting.value,
        "pending": len(rows),
        "waiting": len(waiting),
        "approved": sum(row.approved_at is not None for row in rows),
        "new": new,  # the deletions alert tells a person when a run adds some
        "pending_set": deletions.set_hash(rows),
        "deletions": pending_deletions_table(rows),
    }
    passing = {
        Deletions.KEEP: f"{len(rows)} objects out of scope are kept in casavi, no longer synced (CASAVI_DELETIONS=keep)",
        Deletions.DELETE: "CASAVI_DELETIONS=delete: the run deletes what leaves the scope, nothing waits",
        Deletions.APPROVE: "no deletion waits for a person",
    }
    if setting is not Deletions.APPROVE or not waiting:
        return dg.AssetCheckResult(
            check_name=PENDING_DELETIONS_CHECK, passed=True, description=passing[setting], metadata=metadata
        )
    named = ", ".join(f"{row.kind} {row.ref_id} ({row.why})" for row in waiting[:PENDING_NAMED])
    more = f" and {len(waiting) - PENDING_NAMED} more" if len(waiting) > PENDING_NAMED else ""
    description = (
        f"Mandant {mandant}: {len(waiting)} objects wait for a person before casavi deletes them ({new} new "
        f"in this run): {named}{more}. casavi keeps them as they are until then. Check them, then approve: "
        f"casavi-pipeline deletions --mandant {mandant} --approve ID (or the job casavi_approve_deletions)"
    )
    return dg.AssetCheckResult(
        check_name=PENDING_DELETIONS_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def _preview_table(summary: ChangesetSummary) -> dg.MetadataValue:
    rows = [dg.TableRecord(record) for record in summary.preview.to_dict("records")]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("kind"),
            dg.TableColumn("change"),
            dg.TableColumn("ref_id"),
            dg.TableColumn("fields", description="casavi fields that change (names only, never values)"),
        ]
    )
    return dg.MetadataValue.table(rows, schema=schema)


def changeset_metadata(
    summary: ChangesetSummary, casavi: CasaviResource, policy: SyncPolicy
) -> dict[str, object]:
    return {
        "sync_rule": policy.sync_rule.value,
        "writes": summary.total_writes,
        "expected_duration": duration(casavi.expected_seconds(summary.total_writes)),
        **{k: dg.MetadataValue.int(v) for k, v in summary.counts().items()},
        "preview": _preview_table(summary),
    }


def report_pending_deletions(
    context: dg.AssetExecutionContext, outcome: WriteOutcome, setting: Deletions
) -> dg.AssetCheckResult:
    """The sync's lines about what left the scope (what waits, what came back), and its check result."""
    mandant = context.partition_key
    check = pending_deletions_check(mandant, outcome.pending, context.run.run_id, setting)
    (context.log.info if check.passed else context.log.warning)(check.description or "")
    for kind, ref_id in outcome.merged.returned:
        context.log.info(
            f"Mandant {mandant}: {kind} {ref_id} was approved for deletion but is back in scope: synced, "
            "not deleted; its approval was dropped"
        )
    return check


def dry_run_metadata(preview: DryRun, changeset: dict[str, object]) -> dict[str, object]:
    would_wait = [dg.TableRecord({**row, "new": bool(row["new"])}) for row in preview.waiting]
    return {
        "dry_run": True,
        **changeset,
        "deletions": dg.MetadataValue.table(
            [dg.TableRecord(d) for d in preview.deletions],
            schema=dg.TableSchema(columns=[dg.TableColumn("kind"), dg.TableColumn("ref_id")]),
        ),
        # what a real run would leave in casavi out of scope: pending deletions (new: listed first now)
        "would_wait": dg.MetadataValue.table(
            would_wait,
            schema=dg.TableSchema(
                columns=[
                    *(dg.TableColumn(n) for n in ("kind", "ref_id", "why", "fate")),
                    dg.TableColumn("new", "bool"),
                ]
            ),
        ),
        **({"would_stop": preview.stop} if preview.stop else {}),
    }


def totals_metadata(totals: RunTotals) -> dict[str, object]:
    """What the run sent and casavi confirmed or rejected so far, per kind and change (`sent/unit/create`),
    summed over its attempts, and the writes it set out with (`planned`): on the sync's materialization,
    and on its failure when it stopped half-way. `casavi-pipeline sync` and the demo count from these."""
    metadata: dict[str, object] = {
        "confirmed": sum(totals["confirmed"].values()),
        "rejected": sum(totals["rejected"].values()),
        "planned": totals["planned"]["n"],
        "attempts": totals["attempts"]["n"],
    }
    for name in ("sent", "confirmed", "rejected"):
        metadata.update({f"{name}/{k}": v for k, v in sorted(totals[name].items())})
    return metadata


def sync_metadata(outcome: WriteOutcome, stats: ClientStats) -> dict[str, object]:
    report = outcome.report
    metadata: dict[str, object] = {
        **totals_metadata(outcome.totals),
        "pending_deletions": len(outcome.pending),
        "requests": stats.requests,
        "duration_s": round(report.seconds, 2),
        "verified_kinds": ", ".join(report.verified) or "-",
    }
    if report.rejections:
        listed = report.rejections[:REJECTIONS_LISTED]
        metadata["rejections"] = dg.MetadataValue.md(
            "| kind | change | ref_id | status | why |\n|---|---|---|---|---|\n"
            + "\n".join(f"| {r.kind} | {r.action} | {r.ref_id} | {r.status} | {r.message} |" for r in listed)
        )
    return {
        **metadata,
        **stats.rate_figures(),
        **{f"audit/{k}": v for k, v in outcome.audit.items()},
    }


def rejections_check(verdict: RejectionVerdict) -> dg.AssetCheckResult:
    """WARN while casavi refuses a few records (they are retried next run), ERROR when it refuses many."""
    rows = [
        dg.TableRecord({"kind": r.kind, "change": r.action, "ref_id": r.ref_id, "status": r.status or 0,
                        "fields": ", ".join(r.fields), "nights": verdict.nights.get((r.kind, r.ref_id), 1)})
        for r in verdict.rejections[:REJECTIONS_LISTED]
    ]  # fmt: skip
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("kind"),
            dg.TableColumn("change"),
            dg.TableColumn("ref_id"),
            dg.TableColumn("status", type="int"),
            dg.TableColumn("fields", description="the field names casavi named (never values)"),
            dg.TableColumn("nights", type="int", description="nights rejected since casavi last accepted it"),
        ]
    )
    return dg.AssetCheckResult(
        check_name=REJECTIONS_CHECK,
        passed=not verdict.rejections,
        severity=dg.AssetCheckSeverity.ERROR if verdict.too_many else dg.AssetCheckSeverity.WARN,
        description=verdict.description,
        metadata={
            "rejected": len(verdict.rejections),
            "sent": verdict.sent,
            "escalated": dg.MetadataValue.json([r.ref_id for r in verdict.escalated[:REJECTIONS_LISTED]]),
            "rejections": dg.MetadataValue.table(rows, schema=schema),
        },
    )
