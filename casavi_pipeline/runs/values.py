"""The values a run's steps hand each other: per run, and gone once the run no longer needs them.

The ERP and casavi frames between steps hold names, emails and phones. They are pickled beside the
snapshots, at `<CASAVI_SNAPSHOT_DB>/values/<run id>/<asset>/<Mandant>`, never in Dagster's storage:

- per run, so two runs of one Mandant never read each other's half-written files (the loser of two
  runs started at once stops at the Mandant's snapshot lock with one line, not on a truncated pickle);
- a re-execution from failure reads its parent run's values (`upstream_output.run_id`), so a failed
  or canceled run's values are kept for :data:`KEEP_ENDED_RUN_SECONDS`, then removed;
- a run whose steps all succeeded removes its own values as its last act (:func:`run_values_executor`;
  every way of starting a run executes it with this executor), and every run first removes what ended runs
  left behind (:func:`remove_ended_run_values`): a killed run's, a failed run's past the bound;
- `./run erase-personal-data M` removes Mandant M's values of every run (`casavi_pipeline.cli.erase`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster._core.launcher import WorkerStatus

from casavi_pipeline.runs.launcher import WORKER_TAG, record_run_worker, worker_health

#: Folder (inside CASAVI_SNAPSHOT_DB) of the run values: `<folder>/<run id>/<asset>/<Mandant>`.
VALUES_FOLDER = "values"
#: How long the values of a failed or canceled run are kept for a re-execution from failure.
KEEP_ENDED_RUN_SECONDS = 7 * 24 * 3600


class RunValuesIOManager(dg.ConfigurableIOManager):
    """Pickles each asset partition at `<base_dir>/<run id>/<asset>/<partition>` (see the module)."""

    base_dir: str

    def _path(self, run_id: str, context: dg.InputContext | dg.OutputContext, partition: str) -> Path:
        return Path(self.base_dir, run_id, *context.asset_key.path, partition)

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        path = self._path(context.run_id, context, context.asset_partition_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a reader never sees half a value.
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".writing-", delete=False) as f:
            pickle.dump(obj, f, pickle.HIGHEST_PROTOCOL)
        os.replace(f.name, path)

    def load_input(self, context: dg.InputContext) -> object:
        upstream = context.upstream_output
        run_id = upstream.run_id if upstream is not None else None
        asset, partition = context.asset_key.to_user_string(), context.asset_partition_key
        path = self._path(run_id, context, partition) if run_id else None
        if path is None or not path.exists():
            raise dg.Failure(
                description=f"{asset} of Mandant {partition} is not kept between runs (it holds personal "
                f"data{f'; run {run_id} left none' if run_id else ''}): materialize {asset} in the same "
                "run, e.g. the whole casavi_sync_job, or re-execute a failed run from failure"
            )
        with path.open("rb") as f:
            return pickle.load(f)


def remove_run_values(base_dir: Path, run_id: str) -> None:
    """Remove one run's values (absent ones are fine: another process may be removing them too)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(base_dir / run_id)


def _folders(base_dir: Path) -> Iterator[Path]:
    return (
        (p for p in base_dir.iterdir() if p.is_dir() and not p.is_symlink())
        if base_dir.is_dir()
        else iter(())
    )


def remove_ended_run_values(instance: dg.DagsterInstance, base_dir: Path) -> list[str]:
    """Remove the values of runs that ended: succeeded at once, failed/canceled/killed after the bound.

    A folder whose run this instance does not know (deleted, or another instance's) goes once it
    was last written to longer ago than the bound. Returns the folder names removed.
    """
    removed = []
    old = time.time() - KEEP_ENDED_RUN_SECONDS
    for folder in _folders(base_dir):
        record = instance.get_run_record_by_id(folder.name)
        if record is None:
            done = folder.stat().st_mtime < old
        elif record.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
            done = True
        else:
            run = record.dagster_run
            # A killed run no daemon has ended yet counts as ended, since it was last written to.
            dead = worker_health(run.tags.get(WORKER_TAG)).status == WorkerStatus.FAILED
            ended_at = record.end_time if run.is_finished else folder.stat().st_mtime if dead else None
            done = ended_at is not None and ended_at < old
        if done:
            remove_run_values(base_dir, folder.name)
            removed.append(folder.name)
    return removed


class _RunValuesExecutor(dg.Executor):
    """Dagster's in-process executor, plus: the run records its worker (for the launcher's health
    check) and removes other runs' leftovers before its first step, and its own values after its last
    step when every step succeeded."""

    def __init__(self, inner: dg.Executor, base_dir: Path) -> None:
        self._inner = inner
        self._base_dir = base_dir

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        run_id = plan_context.run_id
        record_run_worker(plan_context.instance, plan_context.dagster_run)
        remove_ended_run_values(plan_context.instance, self._base_dir)
        failed = False
        for event in self._inner.execute(plan_context, execution_plan):
            failed = failed or event.is_step_failure
            yield event
        if not failed:
            remove_run_values(self._base_dir, run_id)


def run_values_executor(base_dir: Path) -> dg.ExecutorDefinition:
    """The code location's executor: in-process (why: defs/resources.py), with the run values' upkeep."""

    @dg.executor(name="in_process", config_schema=dg.in_process_executor.config_schema)
    def in_process(init_context: dg.InitExecutorContext) -> dg.Executor:
        return _RunValuesExecutor(dg.in_process_executor.executor_creation_fn(init_context), base_dir)

    return in_process
