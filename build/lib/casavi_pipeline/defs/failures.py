"""Why a run stopped, in one line: for the run's own log and tags, the failure sensor and the demo.

Expected failures (a guard, a bad export, casavi unreachable or refusing the credentials) already carry a
one-line reason: a blocking check's description or a `dg.Failure` description. Dagster surfaces them
under a generic `DagsterAssetCheckFailedError` or a step failure with a stack trace; this module finds the
reason again from public APIs (check evaluations, step failure events) so every place that tells a person
why a run stopped tells the same line. One implementation, used by the job's failure hook, the run
failure sensor and the demo.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

#: The run tag carrying the one-line reason: shown at the top of the run page in the Dagster UI.
FAILURE_REASON_TAG = "casavi/failure_reason"
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
            return f"{event.step_key}: {_first_line(data.error.message)}"
    if isinstance(exception, dg.Failure) and exception.description:
        return _first_line(exception.description)
    if exception is not None:
        return f"{type(exception).__name__}: {_first_line(str(exception))}"
    return "see the run's event log in the Dagster UI"


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


def reason_of_run(instance: dg.DagsterInstance, run_id: str) -> str:
    return failure_reason(check_evaluations_of_run(instance, run_id), step_failures_of_run(instance, run_id))


@dg.failure_hook(name="casavi_failure_reason")
def record_failure_reason(context: dg.HookContext) -> None:
    """When a step fails, put the run's one-line reason into its log (ERROR) and its tags."""
    instance, run_id = context.instance, context.run_id
    reason = failure_reason(
        check_evaluations_of_run(instance, run_id),
        step_failures_of_run(instance, run_id),
        context.op_exception,
    )
    context.log.error(f"casavi_pipeline stopped: {reason}")
    context.instance.add_run_tags(context.run_id, {FAILURE_REASON_TAG: reason[:_MAX_TAG_LENGTH]})
