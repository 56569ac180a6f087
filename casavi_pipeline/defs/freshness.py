"""Freshness per Mandant: has each Mandant synced successfully within CASAVI_FRESHNESS_HOURS?

A successful sync is a materialization of `casavi_sync` for the Mandant's partition (a dry run only
observes it; a failed or rejected sync does not materialize it). Whatever stopped the nights — the
schedule switched off, the export never delivered, a run stuck in the queue, runs failing — the last
successful sync grows old, so one rule catches all of them; the check's description then says which
it looks like.

The check `casavi_sync_fresh` shows per partition on `casavi_sync` in the UI. The sensor
`casavi_freshness` evaluates it for every Mandant (on by default: it only reads the instance), records an
evaluation when a Mandant's state changes, and alerts once per Mandant per stale episode (until the
Mandant syncs again) through the channels of the failure alerts. A Mandant that never synced is
measured from when the sensor first saw it, so a new deployment is not stale at once.
"""

import datetime
import json
import time
from dataclasses import dataclass

import dagster as dg

from casavi_pipeline.alerts import Alert
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import Alerting, ErpExport, SyncPolicy

SYNC_ASSET = dg.AssetKey("casavi_sync")
FRESHNESS_CHECK = "casavi_sync_fresh"
PARTITION_TAG = "dagster/partition"
FRESHNESS_ACTION = (
    "check that the nightly schedule is on, the export was delivered and no run waits in the queue"
)
_WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
_IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


@dataclass(frozen=True)
class Freshness:
    mandant: str
    passed: bool
    description: str
    last_success: float | None

    def evaluation(self) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=SYNC_ASSET,
            check_name=FRESHNESS_CHECK,
            passed=self.passed,
            description=self.description,
            metadata={"last_successful_sync": _stamp(self.last_success)},
            severity=dg.AssetCheckSeverity.ERROR,
            partition=self.mandant,
        )


def last_successful_sync(instance: dg.DagsterInstance, mandant: str) -> float | None:
    """When `casavi_sync` last materialized for this Mandant (epoch seconds), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SYNC_ASSET, asset_partitions=[mandant]), limit=1
    ).records
    return records[0].timestamp if records else None


def evaluate_freshness(
    instance: dg.DagsterInstance,
    erp_export: ErpExport,
    mandant: str,
    *,
    max_hours: float,
    now: float,
    watching_since: float | None = None,
) -> Freshness:
    """Fresh when the last successful sync (or, never synced, `watching_since`) is at most `max_hours` old."""
    last = last_successful_sync(instance, mandant)
    start = last if last is not None else watching_since
    if start is not None and now - start <= max_hours * 3600:
        synced = (
            f"last successful sync {_stamp(last)}"
            if last
            else f"not synced yet; watched since {_stamp(start)}"
        )
        return Freshness(mandant, True, f"{synced} (limit {max_hours:g} h)", last)
    since = f"since {_stamp(last)}" if last else "ever"
    hint = _why(instance, erp_export, mandant)
    return Freshness(mandant, False, f"not synced successfully {since} (limit {max_hours:g} h): {hint}", last)


def _why(instance: dg.DagsterInstance, erp_export: ErpExport, mandant: str) -> str:
    """What the stale Mandant looks like: a run waiting or running, the last run failed, the export
    incomplete, or no run at all (the schedule and the delivery sensor are off)."""
    tags = {PARTITION_TAG: mandant}
    for statuses, what in ((_WAITING, "waits in the queue"), (_IN_PROGRESS, "is in progress")):
        waiting = instance.get_run_records(dg.RunsFilter(tags=tags, statuses=statuses), limit=1)
        if waiting:
            return f"run {waiting[0].dagster_run.run_id} {what} since {_stamp(waiting[0].create_timestamp.timestamp())}"
    delivery = erp_export.delivery(mandant)  # None: read from the ERP's database, no files to check
    if delivery is not None and not delivery.complete:
        return f"the export is incomplete (missing {', '.join(delivery.missing_files)})"
    latest = instance.get_run_records(dg.RunsFilter(tags=tags), limit=1)
    if latest and latest[0].dagster_run.status == dg.DagsterRunStatus.FAILURE:
        return f"the last run {latest[0].dagster_run.run_id} failed"
    if latest:
        return f"no run since {_stamp(latest[0].create_timestamp.timestamp())}: is the nightly schedule on?"
    return "no run yet: is the nightly schedule on?"


def _stamp(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


@dg.asset_check(
    asset=SYNC_ASSET,
    name=FRESHNESS_CHECK,
    partitions_def=mandant_partitions,
    blocking=False,
    description="Fails when the Mandant has not synced successfully for longer than CASAVI_FRESHNESS_HOURS "
    "(default 26 h); says whether a run waits, the last one failed, the export is incomplete or no run "
    "came. Evaluated by the sensor casavi_freshness.",
)
def casavi_sync_fresh(
    context: dg.AssetCheckExecutionContext, sync_policy: SyncPolicy, erp_export: ErpExport
) -> dg.AssetCheckResult:
    freshness = evaluate_freshness(
        context.instance,
        erp_export,
        context.partition_key,
        max_hours=sync_policy.freshness_hours,
        now=time.time(),
    )
    evaluation = freshness.evaluation()
    return dg.AssetCheckResult(
        passed=evaluation.passed,
        description=evaluation.description,
        metadata=evaluation.metadata,
        severity=evaluation.severity,
    )


@dg.sensor(
    name="casavi_freshness",
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates casavi_sync_fresh for every Mandant (CASAVI_FRESHNESS_HOURS) and alerts once per "
    "Mandant that goes stale (CASAVI_ALERT_* channels). Reads the instance only; writes nothing to casavi.",
)
def casavi_freshness(
    context: dg.SensorEvaluationContext, alerting: Alerting, sync_policy: SyncPolicy, erp_export: ErpExport
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    # since: when the sensor first saw a Mandant; reported: [passed, last success] last recorded;
    # alerted: the last success (0: never synced) whose stale episode was alerted.
    since, reported, alerted = (cursor.get(key, {}) for key in ("since", "reported", "alerted"))
    now = time.time()
    channels = alerting.channels
    events, lines = [], []
    for mandant in mandant_partitions.get_partition_keys():
        since.setdefault(mandant, now)
        fresh = evaluate_freshness(
            context.instance,
            erp_export,
            mandant,
            max_hours=sync_policy.freshness_hours,
            now=now,
            watching_since=since[mandant],
        )
        state = [fresh.passed, fresh.last_success]
        if reported.get(mandant) != state:
            events.append(fresh.evaluation())
            reported[mandant] = state
        lines.append(f"{mandant}: {'fresh' if fresh.passed else 'STALE'}")
        episode = fresh.last_success or 0
        if fresh.passed:
            alerted.pop(mandant, None)
        elif channels.configured and alerted.get(mandant) != episode:
            alert = Alert(
                mandant=mandant,
                reason=fresh.description,
                action=FRESHNESS_ACTION,
                path=f"/assets/{SYNC_ASSET.to_user_string()}?view=checks",
            )
            sent, warnings = channels.send(alert)
            for warning in warnings:
                context.log.warning(warning)
            if sent:  # else the next tick tries again
                alerted[mandant] = episode
    return dg.SensorResult(
        asset_events=events,
        cursor=json.dumps({"since": since, "reported": reported, "alerted": alerted}, sort_keys=True),
        skip_reason=None if events else "; ".join(lines),
    )


defs = dg.Definitions(asset_checks=[casavi_sync_fresh], sensors=[casavi_freshness])
