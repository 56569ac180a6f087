"""`casavi_failure_alert`: one alert per failed Mandant night, through the configured channels;
`casavi_escalation_alert`: one per night that succeeded while casavi kept refusing records.

A run failure sensor fires once per failed run; step retries happen inside the run and fire nothing. A
re-execution of a failed run (from the UI, `dagster/root_run_id` names the original) is the same night:
the sensor tags each run it alerted for and stays silent for re-executions of a run already alerted.
It monitors every job of the code location, so runs started with *Materialize all* or `dg launch`
(Dagster's implicit asset job) alert like the nightly schedule's. It runs by default as soon as a channel
is configured, so a person is told without anyone switching it on in the UI; with no channel it is off.

A record casavi refuses does not fail the night (`sync/rejections.py`): the run succeeds with the WARN
check `casavi_rejections`. One refused on `CASAVI_REJECTION_ESCALATE_NIGHTS` nights will not fix itself,
so the check names it ESCALATED, and `casavi_escalation_alert` tells a person, once per such run (that is,
once a night while it lasts), through the same channels.

Objects out of scope wait for a person before casavi deletes them (CASAVI_DELETIONS=approve): the check
`casavi_pending_deletions` names them on every run, and `casavi_deletions_alert` tells a person once per
new set, that is for the run that added pending deletions (its metadata `new`), not every night after.
"""

from __future__ import annotations

import dagster as dg

from casavi_pipeline.alerts import RUN_PATH, Alert
from casavi_pipeline.defs.failures import check_evaluations_of_run, failure_reason
from casavi_pipeline.defs.resources import SETTINGS, Alerting
from casavi_pipeline.defs.sync_reporting import PENDING_DELETIONS_CHECK, REJECTIONS_CHECK
from casavi_pipeline.settings import Settings

#: Run tag: the channels that took this run's failure alert.
ALERTED_TAG = "casavi/alerted"
PARTITION_TAG = "dagster/partition"
_ROOT_RUN_TAG = "dagster/root_run_id"
FAILURE_ACTION = "fix what it names, then re-run the Mandant (re-execute the run in the Dagster UI)"
ESCALATION_ACTION = (
    "casavi refuses these records night after night: fix them in the ERP "
    "(`casavi-pipeline audit --ref-id ID` shows each one's history)"
)
DELETIONS_ACTION = (
    "check them (`casavi-pipeline deletions --mandant M`), then approve what may go with `--approve ID` "
    "or the job casavi_approve_deletions; or put them back into the export"
)


def _default_status(settings: Settings) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if settings.alerts.configured else dg.DefaultSensorStatus.STOPPED


_NO_CHANNEL = dg.SkipReason("no alert channel configured (CASAVI_ALERT_* settings)")


def _send_for_run(
    context: dg.RunStatusSensorContext, alerting: Alerting, reason: str, action: str
) -> list[str]:
    """Send the alert about the sensor's run through every configured channel; return the channels that
    took it. A failing channel is a warning in the sensor's log (no URL, no password), never an error."""
    run = context.dagster_run
    alert = Alert(
        mandant=run.tags.get(PARTITION_TAG, "(none)"),
        reason=reason,
        action=action,
        path=RUN_PATH.format(run_id=run.run_id),
        run_id=run.run_id,
    )
    sent, warnings = alerting.channels.send(alert)
    for warning in warnings:
        context.log.warning(warning)
    return sent


def build_failure_alert_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="casavi_failure_alert",
        default_status=_default_status(settings),
        description="Sends one alert per failed Mandant run (email, Slack, Teams: CASAVI_ALERT_* settings): "
        "the Mandant, why it stopped, what to do, and a link to the run. Runs by default once a channel "
        "is configured.",
    )
    def casavi_failure_alert(context: dg.RunFailureSensorContext, alerting: Alerting):
        if not alerting.channels.configured:
            return _NO_CHANNEL
        run = context.dagster_run
        root = run.tags.get(_ROOT_RUN_TAG)
        if root and root != run.run_id:
            original = context.instance.get_run_by_id(root)
            if original is not None and ALERTED_TAG in original.tags:
                return dg.SkipReason(f"run {run.run_id} re-executes {root}, already alerted")
        reason = failure_reason(
            check_evaluations_of_run(context.instance, run.run_id), context.get_step_failure_events()
        )
        sent = _send_for_run(context, alerting, reason, FAILURE_ACTION)
        if sent:
            context.instance.add_run_tags(run.run_id, {ALERTED_TAG: ",".join(sent)})
        return None

    return casavi_failure_alert


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
        default_status=_default_status(settings),
        description="Sends one alert for a successful Mandant run whose casavi_rejections check names "
        "records casavi refused on CASAVI_REJECTION_ESCALATE_NIGHTS nights (email, Slack, Teams).",
    )
    def casavi_escalation_alert(context: dg.RunStatusSensorContext, alerting: Alerting):
        if not alerting.channels.configured:
            return _NO_CHANNEL
        evaluation = _escalation(context.instance, context.dagster_run.run_id)
        if evaluation is None:
            return dg.SkipReason(f"run {context.dagster_run.run_id}: no record escalated")
        reason = f"check {REJECTIONS_CHECK}: {(evaluation.description or '').strip().splitlines()[0]}"
        _send_for_run(context, alerting, reason, ESCALATION_ACTION)
        return None

    return casavi_escalation_alert


def _new_pending_deletions(instance: dg.DagsterInstance, run_id: str) -> dg.AssetCheckEvaluation | None:
    """The run's `casavi_pending_deletions` evaluation if the run added pending deletions."""
    for evaluation in check_evaluations_of_run(instance, run_id):
        new = evaluation.metadata.get("new")
        if evaluation.check_name == PENDING_DELETIONS_CHECK and new is not None and new.value:
            return evaluation
    return None


def build_deletions_alert_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="casavi_deletions_alert",
        default_status=_default_status(settings),
        description="Sends one alert for a successful Mandant run that added pending deletions (objects out of "
        "scope that wait for a person's approval before casavi deletes them): once per new set, not nightly.",
    )
    def casavi_deletions_alert(context: dg.RunStatusSensorContext, alerting: Alerting):
        if not alerting.channels.configured:
            return _NO_CHANNEL
        evaluation = _new_pending_deletions(context.instance, context.dagster_run.run_id)
        if evaluation is None:
            return dg.SkipReason(f"run {context.dagster_run.run_id}: no new pending deletion")
        reason = f"check {PENDING_DELETIONS_CHECK}: {(evaluation.description or '').strip().splitlines()[0]}"
        _send_for_run(context, alerting, reason, DELETIONS_ACTION)
        return None

    return casavi_deletions_alert


casavi_failure_alert = build_failure_alert_sensor(SETTINGS)
casavi_escalation_alert = build_escalation_alert_sensor(SETTINGS)
casavi_deletions_alert = build_deletions_alert_sensor(SETTINGS)

defs = dg.Definitions(sensors=[casavi_failure_alert, casavi_escalation_alert, casavi_deletions_alert])
