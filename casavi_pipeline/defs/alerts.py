"""`casavi_failure_alert`: one alert per failed Mandant night, through the configured channels;
`casavi_escalation_alert`: one per night that succeeded while casavi kept refusing records;
`casavi_deletions_alert`: one per run that listed new pending deletions.

**Which runs they see.** A run status sensor of Dagster 1.13 sees only runs whose origin names its own
code location, unless it monitors all code locations. Runs started in the process of a CLI — `dg launch`,
`dagster asset materialize`, `execute_in_process` — carry no code-location origin at all, so a sensor
without `monitor_all_code_locations` skipped them without a word (its tick "returned an empty result").
Both sensors therefore monitor every run of the instance and act on those of this code location
(:func:`of_this_code_location`: the run's job and assets are ours), however the run was started.

**A failed run.** A run failure sensor is called once per failed run; step retries happen inside the run
and fire nothing. It takes the run's one-line reason (`casavi/failure_reason`, recorded by the failing
step's hook, or now for a run that failed outside its steps: defs/failures.py) and sends it to every
configured channel at once, each within its deadline (`casavi_pipeline.alerts`). The run tag
`casavi/alerted` lists the channels that took the alert, written as each does: a tick that is cut off
(the daemon stopped, a timeout) is repeated by Dagster, and the repetition sends only to the channels
missing from the tag. A channel that failed is a warning in the sensor's log and is not tried again for
that run. A re-execution of a failed run (from the UI, `dagster/root_run_id` names the original) is the
same night: nothing is sent for it when the original was alerted. The sensor runs by default: it records
the reason of every failed run, and alerts once a channel is configured, without anyone switching it on.

**A night that succeeded.** A record casavi refuses does not fail the night (`sync/rejections.py`): the
run succeeds with the WARN check `casavi_rejections`. One refused on `CASAVI_REJECTION_ESCALATE_NIGHTS`
nights will not fix itself, so the check names it ESCALATED, and `casavi_escalation_alert` tells a person,
once per such run (that is, once a night while it lasts), through the same channels. Objects out of scope
wait for a person before casavi deletes them (CASAVI_DELETIONS=approve): the check
`casavi_pending_deletions` names them on every run, and `casavi_deletions_alert` tells a person once per
new set: for the run that listed new ones (the check's metadata `new`), not every night they keep waiting.
"""

from __future__ import annotations

import dagster as dg

from casavi_pipeline.alerts import RUN_PATH, Alert
from casavi_pipeline.defs.failures import check_evaluations_of_run, reason_of_failed_run
from casavi_pipeline.defs.resources import SETTINGS, Alerting
from casavi_pipeline.defs.sync_reporting import PENDING_DELETIONS_CHECK, REJECTIONS_CHECK
from casavi_pipeline.settings import Settings

#: Run tag: the channels that took this run's alert, comma-separated.
ALERTED_TAG = "casavi/alerted"
PARTITION_TAG = "dagster/partition"
_ROOT_RUN_TAG = "dagster/root_run_id"
#: How often the daemon evaluates the failure sensor: a failed night is told within about this long.
FAILURE_SENSOR_INTERVAL_SECONDS = 10
FAILURE_ACTION = "fix what it names, then re-run the Mandant (re-execute the run in the Dagster UI)"
ESCALATION_ACTION = (
    "casavi refuses these records night after night: fix them in the ERP "
    "(`casavi-pipeline audit --ref-id ID` shows each one's history)"
)
DELETIONS_ACTION = (
    "check them (`casavi-pipeline deletions --mandant M`), then approve what may go with `--approve ID` "
    "or the job casavi_approve_deletions; or put them back into the export"
)


def of_this_code_location(context: dg.RunStatusSensorContext) -> bool:
    """Is the sensor's run one of this code location's: its job is ours, and so is every asset it ran?
    (The sensors monitor every code location of the instance: see the module's docstring.)"""
    run, repository = context.dagster_run, context.repository_def
    if repository is None or not repository.has_job(run.job_name):
        return False
    return set(run.asset_selection or ()) <= set(repository.assets_defs_by_key)


def alerted_channels(run: dg.DagsterRun) -> set[str]:
    return {name for name in run.tags.get(ALERTED_TAG, "").split(",") if name}


