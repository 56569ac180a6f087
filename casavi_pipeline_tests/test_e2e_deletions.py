"""End to end: deletions wait for a person (CASAVI_DELETIONS), against the casavi sandbox (a real process),
through the main job in a real Dagster instance, with `casavi-pipeline deletions` as an operator runs it.

The export is the tiny default one: property 0001-001 (Müllerstraße 12 with units 0001 and 0002,
Weißdornweg 3a with unit 0003), tenants 00042 (unit 0001) and 00044 (unit 0002, its only tenant),
owner 00050 (unit 0003).
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline.defs.deletions import APPROVE_JOB_NAME, USER_TAG
from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
from casavi_pipeline.defs.resources import build_resources
from casavi_pipeline_tests.e2e import BACKENDS, MANDANT, export, run_job, state_store, writes_by_route
from casavi_pipeline_tests.erp_fixtures import default_rows
from casavi_pipeline_tests.harness import check_results, definitions_with, settings_from

pytestmark = pytest.mark.e2e

UNIT_3 = "0001-001-02-0003"
OWNER = "0001-00050"
BAKERY = "0001-00044"


def leaving_rows():
    """Unit 0003 and its building leave the export (with the ownership contract on the unit and its owner),
    and the bakery's email turns invalid: its contact has no synced contract left."""
    rows = default_rows()
    rows["verwaltungseinheiten"] = [r for r in rows["verwaltungseinheiten"] if r["ve_nr"] != "0003"]
    rows["gebaeude"] = [r for r in rows["gebaeude"] if r["geb_nr"] != "02"]
    rows["eigentuemervertraege"], rows["eigentuemer"] = [], []
    rows["mieter"][2]["email"] = "info-at-baeckerei"
    return rows


def cli(*args: str) -> subprocess.CompletedProcess:
    """`casavi-pipeline …` as an operator runs it, with the test's settings in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "casavi_pipeline.cli", *args], capture_output=True, text=True, timeout=300,
        env=os.environ.copy(),
    )  # fmt: skip


def trail(*filters: str) -> list[dict[str, str]]:
    """The audit trail's rows as `casavi-pipeline audit --csv` prints them."""
    answer = cli("audit", "--csv", *filters)
    assert answer.returncode == 0, answer.stderr
    return list(csv.DictReader(io.StringIO(answer.stdout)))


def listed(answer: subprocess.CompletedProcess) -> list[list[str]]:
    """The rows of `deletions`' table: kind, id, why (the words between since and approved) and approved."""
    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("kind ")) :]
    assert lines[0].split() == ["kind", "id", "since", "why", "approved"]
    rows = []
    for line in lines[1:]:
        if not line.startswith(("property ", "unit ", "contact ")):
            break
        kind, ref_id, _day, _time, *rest = line.split()
        why = " ".join(rest[:-1]) if rest[-1] == "no" else " ".join(rest[: rest.index("yes,")])
        rows.append([kind, ref_id, why, "no" if rest[-1] == "no" else "yes"])
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_under_the_default_what_leaves_waits_and_only_what_a_person_approved_is_deleted(env, sandbox):
    export(env)
    assert run_job(env).success
    before = sandbox.state()
    export(env, leaving_rows())
    sandbox.reset(objects=False)

    night = run_job(env)
    assert night.success
    assert writes_by_route(sandbox) == {}  # 0 DELETE, and no PUT: the property keeps unit 0003's street
    assert sandbox.state() == before
    check = check_results(night)["casavi_pending_deletions"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["new"].value == 3
    assert f"contact {BAKERY} (out of the sync rule)" in check.description
    assert f"unit {UNIT_3} (removed from the export)" in check.description
    assert listed(cli("deletions", "--mandant", MANDANT)) == [
        ["contact", BAKERY, "out of the sync rule", "no"],
        ["contact", OWNER, "removed from the export", "no"],
        ["unit", UNIT_3, "removed from the export", "no"],
    ]

    refused = cli("deletions", "--mandant", MANDANT, "--approve", BAKERY, "0001-99999")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "deletions: Mandant 0001: no pending deletion with reference id 0001-99999 (`casavi-pipeline "
        "deletions --mandant 0001` lists them). Nothing was approved."
    ]
    approved = cli("deletions", "--mandant", MANDANT, "--approve", BAKERY)
    assert approved.stdout.startswith(f"Mandant 0001: approved contact {BAKERY}\n")
    assert [row[3] for row in listed(approved)] == ["yes", "no", "no"]
    sandbox.reset(objects=False)

    deleting = run_job(env)
    assert deleting.success
    assert writes_by_route(sandbox) == {"DELETE /v2/contacts/{id}": 1}
    held = sandbox.state()
    assert BAKERY not in held["contacts"]
    assert {c: {k: v for k, v in o.items() if k != BAKERY} for c, o in before.items()} == held
    assert [row[1] for row in listed(cli("deletions", "--mandant", MANDANT))] == [OWNER, UNIT_3]
    assert [(r["change"], r["status"], r["by"]) for r in trail("--ref-id", BAKERY)] == [
        ("create", "201", ""),
        ("approve", "", getpass.getuser()),
        ("delete", "204", ""),
    ]


