"""Changeset and sync assets: the casavi objects, diffed against the snapshot, written to casavi.

Thin wiring: the logic lives in `casavi_pipeline.sync`. The changeset is stored in the Mandant's
snapshot file (DuckDB), not through an IO manager: a first sync of a large Mandant has hundreds of
thousands of payloads, which the sync reads page by page.
"""

import dagster as dg
from pydantic import Field

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.errors import CasaviUnavailableError
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import SETTINGS, CasaviResource, SnapshotStore, SyncPolicy
from casavi_pipeline.sync.apply import SyncReport, apply_changeset
from casavi_pipeline.sync.changeset import ChangesetSummary, compute_changeset, summarize
from casavi_pipeline.sync.guards import GuardResult, GuardResults, evaluate_guards

CASAVI_POOL = "casavi_api"
REJECTIONS_LISTED = 50


def _preview_table(summary: ChangesetSummary) -> dg.MetadataValue:
    rows = [dg.TableRecord(record) for record in summary.preview.to_dict("records")]
    schema = dg.TableSchema(
        columns=[dg.TableColumn("kind"), dg.TableColumn("change"), dg.TableColumn("ref_id")]
    )
    return dg.MetadataValue.table(rows, schema=schema)


def _changeset_metadata(summary: ChangesetSummary) -> dict[str, object]:
    return {
        "writes": summary.total_writes,
        **{k: dg.MetadataValue.int(v) for k, v in summary.counts().items()},
        "preview": _preview_table(summary),
    }


@dg.asset(
    partitions_def=mandant_partitions,
    group_name="sync",
    kinds={"duckdb"},
    description="What must change in casavi: creates, updates and deletes per object kind, diffed in "
    "DuckDB against the snapshot of what casavi holds. Stored as the pending changeset of the Mandant's "
    "snapshot.",
)
def casavi_changeset(
    context: dg.AssetExecutionContext,
    snapshots: SnapshotStore,
    casavi_properties,
    casavi_units,
    casavi_contacts,
    casavi_contracts,
) -> dg.MaterializeResult:
    mandant = context.partition_key
    frames = {
        ObjectKind.PROPERTY: casavi_properties,
        ObjectKind.UNIT: casavi_units,
        ObjectKind.CONTACT: casavi_contacts,
        ObjectKind.CONTRACT: casavi_contracts,
    }
    with snapshots.open(mandant) as snapshot:
        summary = compute_changeset(snapshot, frames)
    context.log.info(f"Mandant {mandant}: {summary.total_writes} writes pending ({summary.counts()})")
    return dg.MaterializeResult(metadata=_changeset_metadata(summary))


def _guard_check_result(result: GuardResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.reason,
        metadata={"reason": result.reason, **result.metadata},
    )


def _guards(
    context: dg.AssetCheckExecutionContext, snapshots: SnapshotStore, policy: SyncPolicy
) -> GuardResults:
    with snapshots.open(context.partition_key, read_only=True) as snapshot:
        return evaluate_guards(policy.guards, snapshot)


@dg.asset_check(
    asset=casavi_changeset,
    name="separator_change_guard_check",
    blocking=True,
    partitions_def=mandant_partitions,
    description="Stops the sync when CASAVI_ID_SEPARATOR differs from the one the snapshot was built with: "
    "every reference id would change (set CASAVI_ALLOW_SEPARATOR_CHANGE to migrate).",
)
def separator_change_guard_check(
    context: dg.AssetCheckExecutionContext, snapshots: SnapshotStore, sync_policy: SyncPolicy
) -> dg.AssetCheckResult:
    return _guard_check_result(_guards(context, snapshots, sync_policy).separator)


@dg.asset_check(
    asset=casavi_changeset,
    name="mass_deletion_guard_check",
    blocking=True,
    partitions_def=mandant_partitions,
    description="Stops the sync when it would delete more than CASAVI_MAX_DELETE_SHARE of a kind's synced "
    "objects, or all of them (a truncated export looks exactly like that).",
)
def mass_deletion_guard_check(
    context: dg.AssetCheckExecutionContext, snapshots: SnapshotStore, sync_policy: SyncPolicy
) -> dg.AssetCheckResult:
    return _guard_check_result(_guards(context, snapshots, sync_policy).mass_deletion)


