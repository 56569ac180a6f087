"""Dagster's default run launcher plus a worker health check, so run monitoring ends runs whose process died.

Dagster 1.13's `DefaultRunLauncher` cannot say whether a run's worker is alive
(`supports_check_run_worker_health` is False), so a run whose process was killed (OOM killer, deploy,
reboot) would stay STARTED for ever, and with it the Mandant's one queue slot
(`tag_concurrency_limits` on `dagster/partition` in dagster.yaml). With this launcher the daemon's run
monitoring (`run_monitoring:` in dagster.yaml) checks every STARTED run, however it was started (UI,
schedule, sensor, CLI), and marks a dead one failed, which frees the slot.

Where a run's worker lives is recorded by the worker itself (:func:`record_run_worker`, called by the
code location's executor before the first step, `runs/values.py`): host, pid and the process's start
time, so a later process that reuses the pid is not taken for it. A run on another host is UNKNOWN, never
FAILED: its processes cannot be seen from here.
"""

from __future__ import annotations

import os
import socket

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

#: Run tag "<host> <pid> <start time>" of the process that executes the run.
WORKER_TAG = "casavi/run_worker"


def _start_time(pid: int) -> str | None:
    """When process `pid` started (seconds since the epoch, 2 decimals), or None if there is none.

    From /proc (Linux): boot time plus the process's start in clock ticks. A process in state Z or X
    (killed, its parent has not collected it yet) counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # fields 3.. of proc(5); the name may hold spaces
    if fields[0] in ("Z", "X", "x"):
        return None
    return f"{boot + int(fields[19]) / os.sysconf('SC_CLK_TCK'):.2f}"


def run_worker_tags() -> dict[str, str]:
    """The tag saying that this process executes the run."""
    return {WORKER_TAG: f"{socket.gethostname()} {os.getpid()} {_start_time(os.getpid())}"}


def record_run_worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Tag `run` with this process as its worker, unless it already is (call it from inside the run)."""
    tags = run_worker_tags()
    if run.tags.get(WORKER_TAG) != tags[WORKER_TAG]:
        instance.add_run_tags(run.run_id, tags)


def worker_health(tag: str | None) -> CheckRunHealthResult:
    """RUNNING, FAILED or UNKNOWN for the worker a run's :data:`WORKER_TAG` names (None: not recorded)."""
    if not tag:
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has not recorded its worker yet")
    try:
        host, pid, started = tag.split(" ")
        int(pid)
    except ValueError:
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"unreadable {WORKER_TAG} tag {tag!r}")
    where = f"pid {pid} on {host}"
    if host != socket.gethostname():
        # Its processes cannot be seen from here; judging it dead would fail a healthy run.
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"{where}: another host, not checked from here")
    if not os.path.exists("/proc/self/stat"):
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"{where}: no /proc here to look it up")
    now = _start_time(int(pid))
    if now is None:
        return CheckRunHealthResult(WorkerStatus.FAILED, f"{where}: the process is gone (killed?)")
    if now != started:
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"{where}: gone; the pid now belongs to another process"
        )
    return CheckRunHealthResult(WorkerStatus.RUNNING, f"{where} is running")


class HealthCheckedRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose runs' workers run monitoring can check (see the module's docstring)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        return worker_health(run.tags.get(WORKER_TAG))