def _send_for_run(
    context: dg.RunStatusSensorContext, alerting: Alerting, reason: str, action: str
) -> list[str]:
    """Send the alert about the sensor's run to each configured channel that has not taken it yet,
    tagging the run as each one does; return the channels that took it now. A failing channel is a
    warning in the sensor's log (no URL, no password), never an error."""
    run = context.dagster_run
    done = alerted_channels(run)
    alert = Alert(
        mandant=run.tags.get(PARTITION_TAG, "(none)"),
        reason=reason,
        action=action,
        path=RUN_PATH.format(run_id=run.run_id),
        run_id=run.run_id,
    )

    def record(channel: str) -> None:
        done.add(channel)
        context.instance.add_run_tags(run.run_id, {ALERTED_TAG: ",".join(sorted(done))})

    sent, warnings = alerting.channels.send(alert, skip=done, on_sent=record)
    for warning in warnings:
        context.log.warning(warning)
    return sent


@dg.run_failure_sensor(
    name="casavi_failure_alert",
    monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=FAILURE_SENSOR_INTERVAL_SECONDS,
    description="For every failed run of this code location, however it was started: records why it "
    "stopped (tag casavi/failure_reason) if no step did, and sends one alert (email, Slack, Teams: "
    "CASAVI_ALERT_* settings) naming the Mandant, the reason, what to do and a link to the run.",
)
def casavi_failure_alert(context: dg.RunFailureSensorContext, alerting: Alerting) -> None:
    # Returns None for every run: a run status sensor that returns a value stops its tick there.
    run = context.dagster_run
    if not of_this_code_location(context):
        return
    reason = reason_of_failed_run(context.instance, run, context.failure_event.message)
    if not alerting.channels.configured:
        return
    root = run.tags.get(_ROOT_RUN_TAG)
    if root and root != run.run_id:
        original = context.instance.get_run_by_id(root)
        if original is not None and ALERTED_TAG in original.tags:
            context.log.info(f"run {run.run_id} re-executes {root}, already alerted")
            return
    _send_for_run(context, alerting, reason, FAILURE_ACTION)


def _escalation(instance: dg.DagsterInstance, run_id: str) -> dg.AssetCheckEvaluation | None:
    """The run's `casavi_rejections` evaluation if it names escalated records."""
    for evaluation in check_evaluations_of_run(instance, run_id):
        escalated = evaluation.metadata.get("escalated")
        if evaluation.check_name == REJECTIONS_CHECK and escalated is not None and escalated.value:
            return evaluation
    return None


def build_escalation_alert_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="casavi_escalation_alert",
        monitor_all_code_locations=True,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if settings.alerts.configured else dg.DefaultSensorStatus.STOPPED
        ),
        description="Sends one alert for a successful Mandant run whose casavi_rejections check names "
        "records casavi refused on CASAVI_REJECTION_ESCALATE_NIGHTS nights (email, Slack, Teams).",
    )
    def casavi_escalation_alert(context: dg.RunStatusSensorContext, alerting: Alerting) -> None:
        if not alerting.channels.configured or not of_this_code_location(context):
            return
        evaluation = _escalation(context.instance, context.dagster_run.run_id)
        if evaluation is None:
            return
        reason = f"check {REJECTIONS_CHECK}: {(evaluation.description or '').strip().splitlines()[0]}"
        _send_for_run(context, alerting, reason, ESCALATION_ACTION)

    return casavi_escalation_alert


def _new_pending_deletions(instance: dg.DagsterInstance, run_id: str) -> dg.AssetCheckEvaluation | None:
    """The run's `casavi_pending_deletions` evaluation if the run listed new pending deletions."""
    for evaluation in check_evaluations_of_run(instance, run_id):
        new = evaluation.metadata.get("new")
        if evaluation.check_name == PENDING_DELETIONS_CHECK and new is not None and new.value:
            return evaluation
    return None


def build_deletions_alert_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="casavi_deletions_alert",
        monitor_all_code_locations=True,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if settings.alerts.configured else dg.DefaultSensorStatus.STOPPED
        ),
        description="Sends one alert for a successful Mandant run that listed new pending deletions (objects "
        "out of scope that wait for a person's approval before casavi deletes them): once per new set, "
        "not every night they keep waiting (email, Slack, Teams).",
    )
    def casavi_deletions_alert(context: dg.RunStatusSensorContext, alerting: Alerting) -> None:
        if not alerting.channels.configured or not of_this_code_location(context):
            return
        evaluation = _new_pending_deletions(context.instance, context.dagster_run.run_id)
        if evaluation is None:
            return
        reason = f"check {PENDING_DELETIONS_CHECK}: {(evaluation.description or '').strip().splitlines()[0]}"
        _send_for_run(context, alerting, reason, DELETIONS_ACTION)

    return casavi_deletions_alert


casavi_escalation_alert = build_escalation_alert_sensor(SETTINGS)
casavi_deletions_alert = build_deletions_alert_sensor(SETTINGS)

defs = dg.Definitions(sensors=[casavi_failure_alert, casavi_escalation_alert, casavi_deletions_alert])
