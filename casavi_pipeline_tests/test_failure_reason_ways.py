"""Why a run stopped, and one alert for it, however the run was started (README, "When a run stops",
"Alerts").

One sandbox, one export, one Dagster instance and one `dagster dev` (webserver and daemon, the shipped
dagster.yaml) for all ways: the UI's *Materialize all* (Dagster's implicit `__ASSET_JOB`), the launchpad
of `casavi_sync_job`, a tick of the nightly schedule run by the daemon, `dg launch --assets`, `dagster
asset materialize` and `casavi-pipeline sync`. A truncated export trips the mass-deletion guard (nothing
is written, so every way meets the same guard); then the sandbox restarts with another secret, and every
way meets refused credentials. Each run must carry the one-line reason in its tag and as the ERROR line
of its log, and the daemon's failure sensor must send exactly one alert for it, by email (a real SMTP
server on 127.0.0.1) and webhooks (a real HTTP server), naming the Mandant and the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from casavi_pipeline.defs.alerts import ALERTED_TAG, FAILURE_ACTION
from casavi_pipeline.defs.automation import NIGHTLY_CRON
from casavi_pipeline.defs.failures import FAILURE_REASON_TAG, NO_REASON, stopped_line
from casavi_pipeline.runs.instance_home import prepare
from casavi_pipeline.runs.launcher import WORKER_TAG
from casavi_pipeline_tests.erp_fixtures import write_export
from casavi_pipeline_tests.receivers import Inbox, Webhooks, smtp_inbox, wait_for, webhooks
from casavi_sandbox import SandboxProcess
from casavi_sandbox.process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MANDANT = "0001"
RUN_TIMEOUT = 300  # seconds: a bound, not an expectation
REASONS = {"guard": "would leave the sync", "secret": "refused the credentials"}
LOCATION = {"repositoryLocationName": "casavi_pipeline", "repositoryName": "__repository__"}
UI_URL = "http://dagster.example.org:3000"
SLACK, TEAMS = "/services/T000/B000/slack-token", "/workflows/teams-token"
#: A failed run is alerted within a sensor interval (10 s) plus the channels' deadline; this bounds it.
ALERT_TIMEOUT = 180
#: The daemon's scheduler looks at running schedules every 30 s or so; this bounds the tick's run.
SCHEDULE_TIMEOUT = 180

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

    def __init__(self, root: Path, sandbox: SandboxProcess, inbox: Inbox, hooks: Webhooks) -> None:
        self.root, self.sandbox, self.inbox, self.hooks = root, sandbox, inbox, hooks
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
            "CASAVI_ALERT_SMTP_HOST": "127.0.0.1",
            "CASAVI_ALERT_SMTP_PORT": str(inbox.port),
            "CASAVI_ALERT_SMTP_STARTTLS": "false",
            "CASAVI_ALERT_SMTP_FROM": "casavi-pipeline@example.org",
            "CASAVI_ALERT_SMTP_TO": "data-team@example.org",
            "CASAVI_ALERT_SLACK_WEBHOOK_URL": hooks.url(SLACK),
            "CASAVI_ALERT_TEAMS_WEBHOOK_URL": hooks.url(TEAMS),
            "CASAVI_ALERT_UI_URL": UI_URL,
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
    with SandboxProcess(root / "sandbox.sqlite3") as sandbox, smtp_inbox() as inbox, webhooks() as hooks:
        ways = Setup(root, sandbox, inbox, hooks)
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
    """A tick of the nightly schedule, run by the daemon: the schedule is switched on as if that had
    been done a day ago, so the daemon's scheduler finds last night's 02:00 tick due and runs it
    (a schedule switched on now would wait for 02:00)."""
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteInstigatorOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        ScheduleInstigatorData,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    # The daemon finds a schedule's state by its selector (code location, repository and schedule names).
    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="casavi_pipeline.definitions"),
        location_name=LOCATION["repositoryLocationName"],
    )
    origin = RemoteInstigatorOrigin(
        RemoteRepositoryOrigin(location, LOCATION["repositoryName"]), "casavi_nightly_sync"
    )
    state = InstigatorState(
        origin,
        InstigatorType.SCHEDULE,
        InstigatorStatus.RUNNING,
        ScheduleInstigatorData(NIGHTLY_CRON, start_timestamp=time.time() - 24 * 3600),
    )
    assert instance.get_instigator_state(state.instigator_origin_id, state.selector_id) is None
    instance.add_instigator_state(state)
    try:
        scheduled = dg.RunsFilter(tags={"dagster/schedule_name": "casavi_nightly_sync"})
        run = wait_for(lambda: next(iter(instance.get_runs(filters=scheduled, limit=1)), None),
                       SCHEDULE_TIMEOUT, "the daemon to run the schedule's tick")  # fmt: skip
    finally:
        instance.update_instigator_state(state.with_status(InstigatorStatus.STOPPED))
    assert run.tags.get("casavi/trigger") == "schedule", run.tags
    return run.run_id


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


def emails_of(ways: Setup, run_id: str) -> list:
    return [m for m in ways.inbox.messages if f"/runs/{run_id}" in m.get_body().get_content()]


def posts_of(ways: Setup, path: str, run_id: str) -> list[dict]:
    return [body for body in ways.hooks.received(path) if f"/runs/{run_id}" in json.dumps(body)]


def sensor_acted(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Has the daemon's failure sensor finished with this run (Dagster logs so into the run)?"""
    return any(
        'Sensor "casavi_failure_alert" acted on run status FAILURE' in (record.event_log_entry.message or "")
        for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    )


