"""`casavi-pipeline sync --mandant M [--dry-run]`: the main job for one Mandant in the Dagster instance
(`$DAGSTER_HOME`, so the run shows in the UI), told in a few lines instead of Dagster's event stream.

The run is submitted to the instance like a run started in the UI (`runs/submit.py`): the queue's
one-run-per-Mandant limit, the run launcher, the sensors (a failed run alerts) and the executor's upkeep
apply to it; without a daemon the command launches it itself. The command follows the run's events until
it ends; Ctrl-C or SIGTERM stops the run (as Terminate in the UI does) and waits for it to end.

It prints what `./run demo` prints (the demo uses the same functions): the run's own lines as they come
(how casavi was read, what is pending, the sync's progress and its waits for a failing casavi, and every
warning), per kind what casavi confirmed — also of a run stopped half-way (casavi gone, Ctrl-C, the state
database gone: "95 of 277 writes confirmed by casavi; the next run sends the rest") — or, in a dry run,
what would be sent and the preview (which objects and fields would change, names only, and what would
wait for deletion instead), one line per warning check that did not pass (the pending deletions; in a dry
run a guard that would stop a real run), and one line saying why when the run stopped. All of it is read from the
run's events in the instance (`outcome_of_run`). The full event log is in the UI.
Exit 0: synced; 1: the run failed (the line says why); 2: it could not start (settings, `DAGSTER_HOME`
unset or without its dagster.yaml, the code location, the Mandant busy); 130: stopped.
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
from casavi_pipeline.cli.mandant import settings_for
from casavi_pipeline.interrupts import held
from casavi_pipeline.runs.instance_home import instance_problem
from casavi_pipeline.settings import load_settings

if TYPE_CHECKING:  # Dagster is imported only when a run starts
    import dagster as dg
    from dagster._core.workspace.context import BaseWorkspaceRequestContext

#: Only the summary on the terminal; the full event log of each run is in the Dagster UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
#: Preview lines of a dry run on the terminal; the run's metadata lists them all.
PREVIEW_LINES = 20
SYNC_ASSET = "casavi_sync"
LINKS_ASSET = "casavi_links"
CHANGES = ("create", "update", "delete")
HEADER = ("Mandant", "kind", "created", "updated", "deleted")
#: How often the run's new events are read while following it.
POLL_SECONDS = 0.5
#: After Ctrl-C or SIGTERM, how long the run may take to stop (its sync records what casavi confirmed).
STOP_WAIT_SECONDS = 120.0
#: The steps whose own lines (INFO and above) the terminal shows as they come: how casavi was read, what is
#: pending, the sync's progress and its waits. Warnings of every step are shown too.
TOLD_STEPS = ("casavi_remote", "casavi_changeset", SYNC_ASSET)


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
    links: str | None = None  # the links file written for the ERP, one line (`casavi_links`' metadata)

    @property
    def total(self) -> int:
        """The writes in `rows`: confirmed by casavi, or in a dry run, the ones that would be sent."""
        return sum(int(row[2]) + int(row[3]) + int(row[4]) for row in self.rows)


def _rows(mandant: str, metadata: dict[str, Any], prefix: str) -> list[tuple[str, ...]]:
    return [
        (mandant, kind.value, *(str(int(metadata.get(f"{prefix}{kind.value}/{c}", 0))) for c in CHANGES))
        for kind in api.UPSERT_ORDER
    ]


class NotStarted(Exception):
    """The run could not start (the message says why, in one line)."""


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
        elif event.is_step_materialization and event.asset_key == dg.AssetKey(LINKS_ASSET):
            outcome.links = _values(event.step_materialization_data.materialization.metadata).get("summary")
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
    ] + [  # what would stay in casavi out of scope instead of being deleted (CASAVI_DELETIONS)
        f"  {r.data['fate']} {r.data['kind']} {r.data['ref_id']}: {r.data['why']}"
        + (", new" if r.data.get("new") else "")
        for r in (metadata["would_wait"].records if "would_wait" in metadata else [])
    ]


class Follower:
    """Reads a run's events as they come, showing the run's own lines on the terminal (stderr): those of
    the steps that read casavi, diff and write (`TOLD_STEPS`), and every warning."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str) -> None:
        self.instance, self.run_id = instance, run_id
        self._cursor: str | None = None

    def until_ended(self, *, deadline: float | None = None) -> dg.DagsterRun:
        while True:
            # A Ctrl-C lands between two reads, in the sleep: inside Dagster's storage it could end up in a
            # finalizer, which swallows it and prints a traceback (`casavi_pipeline.interrupts`).
            with held():
                run = self.instance.get_run_by_id(self.run_id)  # before its events: once ended, all are stored
                assert run is not None, self.run_id
                self._read()
            if run.is_finished:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} did not end")
            time.sleep(POLL_SECONDS)

    def _read(self) -> None:
        while True:
            batch = self.instance.get_records_for_run(self.run_id, cursor=self._cursor, limit=1000)
            self._cursor = batch.cursor
            for record in batch.records:
                entry = record.event_log_entry
                if entry.dagster_event is None and told(entry.step_key, entry.level, entry.user_message):
                    print(entry.user_message, file=sys.stderr, flush=True)
            if not batch.has_more:
                return


def told(step_key: str | None, level: int | str, message: str) -> bool:
    """Is a line of the run shown on the terminal? (Dagster's own lines — step starts, handled outputs —
    and the failure hook's line, which the summary repeats, are not.)"""
    import logging

    from casavi_pipeline.defs.failures import STOPPED

    level = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(level, int) or level < logging.INFO or message.startswith(STOPPED):
        return False
    return level >= logging.WARNING or step_key in TOLD_STEPS


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
    interrupted = False
    try:
        submit.start(instance, workspace, run.run_id)
        follower.until_ended()
    except KeyboardInterrupt:
        interrupted = True
        try:
            submit.cancel(instance, run.run_id)
            follower.until_ended(deadline=time.monotonic() + STOP_WAIT_SECONDS)
        except (KeyboardInterrupt, TimeoutError):  # stopped again, or stopping takes too long
            pass
    dry = load_settings().sync.dry_run if dry_run is None else dry_run
    return outcome_of_run(instance, run.run_id, mandant, dry_run=dry, interrupted=interrupted)


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
            rest = "the next run sends the rest" if confirmed < planned else "none was left to send"
            print(f"{confirmed} of {planned} writes confirmed by casavi; {rest}.")
        else:
            print(f"{confirmed} writes confirmed by casavi.")
    for outcome in outcomes:
        if outcome.links:
            print(outcome.links)
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
    settings = settings_for("sync", args.mandant)  # the code server checks them again when it loads
    if settings is None:
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
        print("Stopped by Ctrl-C or SIGTERM: what casavi confirmed is recorded.", file=sys.stderr)
        return 130
    return 1 if outcome.reason else 0


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sync",
        help="run the main job for one Mandant and print a short summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mandant", required=True, help="the Mandant (one of CASAVI_MANDANTEN)")
    parser.add_argument(
        "--dry-run", action="store_true", help="compute and preview the changeset, write nothing to casavi"
    )
    parser.set_defaults(command=sync)
