"""End to end: ERP export → Dagster job (real instance on disk) → casavi sandbox (a real process on 127.0.0.1).

After every step, casavi must hold exactly what the mapping produced, and only the changes are sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
from casavi_pipeline_tests.e2e import (
    BACKENDS,
    MANDANT,
    assert_created_once,
    assert_sandbox_holds,
    big_export,
    export,
    run_job,
    writes_by_route,
)
from casavi_pipeline_tests.erp_fixtures import Append, default_rows

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_sync_equals_mapping_and_an_unchanged_rerun_writes_nothing(env, sandbox):
    export(env)
    first = run_job(env)
    assert first.success
    assert_sandbox_holds(sandbox, first)
    # 1 property, 3 units, 3 contacts (the tenant without email is not synced), each with its contract.
    assert {c: len(o) for c, o in sandbox.state().items()} == {"properties": 1, "units": 3, "contacts": 3}
    assert "0001-00043" not in sandbox.state()["contacts"]
    contracts = sandbox.state()["contacts"]["0001-00042"]["contracts"]
    assert [(c["type"], c["number"]) for c in contracts] == [("RENTER", "100001")]

    sandbox.reset(objects=False)
    second = run_job(env)
    assert second.success
    assert sandbox.write_count() == 0
    assert_sandbox_holds(sandbox, second)


def test_dagsters_own_cli_runs_the_whole_graph_against_casavi_from_the_environment(env, sandbox):
    """README: `dagster asset materialize -m casavi_pipeline.definitions --select '*' --partition <M>`."""
    export(env)
    cli = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "casavi_pipeline.definitions",
         "--select", "*", "--partition", MANDANT],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    # INFO and above on the terminal (python_logs in dagster.yaml): the sync's own summary, not DEBUG events
    assert "Mandant 0001: 7 writes confirmed in this run" in cli.stderr
    assert "DEBUG" not in cli.stderr
    assert sandbox.write_count() == 7  # 1 property, 3 units, 3 contacts (with their contracts)

    sandbox.reset(objects=False)
    rerun = run_job(env)  # the same snapshot, now through the job
    assert rerun.success
    assert sandbox.write_count() == 0
    assert_sandbox_holds(sandbox, rerun)


def test_demo_prints_what_casavi_confirmed_per_kind_and_not_the_event_log(env, sandbox):
    """README: the main job's summary (created/updated/deleted per Mandant and kind), then 0 writes."""
    export(env)
    demo = [sys.executable, "-m", "casavi_harness.demo", "--mandant", MANDANT]
    first = subprocess.run(demo, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = {
        tuple(line.split()[:2]): line.split()[2:]
        for line in first.stdout.splitlines()
        if line.startswith(MANDANT)
    }
    assert rows == {
        (MANDANT, "property"): ["1", "0", "0"], (MANDANT, "unit"): ["3", "0", "0"],
        (MANDANT, "contact"): ["3", "0", "0"],
    }  # fmt: skip
    assert "7 writes confirmed by casavi." in first.stdout
    assert "DEBUG" not in first.stdout + first.stderr  # the summary, not Dagster's event log

    second = subprocess.run(demo, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 writes confirmed by casavi." in second.stdout


def test_changed_phone_number_is_exactly_one_write(env, sandbox):
    export(env)
    assert run_job(env).success
    rows = default_rows()
    rows["mieter"][0]["telefon"] = "0351 7654321"
    export(env, rows)
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert writes_by_route(sandbox) == {"PUT /v2/contacts/{id}": 1}
    assert sandbox.state()["contacts"]["0001-00042"]["telephone"] == "0351 7654321"
    assert_sandbox_holds(sandbox, result)


def test_removed_contract_is_one_update_of_its_contact(env, sandbox):
    same_person = {**default_rows()["mieter"][0], "vertrag_nr": "100003"}  # identical data: no update
    extra = {
        "mietvertraege": Append(
            [{"vertrag_nr": "100003", "we_nr": "001", "ve_nr": "0003", "beginn": "2021-03-01"}]
        ),
        "mieter": Append([same_person]),
    }
    export(env, extra)
    assert run_job(env).success
    numbers = [c["number"] for c in sandbox.state()["contacts"]["0001-00042"]["contracts"]]
    assert numbers == ["100001", "100003"]
    export(env)  # the defaults, without contract 100003
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    # casavi keeps contracts inside the contact: a contract leaving the scope is a PUT of the contact
    assert writes_by_route(sandbox) == {"PUT /v2/contacts/{id}": 1}
    assert [c["number"] for c in sandbox.state()["contacts"]["0001-00042"]["contracts"]] == ["100001"]
    assert_sandbox_holds(sandbox, result)


def test_tenant_losing_their_email_and_so_their_only_contract_is_deleted_under_delete(env, sandbox):
    """CASAVI_DELETIONS=delete (revision 2's behaviour); the default, approve, is test_e2e_deletions.py."""
    env["CASAVI_DELETIONS"] = "delete"
    export(env)
    assert run_job(env).success
    rows = default_rows()
    rows["mieter"][2]["email"] = "info-at-baeckerei"  # invalid now: the only tenant of contract 100002
    export(env, rows)
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert writes_by_route(sandbox) == {"DELETE /v2/contacts/{id}": 1}
    assert "0001-00044" not in sandbox.state()["contacts"]
    assert_sandbox_holds(sandbox, result)


def test_a_building_whose_street_changes_moves_its_units_in_one_run(env, sandbox):
    """casavi names a building by its street: the property gets the new street first, the units move,
    then the property drops the old street (casavi refuses to drop a street its units still name)."""
    export(env)
    assert run_job(env).success
    rows = default_rows()
    rows["gebaeude"][0]["hausnummer"] = "12b"  # Müllerstraße 12 → 12b; units 0001 and 0002 stand there
    export(env, rows)
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert writes_by_route(sandbox) == {"PUT /v2/properties/{id}": 2, "PUT /v2/units/{id}": 2}
    assert_sandbox_holds(sandbox, result)
    streets = [a["street"] for a in sandbox.state()["properties"]["0001-001"]["addresses"]]
    assert streets == ["Müllerstraße 12b", "Weißdornweg 3a"]
    sandbox.reset(objects=False)
    assert run_job(env).success
    assert sandbox.write_count() == 0


def test_truncated_export_trips_the_mass_deletion_guard_and_sends_nothing(env, sandbox, monkeypatch):
    export(env)
    assert run_job(env).success
    before = sandbox.state()
    export(env, {"mietvertraege": [], "mieter": []})  # a delivery cut short: no rental contracts at all
    env["CASAVI_DELETE_GUARD_MIN_COUNT"] = "0"  # the default: any share above 10 % trips
    sandbox.reset(objects=False)

    result = run_job(env)
    assert not result.success or not result.is_node_success("casavi_sync")
    evaluations = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.check_name == "mass_deletion_guard_check"
    ]
    assert len(evaluations) == 1 and not evaluations[0].passed
    assert "truncated" in evaluations[0].description
    assert sandbox.write_count() == 0
    # The one-line reason reaches the run itself: its tag (top of the run page) and an ERROR log line.
    with dg.DagsterInstance.get() as instance:
        tags = instance.get_run_by_id(result.run_id).tags
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert tags[FAILURE_REASON_TAG].startswith("check mass_deletion_guard_check failed: Mandant 0001")
    assert any("casavi_pipeline stopped: check mass_deletion_guard_check failed" in m for m in logged)
    assert sandbox.state() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_sync_resumes_without_duplicate_creates(env, sandbox, tmp_path):
    big_export(env, contracts=230)  # about 460 writes
    sandbox.configure(latency_ms=15)
    # The demo entry point with CASAVI_BASE_URL set: the main job in one process, against our sandbox.
    cli = subprocess.Popen(
        [sys.executable, "-m", "casavi_harness.demo", "--mandant", MANDANT],
        env={**os.environ, "CASAVI_MAX_CONCURRENCY": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while sandbox.write_count() < 120 and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.05)
    os.killpg(cli.pid, signal.SIGKILL)  # the whole process tree, mid-sync, without a chance to clean up
    cli.wait()
    written_before_kill = sandbox.write_count()
    assert 120 <= written_before_kill < 460, "the kill should land in the middle of the sync"

    sandbox.configure(latency_ms=0)
    result = run_job(env)
    assert result.success
    assert_sandbox_holds(sandbox, result)
    assert_created_once(sandbox)
    routes = sandbox.requests()["routes"]
    resent = sum(by_status.get("200", 0) for route, by_status in routes.items() if route.startswith("PUT"))
    # Only writes in flight at the kill (answer lost) may be sent again: at most the concurrency.
    assert resent <= 2


def test_changed_separator_is_stopped_unless_a_migration_is_allowed(env, sandbox, monkeypatch):
    export(env)
    assert run_job(env).success
    before = sandbox.state()
    env["CASAVI_ID_SEPARATOR"] = "_"
    env["CASAVI_DELETIONS"] = "delete"  # the old ids go in the same run (under approve they would wait)
    sandbox.reset(objects=False)

    blocked = run_job(env)
    evaluation = next(
        e.event_specific_data
        for e in blocked.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.check_name == "separator_change_guard_check"
    )
    assert not evaluation.passed and "CASAVI_ALLOW_SEPARATOR_CHANGE" in evaluation.description
    assert sandbox.write_count() == 0 and sandbox.state() == before

    env["CASAVI_ALLOW_SEPARATOR_CHANGE"] = "true"
    migrated = run_job(env)
    assert migrated.success
    assert_sandbox_holds(sandbox, migrated)  # only the new ids remain
    assert set(sandbox.state()["units"]) == {"0001_001_01_0001", "0001_001_01_0002", "0001_001_02_0003"}