def test_an_approved_unit_is_kept_while_its_waiting_owner_names_it_and_synced_when_it_comes_back(env, sandbox):
    export(env)
    assert run_job(env).success
    export(env, leaving_rows())
    assert run_job(env).success
    assert cli("deletions", "--mandant", MANDANT, "--approve", UNIT_3).returncode == 0
    sandbox.reset(objects=False)

    held_back = run_job(env)
    assert held_back.success and writes_by_route(sandbox) == {}  # casavi would refuse it: 409
    with dg.DagsterInstance.get() as instance:
        warnings = [e.user_message for e in instance.all_logs(held_back.run_id) if e.level >= 30]
    assert any(
        f"unit {UNIT_3} is approved for deletion but kept waiting: contact {OWNER} (waiting for deletion, "
        "not approved) still references it" in line
        for line in warnings
    ), warnings

    rows = default_rows()  # the unit, its building and its owner are back; the unit with a new lage
    rows["verwaltungseinheiten"][2]["lage"] = "Hof"
    rows["mieter"][2]["email"] = "info-at-baeckerei"
    export(env, rows)
    sandbox.reset(objects=False)
    back = run_job(env)
    assert back.success
    assert writes_by_route(sandbox) == {"PUT /v2/units/{id}": 1}  # synced, not deleted
    assert sandbox.state()["units"][UNIT_3]["name"] == "Stellplatz Hof"
    assert [row[1] for row in listed(cli("deletions", "--mandant", MANDANT))] == [BAKERY]


@pytest.mark.parametrize("setting", ["keep", "delete"])
def test_keep_never_deletes_and_delete_deletes_at_once(env, sandbox, monkeypatch, setting):
    env["CASAVI_DELETIONS"] = setting
    monkeypatch.setenv("CASAVI_DELETIONS", setting)
    export(env)
    assert run_job(env).success
    export(env, leaving_rows())
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    check = check_results(result)["casavi_pending_deletions"]
    assert check.passed
    pending = cli("deletions", "--mandant", MANDANT)
    if setting == "keep":
        assert writes_by_route(sandbox) == {}
        assert check.description.startswith("3 objects out of scope are kept in casavi, no longer synced")
        assert len(listed(pending)) == 3 and "(CASAVI_DELETIONS=keep)" in pending.stdout
    else:
        assert writes_by_route(sandbox) == {
            "DELETE /v2/contacts/{id}": 2,
            "DELETE /v2/units/{id}": 1,
            "PUT /v2/properties/{id}": 1,  # the street of the deleted unit goes after it
        }
        assert UNIT_3 not in sandbox.state()["units"]
        assert listed(pending) == []


