"""Read casavi back, diff, write: the remote state, the changeset and the sync of one Mandant.

Thin wiring: the logic lives in `casavi_pipeline.sync`. Everything of a Mandant lives in its snapshot
file (DuckDB), not in an IO manager: a first sync of a large Mandant has hundreds of thousands of
payloads, which the sync reads page by page.

    casavi_remote ─┐                   (casavi as it is: listed, normalised, hashed; adopt a filled account)
    casavi_* ──────┴─► casavi_changeset ─► casavi_sync
"""

import datetime as dt
import itertools
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import Field

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import CasaviClient, ClientStats
from casavi_pipeline.casavi.errors import (
    CasaviAuthError,
    CasaviModelMismatchError,
    CasaviRateLimitedError,
    CasaviUnavailableError,
)
from casavi_pipeline.defs.erp import erp_export
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import CasaviResource, SnapshotStore, SyncPolicy
from casavi_pipeline.settings import ALLOWED_SEPARATORS
from casavi_pipeline.state.diff import ChangesetSummary, compute_changeset, summarize
from casavi_pipeline.state.files import StateCorruptError
from casavi_pipeline.state.snapshot import META_ADOPTED, Snapshot
from casavi_pipeline.sync.apply import SyncReport, apply_changeset
from casavi_pipeline.sync.guards import GuardResult, evaluate_guards, record_sync_rule
from casavi_pipeline.sync.rejections import RejectionVerdict, assess

#: How a sync stopped by a person (Ctrl-C, SIGTERM, terminate) describes itself; the demo looks for it.
INTERRUPTED = "sync stopped by an interrupt"
REJECTIONS_LISTED = 50
#: A dry run lists this many deletions by reference id (the mass-deletion guard keeps them few anyway).
DELETIONS_LISTED = 1_000
#: The run tag a dry run sets: shown at the top of the run page, beside the green "Success".
DRY_RUN_TAG = "casavi/dry_run"
REJECTIONS_CHECK = "casavi_rejections"
DRIFT_LISTED = 10


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "no rate limit"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


@contextmanager
def _casavi(casavi: CasaviResource) -> Iterator[CasaviClient]:
    """A client whose expected failures become one-line `dg.Failure`s naming casavi's URL."""
    with casavi.get_client() as client:
        try:
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


def _open_snapshot(context: dg.AssetExecutionContext, snapshots: SnapshotStore) -> Snapshot:
    """The Mandant's snapshot; an unreadable one is moved aside (never deleted) and rebuilt from casavi."""
    mandant = context.partition_key
    try:
        snapshot = snapshots.open(mandant)
    except StateCorruptError as exc:
        context.log.warning(f"{exc} It is rebuilt now from a full listing of casavi.")
        snapshot = snapshots.open(mandant)
    if snapshot.dropped_journal_lines:
        context.log.warning(
            f"Mandant {mandant}: {snapshot.dropped_journal_lines} torn line(s) of the journal of confirmed "
            "writes dropped (a crash or a full disk); those writes are sent again, which is harmless."
        )
    if snapshot.rebuilt_for_model:
        context.log.info(
            f"Mandant {mandant}: the state was kept for casavi model revision {snapshot.rebuilt_for_model}; "
            f"it is rebuilt for revision {api.MODEL_REVISION} from a full listing of casavi (adopted, not re-sent)."
        )
    return snapshot


# --- remote state ---------------------------------------------------------------------------------
class ReadConfig(dg.Config):
    full: bool = Field(
        default=False,
        description="List the whole account now (sees objects deleted in casavi). Otherwise the read is "
        "incremental (modifiedAfter), and full at least every CASAVI_FULL_READ_EVERY_DAYS.",
    )


