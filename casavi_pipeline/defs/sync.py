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
from casavi_pipeline.defs.resources import CasaviResource
from casavi_pipeline.settings import Settings, get_settings
from casavi_pipeline.sync.apply import SyncReport, apply_changeset
from casavi_pipeline.sync.changeset import ChangesetSummary, compute_changeset, summarize
from casavi_pipeline.sync.guards import GuardResult, mass_deletion_guard, separator_guard
from casavi_pipeline.sync.snapshot import Snapshot

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
    casavi_properties,
    casavi_units,
    casavi_contacts,
    casavi_contracts,
) -> dg.MaterializeResult:
    settings = get_settings()
    mandant = context.partition_key
    frames = {
        ObjectKind.PROPERTY: casavi_properties,
        ObjectKind.UNIT: casavi_units,
        ObjectKind.CONTACT: casavi_contacts,
        ObjectKind.CONTRACT: casavi_contracts,
    }
    with Snapshot(settings.snapshot_path(mandant), mandant) as snapshot:
        summary = compute_changeset(snapshot, frames)
    context.log.info(f"Mandant {mandant}: {summary.total_writes} writes pending ({summary.counts()})")
    return dg.MaterializeResult(metadata=_changeset_metadata(summary))


def _evaluate_guards(settings: Settings, snapshot: Snapshot) -> list[GuardResult]:
    summary = summarize(snapshot)
    separator = separator_guard(
        snapshot.separator,
        settings.id_separator,
        synced_total=snapshot.synced_total(),
        allow_change=settings.allow_separator_change,
    )
    migrating = separator.passed and snapshot.separator not in (None, settings.id_separator)
    deletion = mass_deletion_guard(
        summary,
        max_share=settings.max_delete_share,
        min_count=settings.delete_guard_min_count,
        # A separator migration deletes every old id by design; the explicit setting covers it.
        allow=settings.allow_mass_delete or migrating,
    )
    return [separator, deletion]


def _guard_check_result(result: GuardResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.reason,
        metadata={"reason": result.reason, **result.metadata},
    )


def _guard_check(name: str, which: int, description: str) -> dg.AssetChecksDefinition:
    """A blocking check on the changeset that evaluates guard `which` of `_evaluate_guards`."""

    @dg.asset_check(
        asset=casavi_changeset,
        name=name,
        blocking=True,
        partitions_def=mandant_partitions,
        description=description,
    )
    def _guard(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        settings = get_settings()
        mandant = context.partition_key
        with Snapshot(settings.snapshot_path(mandant), mandant, read_only=True) as snapshot:
            return _guard_check_result(_evaluate_guards(settings, snapshot)[which])

    return _guard


separator_change_guard_check = _guard_check(
    "separator_change_guard_check",
    0,
    "Stops the sync when CASAVI_ID_SEPARATOR differs from the one the snapshot was built with: every "
    "reference id would change (set CASAVI_ALLOW_SEPARATOR_CHANGE to migrate).",
)
mass_deletion_guard_check = _guard_check(
    "mass_deletion_guard_check",
    1,
    "Stops the sync when it would delete more than CASAVI_MAX_DELETE_SHARE of a kind's synced objects, "
    "or all of them (a truncated export looks exactly like that).",
)


class SyncConfig(dg.Config):
    dry_run: bool = Field(
        default_factory=lambda: get_settings().dry_run,
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
    context: dg.AssetExecutionContext, config: SyncConfig, casavi: CasaviResource
) -> dg.MaterializeResult:
    settings = get_settings()
    mandant = context.partition_key
    with Snapshot(settings.snapshot_path(mandant), mandant) as snapshot:
        # The guards run as blocking checks too; repeating them here means materializing the sync
        # alone cannot bypass them.
        for guard in _evaluate_guards(settings, snapshot):
            if not guard.passed:
                raise dg.Failure(description=guard.reason, metadata=guard.metadata, allow_retries=False)
        summary = summarize(snapshot)
        if config.dry_run:
            context.log.info(f"Dry run for Mandant {mandant}: {summary.total_writes} writes not sent")
            return dg.MaterializeResult(metadata={"dry_run": True, **_changeset_metadata(summary)})
        if snapshot.synced_total() == 0 or settings.allow_separator_change:
            snapshot.set_separator(settings.id_separator)

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
