"""Read casavi back, diff, write: the remote state, the changeset and the sync of one Mandant.

Thin wiring: the logic lives in `casavi_pipeline.sync` (`read.py`, `run.py`), what the steps show in
Dagster (metadata, checks, one-line failures) in `sync_reporting.py`. Everything of a Mandant lives in
its snapshot file (DuckDB), not in an IO manager: a first sync of a large Mandant has hundreds of
thousands of payloads, which the sync reads page by page.

    casavi_remote ─┐                   (casavi as it is: listed, normalised, hashed; adopt a filled account)
    casavi_* ──────┴─► casavi_changeset ─► casavi_sync
                                           └ casavi_pending_deletions: what waits for a person (WARN)

The approval of pending deletions from the UI is the job in `deletions.py`.
"""

import datetime as dt
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.defs.erp import erp_export
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import CasaviResource, SnapshotStore, SyncPolicy
from casavi_pipeline.defs.sync_reporting import (
    DRIFT_LISTED,
    PENDING_DELETIONS_CHECK,
    REJECTIONS_CHECK,
    casavi_client,
    changeset_metadata,
    drift_check_result,
    dry_run_metadata,
    guard_check_result,
    held_lines,
    interrupts_stop_the_step,
    pending_deletions_check,
    progress,
    rejections_check,
    remote_metadata,
    report_pending_deletions,
    say,
    state_database_failures,
    sync_metadata,
    writing_client,
)
from casavi_pipeline.state import deletions
from casavi_pipeline.state.diff import ChangesetSummary, compute_changeset, summarize
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.sync.guards import GuardResult, evaluate_guards
from casavi_pipeline.sync.progress import duration
from casavi_pipeline.sync.read import open_snapshot, read_remote
from casavi_pipeline.sync.run import preview_dry_run, refusal, stale, write_changeset

#: The run tag a dry run sets: shown at the top of the run page, beside the green "Success".
DRY_RUN_TAG = "casavi/dry_run"


def _repairs_drift(context: dg.AssetExecutionContext, policy: SyncPolicy) -> bool:
    """Does this run repair drift? `casavi_changeset`'s `repair_drift` config, else CASAVI_REPAIR_DRIFT.

    Read from the run's config by the read step too: a run that repairs reads the account in full first.
    """
    ops = (context.run.run_config or {}).get("ops", {})
    configured = ((ops.get("casavi_changeset") or {}).get("config") or {}).get("repair_drift")
    return policy.repair_drift if configured is None else bool(configured)


def _run_identity(context: dg.AssetExecutionContext) -> str:
    """The changeset's identity: the run that computed it, or the run a re-execution started from."""
    return context.run.root_run_id or context.run.run_id


def _dry_run(context: dg.AssetCheckExecutionContext, sync_policy: SyncPolicy) -> bool:
    """Is this run a dry run: casavi_sync's `dry_run` in the run's config, else CASAVI_DRY_RUN."""
    configured = context.run.run_config.get("ops", {}).get("casavi_sync", {}).get("config", {}).get("dry_run")
    return sync_policy.dry_run if configured is None else configured