@dg.asset(
    # After the export was read: a Mandant without a (readable) export stops at its first step, before
    # casavi is contacted.
    deps=[erp_export],
    partitions_def=mandant_partitions,
    group_name="sync",
    kinds={"casavi", "duckdb"},
    description="casavi as it is: the account listed (once, shared by all Mandanten; incremental where it "
    "can be), each read normalised and hashed exactly like a write, and this Mandant's slice (the ids with "
    "its prefix) kept in its snapshot. A snapshot that knows nothing yet adopts what casavi already holds.",
)
def casavi_remote(
    context: dg.AssetExecutionContext,
    config: ReadConfig,
    casavi: CasaviResource,
    snapshots: SnapshotStore,
    sync_policy: SyncPolicy,
) -> dg.MaterializeResult:
    mandant = context.partition_key
    cache = snapshots.remote_cache()
    with _open_snapshot(context, snapshots) as snapshot, _casavi(casavi) as client:
        # A snapshot that never met casavi (new, lost, or unreadable and moved aside) adopts casavi's state.
        first_contact = snapshot.get_meta(META_ADOPTED) is None and snapshot.synced_total() == 0
        pages_before = client.stats.pages
        client.authenticate()  # every run proves the credentials, also on a night with nothing to write
        read = cache.refresh(
            client,
            prefixes=tuple(
                f"{m}{s}" for m in mandant_partitions.get_partition_keys() for s in ALLOWED_SEPARATORS
            ),
            # adopting needs a listing that also shows what casavi deleted
            full=config.full or first_contact,
            max_age=dt.timedelta(minutes=sync_policy.read_max_age_minutes),
            full_every=dt.timedelta(days=sync_policy.full_read_every_days),
        )
        in_slice = cache.take_slice(snapshot, ALLOWED_SEPARATORS)
        for moved in read.moved_aside:
            context.log.warning(
                f"The casavi listing was unreadable; it was moved to {moved} (kept for diagnosis) and "
                "rebuilt by a full listing. Nothing needs repair."
            )
        adopted: dict[str, int] = {}
        if first_contact:
            # An account filled with another separator is adopted under that one, so the separator guard
            # stops the run (or migrates, when allowed) instead of creating every object a second time.
            counts = cache.prefix_counts({s: f"{mandant}{s}" for s in ALLOWED_SEPARATORS})
            separator = sync_policy.id_separator
            if not counts.get(separator) and any(counts.values()):
                separator = max(counts, key=lambda s: counts[s])
            adopted = snapshot.adopt_remote(separator if in_slice else None)
            if in_slice:
                context.log.info(
                    f"Mandant {mandant}: casavi already holds {in_slice} objects of this Mandant (ids "
                    f"'{mandant}{separator}…'); adopted as synced, so only real differences are sent ({adopted})"
                )
        metadata: dict[str, object] = {
            "full_listing": read.full,
            "reused_listing": read.reused,
            "account_objects": read.account_objects,
            "requests": client.stats.requests,
            "pages": client.stats.pages - pages_before,
            **client.stats.rate_figures(),
            "duration_s": round(read.seconds, 2),
            "adopted": sum(adopted.values()),
            **{f"mandant/{kind}": n for kind, n in sorted(snapshot.remote_counts().items())},
            **{f"listed/{kind}": n for kind, n in sorted(read.listed.items())},
            **{f"changed/{kind}": n for kind, n in sorted(read.changed.items())},
            **{f"skipped/{kind}": n for kind, n in sorted(read.skipped.items()) if n},
        }
    context.log.info(
        f"Mandant {mandant}: read casavi ({'full' if read.full else 'reused' if read.reused else 'incremental'}"
        f" listing, {client.stats.requests} requests), {in_slice} objects with its prefix"
    )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=casavi_remote,
    name="casavi_drift",
    # Blocking only to run before the changeset (which may repair what it finds); it warns, never stops.
    blocking=True,
    partitions_def=mandant_partitions,
    description="WARN when casavi differs from what we confirmed: objects changed or deleted in casavi since "
    "we wrote them (by hand in casavi's UI, say), and objects with our prefix we never wrote. "
    "CASAVI_REPAIR_DRIFT (or the changeset's repair_drift config) puts them into the next changeset.",
)
def casavi_drift_check(
    context: dg.AssetCheckExecutionContext, snapshots: SnapshotStore
) -> dg.AssetCheckResult:
    with snapshots.open(context.partition_key, read_only=True) as snapshot:
        drift = snapshot.drift(listed=DRIFT_LISTED)
    metadata: dict[str, object] = {
        f"{kind}/{what}": count for (kind, what), (count, _) in sorted(drift.found.items())
    }
    what = {
        "changed": "changed in casavi",
        "deleted": "deleted in casavi",
        "unknown": "with our prefix but never written by us",
    }
    parts = [f"{drift.count(key)} {label}" for key, label in what.items() if drift.count(key)]
    for key in what:
        if drift.ids(key):
            metadata[f"first_{key}"] = dg.MetadataValue.json(drift.ids(key)[:DRIFT_LISTED])
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


