"""How the sync's assets speak to Dagster: metadata, tables, check results, progress lines, and casavi's
expected failures as one-line `dg.Failure`s, built from the reports of `casavi_pipeline.sync`. Kept apart
from the assets so their bodies read as the steps they take.

Reference ids, kinds, counts and field names only: never a value of a record (personal data).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
DRIFT_LISTED = 10
#: What each kind of drift is called in the check's description.
DRIFT_LABELS = {
    "changed": "changed in casavi",
    "deleted": "deleted in casavi",
    "unknown": "with our prefix but never written by us",
}


def say(context: dg.AssetExecutionContext) -> Callable[[str], None]:
    """A line into the run's events: the UI's event log, Dagster's console logger (`dg launch`), and the
    terminal of `casavi-pipeline sync` and the demo, which follow the run (`run_sync.Follower`)."""
    return context.log.info


@contextmanager
def casavi_client(
    casavi: CasaviResource, *, writes: bool = False, on_wait: Callable[[str], None] | None = None
) -> Iterator[CasaviClient]:
    """A client whose expected failures become one-line `dg.Failure`s naming casavi's URL.

    With `writes`, an interrupt (Ctrl-C, SIGTERM, a terminate from the UI) is a person stopping the run:
    the retry policy must not start the writes again. What casavi confirmed is in the snapshot.
    `on_wait` hears when the client waits for a failing casavi, and when it answers again.
    """
    with casavi.get_client(on_wait) as client:
        try:
            yield client
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
            if not writes:
                raise
            raise dg.Failure(
                description=f"{INTERRUPTED}: what casavi confirmed is recorded; the next run sends the rest.",
                metadata={"interrupted": True},
                allow_retries=False,
            ) from None
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


def guard_check_result(result: GuardResult, spec: dg.AssetCheckSpec) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.reason,
        metadata={"reason": result.reason, **result.metadata},
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


def dry_run_metadata(preview: DryRun, changeset: dict[str, object]) -> dict[str, object]:
    return {
        "dry_run": True,
        **changeset,
        "deletions": dg.MetadataValue.table(
            [dg.TableRecord(d) for d in preview.deletions],
            schema=dg.TableSchema(columns=[dg.TableColumn("kind"), dg.TableColumn("ref_id")]),
        ),
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
