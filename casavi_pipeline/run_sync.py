"""`casavi-pipeline sync --mandant M [--dry-run]`: the main job for one Mandant in the Dagster instance
(`$DAGSTER_HOME`, so the run shows in the UI), told in a few lines instead of Dagster's event stream.

The run is submitted to the instance like a run started in the UI (`runs/submit.py`): the queue's
one-run-per-Mandant limit, the run launcher, the sensors (a failed run alerts) and the executor's upkeep
apply to it; without a daemon the command launches it itself. The command follows the run's events until
it ends; Ctrl-C or SIGTERM stops the run (as Terminate in the UI does) and waits for it to end.

It prints what `./run demo` prints (the demo uses the same functions): the sync's progress, per kind what
casavi confirmed (or, in a dry run, what would be sent, and the preview: which objects and fields would
change, names only), and one line saying why when the run stopped. The full event log is in the UI.
Exit 0: synced; 1: the run failed (the line says why); 2: it could not start (settings); 130: stopped.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casavi_pipeline.casavi import api
from casavi_pipeline.settings import SettingsError, load_settings
from casavi_pipeline.sync.progress import is_progress_line

if TYPE_CHECKING:  # Dagster is imported only when a run starts
    import dagster as dg
    from dagster._core.workspace.context import BaseWorkspaceRequestContext

#: Only the summary on the terminal; the full event log of each run is in the Dagster UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
#: Preview lines of a dry run on the terminal; the run's metadata lists them all.
PREVIEW_LINES = 20
SYNC_ASSET = "casavi_sync"
CHANGES = ("create", "update", "delete")
HEADER = ("Mandant", "kind", "created", "updated", "deleted")
#: How often the run's new events are read while following it.
POLL_SECONDS = 0.5
#: After Ctrl-C or SIGTERM, how long the run may take to stop (its sync records what casavi confirmed).
STOP_WAIT_SECONDS = 120.0


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


def _rows(mandant: str, metadata: dict[str, Any], prefix: str) -> list[tuple[str, ...]]:
    return [
        (mandant, kind.value, *(str(int(metadata.get(f"{prefix}{kind.value}/{c}", 0))) for c in CHANGES))
        for kind in api.UPSERT_ORDER
    ]


@dataclass
class FinishedRun:
    """A run that ended, read back from the instance: what `outcome_of` asks of it (the part of
    `dg.ExecuteInProcessResult` it uses), for a run executed in another process."""

    dagster_run: dg.DagsterRun
    all_events: list[dg.DagsterEvent]

    @property
    def run_id(self) -> str:
        return self.dagster_run.run_id

    @property
    def success(self) -> bool:
        return self.dagster_run.status.value == "SUCCESS"

    def _of(self, event_type: str) -> list[dg.DagsterEvent]:
        return [event for event in self.all_events if event.event_type_value == event_type]

    def get_step_failure_events(self) -> list[dg.DagsterEvent]:
        return self._of("STEP_FAILURE")

    def get_asset_materialization_events(self) -> list[dg.DagsterEvent]:
        return self._of("ASSET_MATERIALIZATION")

    def get_asset_check_evaluations(self) -> list[dg.AssetCheckEvaluation]:
        return [event.asset_check_evaluation_data for event in self._of("ASSET_CHECK_EVALUATION")]


class NotStarted(Exception):
    """The run could not start (the message says why, in one line)."""


def _interrupted(result: FinishedRun) -> bool:
    """Was the run stopped by a person (Ctrl-C, SIGTERM)? Then no next Mandant either."""
    from casavi_pipeline.defs.sync_reporting import INTERRUPTED

    def stopped(event: dg.DagsterEvent) -> bool:
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        error = data.error if data else None
        return bool(
            (user and INTERRUPTED in (user.description or ""))
            or (error and error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"))
        )

    return result.dagster_run.status.value == "CANCELED" or any(
        stopped(e) for e in result.get_step_failure_events()
    )


def outcome_of(result: FinishedRun, mandant: str) -> Outcome:
    """What the terminal says about a finished run: the sync's counts, a dry run's preview, or why not."""
    from casavi_pipeline.defs.failures import failure_reason

    outcome = Outcome(mandant, run_id=result.run_id, interrupted=_interrupted(result))
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == SYNC_ASSET:
            metadata = {
                k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()
            }
            outcome.rows = _rows(mandant, metadata, "confirmed/")
    for event in result.all_events:
        observation = event.asset_observation_data.asset_observation if event.is_asset_observation else None
        if observation is not None and observation.asset_key.to_user_string() == SYNC_ASSET:
            metadata = {k: v.value for k, v in observation.metadata.items()}
            outcome.dry_run = True
            outcome.rows = _rows(mandant, metadata, "")
            outcome.preview = [
                f"  {r.data.get('change')} {r.data.get('kind')} {r.data.get('ref_id')}"
                + (f": {r.data['fields']}" if r.data.get("fields") else "")
                for r in (metadata["preview"].records if "preview" in metadata else [])
            ]
    if not outcome.interrupted and (not result.success or not outcome.rows):
        outcome.reason = failure_reason(
            result.get_asset_check_evaluations(), result.get_step_failure_events()
        )
    return outcome


class Follower:
    """Reads a run's events as they come, showing its progress lines on the terminal (stderr)."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str) -> None:
        self.instance, self.run_id = instance, run_id
        self.events: list[dg.DagsterEvent] = []
        self._cursor: str | None = None

    def until_ended(self, *, deadline: float | None = None) -> FinishedRun:
        while True:
            run = self.instance.get_run_by_id(self.run_id)  # before its events: once ended, all are stored
            assert run is not None, self.run_id
            self._read()
            if run.is_finished:
                return FinishedRun(run, self.events)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} did not end")
            time.sleep(POLL_SECONDS)

    def _read(self) -> None:
        while True:
            batch = self.instance.get_records_for_run(self.run_id, cursor=self._cursor, limit=1000)
            self._cursor = batch.cursor
            for record in batch.records:
                entry = record.event_log_entry
                if entry.dagster_event is not None:
                    self.events.append(entry.dagster_event)
                elif is_progress_line(entry.user_message):
                    print(entry.user_message, file=sys.stderr, flush=True)
            if not batch.has_more:
                return


