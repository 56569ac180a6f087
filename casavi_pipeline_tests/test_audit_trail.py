"""The audit trail, rejected records and the dry run's preview, end to end against the sandbox process.

Each test runs the shipped job with settings from the environment (`e2e.env`), and asks the trail the
way an operator does: `casavi-pipeline audit` in a subprocess.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from casavi_pipeline.cli import audit as audit_cli
from casavi_pipeline.cli.erase import erase
from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
from casavi_pipeline.state.audit import Attempt
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.state.store import StateStore
from casavi_pipeline_tests.e2e import (
    BACKENDS,
    MANDANT,
    assert_sandbox_holds,
    export,
    run_job,
    state_folder,
    state_store,
    writes_by_route,
)
from casavi_pipeline_tests.erp_fixtures import default_rows
from casavi_pipeline_tests.harness import check_results

pytestmark = pytest.mark.e2e

REJECTED = ("0001-00042", "0001-00044")  # two of the three contacts of the default export
DRY_RUN = {"ops": {"casavi_sync": {"config": {"dry_run": True}}}}


def snapshot_path(env) -> Path:
    return state_folder(env) / f"snapshot_{MANDANT}.duckdb"


def trail(env, *args: str) -> subprocess.CompletedProcess:
    """`casavi-pipeline audit ARGS` as an operator runs it: settings from the environment."""
    return subprocess.run(
        [sys.executable, "-m", "casavi_pipeline.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def all_rows(env):
    rows, busy = audit_cli.query([state_store(env)], audit_cli.Filters())
    assert busy == []
    return rows


def sync_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["casavi_sync"]]
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def personal_values() -> set[str]:
    rows = default_rows()
    columns = ("vorname", "nachname", "firma", "email", "telefon")
    return {
        str(row[c])
        for entity in ("mieter", "eigentuemer")
        for row in rows[entity]
        for c in columns
        if row.get(c)
    } | {"0351 7654321"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_write_is_a_row_and_audit_answers_what_happened_to_a_contact(env, sandbox):
    export(env)
    first = run_job(env)
    assert first.success
    assert len(all_rows(env)) == sum(writes_by_route(sandbox).values()) == 7
    rows = default_rows()
    rows["mieter"][0]["telefon"] = "0351 7654321"
    export(env, rows)
    sandbox.reset(objects=False)

    rerun = run_job(env)
    assert rerun.success
    assert writes_by_route(sandbox) == {"PUT /v2/contacts/{id}": 1}
    assert len(all_rows(env)) == 8  # one row per write attempt, over both runs
    assert sync_metadata(rerun)["audit/contact/update/200"] == 1
    assert sync_metadata(first)["audit/contact/create/201"] == 3

    answer = trail(env, "--ref-id", "0001-00042")
    assert answer.returncode == 0, answer.stderr
    header, created, updated = answer.stdout.splitlines()
    assert header.split() == [
        "time",
        "mandant",
        "run",
        "kind",
        "ref_id",
        "change",
        "status",
        "fields",
        "refused",
        "by",
    ]
    assert created.split()[1:7] == [MANDANT, first.run_id[:8], "contact", "0001-00042", "create", "201"]
    assert updated.split()[1:] == [
        MANDANT,
        rerun.run_id[:8],
        "contact",
        "0001-00042",
        "update",
        "200",
        "telephone",
    ]

    by_run = trail(env, "--csv", "--run", rerun.run_id, "--mandant", MANDANT, "--since", "2000-01-01")
    (row,) = csv.DictReader(io.StringIO(by_run.stdout))
    assert (row["run_id"], row["ref_id"], row["fields"]) == (rerun.run_id, "0001-00042", "telephone")
    assert trail(env, "--until", "2000-01-01").stdout.count("\n") == 1  # the header alone

    # The trail holds names and statuses, never a person's name, email or phone.
    with duckdb.connect(str(snapshot_path(env)), read_only=True) as con:
        stored = "\n".join(str(row) for row in con.execute("SELECT * FROM audit").fetchall())
    assert "telephone" in stored
    assert not [value for value in personal_values() if value in stored]
    assert (
        not snapshot_path(env).with_suffix(".audit").exists()
    )  # folded into the snapshot at the end of the sync


@pytest.mark.parametrize("backend", BACKENDS)
def test_erasure_keeps_the_trail_and_retention_drops_old_rows(env, sandbox):
    export(env)
    assert run_job(env).success
    snapshot_dir = Path(env["CASAVI_SNAPSHOT_DB"])
    erase(snapshot_dir, MANDANT, env.get("CASAVI_STATE_URL"))
    assert len(all_rows(env)) == 7  # the trail holds no personal data: erasure leaves it as it is

    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=401)  # CASAVI_AUDIT_RETENTION_DAYS is 400
    with duckdb.connect(str(snapshot_path(env))) as con:
        con.execute("UPDATE audit SET answered_at = ? WHERE kind = 'unit'", [old])
    rows = default_rows()
    rows["mieter"][0]["telefon"] = "0351 7654321"
    export(env, rows)
    assert run_job(env).success

    kept = all_rows(env)
    assert sorted(kept["kind"].value_counts().items()) == [("contact", 4), ("property", 1)]


def test_rejected_records_warn_land_the_rest_and_are_retried_on_the_next_run(env, sandbox, monkeypatch):
    monkeypatch.setenv("CASAVI_REJECTION_ESCALATE_NIGHTS", "2")
    sandbox.configure(reject_ids=",".join(REJECTED))
    export(env)
    first = run_job(env)
    assert first.success
    check = check_results(first)["casavi_rejections"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert all(ref_id in check.description for ref_id in REJECTED)
    assert "ESCALATED" not in check.description
    listed = check.metadata["rejections"].value.records
    assert sorted(r.data["ref_id"] for r in listed) == list(REJECTED)
    assert all(r.data["status"] == 400 and r.data["fields"] for r in listed)
    held = sandbox.state()
    assert {c: len(o) for c, o in held.items()} == {"properties": 1, "units": 3, "contacts": 1}
    assert list(held["contacts"]) == ["0001-00050"]

    # The refusals of that run happened a night earlier: refused on a second night now, they escalate.
    with duckdb.connect(str(snapshot_path(env))) as con:
        con.execute("UPDATE audit SET answered_at = answered_at - INTERVAL 1 DAY WHERE status >= 400")
    sandbox.reset(objects=False, knobs=False)
    second = run_job(env)
    assert second.success
    assert writes_by_route(sandbox) == {"PUT /v2/contacts/{id}": 2}  # only the two, again
    check = check_results(second)["casavi_rejections"]
    assert not check.passed and "ESCALATED: 0001-00042, 0001-00044" in check.description
    assert sorted(check.metadata["escalated"].value) == list(REJECTED)

    sandbox.configure(reject_ids=None)  # fixed (in the ERP, say): the next run sends them, and they land
    sandbox.reset(objects=False, knobs=False)
    third = run_job(env)
    assert third.success and check_results(third)["casavi_rejections"].passed
    assert writes_by_route(sandbox) == {"PUT /v2/contacts/{id}": 2}
    assert_sandbox_holds(sandbox, third)
    statuses = trail(env, "--csv", "--ref-id", "0001-00044").stdout
    assert [r["status"] for r in csv.DictReader(io.StringIO(statuses))] == ["400", "400", "201"]


def test_rejections_above_the_threshold_fail_the_run_with_one_line(env, sandbox, monkeypatch):
    monkeypatch.setenv("CASAVI_REJECTED_MIN_COUNT", "1")  # 2 of 7 writes refused: above 5 % and above 1
    sandbox.configure(reject_ids=",".join(REJECTED))
    export(env)
    with dg.DagsterInstance.get() as instance:
        result = run_job(env)
        reason = instance.get_run_by_id(result.run_id).tags[FAILURE_REASON_TAG]
    assert not result.success
    assert "casavi rejected 2 of 7 writes, more than CASAVI_MAX_REJECTED_SHARE (5%)" in reason
    assert "\n" not in reason
    check = check_results(result)["casavi_rejections"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert len(sandbox.state()["contacts"]) == 1  # the other writes landed all the same


def test_a_dry_run_lists_deletions_by_reference_id_and_tags_the_run(env, sandbox):
    env["CASAVI_DELETIONS"] = "delete"  # under the default it would wait: `would_wait` (test_e2e_deletions)
    export(env)
    assert run_job(env).success
    rows = default_rows()
    rows["mieter"][2]["email"] = "info-at-baeckerei"  # invalid: contact 0001-00044 would be deleted
    export(env, rows)
    sandbox.reset(objects=False)

    with dg.DagsterInstance.get() as instance:
        result = run_job(env, run_config=DRY_RUN)
        tags = instance.get_run_by_id(result.run_id).tags
    assert result.success
    assert tags["casavi/dry_run"] == "true"
    assert sandbox.write_count() == 0
    (observation,) = [
        e.asset_observation_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    deletions = [r.data for r in observation.metadata["deletions"].value.records]
    assert deletions == [{"kind": "contact", "ref_id": "0001-00044"}]
    assert observation.description.startswith("DRY RUN")
    assert "0001-00044" in observation.description


# --- the trail's storage, without Dagster -------------------------------------------------------------
def attempt(ref_id: str, status: int = 200) -> Attempt:
    return Attempt("run-1", "0009", "contact", ref_id, "update", status, ("telephone",))


def test_a_replayed_fold_adds_no_row_twice_and_a_torn_line_is_dropped(tmp_path):
    path = tmp_path / "snapshot_0009.duckdb"
    with Snapshot(path, "0009") as snapshot:
        snapshot.record_attempt(attempt("0009-1"))
        snapshot.record_attempt(attempt("0009-2", 400))
        lines = path.with_suffix(".audit").read_bytes()
    # A crash after the fold committed and before the file went: the same lines again, one torn.
    path.with_suffix(".audit").write_bytes(lines + b'["abc", "2026-')
    with Snapshot(path, "0009") as snapshot:
        assert snapshot.dropped_audit_lines == 1
    rows, busy = audit_cli.query([StateStore(tmp_path, account=None)], audit_cli.Filters())
    assert (len(rows), busy) == (2, [])
    assert not path.with_suffix(".audit").exists()


def test_a_snapshot_a_sync_holds_shows_its_unfolded_rows_and_exits_1(tmp_path):
    with Snapshot(tmp_path / "snapshot_0009.duckdb", "0009") as snapshot:
        snapshot.record_attempt(attempt("0009-1", 204))
        busy = subprocess.run(
            [sys.executable, "-m", "casavi_pipeline.cli", "audit", "--snapshot-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert busy.returncode == 1
    assert "Mandant 0009 is in use by a running sync" in busy.stderr
    assert "0009-1" in busy.stdout
