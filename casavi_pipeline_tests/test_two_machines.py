"""Two machines that share nothing but the PostgreSQL state database (CASAVI_STATE_URL).

Each "machine" has its own CASAVI_SNAPSHOT_DB (working copies) and its own Dagster instance
(DAGSTER_HOME), as two containers or two hosts would. Runs of the same Mandant alternate between them
against one real casavi sandbox process: every run sees what the other confirmed, an unchanged run sends
nothing, nothing is created twice, and a run killed on one machine is resumed by the other.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casavi_pipeline_tests.e2e import (
    MANDANT,
    REPO,
    assert_created_once,
    assert_sandbox_holds,
    big_export,
    export,
    run_job,
    writes_by_route,
)
from casavi_pipeline_tests.erp_fixtures import default_rows

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
