"""Running unattended: a nightly schedule and a sensor for new ERP deliveries.

Both are off by default (switch them on in the UI under Automation), so a fresh deployment never
writes to casavi before someone decided it should. A failed run is told by `casavi_failure_alert`
(defs/alerts.py); runs whose process was killed are ended by the daemon's run monitoring
(casavi_pipeline/runs/launcher.py), not by a sensor.
"""

import json

import dagster as dg

from casavi_pipeline.defs.jobs import casavi_sync_job
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import ErpExport, SyncPolicy

NIGHTLY_CRON = "0 2 * * *"
TIMEZONE = "Europe/Berlin"


# One run per Mandant at 02:00 (Dagster's own builder: for static partitions it requests every key).
casavi_nightly_sync = dg.build_schedule_from_partitioned_job(
    casavi_sync_job,
    name="casavi_nightly_sync",
    cron_schedule=NIGHTLY_CRON,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    tags={"casavi/trigger": "schedule"},
    description="Every night, one run per configured Mandant (the instance runs at most one per Mandant at once).",
)


@dg.sensor(
    job=casavi_sync_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a run for a Mandant when a complete new ERP delivery (all seven files, newer than "
    "the last one requested, unchanged for CASAVI_DELIVERY_SETTLE_SECONDS) appears in its export folder. "
    "Does not apply when the ERP is read from its database (ERP_SOURCE_URL).",
)
def casavi_export_delivery_sensor(
    context: dg.SensorEvaluationContext, erp_export: ErpExport, sync_policy: SyncPolicy
):
    seen: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
    requests, waiting = [], []
    for mandant in mandant_partitions.get_partition_keys():
        delivery = erp_export.delivery(mandant)
        if delivery is None:
            return dg.SkipReason(
                "ERP_SOURCE_URL is set: the ERP is read from its database, which delivers no files to watch; "
                "use the nightly schedule instead of this sensor"
            )
        if not delivery.complete:
            waiting.append(f"{mandant}: missing {', '.join(delivery.missing_files)}")
            continue
        if delivery.newest_mtime <= seen.get(mandant, 0.0):
            continue
        if not delivery.settled(sync_policy.delivery_settle_seconds):
            waiting.append(f"{mandant}: delivery still settling")
            continue
        seen[mandant] = delivery.newest_mtime
        requests.append(
            dg.RunRequest(
                run_key=f"delivery-{mandant}-{delivery.newest_mtime:.0f}",
                partition_key=mandant,
                tags={"casavi/trigger": "sensor"},
            )
        )
    if not requests:
        return dg.SkipReason("no new complete delivery" + (f" ({'; '.join(waiting)})" if waiting else ""))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))


defs = dg.Definitions(
    schedules=[casavi_nightly_sync],
    sensors=[casavi_export_delivery_sensor],
)
