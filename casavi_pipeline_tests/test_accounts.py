"""One state per casavi account (rule 7 of the export contract), as a customer goes live: a test account
first, then production, with the same folders or the same state database; state kept before accounts
were told apart; and state that heals the right way when a copy of it is damaged.

Two casavi sandboxes, each a real process with its own API key, play the two accounts.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from casavi_pipeline import account
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.cli.erase import erase
from casavi_pipeline.state.upgrade import old_budget_name
from casavi_pipeline_tests.e2e import (
    BACKENDS,
    MANDANT,
    assert_created_once,
    assert_sandbox_holds,
    export,
    run_job,
    state_folder,
    writes_by_route,
)
from casavi_sandbox import SandboxProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """A second casavi account: its own sandbox process with its own key and secret."""
    folder = tmp_path_factory.mktemp("production")
    with SandboxProcess(folder / "sandbox.sqlite3", api_key="production-key", api_secret="production-secret") as server:
        yield server


@pytest.fixture
def prod(production: SandboxProcess) -> SandboxProcess:
    if not production.health():
        production.restart()
    production.reset()
    return production


def point_at(env: dict, monkeypatch: pytest.MonkeyPatch, target: SandboxProcess) -> dict:
    """The same folders and state database, another casavi account."""
    values = {"CASAVI_BASE_URL": target.base_url, "CASAVI_API_KEY": target.api_key, "CASAVI_API_SECRET": target.api_secret}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    env.update(values)
    return env


def log_lines(result: dg.ExecuteInProcessResult, level: int = logging.INFO) -> list[str]:
    with dg.DagsterInstance.get() as instance:  # the env fixture sets DAGSTER_HOME
        return [e.user_message for e in instance.all_logs(result.run_id) if e.level >= level]


def read_of(result: dg.ExecuteInProcessResult) -> dict:
    [materialization] = result.asset_materializations_for_node("casavi_remote")
    return {key: value.value for key, value in materialization.metadata.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_test_account_then_production_then_back(env, sandbox, prod, monkeypatch):
    export(env)
    tested = run_job(env)  # the test account
    assert tested.success
    assert_sandbox_holds(sandbox, tested)
    test_account = account.account_id(env["CASAVI_API_KEY"])

    live = run_job(point_at(env, monkeypatch, prod))  # production: empty, same folders / database
    assert live.success
    assert_sandbox_holds(prod, live)  # production holds exactly what the test account holds
    assert_created_once(prod)
    firsts = [line for line in log_lines(live, logging.WARNING) if "first run against casavi account" in line]
    assert len(firsts) == 1 and account.account_id("production-key") in firsts[0], firsts
    assert "1 other account(s)" in firsts[0] and "production-key" not in firsts[0]

    sandbox.reset(objects=False)  # back on the test account: its state is there, untouched
    again = run_job(point_at(env, monkeypatch, sandbox))
    assert again.success
    assert sandbox.write_count() == 0
    assert read_of(again)["adopted"] == 0
    assert not [line for line in log_lines(again) if "first run against" in line]

    # Neither key is readable from the state, on disk or in the state database.
    names = [p.name for p in Path(env["CASAVI_SNAPSHOT_DB"]).rglob("*")]
    assert f"account-{test_account}" in names and not any("key" in name for name in names)
    if env.get("CASAVI_STATE_URL"):
        with psycopg2.connect(env["CASAVI_STATE_URL"]) as con, con.cursor() as cur:
            cur.execute("SELECT DISTINCT split_part(name, '/', 1) FROM casavi_state_heads ORDER BY 1")
            held = [name for (name,) in cur.fetchall()]
        assert held == sorted([f"account-{test_account}", f"account-{account.account_id('production-key')}"])


def test_a_rotated_key_is_met_like_a_new_account_by_reads_alone(env, sandbox, monkeypatch):
    export(env)
    assert run_job(env).success
    sandbox.api_key, sandbox.api_secret = "rotated-key", "rotated-secret"
    try:
        sandbox.restart()  # the same account (same objects), reached with a new key
        sandbox.reset(objects=False)
        rotated = run_job(point_at(env, monkeypatch, sandbox))
    finally:
        sandbox.api_key, sandbox.api_secret = "sandbox-key", "sandbox-secret"
        sandbox.restart()
    assert rotated.success
    assert writes_by_route(sandbox) == {}
    assert read_of(rotated)["adopted"] == 7  # adopted by reads: 1 property, 3 units, 3 contacts


def _to_the_old_layout(env: dict) -> None:
    """State as the version before accounts kept it: at the top of CASAVI_SNAPSHOT_DB, bare names in
    the state database."""
    folder = state_folder(env)
    for path in folder.iterdir():
        path.rename(folder.parent / path.name)
    folder.rmdir()
    if env.get("CASAVI_STATE_URL"):
        with psycopg2.connect(env["CASAVI_STATE_URL"]) as con, con.cursor() as cur:
            for table in ("casavi_state_heads", "casavi_state_chunks", "casavi_state_log"):
                cur.execute(f"UPDATE {table} SET name = split_part(name, '/', 2)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_from_before_accounts_moves_under_its_account_in_one_step(env, sandbox):
    export(env)
    assert run_job(env).success
    _to_the_old_layout(env)
    root = Path(env["CASAVI_SNAPSHOT_DB"])
    (root / old_budget_name(env["CASAVI_BASE_URL"], env["CASAVI_API_KEY"])).write_bytes(b"")  # its own budget
    sandbox.reset(objects=False)

    upgraded = run_job(env)
    assert upgraded.success
    assert sandbox.write_count() == 0 and read_of(upgraded)["adopted"] == 0  # the state was kept, not rebuilt
    moved = [line for line in log_lines(upgraded) if "before casavi accounts were told apart" in line]
    assert len(moved) == 1 and "now belongs to casavi account" in moved[0], moved
    assert not list(root.glob("snapshot_*")) and not list(root.glob("casavi_remote.*"))
    assert (state_folder(env) / f"snapshot_{MANDANT}.duckdb").exists()


def test_state_of_another_account_from_before_stays_where_it_is(env, sandbox):
    export(env)
    assert run_job(env).success
    _to_the_old_layout(env)
    root = Path(env["CASAVI_SNAPSHOT_DB"])
    for budget in root.glob("casavi_budget_*"):  # made with another key: its budget had another name
        budget.unlink()
    (root / old_budget_name(env["CASAVI_BASE_URL"], "another-key")).write_bytes(b"")
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert sandbox.write_count() == 0  # this account starts on its own: it adopts what casavi holds
    assert read_of(result)["adopted"] == 7
    stays = [line for line in log_lines(result) if "stays in" in line]
    assert len(stays) == 1 and "made with another casavi account" in stays[0], stays
    assert (root / f"snapshot_{MANDANT}.duckdb").exists()
    done = erase(root, MANDANT)  # erasure reaches both: the old state and the account's
    assert sum("bodies erased" in line for line in done) == 2, done


def test_a_hand_deletion_is_repaired_by_the_next_run_however_soon(env, sandbox, monkeypatch):
    export(env)
    assert run_job(env).success
    sandbox.delete_as_user(ObjectKind.UNIT, "0001-001-01-0002")  # a person, minutes after the night
    sandbox.reset(objects=False)

    unrepaired = run_job(env)  # read incrementally, as every run between two full listings: nothing done
    assert unrepaired.success and not read_of(unrepaired)["full_listing"] and sandbox.write_count() == 0

    monkeypatch.setenv("CASAVI_REPAIR_DRIFT", "true")
    repaired = run_job(env)
    assert repaired.success
    read = read_of(repaired)
    assert read["full_listing"] and "CASAVI_REPAIR_DRIFT" in read["listing"]
    assert writes_by_route(sandbox) == {"PUT /v2/units/{id}": 1}
    assert "0001-001-01-0002" in sandbox.state()["units"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_damaged_working_copy_is_fetched_again_from_postgresql(env, sandbox):
    export(env)
    assert run_job(env).success
    working_copy = state_folder(env) / f"snapshot_{MANDANT}.duckdb"
    data = bytearray(working_copy.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 4] = b"\xde\xad\xbe\xef"  # 4 bytes changed on this machine's disk
    working_copy.write_bytes(bytes(data))
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert sandbox.write_count() == 0 and read_of(result)["adopted"] == 0  # not rebuilt: the state was intact
    warnings = log_lines(result, logging.WARNING)
    assert any("fetched again from the state database" in line for line in warnings), warnings
    with psycopg2.connect(env["CASAVI_STATE_URL"]) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM casavi_state_heads WHERE name LIKE '%corrupt%'")
        assert cur.fetchone()[0] == 0  # PostgreSQL's intact generation was not moved aside
    assert not list(working_copy.parent.glob("*.corrupt-*"))  # the damaged copy (personal data) is gone


@pytest.mark.parametrize("backend", ["postgresql"])
def test_erasure_with_postgresql_reaches_local_moved_aside_copies(env, sandbox):
    export(env)
    assert run_job(env).success
    working_copy = state_folder(env) / f"snapshot_{MANDANT}.duckdb"
    left = working_copy.with_name(working_copy.name + ".corrupt-20261201T000000000000Z")
    shutil.copy(working_copy, left)  # what an older version left beside the working copy
    done = erase(Path(env["CASAVI_SNAPSHOT_DB"]), MANDANT, env["CASAVI_STATE_URL"])
    assert not left.exists()
    assert any(str(left) in line for line in done), done


def test_a_snapshot_copied_into_another_accounts_folder_is_refused_in_one_line(env, sandbox, prod, monkeypatch):
    export(env)
    assert run_job(env).success
    copied = state_folder(env) / f"snapshot_{MANDANT}.duckdb"
    point_at(env, monkeypatch, prod)
    state_folder(env).mkdir(parents=True)
    shutil.copy(copied, state_folder(env) / copied.name)  # by hand, "to save the first sync"

    result = run_job(env)
    assert not result.success
    assert prod.write_count() == 0
    with dg.DagsterInstance.get() as instance:
        reason = instance.get_run_by_id(result.run_id).tags["casavi/failure_reason"]
    assert "was made for casavi account" in reason and "copied or moved by hand" in reason and "\n" not in reason
