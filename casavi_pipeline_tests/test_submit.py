"""How a command decides to start its run (`casavi_pipeline/runs/submit.py`), on an instance with the
shipped dagster.yaml: to the queue while a daemon serves it, else launched by the command itself, and
then only when no other run of the Mandant holds its slot. (The run itself, submitted and followed, is
tested end to end with the daemon in test_failure_reason_ways.py and without it in test_operator_path.py.)
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.types import DaemonHeartbeat

from casavi_pipeline.runs.launcher import WORKER_TAG, run_worker_tags
from casavi_pipeline.runs.submit import DAEMON_HEARTBEAT_SECONDS, busy_run, queue_is_served

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def beat(instance: dg.DagsterInstance, seconds_ago: float) -> None:
    instance.add_daemon_heartbeat(
        DaemonHeartbeat(time.time() - seconds_ago, "QUEUED_RUN_COORDINATOR", "daemon-1", errors=[])
    )


def test_the_queue_counts_as_served_only_while_a_daemon_beats(instance):
    assert not queue_is_served(instance)  # no daemon ever ran: a queued run would wait for ever
    beat(instance, seconds_ago=5)
    assert queue_is_served(instance)
    beat(instance, seconds_ago=DAEMON_HEARTBEAT_SECONDS + 60)  # the daemon stopped a while ago
    assert not queue_is_served(instance)


def add_run(instance: dg.DagsterInstance, partition: str, status: dg.DagsterRunStatus, worker: str | None):
    tags = {"dagster/partition": partition, **({WORKER_TAG: worker} if worker else {})}
    return instance.add_run(dg.DagsterRun(job_name="casavi_sync_job", status=status, tags=tags))


def test_a_mandant_is_busy_while_a_run_of_it_is_going_and_its_worker_lives(instance):
    alive = run_worker_tags()[WORKER_TAG]  # this process
    host, _pid, started = alive.split(" ")
    gone = f"{host} 999999 {started}"  # no such process
    add_run(instance, "0001", dg.DagsterRunStatus.NOT_STARTED, None)  # created, not launched: holds nothing
    add_run(instance, "0001", dg.DagsterRunStatus.SUCCESS, alive)  # ended
    add_run(instance, "0001", dg.DagsterRunStatus.STARTED, gone)  # killed, no daemon ended it yet
    add_run(instance, "0002", dg.DagsterRunStatus.STARTED, alive)  # another Mandant
    assert busy_run(instance, "0001") is None

    going = add_run(instance, "0001", dg.DagsterRunStatus.STARTED, alive)
    assert busy_run(instance, "0001").run_id == going.run_id
    starting = add_run(instance, "0420", dg.DagsterRunStatus.STARTING, None)  # launched, no worker yet
    assert busy_run(instance, "0420").run_id == starting.run_id
