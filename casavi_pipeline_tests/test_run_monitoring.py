"""A run whose process was killed is ended by Dagster's run monitoring, and its Mandant's next run goes.

The instance uses the shipped dagster.yaml unchanged (its launcher, run monitoring and per-Mandant run
limit) with the daemon running (`dagster-daemon run`); the code location is a tiny one
(`tiny_location.py`) with the shipped executor, which records the run's worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dagster as dg
import pytest
from dagster._core.launcher import WorkerStatus

from casavi_pipeline.runs.launcher import WORKER_TAG, run_worker_tags, worker_health
from casavi_pipeline_tests.processes import starts_processes

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_for(find: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll `find` until it returns something; generous deadlines, the machine may be loaded."""
    deadline = time.monotonic() + seconds
    while (found := find()) is None or found is False:
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:.0f} s: {what}")
        time.sleep(0.2)
    return found


# --- the health check itself --------------------------------------------------------------------------


def test_worker_health_running_gone_reused_and_elsewhere(processes):
    assert worker_health(run_worker_tags()[WORKER_TAG]).status == WorkerStatus.RUNNING
    host, pid, started = run_worker_tags()[WORKER_TAG].split(" ")
    reused = f"{host} {pid} {float(started) - 60:.2f}"  # this pid, but an earlier process's start time
    assert worker_health(reused).status == WorkerStatus.FAILED

    child = processes.start(  # a run worker: it says where it lives, then works
        [sys.executable, "-c", "from casavi_pipeline.runs.launcher import WORKER_TAG, run_worker_tags; "
         "print(run_worker_tags()[WORKER_TAG], flush=True); import time; time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        tag = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert worker_health(tag).status == WorkerStatus.RUNNING
        child.send_signal(signal.SIGKILL)
        # Killed but not yet collected by its parent (a zombie): gone all the same.
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 60, "the killed child to become a zombie")  # fmt: skip
        assert worker_health(tag).status == WorkerStatus.FAILED
    finally:
        child.kill()
        child.wait()
    gone = worker_health(tag)
    assert gone.status == WorkerStatus.FAILED and f"pid {child.pid}" in (gone.msg or "")

    elsewhere = worker_health(f"not-{socket.gethostname()} {pid} {started}")
    assert elsewhere.status == WorkerStatus.UNKNOWN  # never FAILED: its processes cannot be seen here
    assert worker_health(None).status == WorkerStatus.UNKNOWN


# --- with the daemon ----------------------------------------------------------------------------------


@pytest.fixture
@starts_processes
def daemon(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`dagster-daemon run` on a fresh instance with the shipped dagster.yaml and the tiny location."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    gate = tmp_path / "gate"
    gate.mkdir()
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module: casavi_pipeline_tests.tiny_location\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "CASAVI_TEST_GATE": str(gate)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    subprocess.run(  # as ./run does: the instance's storage once, before anything runs beside it
        [sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().get_runs(limit=1)"],
        env=env, cwd=tmp_path, check=True, timeout=300,
    )  # fmt: skip
    log = (tmp_path / "daemon.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield {**env, "WORKSPACE": str(tmp_path / "workspace.yaml"), "GATE": str(gate)}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def launch(env: dict[str, str], partition: str) -> None:
    """What the UI's "Materialize" does: submit a run to the queue (the daemon launches it)."""
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "launch", "-w", env["WORKSPACE"], "-j", "held_job",
         "--tags", json.dumps({"dagster/partition": partition})],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_a_killed_run_is_failed_by_run_monitoring_and_the_mandants_next_run_succeeds(daemon, monkeypatch):
    """The killed run is started from the CLI: no code server watches it, only run monitoring can end it.

    (A run the daemon launched and whose worker alone dies is failed by its code server; one whose code
    server dies with it is failed by run monitoring in the same way as this one.)"""
    monkeypatch.setenv("DAGSTER_HOME", daemon["DAGSTER_HOME"])
    (Path(daemon["GATE"]) / "hold").touch()
    cli = subprocess.Popen(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "casavi_pipeline_tests.tiny_location",
         "--select", "held", "--partition", "0001"],
        env=daemon, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    with dg.DagsterInstance.get() as instance:

        def run(partition: str, *, nth: int = 0) -> dg.DagsterRun | None:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
            return list(reversed(runs))[nth] if len(runs) > nth else None

        first = wait_for(
            lambda: (r := run("0001")) and WORKER_TAG in r.tags and r, 300, "the CLI run's worker tag"
        )
        assert first.status == dg.DagsterRunStatus.STARTED
        launch(daemon, "0001")
        # One run per Mandant: the second waits in the queue while the first holds the Mandant.
        second = wait_for(lambda: run("0001", nth=1), 60, "the second run")
        assert second.status == dg.DagsterRunStatus.QUEUED

        host, pid, _ = first.tags[WORKER_TAG].split(" ")
        assert (host, int(pid)) == (socket.gethostname(), cli.pid)
        os.killpg(cli.pid, signal.SIGKILL)  # the OOM killer, a reboot: no chance to clean up
        cli.wait()
        (Path(daemon["GATE"]) / "hold").unlink()  # the next run must not wait for anything

        def finished(run_id: str) -> dg.DagsterRun | None:
            found = instance.get_run_by_id(run_id)
            return found if found is not None and found.is_finished else None

        ended = wait_for(lambda: finished(first.run_id), 300, "run monitoring to end the killed run")
        assert ended.status == dg.DagsterRunStatus.FAILURE
        said = [
            e.message or "" for e in instance.all_logs(first.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        ]
        assert any(f"pid {pid} on {host}: the process is gone" in m for m in said), said

        nxt = wait_for(lambda: finished(second.run_id), 300, "the Mandant's next run to finish")
        assert nxt.status == dg.DagsterRunStatus.SUCCESS