class SyncConfig(dg.Config):
    dry_run: bool = Field(
        default=SETTINGS.dry_run,
        description="Compute and show the changeset, write nothing to casavi (default: CASAVI_DRY_RUN).",
    )


def _sync_metadata(report: SyncReport, requests: int) -> dict[str, object]:
    metadata: dict[str, object] = {
        "confirmed": report.total_confirmed,
        "rejected": len(report.rejections),
        "requests": requests,
        "duration_s": round(report.seconds, 2),
    }
    metadata.update({f"sent/{k}": v for k, v in sorted(report.sent.items())})
    metadata.update({f"confirmed/{k}": v for k, v in sorted(report.confirmed.items())})
    metadata.update({f"rejected/{k}": v for k, v in sorted(report.rejected_counts().items())})
    if report.rejections:
        listed = report.rejections[:REJECTIONS_LISTED]
        metadata["rejections"] = dg.MetadataValue.md(
            "| kind | change | ref_id | status | casavi answered |\n|---|---|---|---|---|\n"
            + "\n".join(f"| {r.kind} | {r.action} | {r.ref_id} | {r.status} | {r.message} |" for r in listed)
        )
    return metadata


@dg.asset(
    deps=[casavi_changeset],
    partitions_def=mandant_partitions,
    group_name="sync",
    kinds={"casavi"},
    pool=CASAVI_POOL,
    # Transient trouble (casavi down, timeouts after the client's own retries) is retried; each attempt
    # resumes with what is still pending. Rejections and guard stops are Failures without retry.
    retry_policy=dg.RetryPolicy(
        max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
    description="Writes the pending changeset to casavi (upserts in dependency order, deletes in reverse) "
    "and advances the snapshot with every confirmed write, so an interrupted run resumes where it stopped.",
)
def casavi_sync(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    casavi: CasaviResource,
    snapshots: SnapshotStore,
    sync_policy: SyncPolicy,
) -> dg.MaterializeResult:
    mandant = context.partition_key
    with snapshots.open(mandant) as snapshot:
        # The guards run as blocking checks too; repeating them here means materializing the sync
        # alone cannot bypass them.
        for guard in evaluate_guards(sync_policy.guards, snapshot).failures:
            raise dg.Failure(description=guard.reason, metadata=guard.metadata, allow_retries=False)
        summary = summarize(snapshot)
        if config.dry_run:
            context.log.info(f"Dry run for Mandant {mandant}: {summary.total_writes} writes not sent")
            return dg.MaterializeResult(metadata={"dry_run": True, **_changeset_metadata(summary)})
        if snapshot.synced_total() == 0 or sync_policy.allow_separator_change:
            snapshot.set_separator(sync_policy.id_separator)

        def progress(report: SyncReport) -> None:
            context.log.info(f"Mandant {mandant}: {report.total_confirmed} confirmed so far")

        with casavi.get_client() as client:
            try:
                report = apply_changeset(snapshot, client, on_progress=progress)
            except CasaviUnavailableError as exc:
                left = snapshot.pending_total()
                raise dg.Failure(
                    description=f"casavi unavailable: {exc}. Confirmed writes are recorded; "
                    f"{left} operations are still pending and the next attempt resumes with them.",
                    metadata={"pending": left, "requests": client.stats.requests},
                ) from exc
            metadata = _sync_metadata(report, client.stats.requests)
    context.log.info(
        f"Mandant {mandant}: {report.total_confirmed} writes confirmed, {len(report.rejections)} rejected "
        f"in {report.seconds:.1f}s"
    )
    if report.rejections:
        first = report.rejections[0]
        raise dg.Failure(
            description=f"casavi rejected {len(report.rejections)} of {sum(report.sent.values())} writes "
            f"(first: {first.kind} {first.ref_id}: {first.status} {first.message}); the others were "
            "written. Fix the data, then rerun: only what is still pending is sent.",
            metadata=metadata,
            allow_retries=False,
        )
    return dg.MaterializeResult(metadata=metadata)


defs = dg.Definitions(
    assets=[casavi_changeset, casavi_sync],
    asset_checks=[mass_deletion_guard_check, separator_change_guard_check],
)