def test_a_dry_run_shows_what_would_wait_and_says_a_real_run_would_stop_here(env, sandbox, monkeypatch):
    export(env)
    assert run_job(env).success
    export(env, {"mietvertraege": [], "mieter": []})  # a delivery cut short: every tenant leaves
    monkeypatch.setenv("CASAVI_DELETE_GUARD_MIN_COUNT", "0")
    sandbox.reset(objects=False)

    dry = cli("sync", "--mandant", MANDANT, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "  wait contact 0001-00042: removed from the export, new" in dry.stdout
    assert "  wait contact 0001-00044: removed from the export, new" in dry.stdout
    (stop,) = [line for line in dry.stdout.splitlines() if "a real run would stop here" in line]
    assert stop.startswith("Mandant 0001 warning: check mass_deletion_guard_check: Mandant 0001 (sync rule email): ")
    assert "2 of 3 contacts (67%) would leave the sync" in stop and stop.endswith("(dry run: a real run would stop here)")
    assert sandbox.write_count() == 0
    assert listed(cli("deletions", "--mandant", MANDANT)) == []  # a dry run lists nothing as pending

    real = cli("sync", "--mandant", MANDANT)
    assert real.returncode == 1
    assert "check mass_deletion_guard_check failed" in real.stderr and "would leave the sync" in real.stderr
    assert sandbox.write_count() == 0


@contextlib.contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """The Mandant's snapshot open in another process, as a running sync holds it."""
    code = (
        "import sys; from casavi_pipeline.state.snapshot import Snapshot; "
        f"s = Snapshot({str(path)!r}, {MANDANT!r}); print('held', flush=True); sys.stdin.read(); s.close()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate(timeout=60)  # closes its stdin: it lets go


def approve_in_the_ui(env, config: dict, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    """The job `casavi_approve_deletions` as the launchpad runs it, in the test's instance."""
    job = definitions_with(build_resources(settings_from(env))).resolve_job_def(APPROVE_JOB_NAME)
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(
            run_config={"ops": {"approve_deletions": {"config": config}}},
            partition_key=MANDANT,
            instance=instance,
            tags=tags or {},
            raise_on_error=False,
        )


def test_approving_from_the_dagster_ui_and_what_refuses_it_in_one_line(env, sandbox, tmp_path):
    export(env)
    assert run_job(env).success
    export(env, leaving_rows())
    assert run_job(env).success

    unknown = approve_in_the_ui(env, {"ids": ["0001-99999"]})
    assert not unknown.success
    with dg.DagsterInstance.get() as instance:
        reason = instance.get_run_by_id(unknown.run_id).tags[FAILURE_REASON_TAG]
    assert reason == (
        "approve_deletions: Mandant 0001: no pending deletion with reference id 0001-99999 (`casavi-pipeline "
        "deletions --mandant 0001` lists them). Nothing was approved."
    )

    # A sync holding the snapshot: the UI and the command line both refuse, in one line.
    with held_by_another_process(state_store(env).snapshot_path(MANDANT)):
        busy = approve_in_the_ui(env, {"approve_all": True})
        busy_cli = cli("deletions", "--mandant", MANDANT, "--approve-all")
    assert not busy.success
    with dg.DagsterInstance.get() as instance:
        reason = instance.get_run_by_id(busy.run_id).tags[FAILURE_REASON_TAG]
    assert "a sync holds its snapshot; nothing was approved" in reason and "\n" not in reason
    assert busy_cli.returncode == 1
    assert busy_cli.stderr.strip() == (
        "deletions: a sync of Mandant 0001 holds its snapshot; try again when it has finished (nothing was approved)"
    )

    approved = approve_in_the_ui(env, {"ids": [BAKERY, UNIT_3]}, tags={USER_TAG: "erika@example.org"})
    assert approved.success
    assert [row[3] for row in listed(cli("deletions", "--mandant", MANDANT))] == ["yes", "no", "yes"]
    approvals = [(r["ref_id"], r["by"]) for r in trail("--mandant", MANDANT) if r["change"] == "approve"]
    assert sorted(approvals) == [(BAKERY, "erika@example.org"), (UNIT_3, "erika@example.org")]
    sandbox.reset(objects=False)
    assert run_job(env).success
    assert writes_by_route(sandbox) == {"DELETE /v2/contacts/{id}": 1}  # the unit waits for its owner
