"""A run SIGKILLed while it holds the casavi_api pool slot: reap_dead_runs and the sensor free it.

The instance is a real one whose dagster.yaml is a copy of the repo's (pools default_limit 1). The
job is a tiny partitioned asset with pool="casavi_api" defined here, run in a subprocess by
``execute_in_process`` against that instance (as ``./run demo`` does); the asset holds the slot
until a file appears, so the test can kill the process while the slot is claimed.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline.runs.health import (
    HOST_TAG,
    PoolBusyError,
    announce_pool_waits,
    build_dead_run_sensor,
    describe_pool,
    pool_blockers,
    reap_dead_runs,
    tag_run_host,
    wait_for_pool,
)

REPO = Path(__file__).resolve().parents[1]
POOL = "casavi_api"
TIMEOUT = 20.0  # any single wait in this file; reached only when something is broken

partitions = dg.StaticPartitionsDefinition(["0001", "0002"])


@dg.asset(partitions_def=partitions, pool=POOL)
def held_sync(context: dg.AssetExecutionContext) -> None:
    """Stands in for casavi_sync: holds the pool slot until $GATE_DIR/release exists."""
    tag_run_host(context)
    gate = Path(os.environ["GATE_DIR"])
    (gate / f"holding-{context.partition_key}").write_text(context.run.run_id)
    deadline = time.monotonic() + TIMEOUT
    while not (gate / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("gate never opened")
        time.sleep(0.05)


held_job = dg.define_asset_job("held_job", selection=[held_sync])
defs = dg.Definitions(assets=[held_sync], jobs=[held_job])


def _run_partition(partition: str) -> None:  # the subprocess: python -m ... <partition>
    with dg.DagsterInstance.get() as instance:
        defs.resolve_job_def("held_job").execute_in_process(instance=instance, partition_key=partition)


def _wait_for(predicate, what: str):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A DAGSTER_HOME holding a copy of the shipped dagster.yaml, plus the gate directory."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    (tmp_path / "gate").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("GATE_DIR", str(tmp_path / "gate"))
    yield tmp_path


def _start(partition: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "casavi_pipeline_tests.test_run_health", partition],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_holder(home: Path, instance: dg.DagsterInstance) -> str:
    """Start partition 0001, wait until it holds the slot, SIGKILL it; return its run id."""
    proc = _start("0001")
    try:
        run_id = _wait_for(
            lambda: (
                (home / "gate" / "holding-0001").exists() and (home / "gate" / "holding-0001").read_text()
            ),
            "the first run to hold the pool slot",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    # What the audit saw: the dead run is still STARTED and still holds the only slot.
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.STARTED
    assert run.tags[HOST_TAG]
    info = instance.event_log_storage.get_concurrency_info(POOL)
    assert [s.run_id for s in info.claimed_slots] == [run_id]
    assert info.limit == 1
    return run_id


def _waiting_run(instance: dg.DagsterInstance, dead_run_id: str) -> str:
    """The second run's step, queued behind the dead run's slot (i.e. blocked without the fix)."""

    def waiting() -> str | None:
        pending = instance.event_log_storage.get_concurrency_info(POOL).pending_steps
        ids = [p.run_id for p in pending if p.assigned_timestamp is None and p.run_id != dead_run_id]
        return ids[0] if ids else None

    return _wait_for(waiting, "the second run to queue for the pool")


def _finish(instance: dg.DagsterInstance, proc: subprocess.Popen, home: Path, run_id: str) -> None:
    """Open the gate; the second run must take the slot and succeed by itself."""
    _wait_for(lambda: (home / "gate" / "holding-0002").exists(), "the second run to get the slot")
    (home / "gate" / "release").touch()
    assert proc.wait(timeout=TIMEOUT) == 0
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert instance.event_log_storage.get_concurrency_info(POOL).claimed_slots == []


@pytest.mark.slow
def test_reap_dead_runs_frees_the_slot_of_a_killed_run(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    with dg.DagsterInstance.get() as instance:
        dead = _kill_holder(home, instance)
        assert pool_blockers(instance, POOL) == [dead]
        message = describe_pool(instance, POOL)
        assert message is not None and dead in message and "held_sync" in message

        second = _start("0002")
        try:
            waiting = _waiting_run(instance, dead)
            assert pool_blockers(instance, POOL, exclude_run_id=waiting) == [dead]  # it would wait forever

            # What the sensor posts on each tick: the waiting run's own log names the holder at INFO.
            announce_pool_waits(instance, [POOL])
            notes = [
                e
                for e in instance.all_logs(waiting, of_type=dg.DagsterEventType.ENGINE_EVENT)
                if e.dagster_event and dead in (e.dagster_event.message or "")
            ]
            assert len(notes) == 1 and notes[0].level == logging.INFO

            with caplog.at_level(logging.INFO):
                assert reap_dead_runs(instance) == [dead]
            assert dead in caplog.text

            run = instance.get_run_by_id(dead)
            assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
            failure = instance.all_logs(dead, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert "process was killed" in (failure[-1].dagster_event.message or "")
            assert dead not in {
                s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots
            }
            assert reap_dead_runs(instance) == []  # idempotent; the live waiting run is left alone

            # Now a live run holds the pool: a caller about to start a run (./run demo) is told
            # whom it waits for, at INFO, and gives up after its timeout instead of hanging.
            _wait_for(lambda: (home / "gate" / "holding-0002").exists(), "the second run to get the slot")
            caplog.clear()
            with caplog.at_level(logging.INFO), pytest.raises(PoolBusyError, match=waiting):
                wait_for_pool(instance, POOL, timeout_seconds=0.5, poll_seconds=0.1)
            assert waiting in caplog.text

            _finish(instance, second, home, waiting)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(timeout=TIMEOUT)


@pytest.mark.slow
def test_sensor_reaps_a_killed_run(home: Path) -> None:
    """The daemon path: one tick of the dead-run sensor marks the killed holder failed and frees the slot."""
    sensor = build_dead_run_sensor()
    with dg.DagsterInstance.get() as instance:
        dead = _kill_holder(home, instance)
        result = sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SkipReason) and dead in (result.skip_message or "")
        run = instance.get_run_by_id(dead)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
        info = instance.event_log_storage.get_concurrency_info(POOL)
        assert info.claimed_slots == [] and info.pending_steps == []
        again = sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(again, dg.SkipReason) and dead not in (again.skip_message or "")


def test_shipped_dagster_yaml_enables_slot_freeing_in_the_daemon(home: Path) -> None:
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings.get("free_slots_after_run_end_seconds")
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


if __name__ == "__main__":
    _run_partition(sys.argv[1])
