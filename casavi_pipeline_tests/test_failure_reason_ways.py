"""Why a run stopped, in every run however it was started (README, "When a run stops").

One sandbox, one export, one Dagster instance and one `dagster dev` for all ways: the UI's *Materialize
all* (Dagster's implicit `__ASSET_JOB`), the launchpad of `casavi_sync_job`, the nightly schedule's run
request launched, `dg launch --assets`, `dagster asset materialize` and `casavi-pipeline sync`. A
truncated export trips the mass-deletion guard (nothing is written, so every way meets the same guard);
then the sandbox restarts with another secret, and every way meets refused credentials. Each run must
carry the one-line reason in its tag and as the ERROR line of its log.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from casavi_pipeline.defs.failures import FAILURE_REASON_TAG, casavi_failure_reason, stopped_line
from casavi_pipeline.runs.instance_home import prepare
from casavi_pipeline_tests.erp_fixtures import write_export
from casavi_sandbox import SandboxProcess
from casavi_sandbox.process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MANDANT = "0001"
RUN_TIMEOUT = 300  # seconds: a bound, not an expectation
REASONS = {"guard": "would leave the sync", "secret": "refused the credentials"}
LOCATION = {"repositoryLocationName": "casavi_pipeline", "repositoryName": "__repository__"}

LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""
ASSET_KEYS = "{ assetNodes { assetKey { path } } }"


class Setup:
    """The shared sandbox, instance, settings and `dagster dev`, and which stop the sandbox is set for."""

    def __init__(self, root: Path, sandbox: SandboxProcess) -> None:
        self.root, self.sandbox = root, sandbox
        self.home = root / "dagster_home"
        # As ./run does before any command: the instance's storage once. `dagster dev` and the first sync
        # start side by side on this home; two processes migrating fresh storage at once corrupt it
        # ("alembic_version has more than one head").
        prepare(self.home, REPO / "dagster.yaml")
        self.env = {
            **os.environ,
            "ERP_EXPORT_DIR": str(root / "export"),
            "CASAVI_MANDANTEN": MANDANT,
            "CASAVI_SNAPSHOT_DB": str(root / "snapshots"),
            "CASAVI_BASE_URL": sandbox.base_url,
            "CASAVI_API_KEY": sandbox.api_key,
            "CASAVI_API_SECRET": sandbox.api_secret,
            "CASAVI_REQUESTS_PER_MINUTE": "60000",
            "CASAVI_DELETE_GUARD_MIN_COUNT": "0",
            "DAGSTER_HOME": str(self.home),
        }
        self.port = 0
        self.stop = "guard"

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def sync(self) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "casavi-pipeline"), "sync", "--mandant", MANDANT)

    def set_stop(self, stop: str) -> None:
        """`guard`: the credentials work, the export is truncated; `secret`: casavi has another secret."""
        if stop == "secret" and self.stop != "secret":
            self.sandbox.api_secret = "rotated-" + self.sandbox.api_secret
            self.sandbox.restart()
        assert stop == self.stop or stop == "secret", "guard runs come first"
        self.stop = stop

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        answer = httpx.post(
            f"http://127.0.0.1:{self.port}/graphql", json={"query": query, "variables": variables or {}},
            timeout=60,
        ).json()  # fmt: skip
        assert "errors" not in answer, answer["errors"]
        return answer["data"]

    def launch(self, selector: dict, tags: dict[str, str]) -> str:
        params = {
            "selector": {**LOCATION, **selector},
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        launched = self.graphql(LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ways")
    with SandboxProcess(root / "sandbox.sqlite3") as sandbox:
        ways = Setup(root, sandbox)
        write_export(root / "export", {MANDANT: {}})
        log = (root / "dagster_dev.log").open("wb")
        ways.port = free_port()
        # dagster dev loads while the first sync runs; it reads the same settings and instance.
        dev = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
             "-p", str(ways.port)],
            cwd=REPO, env=ways.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            first = ways.sync()
            assert first.returncode == 0, first.stdout + first.stderr
            unchanged = ways.sync()
            assert unchanged.returncode == 0 and "0 writes confirmed by casavi." in unchanged.stdout
            ways.unchanged_output = unchanged.stdout + unchanged.stderr
            write_export(root / "export", {MANDANT: {"mietvertraege": [], "mieter": []}})  # cut short
            deadline = time.monotonic() + 180
            while not _code_location_loaded(ways):
                loading_failed = "Error loading repository location" in Path(log.name).read_text(
                    errors="replace"
                )
                assert dev.poll() is None and not loading_failed and time.monotonic() < deadline, (
                    f"dagster dev: see {log.name}"
                )
                time.sleep(0.5)
            yield ways
        finally:
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
            log.close()


def _code_location_loaded(ways: Setup) -> bool:
    try:
        return bool(ways.graphql(ASSET_KEYS).get("assetNodes"))
    except (httpx.TransportError, ValueError, AssertionError):
        return False


def _ended(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not end"
        time.sleep(0.5)


def _latest_run_id(instance: dg.DagsterInstance) -> str:
    return instance.get_runs(limit=1)[0].run_id


# --- the ways -------------------------------------------------------------------------------------
def ui_materialize_all(ways: Setup, instance: dg.DagsterInstance) -> str:
    keys = [node["assetKey"] for node in ways.graphql(ASSET_KEYS)["assetNodes"]]
    return ways.launch({"jobName": "__ASSET_JOB", "assetSelection": keys}, {"dagster/partition": MANDANT})


def launchpad(ways: Setup, instance: dg.DagsterInstance) -> str:
    return ways.launch({"jobName": "casavi_sync_job"}, {"dagster/partition": MANDANT})


def schedule(ways: Setup, instance: dg.DagsterInstance) -> str:
    """The nightly schedule's tick, evaluated as the daemon does, and its run request for the Mandant
    launched (the schedule is off by default; switching it on would wait for 02:00)."""
    from casavi_pipeline.definitions import defs

    tick = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime(2026, 1, 5, 2, 0, tzinfo=dt.UTC)
    )
    requests = defs.resolve_schedule_def("casavi_nightly_sync").evaluate_tick(tick).run_requests
    request = next(r for r in requests if r.partition_key == MANDANT)
    return ways.launch(
        {"jobName": "casavi_sync_job"}, {**request.tags, "dagster/partition": request.partition_key}
    )


def dg_launch(ways: Setup, instance: dg.DagsterInstance) -> str:
    ran = ways.run(str(BIN / "dg"), "launch", "--assets", "*", "--partition", MANDANT)
    assert ran.returncode != 0, ran.stdout + ran.stderr
    return _latest_run_id(instance)


def dagster_asset_materialize(ways: Setup, instance: dg.DagsterInstance) -> str:
    ran = ways.run(
        str(BIN / "dagster"), "asset", "materialize", "-m", "casavi_pipeline.definitions", "--select", "*",
        "--partition", MANDANT,
    )  # fmt: skip
    assert ran.returncode != 0, ran.stdout + ran.stderr
    return _latest_run_id(instance)


def casavi_pipeline_sync(ways: Setup, instance: dg.DagsterInstance) -> str:
    ran = ways.sync()
    output = ran.stdout + ran.stderr
    assert ran.returncode == 1, output
    assert len(output.splitlines()) <= 15, output
    said = [line for line in ran.stderr.splitlines() if line.startswith(f"Mandant {MANDANT} did not sync")]
    assert len(said) == 1 and REASONS[ways.stop] in said[0], output
    return _latest_run_id(instance)


WAYS = [ui_materialize_all, launchpad, schedule, dg_launch, dagster_asset_materialize, casavi_pipeline_sync]


# The stop varies slowest: every guard run first, then the sandbox gets another secret once.
@pytest.mark.parametrize("way", WAYS, ids=[w.__name__ for w in WAYS])
@pytest.mark.parametrize("stop", ["guard", "secret"])
def test_every_way_of_starting_a_run_records_why_it_stopped(setup, stop, way):
    setup.set_stop(stop)
    before = setup.sandbox.write_count()
    with dg.DagsterInstance.from_config(str(setup.home)) as instance:
        run = _ended(instance, way(setup, instance))
        assert run.status == dg.DagsterRunStatus.FAILURE, run.status
        reason = run.tags.get(FAILURE_REASON_TAG, "")
        assert REASONS[stop] in reason and "\n" not in reason, run.tags
        errors = [
            record.event_log_entry.user_message
            for record in instance.get_records_for_run(run.run_id, limit=10_000).records
            if record.event_log_entry.level >= 40 and record.event_log_entry.dagster_event is None
        ]
        assert stopped_line(reason) in errors, errors
    assert setup.sandbox.write_count() == before  # neither stop wrote anything


def test_casavi_pipeline_sync_tells_an_unchanged_night_in_a_few_lines(setup):
    lines = setup.unchanged_output.splitlines()
    assert len(lines) <= 15, setup.unchanged_output
    assert any(line.split()[:2] == [MANDANT, "contact"] for line in lines), setup.unchanged_output


def test_the_sensor_records_why_a_run_stopped_that_no_hook_saw():
    """A run that failed without a step hook (here: a job of plain assets; in production a run killed
    and marked failed, or one that failed to start) gets the reason from the run-failure sensor."""

    @dg.asset
    def export_read():
        raise dg.Failure(description="Mandant folder /x/0001 is missing: fix the export")

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([export_read], instance=instance, raise_on_error=False)
        run = instance.get_run_by_id(result.run_id)
        assert FAILURE_REASON_TAG not in run.tags
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="casavi_failure_reason", dagster_event=failure, dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()  # fmt: skip
        casavi_failure_reason(context)
        reason = instance.get_run_by_id(result.run_id).tags[FAILURE_REASON_TAG]
        assert reason == "export_read: Mandant folder /x/0001 is missing: fix the export"
        messages = [
            r.event_log_entry.user_message for r in instance.get_records_for_run(result.run_id).records
        ]
        assert stopped_line(reason) in messages
