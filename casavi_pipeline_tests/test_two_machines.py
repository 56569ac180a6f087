"""Two machines that share nothing but the PostgreSQL state database (CASAVI_STATE_URL).

Each "machine" has its own CASAVI_SNAPSHOT_DB (working copies) and its own Dagster instance
(DAGSTER_HOME), as two containers or two hosts would. Runs of the same Mandant alternate between them
against one real casavi sandbox process: every run sees what the other confirmed, an unchanged run sends
nothing, nothing is created twice, and a run killed on one machine is resumed by the other. Two Mandanten
of one account syncing at the same moment on the two machines share one request budget (it lives in the
state database), also with Dagster's storage on PostgreSQL too; the state database stopped mid-run fails
that run in one line, and the next run converges.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline.runs.instance_home import prepare
from casavi_pipeline_tests.e2e import (
    MANDANT,
    REPO,
    assert_created_once,
    assert_sandbox_holds,
    big_export,
    expected_state,
    export,
    run_job,
    writes_by_route,
)
from casavi_pipeline_tests.erp_fixtures import big_rows, default_rows, write_export
from casavi_pipeline_tests.harness import run_from_environment
from casavi_pipeline_tests.postgres import PostgresServer, pg_bin
from casavi_sandbox import SandboxProcess

pytestmark = pytest.mark.e2e


def read_of(result) -> dict[str, object]:
    """What the run's read of casavi did (casavi_remote's metadata)."""
    [materialization] = result.asset_materializations_for_node("casavi_remote")
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def machines(env, tmp_path, monkeypatch):
    """Switch the environment between machine "a" and "b": own working copies and own Dagster instance."""
    homes = {}
    for name in ("a", "b"):
        home = tmp_path / f"machine_{name}"
        (home / "dagster_home").mkdir(parents=True)
        shutil.copy(REPO / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
        homes[name] = home

    def on(name: str) -> dict[str, str]:
        values = {"CASAVI_SNAPSHOT_DB": str(homes[name] / "state"), "DAGSTER_HOME": str(homes[name] / "dagster_home")}
        for key, value in values.items():
            monkeypatch.setenv(key, value)
            env[key] = value
        return env

    return on


def test_runs_alternating_between_two_machines_stay_exact_and_send_nothing_twice(machines, sandbox):
    export(machines("a"))
    first = run_job(machines("a"))
    assert first.success
    assert_sandbox_holds(sandbox, first)

    def writes() -> int:
        return sum(writes_by_route(sandbox).values())

    after_first = writes()
    unchanged = run_job(machines("b"))  # a fresh machine: fetches the state from PostgreSQL
    assert unchanged.success
    assert writes() == after_first
    # It knew the state (nothing adopted) and the shared listing (read incrementally, not in full).
    assert (read_of(unchanged)["adopted"], read_of(unchanged)["full_listing"]) == (0, False)

    rows = default_rows()
    rows["mieter"][0]["telefon"] = "0351 7654321"
    export(machines("b"), rows)
    changed = run_job(machines("b"))
    assert changed.success
    assert writes() == after_first + 1

    back = run_job(machines("a"))  # machine a's working copy is stale: the newer state wins
    assert back.success
    assert writes() == after_first + 1
    assert_sandbox_holds(sandbox, back)
    assert_created_once(sandbox)  # every object created once, whichever machine ran


def test_a_run_killed_on_one_machine_is_resumed_by_the_other(machines, sandbox):
    env = machines("a")
    big_export(env, contracts=230)  # about 460 writes
    sandbox.configure(latency_ms=15)
    cli = subprocess.Popen(
        [sys.executable, "-m", "casavi_harness.demo", "--mandant", MANDANT],
        env={**os.environ, "CASAVI_MAX_CONCURRENCY": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while sandbox.write_count() < 120 and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.05)
    os.killpg(cli.pid, signal.SIGKILL)  # machine a dies mid-sync; its advisory lock dies with it
    cli.wait()
    written_before_kill = sandbox.write_count()
    assert 120 <= written_before_kill < 460, "the kill should land in the middle of the sync"

    sandbox.configure(latency_ms=0)
    result = run_job(machines("b"))
    assert result.success
    assert read_of(result)["adopted"] == 0  # machine a's confirmations reached b through PostgreSQL
    assert_sandbox_holds(sandbox, result)
    assert_created_once(sandbox)
    routes = sandbox.requests()["routes"]
    resent = sum(by_status.get("200", 0) for route, by_status in routes.items() if route.startswith("PUT"))
    assert resent <= 2  # only writes in flight at the kill (answer lost) may be sent again
    assert not any(Path(env["CASAVI_SNAPSHOT_DB"]).parent.glob("machine_b/state/**/*.journal"))


# --- one account, one budget, on two machines at once ------------------------------------------------
BIN = Path(sys.executable).parent
TWO = ("0001", "0002")
#: The sandbox's hidden limit in the tests of one account on two machines (requests per second).
HIDDEN_LIMIT = 8.0


class Machine:
    """One machine: its own CASAVI_SNAPSHOT_DB and DAGSTER_HOME (instance file `instance`), the rest shared."""

    def __init__(self, root: Path, name: str, shared: dict[str, str], instance: Path) -> None:
        home = root / f"machine_{name}"
        self.env = {**os.environ, **shared, "CASAVI_SNAPSHOT_DB": str(home / "state"),
                    "DAGSTER_HOME": str(home / "dagster_home")}  # fmt: skip
        prepare(home / "dagster_home", instance)  # as ./run does on each machine

    def sync(self, mandant: str) -> subprocess.Popen[str]:
        """`casavi-pipeline sync --mandant M`, the operator's command, started on this machine."""
        return subprocess.Popen(
            [str(BIN / "casavi-pipeline"), "sync", "--mandant", mandant], cwd=REPO, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def account_env(env: dict[str, str]) -> dict[str, str]:
    """The test's settings for two Mandanten of one account, at the default rate ceiling (600/min)."""
    shared = {key: value for key, value in env.items() if key not in ("CASAVI_SNAPSHOT_DB", "DAGSTER_HOME")}
    shared.update(CASAVI_MANDANTEN=",".join(TWO), CASAVI_REQUESTS_PER_MINUTE="600")
    return shared


class Counts:
    """The sandbox's request counts, sampled in a thread: what went through between the first and last write."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        self.sandbox, self.samples = sandbox, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            requests = self.sandbox.requests()
            writes = sum(n for route, by in requests["routes"].items() for n in by.values()
                         if route.split(" ", 1)[0] in ("PUT", "DELETE"))  # fmt: skip
            limited = int(requests["statuses"].get("429", 0))
            self.samples.append((time.monotonic(), writes, requests["total"] - limited))

    def __enter__(self) -> Counts:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def share_of_limit(self, per_second: float) -> float:
        """Answers other than 429 per second between the first and the last write, ÷ `per_second`."""
        final = self.samples[-1][1]
        first = next(s for s in self.samples if s[1] > 0)
        last = next(s for s in self.samples if s[1] == final)
        return (last[2] - first[2]) / (last[0] - first[0]) / per_second


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=900)
    return process.returncode, out + err


def assert_account_holds(sandbox: SandboxProcess, env: dict[str, str]) -> None:
    """casavi holds exactly what both Mandanten map: a run of each on one machine sends nothing more."""
    expected: dict[str, dict] = {}
    for mandant in TWO:
        with dg.DagsterInstance.ephemeral() as instance:
            result = run_from_environment(mandant, env, instance=instance)
        assert result.success
        [sync] = result.asset_materializations_for_node("casavi_sync")
        assert sync.metadata["confirmed"].value == 0, f"Mandant {mandant}: the state was not exact"
        for collection, objects in expected_state(result).items():
            expected.setdefault(collection, {}).update(objects)
    assert sandbox.state() == expected


def test_two_mandanten_on_two_machines_share_one_budget_under_a_hidden_limit(env, backend, sandbox, tmp_path):
    """Machine a syncs Mandant 0001 while machine b syncs 0002, one account, casavi's hidden limit 8/s: the
    account's budget lives in the state database, so together they find one limit, not one each."""
    assert backend == "postgresql"
    shared = account_env(env)
    write_export(Path(shared["ERP_EXPORT_DIR"]), {mandant: big_rows(120) for mandant in TWO})  # ~250 writes each
    machines = [Machine(tmp_path, name, shared, REPO / "dagster.yaml") for name in ("a", "b")]
    sandbox.configure(rate_limit=HIDDEN_LIMIT * 60)
    with Counts(sandbox) as counts:
        runs = [machine.sync(mandant) for machine, mandant in zip(machines, TWO, strict=True)]
        outcomes = [finished(run) for run in runs]
    for code, output in outcomes:
        assert code == 0, output
    statuses = sandbox.requests()["statuses"]
    limited, total = int(statuses.get("429", 0)), sum(int(n) for n in statuses.values())
    share = counts.share_of_limit(HIDDEN_LIMIT)
    print(f"two machines, one account: {share:.0%} of the hidden limit between the first and the last write, "
          f"{limited} of {total} requests answered 429 ({limited / total:.1%})")  # fmt: skip
    assert limited <= 0.02 * total
    sandbox.configure(rate_limit=0)
    assert_account_holds(sandbox, {**shared, "CASAVI_SNAPSHOT_DB": machines[0].env["CASAVI_SNAPSHOT_DB"]})
    assert_created_once(sandbox)


def test_two_machines_with_dagsters_storage_on_postgresql_too(
    env, backend, sandbox, postgres_server, tmp_path, monkeypatch
):
    """The deployment of docs/scale-out.md: runs, event logs and the state in PostgreSQL, nothing else shared."""
    assert backend == "postgresql"
    storage = postgres_server.create_database("dagster")
    shared = {**account_env(env), "DAGSTER_PG_HOST": postgres_server.host, "DAGSTER_PG_PORT": str(postgres_server.port),
              "DAGSTER_PG_USER": postgres_server.USER, "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": storage}  # fmt: skip
    for key in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(key, shared[key])  # this process prepares the instance and reads it back
    write_export(Path(shared["ERP_EXPORT_DIR"]), {mandant: big_rows(10) for mandant in TWO})
    a, b = (Machine(tmp_path, name, shared, REPO / "dagster.postgres.yaml") for name in ("a", "b"))
    runs = [a.sync(TWO[0]), b.sync(TWO[1])]
    for code, output in (finished(run) for run in runs):
        assert code == 0, output
    with dg.DagsterInstance.from_config(a.env["DAGSTER_HOME"]) as instance:  # one instance, seen from a
        runs_seen = instance.get_runs()
    assert sorted(run.tags["dagster/partition"] for run in runs_seen) == list(TWO)
    assert {run.status for run in runs_seen} == {dg.DagsterRunStatus.SUCCESS}
    assert_account_holds(sandbox, {**shared, "CASAVI_SNAPSHOT_DB": b.env["CASAVI_SNAPSHOT_DB"]})
    assert_created_once(sandbox)


@pytest.fixture
def stoppable_postgres():
    """A PostgreSQL server of this test alone: the test stops it in the middle of a run."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


def test_the_state_database_stopped_mid_run_fails_it_in_one_line_and_the_next_run_converges(
    env, sandbox, stoppable_postgres, tmp_path, monkeypatch
):
    url = stoppable_postgres.url(stoppable_postgres.create_database("state"))
    monkeypatch.setenv("CASAVI_STATE_URL", url)  # the resources read secrets from the environment
    shared = {**account_env(env), "CASAVI_MANDANTEN": MANDANT, "CASAVI_STATE_URL": url}
    big_export(shared, contracts=200)  # about 400 writes
    sandbox.configure(latency_ms=15)
    machine = Machine(tmp_path, "a", shared, REPO / "dagster.yaml")
    run = machine.sync(MANDANT)
    deadline = time.monotonic() + 300
    while sandbox.write_count() < 60 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    stoppable_postgres.halt()
    code, output = finished(run)
    assert code == 1, output
    [reason] = [line for line in output.splitlines() if line.startswith(f"Mandant {MANDANT} did not sync")]
    assert "state database" in reason and "went away" in reason and "Traceback" not in output
    assert sandbox.write_count() < 400, "PostgreSQL should stop in the middle of the sync"

    stoppable_postgres.resume()
    sandbox.configure(latency_ms=0)
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_from_environment(MANDANT, {**shared, "CASAVI_SNAPSHOT_DB": machine.env["CASAVI_SNAPSHOT_DB"]},
                                      instance=instance)  # fmt: skip
    assert result.success
    assert_sandbox_holds(sandbox, result)
    assert_created_once(sandbox)  # writes whose confirmation was lost are sent again: updates, not creates
