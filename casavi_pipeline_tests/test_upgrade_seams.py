"""The seams where casavi_pipeline touches Dagster beyond its stable public API, in one place.

Dagster is pinned to 1.13.x (pyproject.toml). Before a minor upgrade, this module says what to look at:
each test names the module of ours that relies on the seam and fails, in one assert, when Dagster moved
it. Everything else the project uses is Dagster's public API (`import dagster as dg`).

- private, no public equivalent: the run launcher's worker health check (`runs/launcher.py`); creating
  and submitting a run from a command without a webserver (`runs/submit.py`, what `dagster job launch`
  does); `dagster dev` without two start notices (`casavi_harness/dagster_dev.py`);
- preview/beta: partitioned asset checks (`defs/`), autoloading `defs/` (`definitions.py`);
- relied-on behaviour of public API: the event log read by the CLI (`cli/sync.py`), the retry policy's
  delay (`defs/sync_reporting.py`), sensors over every code location (`defs/alerts.py`).
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import dagster as dg


def _parameters(function: object) -> set[str]:
    return set(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_dagster_is_the_pinned_minor_line():
    assert version("dagster").startswith("1.13."), "re-run this module and the suite after a minor upgrade"


def test_the_run_launchers_worker_health_check():
    """runs/launcher.py: `HealthCheckedRunLauncher(DefaultRunLauncher)` answers run monitoring."""
    from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

    assert {"RUNNING", "FAILED", "UNKNOWN"} <= set(WorkerStatus.__members__)
    assert {"supports_check_run_worker_health", "check_run_worker_health"} <= set(dir(DefaultRunLauncher))
    result = CheckRunHealthResult(WorkerStatus.RUNNING, "running")
    assert (result.status, result.msg) == (WorkerStatus.RUNNING, "running")


def test_a_run_created_and_submitted_from_a_command():
    """runs/submit.py: the code server, the run created as the launchpad creates it, queue or launch."""
    from dagster._core.errors import DagsterUserCodeUnreachableError  # noqa: F401
    from dagster._core.remote_representation.external import RemoteRepository
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.workspace.context import BaseWorkspaceRequestContext, WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    assert ModuleTarget._fields == ("module_name", "attribute", "working_directory", "location_name")
    assert {"instance", "workspace_load_target"} <= _parameters(WorkspaceProcessContext.__init__)
    assert {"create_request_context"} <= set(dir(WorkspaceProcessContext))
    assert {"get_code_location", "get_code_location_entries"} <= set(dir(BaseWorkspaceRequestContext))
    assert {"get_full_job", "asset_graph"} <= set(dir(RemoteRepository))
    submitted = {
        "job_name", "run_id", "run_config", "status", "tags", "root_run_id", "parent_run_id",
        "step_keys_to_execute", "execution_plan_snapshot", "job_snapshot", "parent_job_snapshot",
        "asset_selection", "asset_check_selection", "resolved_op_selection", "op_selection",
        "remote_job_origin", "job_code_origin", "asset_graph",
    }  # fmt: skip
    assert submitted <= _parameters(dg.DagsterInstance.create_run)
    assert {"submit_run", "launch_run", "get_daemon_heartbeats"} <= set(dir(dg.DagsterInstance))
    assert "cancel_run" in dir(QueuedRunCoordinator)


def test_dagster_dev_as_the_harness_starts_it():
    """casavi_harness/dagster_dev.py runs Dagster's own CLI entry point with two notices filtered."""
    from dagster._cli import main

    assert callable(main)


def test_the_preview_apis_the_definitions_use():
    """Partitioned asset checks (defs/sync.py, quality.py, links) and the autoloaded `defs/` folder."""
    assert "partitions_def" in _parameters(dg.AssetCheckSpec)
    assert "partitions_def" in _parameters(dg.asset_check)
    assert {"defs_module", "project_root"} <= _parameters(dg.ComponentTree.from_module)


def test_the_public_behaviour_the_commands_rely_on():
    """cli/sync.py follows a run through its event log; sync_reporting.py says when a retry starts."""
    assert {"run_id", "cursor", "limit", "of_type"} <= _parameters(dg.DagsterInstance.get_records_for_run)
    assert {"step_key", "level", "user_message", "dagster_event"} <= set(dg.EventLogEntry._fields)
    policy = dg.RetryPolicy(delay=30, backoff=dg.Backoff.EXPONENTIAL)  # casavi_sync's, without its jitter
    assert [policy.calculate_delay(attempt) for attempt in (1, 2)] == [30, 90]
    assert "monitor_all_code_locations" in _parameters(dg.run_failure_sensor)
