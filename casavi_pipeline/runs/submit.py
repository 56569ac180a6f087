"""A run submitted to the Dagster instance from a command (`casavi-pipeline sync`, the demo), like any other.

The run goes the way of a run started in the UI: created from the code location as a code server loaded
it (so it carries the code location's origin, and the sensors see it), then handed to the instance's run
coordinator — the queue of dagster.yaml, with its one-run-per-Mandant limit, launched by the daemon
through the health-checked run launcher — and executed by the code location's own executor (its upkeep of
run values, `runs/values.py`). The command follows the run in the instance's event log.

Without a daemon nothing takes a run off the queue. Then (and only then) the command launches the run
itself through the same launcher, from its own code server, after the check the queue would have made:
no other run of the Mandant is going (:func:`busy_run`). So `./run demo` and a first sync work without a
daemon, and a run started beside one waits its turn.

Dagster 1.13 has no public API to create a run from Python without a webserver; this module does what
`dagster job launch` does (`dagster._cli.job`), with the same internal classes, and nothing else
in the project touches them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping

import dagster as dg
from dagster._core.launcher import WorkerStatus
from dagster._core.remote_representation.external import RemoteRepository
from dagster._core.workspace.context import BaseWorkspaceRequestContext, WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

from casavi_pipeline.runs.launcher import WORKER_TAG, worker_health

#: The code location, named as in workspace.yaml and pyproject.toml (`[tool.dagster]`): the daemon's
#: queue finds a run's code location by this name in its own workspace.
LOCATION_NAME = "casavi_pipeline"
LOCATION_MODULE = "casavi_pipeline.definitions"
#: The daemon's queue counts as served while its heartbeat is this fresh (it beats every 30 s).
DAEMON_HEARTBEAT_SECONDS = 120.0
_QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
#: Run statuses that hold a Mandant's one slot (the queue's own count: launched, not yet ended).
_HOLDING = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


class LocationLoadError(Exception):
    """The code location did not load in its code server (the message: why, in one line)."""


@contextlib.contextmanager
def code_location(instance: dg.DagsterInstance) -> Iterator[BaseWorkspaceRequestContext]:
    """A code server for the code location, as `dagster job launch -m` starts one; stopped on exit
    (once the runs it launched have ended: Dagster's code server waits for them)."""
    target = ModuleTarget(
        module_name=LOCATION_MODULE,
        attribute=None,
        working_directory=os.getcwd(),
        location_name=LOCATION_NAME,
    )
    with _output_to_devnull():
        process = WorkspaceProcessContext(instance, target)  # starts the code server
    with process:
        workspace = process.create_request_context()
        entry = workspace.get_code_location_entries().get(LOCATION_NAME)
        if entry is None or entry.code_location is None:
            error = entry.load_error if entry is not None else None
            while error is not None and error.cause is not None:  # Dagster's wrapper names no reason
                error = error.cause
            lines = (error.message if error is not None else "").strip().splitlines()
            raise LocationLoadError(f"the code location did not load: {lines[0] if lines else 'no reason given'}")
        yield workspace


@contextlib.contextmanager
def _output_to_devnull() -> Iterator[None]:
    """Processes started inside write their stdout and stderr to /dev/null.

    The command's terminal shows the run as the command tells it (`cli.sync.Follower`: the lines of the
    run's events). What the code server and the run worker it starts would print there — the server's
    own lines, the run's stderr, Dagster's helper processes' tracebacks when Ctrl-C reaches the whole
    process group — is not for it: the run's events and compute logs keep what matters.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _repository(workspace: BaseWorkspaceRequestContext) -> RemoteRepository:
    (repository,) = workspace.get_code_location(LOCATION_NAME).get_repositories().values()
    return repository


def create_run(
    instance: dg.DagsterInstance,
    workspace: BaseWorkspaceRequestContext,
    job_name: str,
    *,
    partition: str,
    run_config: Mapping[str, object],
) -> dg.DagsterRun:
    """A run of `job_name` for `partition`, created as the UI's launchpad creates it (not yet started)."""
    location = workspace.get_code_location(LOCATION_NAME)
    repository = _repository(workspace)
    job = repository.get_full_job(job_name)
    plan = location.get_execution_plan(
        job, dict(run_config), step_keys_to_execute=None, known_state=None, instance=instance
    ).execution_plan_snapshot
    return instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        status=None,
        tags={**job.tags, "dagster/partition": partition},
        root_run_id=None,
        parent_run_id=None,
        step_keys_to_execute=plan.step_keys_to_execute,
        execution_plan_snapshot=plan,
        job_snapshot=job.job_snapshot,
        parent_job_snapshot=job.parent_job_snapshot,
        asset_selection=None,
        asset_check_selection=None,
        resolved_op_selection=None,
        op_selection=None,
        remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(),
        asset_graph=repository.asset_graph,
    )


def queue_is_served(instance: dg.DagsterInstance) -> bool:
    """Does the instance queue runs, and is a daemon taking them off the queue?"""
    from dagster._core.run_coordinator import QueuedRunCoordinator

    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return True  # the run coordinator launches at once: nothing waits for a daemon
    beat = instance.get_daemon_heartbeats().get(_QUEUE_DAEMON)
    return beat is not None and time.time() - beat.timestamp < DAEMON_HEARTBEAT_SECONDS


def busy_run(instance: dg.DagsterInstance, partition: str) -> dg.DagsterRun | None:
    """Another run of `partition` that holds its slot (launched, not ended, its worker not known to be
    gone: a killed run no daemon has ended yet holds nothing), if any."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/partition": partition}, statuses=_HOLDING), limit=20
    )
    alive = (run for run in runs if worker_health(run.tags.get(WORKER_TAG)).status != WorkerStatus.FAILED)
    return next(alive, None)


def start(instance: dg.DagsterInstance, workspace: BaseWorkspaceRequestContext, run_id: str) -> None:
    """Submit the run to the queue (the daemon launches it), or, with no daemon, launch it now."""
    if queue_is_served(instance):
        instance.submit_run(run_id, workspace)
    else:
        instance.launch_run(run_id, workspace)


def cancel(instance: dg.DagsterInstance, run_id: str) -> None:
    """Stop the run as the UI's Terminate does: off the queue if waiting, else its worker interrupted.

    A Ctrl-C in the terminal stops the code server too (one process group), which then cannot pass the
    request on, and the run's process may not have been in that group: so the worker this host runs is
    also interrupted directly (its tag names it). An interrupt more is harmless: the sync counts what it
    did from the audit trail (`sync.run.recorded_totals`).
    """
    from dagster._core.errors import DagsterUserCodeUnreachableError

    run = instance.get_run_by_id(run_id)
    if run is None or run.is_finished:
        return
    with contextlib.suppress(DagsterUserCodeUnreachableError):
        instance.run_coordinator.cancel_run(run_id)
    if (pid := local_worker(run.tags.get(WORKER_TAG))) is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGINT)


def local_worker(tag: str | None) -> int | None:
    """The pid of a run's worker process if it runs on this host now (`runs.launcher.worker_health`)."""
    if not tag or worker_health(tag).status != WorkerStatus.RUNNING:
        return None
    host, pid, _ = tag.split(" ")
    return int(pid) if host == socket.gethostname() else None