def sync_mandant(
    instance: dg.DagsterInstance,
    workspace: BaseWorkspaceRequestContext,
    mandant: str,
    *,
    dry_run: bool | None = None,
) -> Outcome:
    """The main job for one Mandant, submitted to `instance` from the code server of `workspace`
    (`runs.submit.code_location`), followed until it ends; quiet on the terminal but for its progress.
    Raises `NotStarted` when, without a daemon, another run of the Mandant is going."""
    from casavi_pipeline.defs.jobs import SYNC_JOB_NAME
    from casavi_pipeline.runs import submit

    run_config: dict[str, Any] = dict(QUIET)
    if dry_run is not None:
        run_config["ops"] = {SYNC_ASSET: {"config": {"dry_run": dry_run}}}
    if not submit.queue_is_served(instance) and (busy := submit.busy_run(instance, mandant)):
        raise NotStarted(
            f"Mandant {mandant} is being synced by run {busy.run_id} ({busy.status.value}): wait for it to "
            "end, or run the daemon (dagster-daemon run, ./run dev), which queues this run behind it"
        )
    run = submit.create_run(instance, workspace, SYNC_JOB_NAME, partition=mandant, run_config=run_config)
    follower = Follower(instance, run.run_id)
    try:
        submit.start(instance, workspace, run.run_id)
        finished = follower.until_ended()
    except KeyboardInterrupt:
        try:
            submit.cancel(instance, run.run_id)
            finished = follower.until_ended(deadline=time.monotonic() + STOP_WAIT_SECONDS)
        except (KeyboardInterrupt, TimeoutError):  # stopped again, or stopping takes too long
            return Outcome(mandant, run_id=run.run_id, interrupted=True)
    return outcome_of(finished, mandant)


def print_summary(outcomes: Sequence[Outcome]) -> None:
    """The per-kind table, the total, a dry run's preview, and one line per Mandant that did not sync."""
    rows = [row for outcome in outcomes for row in outcome.rows]
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print()
    for row in [HEADER, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    total = sum(int(r[2]) + int(r[3]) + int(r[4]) for r in rows)
    if any(outcome.dry_run for outcome in outcomes):
        print(f"\nDry run: {total} writes would be sent; nothing was written to casavi.")
        for outcome in outcomes:
            for line in outcome.preview[:PREVIEW_LINES]:
                print(line)
            if len(outcome.preview) > PREVIEW_LINES:
                print(f"  … {len(outcome.preview) - PREVIEW_LINES} more in run {outcome.run_id}'s metadata")
    else:
        print(f"\n{total} writes confirmed by casavi.")
    for outcome in outcomes:
        if outcome.reason:
            where = f" (run {outcome.run_id})" if outcome.run_id else ""
            print(f"Mandant {outcome.mandant} did not sync{where}: {outcome.reason}", file=sys.stderr)


def sync(args: argparse.Namespace) -> int:
    """`casavi-pipeline sync`: see the module's docstring."""
    warnings.filterwarnings("ignore", message=".*(beta|preview).*", category=Warning)  # Dagster's notices
    try:
        settings = load_settings()  # the code server checks them again when it loads the code location
    except SettingsError as exc:
        print(f"sync: {exc}", file=sys.stderr)
        return 2
    if args.mandant not in settings.mandanten:
        print(f"sync: Mandant {args.mandant} is not in CASAVI_MANDANTEN ({', '.join(settings.mandanten)})",
              file=sys.stderr)  # fmt: skip
        return 2
    # SIGTERM (a deploy, `kill`) stops the sync like Ctrl-C: confirmed writes are kept.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(settings.endpoints, flush=True)
    print(f"Mandant {args.mandant}: {'dry run' if args.dry_run or settings.sync.dry_run else 'syncing'}", flush=True)
    import dagster as dg

    from casavi_pipeline.runs.submit import LocationLoadError, code_location

    try:
        with dg.DagsterInstance.get() as instance, code_location(instance) as workspace:
            outcome = sync_mandant(instance, workspace, args.mandant, dry_run=args.dry_run or None)
    except (LocationLoadError, NotStarted) as exc:
        print(f"sync: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the run was created
        outcome = Outcome(args.mandant, interrupted=True)
    print_summary([outcome])
    if outcome.interrupted:
        print("Stopped: what casavi confirmed is recorded; the next run sends the rest.", file=sys.stderr)
        return 130
    return 1 if outcome.reason else 0