# --- changeset ------------------------------------------------------------------------------------
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


def _changeset_metadata(
    summary: ChangesetSummary, casavi: CasaviResource, policy: SyncPolicy
) -> dict[str, object]:
    expected = casavi.expected_seconds(summary.total_writes)
    return {
        "sync_rule": policy.sync_rule.value,
        "writes": summary.total_writes,
        "expected_duration": _duration(expected),
        **{k: dg.MetadataValue.int(v) for k, v in summary.counts().items()},
        "preview": _preview_table(summary),
    }


# Run-config options whose default is a setting: None means "the setting", read from the sync_policy
# resource when the step runs (so a run takes the settings of its own environment, and tests theirs).
class ChangesetConfig(dg.Config):
    repair_drift: bool | None = Field(
        default=None,
        description="Put objects changed or deleted in casavi (and ours that we never wrote) into this "
        "changeset, restoring the ERP's state (unset: the setting CASAVI_REPAIR_DRIFT).",
    )


@dg.asset(
    deps=[casavi_remote],
    partitions_def=mandant_partitions,
    group_name="sync",
    kinds={"duckdb"},
    description="What must change in casavi: creates, updates and deletes per object kind, diffed in DuckDB "
    "against the snapshot of what casavi holds. Stored as the pending changeset of the Mandant's snapshot.",
)
def casavi_changeset(
    context: dg.AssetExecutionContext,
    config: ChangesetConfig,
    snapshots: SnapshotStore,
    sync_policy: SyncPolicy,
    casavi: CasaviResource,
    casavi_properties,
    casavi_units,
    casavi_contacts,
) -> dg.MaterializeResult:
    mandant = context.partition_key
    frames = {
        ObjectKind.PROPERTY: casavi_properties,
        ObjectKind.UNIT: casavi_units,
        ObjectKind.CONTACT: casavi_contacts,
    }
    with snapshots.open(mandant) as snapshot:
        repair_drift = sync_policy.repair_drift if config.repair_drift is None else config.repair_drift
        if repair_drift and snapshot.drift(listed=0).count():
            context.log.info(f"Mandant {mandant}: repairing drift: casavi's state is taken as synced")
            snapshot.adopt_remote()
        summary = compute_changeset(snapshot, frames, identity=_run_identity(context))
    expected = casavi.expected_seconds(summary.total_writes)
    context.log.info(
        f"Mandant {mandant} (sync rule {sync_policy.sync_rule.value}): {summary.total_writes} writes pending "
        f"({summary.counts()}); at the configured rate limit that takes {_duration(expected)}"
    )
    return dg.MaterializeResult(metadata=_changeset_metadata(summary, casavi, sync_policy))


def _guard_check_result(spec: dg.AssetCheckSpec, result: GuardResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.reason,
        metadata={"reason": result.reason, **result.metadata},
    )


_GUARDS = {
    "separator": dg.AssetCheckSpec(
        "separator_change_guard_check",
        asset="casavi_changeset",
        blocking=True,
        partitions_def=mandant_partitions,
        description="Stops the sync when CASAVI_ID_SEPARATOR differs from the one the snapshot (or the adopted "
        "casavi account) was built with: every reference id would change (set CASAVI_ALLOW_SEPARATOR_CHANGE to "
        "migrate).",
    ),
    "mass_deletion": dg.AssetCheckSpec(
        "mass_deletion_guard_check",
        asset="casavi_changeset",
        blocking=True,
        partitions_def=mandant_partitions,
        description="Stops the sync when it would delete more than CASAVI_MAX_DELETE_SHARE of a kind's synced "
        "(or adopted) objects, or all of them (a truncated export looks exactly like that).",
    ),
}