# --- remote state ---------------------------------------------------------------------------------
class ReadConfig(dg.Config):
    full: bool = Field(
        default=False,
        description="List the whole account now (sees objects deleted in casavi). Otherwise the read is "
        "incremental (modifiedAfter), and full at least every CASAVI_FULL_READ_EVERY_DAYS, and whenever the "
        "run repairs drift (casavi_changeset's repair_drift, or CASAVI_REPAIR_DRIFT).",
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
    with (
        state_database_failures(),
        open_snapshot(snapshots.store, mandant, context.log) as snapshot,
        casavi_client(casavi, on_wait=say(context)) as client,
    ):
        read = read_remote(
            snapshot,
            snapshots.remote_cache(),
            client,
            mandanten=mandant_partitions.get_partition_keys(),
            separator=sync_policy.id_separator,
            full=config.full,
            repair_drift=_repairs_drift(context, sync_policy),
            max_age=dt.timedelta(minutes=sync_policy.read_max_age_minutes),
            full_every=dt.timedelta(days=sync_policy.full_read_every_days),
            log=context.log,
        )
        metadata = remote_metadata(read, client.stats)
    context.log.info(read.summary)
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
        return drift_check_result(snapshot.drift(listed=DRIFT_LISTED))


# --- changeset ------------------------------------------------------------------------------------
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
    "against the snapshot of what casavi holds. Objects that leave the scope are deleted, wait for a person's "
    "approval or are kept, as CASAVI_DELETIONS says. Stored as the pending changeset of the Mandant's snapshot.",
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
    casavi_left_out,
) -> dg.MaterializeResult:
    mandant = context.partition_key
    frames = {
        ObjectKind.PROPERTY: casavi_properties,
        ObjectKind.UNIT: casavi_units,
        ObjectKind.CONTACT: casavi_contacts,
    }
    with state_database_failures():
        with snapshots.open(mandant) as snapshot:
            if _repairs_drift(context, sync_policy) and snapshot.drift(listed=0).count():
                context.log.info(f"Mandant {mandant}: repairing drift: casavi's state is taken as synced")
                snapshot.adopt_remote()
            summary = compute_changeset(
                snapshot,
                frames,
                identity=_run_identity(context),
                deletions=sync_policy.deletions,
                left_out=casavi_left_out,
            )
            held = held_lines(mandant, deletions.pending(snapshot))
        expected = casavi.expected_seconds(summary.total_writes)
        metadata = changeset_metadata(summary, casavi, sync_policy)
    context.log.info(
        f"Mandant {mandant} (sync rule {sync_policy.sync_rule.value}, CASAVI_DELETIONS="
        f"{sync_policy.deletions.value}): {summary.total_writes} writes pending ({summary.counts()}); at the "
        f"configured rate limit that takes {duration(expected)}"
    )
    for line in held:
        context.log.warning(line)
    return dg.MaterializeResult(metadata=metadata)


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
        description="Stops the sync when more than CASAVI_MAX_DELETE_SHARE of a kind's synced (or adopted) "
        "objects, or all of them, would leave the sync — deleted, left waiting for deletion or kept, whatever "
        "CASAVI_DELETIONS says — or, for contacts, lose a contract (a truncated export looks exactly like "
        "that). In a dry run it warns instead: the preview says a real run would stop here.",
    ),
}


# Both guards in one step: one look at the snapshot, and one step's Dagster events instead of two.
@dg.multi_asset_check(name="sync_guards", specs=list(_GUARDS.values()), can_subset=True)
def sync_guards(
    context: dg.AssetCheckExecutionContext, snapshots: SnapshotStore, sync_policy: SyncPolicy
) -> Iterator[dg.AssetCheckResult]:
    with state_database_failures(), snapshots.open(context.partition_key, read_only=True) as snapshot:
        results = evaluate_guards(sync_policy.guards, snapshot)
    dry_run = _dry_run(context, sync_policy)
    for name, spec in _GUARDS.items():
        if spec.key in context.selected_asset_check_keys:
            yield guard_check_result(getattr(results, name), spec, dry_run=dry_run)


