"""`casavi-pipeline sync --mandant M [--dry-run]`: the main job for one Mandant in the Dagster instance
(`$DAGSTER_HOME`, so the run shows in the UI), told in a few lines instead of Dagster's event stream.

It prints what `./run demo` prints (the demo uses the same functions): the sync's progress and its waits for
a failing casavi, per kind what casavi confirmed — also of a run stopped half-way (casavi gone, Ctrl-C, the
state database gone: "95 of 277 writes confirmed by casavi; the next run sends the rest") — or, in a dry
run, what would be sent and the preview (which objects and fields would change, names only), one line per
warning check that did not pass, and one line saying why when the run stopped. All of it is read from the
run's events in the instance (`outcome_of_run`). The full event log is in the UI.
Exit 0: synced; 1: the run failed (the line says why); 2: it could not start (settings, `DAGSTER_HOME`
unset or without its dagster.yaml); 130: stopped.
"""

from __future__ import annotations

import argparse
import signal
import sys
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casavi_pipeline.casavi import api
from casavi_pipeline.runs.instance_home import instance_problem
from casavi_pipeline.settings import SettingsError

if TYPE_CHECKING:  # Dagster is imported only when a run starts: the code location reads its settings then.
    import dagster as dg

#: Only the summary on the terminal; the full event log of each run is in the Dagster UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
#: Preview lines of a dry run on the terminal; the run's metadata lists them all.
PREVIEW_LINES = 20
SYNC_ASSET = "casavi_sync"
CHANGES = ("create", "update", "delete")
HEADER = ("Mandant", "kind", "created", "updated", "deleted")


@dataclass
class Outcome:
    """One Mandant's run, as the terminal tells it."""

    mandant: str
    run_id: str | None = None
    rows: list[tuple[str, ...]] = field(default_factory=list)  # per kind: Mandant, kind, create/update/delete
    reason: str | None = None  # why it did not sync, one line
    interrupted: bool = False
    dry_run: bool = False
    preview: list[str] = field(default_factory=list)
    #: The writes the sync set out with, when it got to writing and its counts are known (from the
    #: metadata of its materialization, or of its failure when it stopped half-way).
    planned: int | None = None
    #: The sync stopped while writing and did not say what casavi confirmed (the audit trail knows).
    uncounted: bool = False
    warnings: list[str] = field(default_factory=list)  # one line per WARN check that did not pass

    @property
    def total(self) -> int:
        """The writes in `rows`: confirmed by casavi, or in a dry run, the ones that would be sent."""
        return sum(int(row[2]) + int(row[3]) + int(row[4]) for row in self.rows)


def _rows(mandant: str, metadata: dict[str, Any], prefix: str) -> list[tuple[str, ...]]:
    return [
        (mandant, kind.value, *(str(int(metadata.get(f"{prefix}{kind.value}/{c}", 0))) for c in CHANGES))
        for kind in api.UPSERT_ORDER
    ]