# Both guards in one step: one look at the snapshot, and one step's Dagster events instead of two.
@dg.multi_asset_check(name="sync_guards", specs=list(_GUARDS.values()), can_subset=True)
def sync_guards(
    context: dg.AssetCheckExecutionContext, snapshots: SnapshotStore, sync_policy: SyncPolicy
) -> Iterator[dg.AssetCheckResult]:
    with snapshots.open(context.partition_key, read_only=True) as snapshot:
        results = evaluate_guards(sync_policy.guards, snapshot)
    for name, spec in _GUARDS.items():
        if spec.key in context.selected_asset_check_keys:
            yield _guard_check_result(spec, getattr(results, name))


# --- sync -----------------------------------------------------------------------------------------
class SyncConfig(dg.Config):
    dry_run: bool | None = Field(
        default=None,
        description="Compute and show the changeset, write nothing to casavi (unset: the setting "
        "CASAVI_DRY_RUN). A dry run records an observation of casavi_sync, not a materialization.",
    )


def _attempt_key(run_id: str) -> str:
    return f"run/{run_id}"


def _run_identity(context: dg.AssetExecutionContext) -> str:
    """The changeset's identity: the run that computed it, or the run a re-execution started from."""
    return context.run.root_run_id or context.run.run_id


def _run_totals(snapshot: Snapshot, run_id: str, report: SyncReport) -> dict[str, dict[str, int]]:
    """This attempt's counts added to the earlier attempts' of the same run (kept in the snapshot)."""
    previous = json.loads(snapshot.get_meta(_attempt_key(run_id)) or "{}")
    totals: dict[str, dict[str, int]] = {}
    for name, counter in (
        ("sent", report.sent),
        ("confirmed", report.confirmed),
        ("rejected", report.rejected_counts()),
    ):
        merged = dict(previous.get(name, {}))
        for label, n in counter.items():
            merged[label] = merged.get(label, 0) + n
        totals[name] = merged
    totals["attempts"] = {"n": previous.get("attempts", {}).get("n", 0) + 1}
    # Only this run's totals are ever read again: earlier runs' rows go (one row, not one per run).
    snapshot.connection.execute("DELETE FROM meta WHERE starts_with(key, 'run/') AND key <> ?", [_attempt_key(run_id)])
    snapshot.set_meta(_attempt_key(run_id), json.dumps(totals, sort_keys=True))
    return totals


def _sync_metadata(report: SyncReport, totals: dict[str, dict[str, int]], requests: int) -> dict[str, object]:
    metadata: dict[str, object] = {
        "confirmed": sum(totals["confirmed"].values()),
        "rejected": sum(totals["rejected"].values()),
        "attempts": totals["attempts"]["n"],
        "requests": requests,
        "duration_s": round(report.seconds, 2),
        "verified_kinds": ", ".join(report.verified) or "-",
    }
    for name in ("sent", "confirmed", "rejected"):
        metadata.update({f"{name}/{k}": v for k, v in sorted(totals[name].items())})
    if report.rejections:
        listed = report.rejections[:REJECTIONS_LISTED]
        metadata["rejections"] = dg.MetadataValue.md(
            "| kind | change | ref_id | status | why |\n|---|---|---|---|---|\n"
            + "\n".join(f"| {r.kind} | {r.action} | {r.ref_id} | {r.status} | {r.message} |" for r in listed)
        )
    return metadata