def assert_alerted_once(ways: Setup, instance: dg.DagsterInstance, run: dg.DagsterRun, reason: str) -> None:
    """One email and one post per webhook for the run, naming the Mandant and the reason."""
    (email,) = wait_for(lambda: emails_of(ways, run.run_id), ALERT_TIMEOUT, f"the email for run {run.run_id}")
    assert email["Subject"] == f"casavi sync of Mandant {MANDANT}: {reason} — {FAILURE_ACTION}"
    assert f"Run: {UI_URL}/runs/{run.run_id}" in email.get_body().get_content()
    wait_for(lambda: sensor_acted(instance, run.run_id), ALERT_TIMEOUT, "the sensor to finish the run")
    (slack,) = posts_of(ways, SLACK, run.run_id)
    assert slack["text"].splitlines()[0] == email["Subject"]
    assert len(posts_of(ways, TEAMS, run.run_id)) == 1 and len(emails_of(ways, run.run_id)) == 1
    assert instance.get_run_by_id(run.run_id).tags[ALERTED_TAG] == "email,slack,teams"


# The stop varies slowest: every guard run first, then the sandbox gets another secret once. The
# schedule ticks once a night: its one tick here meets the guard.
RUNS = [(stop, way) for stop in ("guard", "secret") for way in WAYS if (stop, way) != ("secret", schedule)]


@pytest.mark.parametrize(("stop", "way"), RUNS, ids=[f"{stop}-{way.__name__}" for stop, way in RUNS])
def test_every_way_of_starting_a_run_records_why_it_stopped_and_alerts_once(setup, stop, way):
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
        assert_alerted_once(setup, instance, run, reason)
    assert setup.sandbox.write_count() == before  # neither stop wrote anything


