"""Why a run stopped, in one line: in the run's own log and tags, the failure sensor and the CLIs.

Expected failures (a guard, a bad export, casavi unreachable or refusing the credentials) already carry a
one-line reason: a blocking check's description or a `dg.Failure` description. Dagster surfaces them
under a generic `DagsterAssetCheckFailedError` or a step failure with a stack trace; this module finds the
reason again from public APIs (check evaluations, step failure events) so every place that tells a person
why a run stopped tells the same line (`failure_reason`).

The line goes into the run (the tag `casavi/failure_reason`, and an ERROR line "casavi_pipeline stopped:
…" in its log) by **the failure hook on every asset and check** (`with_failure_reason`, applied to the
whole code location in `definitions.py`). Hooks attached to assets go with them into every job that runs
them, also Dagster's implicit `__ASSET_JOB` (*Materialize all* in the UI, `dg launch --assets`, `dagster
asset materialize`) and `casavi_sync_job` (launchpad, schedule, sensor, `casavi-pipeline sync`). It runs
inside the failing step, so it needs no daemon: the line is there when the run ends.

A run that failed outside its steps (killed and marked failed by run monitoring, failed to start, a run
worker that crashed) has no hook that saw it; Dagster's own RUN_FAILURE event in its log says why, and
the run failure sensor `casavi_failure_alert` (defs/alerts.py) puts that line into the tag
(`reason_of_failed_run`) before it alerts with it.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

#: The run tag carrying the one-line reason: shown at the top of the run page in the Dagster UI.
FAILURE_REASON_TAG = "casavi/failure_reason"
#: What `failure_reason` says when neither a check, a step nor an exception names a reason.
NO_REASON = "see the run's event log in the Dagster UI"
#: Dagster caps tag values; the reason is one line anyway.
_MAX_TAG_LENGTH = 1000


def failure_reason(
    check_evaluations: Iterable[dg.AssetCheckEvaluation],
    step_failures: Iterable[dg.DagsterEvent],
    exception: BaseException | None = None,
) -> str:
    """One line: the first failing blocking check's description, else the first failed step's reason
    (or the exception a step is failing with right now, before its failure event is stored)."""
    for evaluation in check_evaluations:
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            return f"check {evaluation.check_name} failed: {_first_line(evaluation.description)}"
    for event in step_failures:
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        if user and user.description:
            return f"{event.step_key}: {_first_line(user.description)}"
        if data and data.error:
            error = data.error
            # Dagster's wrappers name no reason ("Error occurred while executing op …", "Exceeded
            # max_retries of 2" after the last retry): what they wrap does.
            while error.cause is not None and (
                error.cls_name == "DagsterExecutionStepExecutionError"
                or error.message.startswith("Exceeded max_retries")
            ):
                error = error.cause
            message = error.message
            # An exception's message starts with its qualified class name ("pkg.mod.SomeError: …").
            named, _, rest = message.partition(": ")
            if rest and named.rsplit(".", 1)[-1] == error.cls_name and "." in named:
                message = rest
            return f"{event.step_key}: {_first_line(message)}"
    if isinstance(exception, dg.Failure) and exception.description:
        return _first_line(exception.description)
    if exception is not None:
        return f"{type(exception).__name__}: {_first_line(str(exception))}"
    return NO_REASON


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "(no description)"


def check_evaluations_of_run(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetCheckEvaluation]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return [
        record.event_log_entry.dagster_event.asset_check_evaluation_data
        for record in records
        if record.event_log_entry.dagster_event is not None
    ]


def step_failures_of_run(instance: dg.DagsterInstance, run_id: str) -> list[dg.DagsterEvent]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    return [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event]


def reason_of_failed_run(instance: dg.DagsterInstance, run: dg.DagsterRun, failure_message: str | None) -> str:
    """Why `run` failed: the line its failing step's hook recorded, else (it failed outside its steps)
    the line found again from its events or Dagster's `failure_message`, recorded now in its tag."""
    step_failures = step_failures_of_run(instance, run.run_id)
    recorded = run.tags.get(FAILURE_REASON_TAG)
    # Only a failed step's hook writes the tag; one present without a failed step was inherited (a
    # re-execution carries its parent's tags) and says why the parent stopped.
    if recorded and step_failures:
        return recorded
    reason = failure_reason(check_evaluations_of_run(instance, run.run_id), step_failures)
    if reason == NO_REASON and failure_message:
        reason = _first_line(failure_message)
    instance.add_run_tags(run.run_id, {FAILURE_REASON_TAG: reason[:_MAX_TAG_LENGTH]})
    return reason


#: How the run's ERROR line naming the reason begins (`stopped_line`).
STOPPED = "casavi_pipeline stopped: "


def stopped_line(reason: str) -> str:
    """The run log's ERROR line naming the reason (the same in every way a run is started)."""
    return f"{STOPPED}{reason}"


@dg.failure_hook(name="casavi_failure_reason")
def record_failure_reason(context: dg.HookContext) -> None:
    """When a step fails, put the run's one-line reason into its log (ERROR) and its tags."""
    instance, run_id = context.instance, context.run_id
    reason = failure_reason(
        check_evaluations_of_run(instance, run_id),
        step_failures_of_run(instance, run_id),
        context.op_exception,
    )
    context.log.error(stopped_line(reason))
    context.instance.add_run_tags(context.run_id, {FAILURE_REASON_TAG: reason[:_MAX_TAG_LENGTH]})


def with_failure_reason(defs: dg.Definitions) -> dg.Definitions:
    """`defs` with the failure hook on every asset and asset check, so every job that runs them (Dagster's
    implicit asset job included) records why it stopped."""
    return dg.Definitions(
        assets=[
            asset.with_hooks({record_failure_reason}) if isinstance(asset, dg.AssetsDefinition) else asset
            for asset in defs.assets or []
        ],
        asset_checks=[check.with_hooks({record_failure_reason}) for check in defs.asset_checks or []],
        schedules=defs.schedules,
        sensors=defs.sensors,
        jobs=defs.jobs,
        resources=defs.resources,
        executor=defs.executor,
        loggers=defs.loggers,
        metadata=defs.metadata,
        component_tree=defs.component_tree,
    )