class _Progress:
    """A line every `every` seconds: written / total, rate, ETA at the rate seen (or the configured one)."""

    def __init__(
        self, context: dg.AssetExecutionContext, total: int, casavi: CasaviResource, every: float
    ) -> None:
        self.context, self.total, self.casavi, self.every = context, total, casavi, every
        self.started = self.last = time.monotonic()
        self.stats: ClientStats | None = None  # the client's, once it is open

    def __call__(self, report: SyncReport) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        done = report.total_sent
        rate = done / max(now - self.started, 1e-9) * 60.0
        left = max(self.total - done, 0)
        eta = left / rate * 60.0 if rate > 0 else self.casavi.expected_seconds(left)
        line = (
            f"Mandant {self.context.partition_key}: {done}/{self.total} writes "
            f"({done / max(self.total, 1):.0%}), {rate:.0f}/min, about {_duration(eta)} left"
            + (f"; {self.stats.rate_line()}" if self.stats else "")
        )
        self.context.log.info(line)  # the run's events
        print(line, file=sys.stderr, flush=True)  # the terminal of the CLI or the demo (and compute logs)


@dg.asset(
    deps=[casavi_changeset],
    partitions_def=mandant_partitions,
    group_name="sync",
    kinds={"casavi"},
    check_specs=[
        dg.AssetCheckSpec(
            REJECTIONS_CHECK,
            asset="casavi_sync",
            partitions_def=mandant_partitions,
            description="WARN when casavi refused records (400, 409, 422): listed by reference id with the "
            "field names casavi named, sent again on the next run; escalated after "
            "CASAVI_REJECTION_ESCALATE_NIGHTS nights. Fails (and the run with it) above "
            "CASAVI_MAX_REJECTED_SHARE and CASAVI_REJECTED_MIN_COUNT.",
        )
    ],
    output_required=False,  # a dry run observes, it does not materialize
    # Transient trouble (casavi down, timeouts after the client's own retries) is retried; each attempt
    # resumes with what is still pending. Guards, refused credentials, rejections and a wrong model of
    # casavi are Failures without retry: another attempt cannot change them.
    retry_policy=dg.RetryPolicy(
        max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
    description="Writes the pending changeset to casavi (upserts in dependency order, deletes in reverse) "
    "and advances the snapshot with every confirmed write, so an interrupted run resumes where it stopped. "
    "The first write of each kind is read back to verify casavi stores what we send.",
)
def casavi_sync(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    casavi: CasaviResource,
    snapshots: SnapshotStore,
    sync_policy: SyncPolicy,
):
    mandant = context.partition_key
    with snapshots.open(mandant) as snapshot:
        # The guards run as blocking checks too; repeating them here means materializing the sync
        # alone cannot bypass them.
        for guard in evaluate_guards(sync_policy.guards, snapshot).failures:
            raise dg.Failure(description=guard.reason, metadata=guard.metadata, allow_retries=False)
        if snapshot.changeset_identity() != _run_identity(context):
            raise dg.Failure(
                description=f"Mandant {mandant}: the pending changeset was not computed in this run (it is of run "
                f"{snapshot.changeset_identity() or 'none'}), so it may be stale; nothing was sent. Materialize "
                "casavi_changeset and casavi_sync together (the job casavi_sync_job does).",
                allow_retries=False,
            )
        snapshot.prune_audit(snapshots.audit_retention_days)
        summary = summarize(snapshot)
        dry_run = sync_policy.dry_run if config.dry_run is None else config.dry_run
        if dry_run:
            yield from _dry_run(context, snapshot, summary, casavi, sync_policy)
            return
        if snapshot.synced_total() == 0 or sync_policy.allow_separator_change:
            snapshot.set_separator(sync_policy.id_separator)
        record_sync_rule(sync_policy.guards, snapshot)
        progress = _Progress(context, summary.total_writes, casavi, sync_policy.progress_seconds)
        cache = snapshots.remote_cache()
        if summary.total_writes:
            # Marked before the first write (a kill gives no chance after it): a listing older than
            # this misses our writes and must not be reused.
            cache.mark_written()
        report = SyncReport(mandant=mandant)
        with _casavi(casavi) as client:
            progress.stats = client.stats
            try:
                apply_changeset(
                    snapshot,
                    client,
                    report=report,
                    verify=sync_policy.verify_writes,
                    on_progress=progress,
                    progress_every=1,
                    run_id=context.run.run_id,
                )
            except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
                # Ctrl-C, SIGTERM, a terminate from the UI: a person stopped the run; the retry policy
                # must not start the sync again. What casavi confirmed is in the snapshot.
                raise dg.Failure(
                    description=f"{INTERRUPTED}: what casavi confirmed is recorded; the next run sends the rest.",
                    metadata={"interrupted": True},
                    allow_retries=False,
                ) from None
            finally:
                # Whatever happened, this attempt's counts join the run's (a retried step reports the
                # whole run), and what casavi confirmed deleted leaves the listing.
                totals = _run_totals(snapshot, context.run.run_id, report)
                cache.forget(report.deleted)
            metadata = _sync_metadata(report, totals, client.stats.requests) | client.stats.rate_figures()
        # `apply_changeset` folded the audit file: the run's rows (every attempt) are in the table.
        metadata.update({f"audit/{k}": v for k, v in snapshot.audit_summary(context.run.run_id).items()})
        nights = snapshot.nights_refused([(r.kind, r.ref_id) for r in report.rejections])
    verdict = assess(report.rejections, report.total_sent, nights, sync_policy.rejections)
    context.log.info(
        f"Mandant {mandant}: {metadata['confirmed']} writes confirmed in this run, "
        f"{metadata['rejected']} rejected ({report.seconds:.1f}s this attempt)"
    )
    if report.mismatches:
        raise dg.Failure(description=report.mismatches[0].reason, metadata=metadata, allow_retries=False)
    if verdict.too_many:
        yield _rejections_check(verdict)
        raise dg.Failure(description=verdict.description, metadata=metadata, allow_retries=False)
    if report.rejections:
        context.log.warning(f"Mandant {mandant}: {verdict.description}")
    yield dg.MaterializeResult(metadata=metadata, check_results=[_rejections_check(verdict)])


def _rejections_check(verdict: RejectionVerdict) -> dg.AssetCheckResult:
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


def _dry_run(
    context: dg.AssetExecutionContext,
    snapshot: Snapshot,
    summary: ChangesetSummary,
    casavi: CasaviResource,
    policy: SyncPolicy,
) -> Iterator[dg.AssetObservation | dg.AssetCheckResult]:
    """Show what a sync would write, deletions by reference id, and mark the run as a dry run."""
    mandant = context.partition_key
    context.instance.add_run_tags(context.run.run_id, {DRY_RUN_TAG: "true"})
    deletions = [
        {"kind": op.kind.value, "ref_id": op.ref_id}
        for op in itertools.islice(
            itertools.chain.from_iterable(snapshot.pending_ops(kind, "delete") for kind in api.DELETE_ORDER),
            DELETIONS_LISTED,
        )
    ]
    deletes = sum(changes.delete for changes in summary.kinds.values())
    first = ", ".join(d["ref_id"] for d in deletions[:10])
    line = (
        f"DRY RUN for Mandant {mandant} (sync rule {policy.sync_rule.value}): {summary.total_writes} writes "
        f"not sent, {deletes} of them deletions"
        + (f" ({first}{', …' if deletes > 10 else ''})" if deletes else "")
    )
    context.log.info(line)
    yield dg.AssetObservation(
        asset_key=context.asset_key,
        partition=mandant,
        description=f"{line}: nothing was written to casavi",
        metadata={
            "dry_run": True,
            **_changeset_metadata(summary, casavi, policy),
            "deletions": dg.MetadataValue.table(
                [dg.TableRecord(d) for d in deletions],
                schema=dg.TableSchema(columns=[dg.TableColumn("kind"), dg.TableColumn("ref_id")]),
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name=REJECTIONS_CHECK, passed=True, description="dry run: nothing was sent, nothing rejected"
    )


defs = dg.Definitions(
    assets=[casavi_remote, casavi_changeset, casavi_sync],
    asset_checks=[casavi_drift_check, sync_guards],
)
