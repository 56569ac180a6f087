"""The account's request budget as runs meet it: where it lives per state backend, and a damaged one.

Issue 26 (medium): a damaged budget used to stop every Mandant, run after run, without naming the file.
Now it costs one warning line in the run's log naming it, and no failed run: it holds nothing that cannot
be relearned.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline import account
from casavi_pipeline.casavi.budget_store import BUDGET_FILE
from casavi_pipeline_tests.e2e import BACKENDS, export, run_job

pytestmark = pytest.mark.e2e


def budget_warnings(result: dg.ExecuteInProcessResult) -> list[str]:
    with dg.DagsterInstance.get() as instance:
        lines = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return [line for line in lines if "casavi request budget" in line]


def damage(env: dict[str, str], backend: str, how: str, postgres_server) -> None:
    folder = account.folder(Path(env["CASAVI_SNAPSHOT_DB"]), account.account_id(env["CASAVI_API_KEY"]))
    if backend == "duckdb":
        path = folder / BUDGET_FILE
        assert path.exists() and not any(Path(env["CASAVI_SNAPSHOT_DB"]).glob("casavi_budget_*"))
        if how == "garbled":
            path.write_bytes(b"\x13\x37 not a database " * 300)
        else:
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            path.write_bytes(path.read_bytes()[:1024])
        return
    assert not folder.joinpath(BUDGET_FILE).exists()  # with the state in PostgreSQL, the budget is there too
    database = env["CASAVI_STATE_URL"].rsplit("/", 1)[1]
    # The account's row exists only once the budget learned something (a prompt answer to a request that
    # waited for the budget; whether one waited depends on timing): garble it whether it is there or not.
    key = account.account_id(env["CASAVI_API_KEY"])
    statement = (
        "INSERT INTO casavi_budget (account, rate, limit_rate, paused_until, decreased_at) "
        f"VALUES ('{key}', 'Infinity', NULL, 0, 0) ON CONFLICT (account) DO UPDATE SET rate = 'Infinity'"
        if how == "garbled"
        else "ALTER TABLE casavi_budget DROP COLUMN decreased_at"
    )
    postgres_server.psql(database, statement)


@pytest.mark.parametrize("how", ["garbled", "truncated"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_budget_costs_one_line_in_the_runs_log_and_no_failed_run(env, backend, how, request):
    export(env)
    first = run_job(env)
    assert first.success and budget_warnings(first) == []
    damage(env, backend, how, request.getfixturevalue("postgres_server") if backend == "postgresql" else None)
    again = run_job(env)
    assert again.success
    [line] = budget_warnings(again)  # once: the next step finds the fresh budget
    assert "moved aside" in line and "learned anew" in line and "\n" not in line
    assert env["CASAVI_API_KEY"] not in line and "Geheim" not in line
    if backend == "duckdb":
        assert str(Path(env["CASAVI_SNAPSHOT_DB"])) in line and f"{BUDGET_FILE}.corrupt-" in line
    else:
        assert account.account_id(env["CASAVI_API_KEY"]) in line and "state database" in line