def _stopped_by_a_person(event: dg.DagsterEvent) -> bool:
    """A step failure of Ctrl-C, SIGTERM or a terminate from the UI."""
    from casavi_pipeline.defs.sync_reporting import INTERRUPTED

    data = event.step_failure_data
    user = data.user_failure_data if data else None
    error = data.error if data else None
    return bool(
        (user and INTERRUPTED in (user.description or ""))
        or (error and error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"))
    )


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "(no description)"


def outcome_of_run(
    instance: dg.DagsterInstance, run_id: str, mandant: str, *, dry_run: bool, interrupted: bool = False
) -> Outcome:
    """What the terminal says about a run, from its events in the instance (however it was started):
    what casavi confirmed (a sync stopped half-way says it in its failure's metadata), a dry run's
    preview, the warnings, and why it did not sync."""
    import dagster as dg

    from casavi_pipeline.defs.failures import failure_reason

    records = instance.get_records_for_run(run_id, limit=1_000_000).records
    events = [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event]
    run = instance.get_run_by_id(run_id)
    failures = [e for e in events if e.is_step_failure]
    checks = [e.asset_check_evaluation_data for e in events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    outcome = Outcome(mandant, run_id=run_id, dry_run=dry_run)
    outcome.interrupted = interrupted or (run is not None and run.status == dg.DagsterRunStatus.CANCELED)
    outcome.interrupted |= any(_stopped_by_a_person(e) for e in failures)
    expected_stop = False  # the sync failed with a dg.Failure: ours carry what was sent, if anything was
    for event in events:
        if event.is_step_materialization and event.asset_key == dg.AssetKey(SYNC_ASSET):
            _count(outcome, _values(event.step_materialization_data.materialization.metadata))
        elif event.is_asset_observation and event.asset_key == dg.AssetKey(SYNC_ASSET):
            _preview(outcome, _values(event.asset_observation_data.asset_observation.metadata))
        elif event.is_step_failure and event.step_key == SYNC_ASSET and event.step_failure_data.user_failure_data:
            expected_stop = True
            if "planned" in (metadata := _values(event.step_failure_data.user_failure_data.metadata)):
                _count(outcome, metadata)
    writing = any(e.is_step_start and e.step_key == SYNC_ASSET for e in events) and not outcome.dry_run
    # Stopped while writing without saying what (a bug's exception, an interrupt before it was recorded).
    outcome.uncounted = writing and outcome.planned is None and not expected_stop
    outcome.warnings = [
        f"warning: check {c.check_name}: {_first_line(c.description)}"
        for c in checks
        if not c.passed and c.severity == dg.AssetCheckSeverity.WARN
    ]
    if not outcome.interrupted and not (run is not None and run.status == dg.DagsterRunStatus.SUCCESS):
        outcome.reason = failure_reason(checks, failures)
    return outcome


def _values(metadata: Any) -> dict[str, Any]:
    return {key: value.value for key, value in metadata.items()}


def _count(outcome: Outcome, metadata: dict[str, Any]) -> None:
    outcome.rows = _rows(outcome.mandant, metadata, "confirmed/")
    outcome.planned = int(metadata.get("planned", outcome.total))


def _preview(outcome: Outcome, metadata: dict[str, Any]) -> None:
    outcome.dry_run = True
    outcome.rows = _rows(outcome.mandant, metadata, "")
    outcome.preview = [
        f"  {r.data.get('change')} {r.data.get('kind')} {r.data.get('ref_id')}"
        + (f": {r.data['fields']}" if r.data.get("fields") else "")
        for r in (metadata["preview"].records if "preview" in metadata else [])
    ]


def sync_mandant(
    job: dg.JobDefinition, instance: dg.DagsterInstance, mandant: str, *, dry_run: bool | None = None
) -> Outcome:
    """The main job for one Mandant in `instance`, quiet on the terminal but for the sync's progress.

    `execute_in_process` runs Dagster's own executor, not the code location's: what that one does for a
    run (runs/values.py) is done here, around it. Ctrl-C or SIGTERM stop the run; what it did is read
    from its events all the same.
    """
    from casavi_pipeline.defs import sync_reporting
    from casavi_pipeline.defs.resources import SETTINGS, snapshot_store
    from casavi_pipeline.runs.launcher import run_worker_tags
    from casavi_pipeline.runs.values import remove_ended_run_values, remove_run_values

    values = snapshot_store(SETTINGS).values_directory
    run_config: dict[str, Any] = dict(QUIET)
    if dry_run is not None:
        run_config["ops"] = {SYNC_ASSET: {"config": {"dry_run": dry_run}}}
    remove_ended_run_values(instance, values)
    sync_reporting.terminal = sys.stderr  # the sync's progress and waits, with the console logger quiet
    run_id = str(uuid.uuid4())  # known before it starts: an interrupt may end `execute_in_process` early
    interrupted = False
    try:
        result = job.execute_in_process(
            run_config=run_config,
            partition_key=mandant,
            instance=instance,
            raise_on_error=False,
            tags=run_worker_tags(),  # so run monitoring can tell whether this process still runs it
            run_id=run_id,
        )
        if result.success:
            remove_run_values(values, result.run_id)
    except KeyboardInterrupt:
        interrupted = True
    dry = SETTINGS.sync.dry_run if dry_run is None else dry_run
    return outcome_of_run(instance, run_id, mandant, dry_run=dry, interrupted=interrupted)


def print_summary(outcomes: Sequence[Outcome]) -> None:
    """The per-kind table, what casavi confirmed (of what, when a run stopped half-way), a dry run's
    preview, one line per warning, and one line per Mandant that did not sync."""
    rows = [row for outcome in outcomes for row in outcome.rows]
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print()
    for row in [HEADER, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print()
    dry = [outcome for outcome in outcomes if outcome.dry_run]
    if dry:
        pending = sum(outcome.total for outcome in dry if outcome.rows)
        counted = all(outcome.rows for outcome in dry)
        print(f"Dry run: {f'{pending} writes would be sent; ' if counted else ''}nothing was written to casavi.")
        for outcome in dry:
            for line in outcome.preview[:PREVIEW_LINES]:
                print(line)
            shown = min(len(outcome.preview), PREVIEW_LINES)
            if outcome.total > shown:
                print(
                    f"  … {outcome.total - shown} more; run {outcome.run_id}'s metadata in the Dagster UI lists "
                    "the first of each kind and change, and every deletion"
                )
    synced = [outcome for outcome in outcomes if not outcome.dry_run]
    if synced:
        confirmed = sum(outcome.total for outcome in synced)
        if any(outcome.reason or outcome.interrupted for outcome in synced if outcome.planned is not None):
            planned = sum(outcome.planned or outcome.total for outcome in synced)
            print(f"{confirmed} of {planned} writes confirmed by casavi; the next run sends the rest.")
        else:
            print(f"{confirmed} writes confirmed by casavi.")
    for outcome in outcomes:
        if outcome.uncounted:
            print(
                f"Mandant {outcome.mandant}: stopped while writing; what casavi confirmed is recorded: "
                f"casavi-pipeline audit --run {outcome.run_id}"
            )
        for warning in outcome.warnings:
            print(f"Mandant {outcome.mandant} {warning}")
    for outcome in outcomes:
        if outcome.reason:
            where = f" (run {outcome.run_id})" if outcome.run_id else ""
            print(f"Mandant {outcome.mandant} did not sync{where}: {outcome.reason}", file=sys.stderr)


def sync(args: argparse.Namespace) -> int:
    """`casavi-pipeline sync`: see the module's docstring."""
    warnings.filterwarnings("ignore", message=".*(beta|preview).*", category=Warning)  # Dagster's notices
    if problem := instance_problem():
        print(f"sync: {problem}", file=sys.stderr)
        return 2
    try:
        # Imported only now: the code location reads (and validates) its settings when it loads.
        import dagster as dg

        from casavi_pipeline.definitions import defs
        from casavi_pipeline.defs.jobs import SYNC_JOB_NAME
        from casavi_pipeline.defs.resources import SETTINGS
    except SettingsError as exc:
        print(f"sync: {exc}", file=sys.stderr)
        return 2
    if args.mandant not in SETTINGS.mandanten:
        print(f"sync: Mandant {args.mandant} is not in CASAVI_MANDANTEN ({', '.join(SETTINGS.mandanten)})",
              file=sys.stderr)  # fmt: skip
        return 2
    # SIGTERM (a deploy, `kill`) stops the sync like Ctrl-C: confirmed writes are kept.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"casavi {SETTINGS.casavi.base_url}; ERP {SETTINGS.erp.input}", flush=True)
    print(f"Mandant {args.mandant}: {'dry run' if args.dry_run or SETTINGS.sync.dry_run else 'syncing'}", flush=True)
    with dg.DagsterInstance.get() as instance:
        outcome = sync_mandant(
            defs.resolve_job_def(SYNC_JOB_NAME), instance, args.mandant, dry_run=args.dry_run or None
        )
    print_summary([outcome])
    if outcome.interrupted:
        print("Stopped by Ctrl-C or SIGTERM: what casavi confirmed is recorded.", file=sys.stderr)
        return 130
    return 1 if outcome.reason else 0
