"""`casavi-pipeline sync --mandant M [--dry-run]`: the main job for one Mandant in the Dagster instance
(`$DAGSTER_HOME`, so the run shows in the UI), told in a few lines instead of Dagster's event stream.

It prints what `./run demo` prints (the demo uses the same functions): the sync's progress, per kind what
casavi confirmed (or, in a dry run, what would be sent, and the preview: which objects and fields would
change, names only, and what would wait for deletion instead), the line naming the pending deletions, and
one line saying why when the run stopped (a dry run: that a real run would stop). The full event log is
in the UI.
Exit 0: synced; 1: the run failed (the line says why); 2: it could not start (settings); 130: stopped.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casavi_pipeline.casavi import api
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
    notes: list[str] = field(default_factory=list)  # pending deletions; a dry run's "a real run would stop"


def _rows(mandant: str, metadata: dict[str, Any], prefix: str) -> list[tuple[str, ...]]:
    return [
        (mandant, kind.value, *(str(int(metadata.get(f"{prefix}{kind.value}/{c}", 0))) for c in CHANGES))
        for kind in api.UPSERT_ORDER
    ]


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
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


def outcome_of(result: dg.ExecuteInProcessResult, mandant: str) -> Outcome:
    """What the terminal says about a finished run: the sync's counts, a dry run's preview, the pending
    deletions, or why not."""
    from casavi_pipeline.defs.failures import failure_reason
    from casavi_pipeline.defs.sync_reporting import PENDING_DELETIONS_CHECK

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
            ] + [
                f"  {r.data['fate']} {r.data['kind']} {r.data['ref_id']}: {r.data['why']}"
                + (", new" if r.data.get("new") else "")
                for r in (metadata["would_wait"].records if "would_wait" in metadata else [])
            ]
            outcome.notes += [metadata["would_stop"]] if "would_stop" in metadata else []
    for evaluation in result.get_asset_check_evaluations():
        pending = evaluation.metadata.get("pending")
        if evaluation.check_name == PENDING_DELETIONS_CHECK and pending is not None and pending.value:
            outcome.notes.append(evaluation.description or "")
    if not outcome.interrupted and (not result.success or not outcome.rows):
        outcome.reason = failure_reason(
            result.get_asset_check_evaluations(), result.get_step_failure_events()
        )
    return outcome


def sync_mandant(
    job: dg.JobDefinition, instance: dg.DagsterInstance, mandant: str, *, dry_run: bool | None = None
) -> Outcome:
    """The main job for one Mandant in `instance`, quiet on the terminal but for the sync's progress.

    `execute_in_process` runs Dagster's own executor, not the code location's: what that one does for a
    run (runs/values.py) is done here, around it.
    """
    from casavi_pipeline.defs.resources import SETTINGS, snapshot_store
    from casavi_pipeline.runs.launcher import run_worker_tags
    from casavi_pipeline.runs.values import remove_ended_run_values, remove_run_values

    values = snapshot_store(SETTINGS).values_directory
    run_config: dict[str, Any] = dict(QUIET)
    if dry_run is not None:
        run_config["ops"] = {SYNC_ASSET: {"config": {"dry_run": dry_run}}}
    remove_ended_run_values(instance, values)
    result = job.execute_in_process(
        run_config=run_config,
        partition_key=mandant,
        instance=instance,
        raise_on_error=False,
        tags=run_worker_tags(),  # so run monitoring can tell whether this process still runs it
    )
    if result.success:
        remove_run_values(values, result.run_id)
    return outcome_of(result, mandant)


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
        for note in outcome.notes:
            print(note)
    for outcome in outcomes:
        if outcome.reason:
            where = f" (run {outcome.run_id})" if outcome.run_id else ""
            print(f"Mandant {outcome.mandant} did not sync{where}: {outcome.reason}", file=sys.stderr)


def sync(args: argparse.Namespace) -> int:
    """`casavi-pipeline sync`: see the module's docstring."""
    warnings.filterwarnings("ignore", message=".*(beta|preview).*", category=Warning)  # Dagster's notices
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
    try:
        with dg.DagsterInstance.get() as instance:
            outcome = sync_mandant(
                defs.resolve_job_def(SYNC_JOB_NAME), instance, args.mandant, dry_run=args.dry_run or None
            )
    except KeyboardInterrupt:
        outcome = Outcome(args.mandant, interrupted=True)
    print_summary([outcome])
    if outcome.interrupted:
        print("Stopped: what casavi confirmed is recorded; the next run sends the rest.", file=sys.stderr)
        return 130
    return 1 if outcome.reason else 0
