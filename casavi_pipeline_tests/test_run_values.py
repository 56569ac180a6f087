"""The values between a run's steps (frames with names, emails, phones) are the run's own, and go with it.

Two runs of one Mandant started at once from the CLI no longer share `values/<asset>/<Mandant>`: the
loser stops at the Mandant's snapshot with its one-line "in use" reason (not on a half-written pickle),
the winner's sync is exact, and a successful run leaves no values behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline.cli.erase import erase
from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
from casavi_pipeline.runs.instance_home import prepare
from casavi_pipeline.runs.values import RunValuesIOManager, run_values_executor
from casavi_pipeline_tests.e2e import MANDANT, REPO, assert_sandbox_holds, big_export, run_job


def values_job(base: str) -> dg.JobDefinition:
    """Two steps handing a value over, with the shipped IO manager and executor; the second fails while
    `<base>/fail` exists."""
    partitions = dg.StaticPartitionsDefinition([MANDANT])

    @dg.asset(partitions_def=partitions)
    def frame(context) -> list[str]:  # (a string annotation is refused here)
        return ["a row", context.partition_key]

    @dg.asset(partitions_def=partitions)
    def uses_frame(frame: list[str]) -> int:
        if (Path(base) / "fail").exists():
            raise dg.Failure("told to fail")
        return len(frame)

    defs = dg.Definitions(
        assets=[frame, uses_frame],
        jobs=[dg.define_asset_job("values_job")],
        resources={"io_manager": RunValuesIOManager(base_dir=str(Path(base) / "values"))},
        executor=run_values_executor(Path(base) / "values"),
    )
    return defs.resolve_job_def("values_job")


def test_a_failed_runs_values_serve_its_reexecution_and_a_successful_run_keeps_none(tmp_path):
    job = dg.build_reconstructable_job(__name__, "values_job", reconstructable_kwargs={"base": str(tmp_path)})
    values = tmp_path / "values"
    (tmp_path / "fail").touch()
    with dg.instance_for_test() as instance:
        with dg.execute_job(job, instance, tags={"dagster/partition": MANDANT}) as failed:
            assert not failed.success
        assert (values / failed.run_id / "frame" / MANDANT).exists()  # kept for a re-execution

        (tmp_path / "fail").unlink()
        options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        with dg.execute_job(
            job, instance, tags={"dagster/partition": MANDANT}, reexecution_options=options
        ) as again:
            assert again.success  # uses_frame read frame from the failed parent run's values
        assert not (values / again.run_id).exists()
        assert (values / failed.run_id).exists()  # failed: kept for KEEP_ENDED_RUN_SECONDS

        # What a successful run left (e.g. killed after its last step) goes when the next run starts.
        leftover = values / again.run_id / "frame" / MANDANT
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"x")
        with dg.execute_job(job, instance, tags={"dagster/partition": MANDANT}) as third:
            assert third.success
        assert {p.name for p in values.iterdir()} == {failed.run_id}


@pytest.mark.e2e
def test_the_same_mandant_twice_at_once_one_line_for_the_loser_and_an_exact_winner(env, sandbox):
    big_export(env, contracts=150)  # about 300 writes
    # One write at a time, each answered after 50 ms: the winner's sync holds the Mandant's snapshot
    # for seconds, longer than the two processes' start can drift apart on a loaded machine.
    sandbox.configure(latency_ms=50)
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "casavi_pipeline.definitions",
               "--select", "*", "--partition", MANDANT]  # fmt: skip
    prepare(Path(env["DAGSTER_HOME"]), REPO / "dagster.yaml")  # as ./run does before any command
    run_env = {**os.environ, "CASAVI_MAX_CONCURRENCY": "1"}
    started = [
        subprocess.Popen(command, env=run_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in started]
    assert sorted(p.returncode for p in started) == [0, 1], [o[-3000:] for o in outputs]
    for output in outputs:
        assert "pickle" not in output.lower() and "EOFError" not in output, output[-3000:]

    with dg.DagsterInstance.get() as instance:
        runs = {run.status: run for run in instance.get_runs()}
    assert set(runs) == {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}, runs
    reason = runs[dg.DagsterRunStatus.FAILURE].tags[FAILURE_REASON_TAG]
    # The loser either found the snapshot held, or, when it computed its changeset between the winner's
    # changeset and sync, made the winner's stale: then the first to reach the sync with the changeset of
    # its own run wins, and the other stops before sending anything. Either way: one line, nothing twice.
    busy = f"The snapshot of Mandant {MANDANT}" in reason and "is in use by another process" in reason
    stale = f"Mandant {MANDANT}: the pending changeset was not computed in this run" in reason
    assert busy or stale, reason
    assert "\n" not in reason

    values = Path(env["CASAVI_SNAPSHOT_DB"]) / "values"
    # The winner's values went with its success; the loser's stay for a re-execution from failure.
    assert not (values / runs[dg.DagsterRunStatus.SUCCESS].run_id).exists()
    assert {p.name for p in values.iterdir()} == {runs[dg.DagsterRunStatus.FAILURE].run_id}

    sandbox.configure(latency_ms=0)
    sandbox.reset(objects=False, knobs=False)
    rerun = run_job(env)  # the winner synced everything: nothing is left to send
    assert rerun.success
    assert sandbox.write_count() == 0
    assert_sandbox_holds(sandbox, rerun)

    # `./run erase-personal-data M` takes the Mandant's values of every run (the in-process run's too).
    assert list(values.glob(f"*/*/{MANDANT}"))
    erase(Path(env["CASAVI_SNAPSHOT_DB"]), MANDANT)
    assert not list(values.glob(f"*/*/{MANDANT}"))