REEXECUTE = """
mutation ($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def test_a_re_execution_of_an_alerted_run_is_the_same_night_and_sends_nothing(setup):
    with dg.DagsterInstance.from_config(str(setup.home)) as instance:
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]), limit=1)[0]
        assert ALERTED_TAG in failed.tags
        launched = setup.graphql(
            REEXECUTE, {"params": {"parentRunId": failed.run_id, "strategy": "FROM_FAILURE"}}
        )
        assert launched["launchRunReexecution"]["__typename"] == "LaunchRunSuccess", launched
        again = _ended(instance, launched["launchRunReexecution"]["run"]["runId"])
        assert (
            again.status == dg.DagsterRunStatus.FAILURE and again.tags["dagster/root_run_id"] == failed.run_id
        )
        wait_for(lambda: sensor_acted(instance, again.run_id), ALERT_TIMEOUT, "the sensor to finish the run")
        # (It carries its parent's tags, `casavi/alerted` among them: Dagster copies them to a re-execution.)
        assert emails_of(setup, again.run_id) == [] and posts_of(setup, TEAMS, again.run_id) == []


def test_a_slow_webhook_delays_no_other_channel_and_is_not_repeated(setup):
    """Slack dribbles its answer a byte a second: email and Teams take the alert, Slack is given up at
    its deadline; the sensor's tick ends, and the run is not alerted again (checked below, after more
    ticks)."""
    setup.hooks.slow_paths.add(SLACK)
    try:
        with dg.DagsterInstance.from_config(str(setup.home)) as instance:
            run = _ended(instance, casavi_pipeline_sync(setup, instance))
            wait_for(lambda: emails_of(setup, run.run_id), ALERT_TIMEOUT, f"the email for run {run.run_id}")
            wait_for(
                lambda: sensor_acted(instance, run.run_id), ALERT_TIMEOUT, "the sensor to finish the run"
            )
            assert instance.get_run_by_id(run.run_id).tags[ALERTED_TAG] == "email,teams"
            assert (
                len(posts_of(setup, TEAMS, run.run_id)) == 1 and len(posts_of(setup, SLACK, run.run_id)) == 1
            )
            wait_for(
                lambda: setup.hooks.abandoned(SLACK) == 1, 60, "the slow webhook to see its client hang up"
            )
    finally:
        setup.hooks.slow_paths.clear()


def test_a_run_killed_outside_its_steps_gets_dagsters_reason_and_one_alert(setup):
    """Its worker is SIGKILLed (the OOM killer): no step failed, so no hook recorded a reason. Dagster
    ends the run (its code server or run monitoring) with a reason of its own; the failure sensor puts
    that into the tag and alerts with it."""
    setup.sandbox.configure(latency_ms=2000)  # casavi answers slowly: the run is still going when killed
    try:
        with dg.DagsterInstance.from_config(str(setup.home)) as instance:
            run_id = launchpad(setup, instance)
            worker = wait_for(
                lambda: instance.get_run_by_id(run_id).tags.get(WORKER_TAG), RUN_TIMEOUT, "the run's worker"
            )
            os.kill(int(worker.split(" ")[1]), signal.SIGKILL)
            run = _ended(instance, run_id)
            assert run.status == dg.DagsterRunStatus.FAILURE
            assert (
                instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records == []
            )
            wait_for(lambda: sensor_acted(instance, run_id), ALERT_TIMEOUT, "the sensor to finish the run")
            reason = instance.get_run_by_id(run_id).tags.get(FAILURE_REASON_TAG)
            assert reason and reason != NO_REASON and "\n" not in reason
            assert_alerted_once(setup, instance, instance.get_run_by_id(run_id), reason)
    finally:
        setup.sandbox.configure(latency_ms=0)


def test_every_failed_run_was_alerted_exactly_once(setup):
    """After all the runs above, and the sensor's ticks since: one email per failed run, none for the
    re-execution, one post per webhook (the slow one too: asked once, never again)."""
    with dg.DagsterInstance.from_config(str(setup.home)) as instance:
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        originals = [run for run in failed if "dagster/root_run_id" not in run.tags]
        assert len(originals) == len(RUNS) + 2, [
            run.run_id for run in failed
        ]  # + the slow webhook's, the killed
        for run in originals:
            assert len(emails_of(setup, run.run_id)) == 1, run.run_id
            assert (
                len(posts_of(setup, SLACK, run.run_id)) == 1 and len(posts_of(setup, TEAMS, run.run_id)) == 1
            )
        assert len(setup.inbox.messages) == len(originals)


def test_casavi_pipeline_sync_tells_an_unchanged_night_in_a_few_lines(setup):
    lines = setup.unchanged_output.splitlines()
    assert len(lines) <= 15, setup.unchanged_output
    assert any(line.split()[:2] == [MANDANT, "contact"] for line in lines), setup.unchanged_output