# --- sync -----------------------------------------------------------------------------------------
class SyncConfig(dg.Config):
    dry_run: bool | None = Field(
        default=None,
        description="Compute and show the changeset, write nothing to casavi (unset: the setting "
        "CASAVI_DRY_RUN). A dry run records an observation of casavi_sync, not a materialization.",
    )


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
        ),
        dg.AssetCheckSpec(
            PENDING_DELETIONS_CHECK,
            asset="casavi_sync",
            partitions_def=mandant_partitions,
            description="WARN naming the objects out of scope that wait for a person before casavi deletes them "
            "(CASAVI_DELETIONS=approve): kind, reference id, since when, why. Approve with `casavi-pipeline "
            "deletions --mandant M --approve ID` or the job casavi_approve_deletions; the next run deletes them.",
        ),
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
    "The first write of each kind is read back to verify casavi stores what we send. What leaves the scope "
    "without being deleted is listed as pending deletions of the Mandant.",
)
def casavi_sync(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    casavi: CasaviResource,
    snapshots: SnapshotStore,
    sync_policy: SyncPolicy,
):
    with (
        interrupts_stop_the_step(),
        state_database_failures(),
        snapshots.open(context.partition_key) as snapshot,
    ):
        dry_run = sync_policy.dry_run if config.dry_run is None else config.dry_run
        refused = (
            stale(snapshot, _run_identity(context))
            if dry_run
            else refusal(snapshot, sync_policy.guards, _run_identity(context))
        )
        if refused:
            raise dg.Failure(description=refused.reason, metadata=refused.metadata, allow_retries=False)
        snapshot.prune_audit(snapshots.audit_retention_days)
        summary = summarize(snapshot)
        if dry_run:
            stop = next(iter(evaluate_guards(sync_policy.guards, snapshot).failures), None)
            yield from _preview(context, snapshot, summary, casavi, sync_policy, stop)
            return
        with writing_client(context, casavi, snapshot) as client:
            outcome = write_changeset(
                snapshot,
                snapshots.remote_cache(),
                client,
                writes=summary.total_writes,
                guards=sync_policy.guards,
                rejections=sync_policy.rejections,
                verify=sync_policy.verify_writes,
                run_id=context.run.run_id,
                on_progress=progress(
                    context, casavi, client, summary.total_writes, sync_policy.progress_seconds
                ),
            )
            metadata = sync_metadata(outcome, client.stats)
    context.log.info(outcome.summary)
    pending = report_pending_deletions(context, outcome, sync_policy.deletions)
    if outcome.report.mismatches:
        raise dg.Failure(
            description=outcome.report.mismatches[0].reason, metadata=metadata, allow_retries=False
        )
    if outcome.verdict.too_many:
        yield rejections_check(outcome.verdict)
        raise dg.Failure(description=outcome.verdict.description, metadata=metadata, allow_retries=False)
    if outcome.report.rejections:
        context.log.warning(f"Mandant {context.partition_key}: {outcome.verdict.description}")
    yield dg.MaterializeResult(metadata=metadata, check_results=[rejections_check(outcome.verdict), pending])


def _preview(
    context: dg.AssetExecutionContext,
    snapshot: Snapshot,
    summary: ChangesetSummary,
    casavi: CasaviResource,
    policy: SyncPolicy,
    stop: GuardResult | None,
) -> Iterator[dg.AssetObservation | dg.AssetCheckResult]:
    """A dry run: what a sync would write, deletions by reference id, what would wait for deletion, and
    (`stop`) the guard that would stop a real run; the run is tagged as a dry run."""
    context.instance.add_run_tags(context.run.run_id, {DRY_RUN_TAG: "true"})
    preview = preview_dry_run(snapshot, summary, policy.sync_rule, stop)
    context.log.info(preview.line)  # (a guard that would stop a real run warns in its check, in one line)
    yield dg.AssetObservation(
        asset_key=context.asset_key,
        partition=context.partition_key,
        description=f"{preview.line}: nothing was written to casavi"
        + (f". {preview.stop}" if preview.stop else ""),
        metadata=dry_run_metadata(preview, changeset_metadata(summary, casavi, policy)),
    )
    yield dg.AssetCheckResult(
        check_name=REJECTIONS_CHECK, passed=True, description="dry run: nothing was sent, nothing rejected"
    )
    yield pending_deletions_check(context.partition_key, deletions.pending(snapshot), None, policy.deletions)


defs = dg.Definitions(
    assets=[casavi_remote, casavi_changeset, casavi_sync],
    asset_checks=[casavi_drift_check, sync_guards],
)
