"""`casavi-pipeline sync` tells the truth as an operator meets it: what casavi confirmed when casavi stops
mid-run, on Ctrl-C and when the state database goes away (and the next run sends exactly the rest), that
it is waiting for casavi, every warning, a dry run's true numbers, and one line when it cannot start.

Each test runs the installed command as a person would, against the sandbox as a real process, with the
shipped dagster.yaml (the `env` fixture), and reads what it printed.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline_tests.e2e import MANDANT, REPO, assert_created_once, big_export, export
from casavi_pipeline_tests.erp_fixtures import default_rows
from casavi_pipeline_tests.postgres import MISSING, PostgresServer, pg_bin
from casavi_sandbox import SandboxProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = str(Path(sys.executable).parent / "casavi-pipeline")
#: A terminal's foreground job gets SIGINT at its default; a suite started in the background would hand
#: down "ignored" (see test_dev.py), so the command is started through this.
AS_IN_A_TERMINAL = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
STOPPED = re.compile(r"^(\d+) of (\d+) writes confirmed by casavi; the next run sends the rest\.$", re.M)
CONFIRMED = re.compile(r"^(\d+) writes confirmed by casavi\.$", re.M)
#: Contracts added to the tiny export: about 2 writes each, slowed by the sandbox's latency, so that a
#: stop lands in the middle of the writes.
CONTRACTS = 150
LATENCY_MS = 150


def start_sync(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, CLI, "sync", "--mandant", MANDANT, *args],
        cwd=cwd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip


def sync(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    process = start_sync(cwd, *args)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def until_writes(sandbox: SandboxProcess, process: subprocess.Popen[str], writes: int) -> None:
    """Wait until casavi answered `writes` writes of the running sync (it must still be running)."""
    deadline = time.monotonic() + 300
    while sandbox.write_count(ok_only=True) < writes:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sync did not get to its writes"
        time.sleep(0.1)


def audit_rows(cwd: Path, *args: str) -> list[dict[str, str]]:
    shown = subprocess.run([CLI, "audit", "--csv", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    return list(csv.DictReader(io.StringIO(shown.stdout)))


def confirmed_in_audit(cwd: Path) -> int:
    """What casavi confirmed, according to the audit trail (every answered write is a row)."""
    return sum(200 <= int(row["status"]) < 300 for row in audit_rows(cwd) if row["status"])


def stopped_counts(output: str) -> tuple[int, int]:
    (found,) = STOPPED.findall(output)
    return int(found[0]), int(found[1])


def the_rest_is_sent(sandbox: SandboxProcess, cwd: Path, confirmed: int, planned: int, *, restarted=False) -> None:
    """The next run sends exactly what the first did not get confirmed; casavi then holds every object of
    the first sync (all creates), each created once (a restarted sandbox counts requests afresh)."""
    rerun = sync(cwd)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert CONFIRMED.findall(rerun.stdout) == [str(planned - confirmed)], rerun.stdout
    assert sum(len(objects) for objects in sandbox.state().values()) == planned
    if not restarted:
        assert_created_once(sandbox)


@pytest.mark.timeout(900)  # the retry policy waits about 30 s and 90 s between the sync's three attempts
def test_casavi_stopped_mid_sync_is_waited_for_out_loud_and_what_it_confirmed_is_counted(env, sandbox, tmp_path):
    """casavi goes away after some writes and stays away: the client says it waits and how long it tries,
    the retry policy's attempts say when the next starts, and the summary counts what casavi confirmed
    (it said "0 writes confirmed" although the audit trail showed 95 creates answered 201)."""
    big_export(env, CONTRACTS)
    sandbox.configure(latency_ms=LATENCY_MS)
    process = start_sync(tmp_path)
    until_writes(sandbox, process, 30)
    sandbox.stop()
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        sandbox.start()
    assert process.returncode == 1, stdout + stderr
    confirmed, planned = stopped_counts(stdout)
    assert 0 < confirmed < planned and confirmed == confirmed_in_audit(tmp_path), stdout  # answers in flight are not counted
    waits = [line for line in stderr.splitlines() if re.match(r"casavi at \S+ fails \(\w+ talking to casavi\): waiting", line)]
    assert waits and "each request is tried 6 times within 300 s before the sync gives up" in waits[0], stderr
    retries = [line for line in stderr.splitlines() if line.startswith(f"Mandant {MANDANT}: attempt ")]
    assert [line.split(" of casavi_sync")[0] for line in retries] == [
        f"Mandant {MANDANT}: attempt 1 of 3", f"Mandant {MANDANT}: attempt 2 of 3"
    ], stderr  # fmt: skip
    assert f"{confirmed} of {planned} writes confirmed by casavi so far; the next attempt starts in about" in retries[-1]
    (reason,) = [line for line in stderr.splitlines() if line.startswith(f"Mandant {MANDANT} did not sync")]
    assert f"casavi at {sandbox.base_url} is unavailable" in reason and "max_retries" not in reason
    the_rest_is_sent(sandbox, tmp_path, confirmed, planned, restarted=True)


def test_ctrl_c_counts_what_casavi_confirmed_and_the_next_run_sends_the_rest(env, sandbox, tmp_path):
    """Ctrl-C in the terminal (SIGINT to the foreground process group): it said "0 writes confirmed"
    although casavi had confirmed 29."""
    big_export(env, CONTRACTS)
    sandbox.configure(latency_ms=LATENCY_MS)
    process = start_sync(tmp_path)
    until_writes(sandbox, process, 30)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stdout + stderr
    confirmed, planned = stopped_counts(stdout)
    assert 0 < confirmed < planned and confirmed == confirmed_in_audit(tmp_path), stdout  # answers in flight are not counted
    assert "Stopped by Ctrl-C or SIGTERM: what casavi confirmed is recorded." in stderr
    sandbox.configure(latency_ms=0)
    the_rest_is_sent(sandbox, tmp_path, confirmed, planned)


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test alone: it is stopped and started again."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(MISSING)
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


def test_the_state_database_gone_mid_sync_is_named_and_what_casavi_confirmed_is_counted(
    env, sandbox, tmp_path, own_postgres, monkeypatch
):
    """It ended with "casavi_sync: Exceeded max_retries of 2" and "0 writes confirmed" although 300
    were journaled."""
    database = own_postgres.create_database("state")
    monkeypatch.setenv("CASAVI_STATE_URL", own_postgres.url(database))
    big_export(env, CONTRACTS)
    sandbox.configure(latency_ms=LATENCY_MS)
    process = start_sync(tmp_path)
    until_writes(sandbox, process, 30)
    own_postgres.halt()
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        own_postgres.resume()
    assert process.returncode == 1, stdout + stderr
    confirmed, planned = stopped_counts(stdout)
    assert 0 < confirmed <= sandbox.write_count(ok_only=True) and confirmed < planned, stdout
    (reason,) = [line for line in stderr.splitlines() if line.startswith(f"Mandant {MANDANT} did not sync")]
    assert (
        f"casavi_sync: The state database CASAVI_STATE_URL=postgresql://casavi@{own_postgres.host}:"
        f"{own_postgres.port}/{database} went away during the run (" in reason
    ), reason
    assert reason.endswith(f"({confirmed} of {planned} writes confirmed by casavi; the next run sends the rest.)")
    assert "max_retries" not in stderr and "attempt 1 of 3" not in stderr  # not retried: it could not record
    sandbox.configure(latency_ms=0)
    the_rest_is_sent(sandbox, tmp_path, confirmed, planned)


def test_every_warning_is_one_line_of_the_summary(env, sandbox, tmp_path):
    """The warning checks (drift, the email rule, casavi's refusals) were visible only in the UI."""
    export(env)  # 1 of its 3 tenants has no email: more than CASAVI_EMAIL_DROP_WARN_SHARE (25 %)
    first = sync(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (warned,) = [line for line in first.stdout.splitlines() if " warning: " in line]
    assert warned.startswith(
        f"Mandant {MANDANT} warning: check email_rule_dropped: sync rule email: 1 of 3 tenants (33%) have no "
        "valid email"
    ), first.stdout

    sandbox.edit(ObjectKind.UNIT, "0001-001-01-0002", {"name": "von Hand geändert"})  # drift
    sandbox.configure(reject_ids="0001-00042")
    export(env, _phone_changed())  # the refused contact has a change to send
    second = sync(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    warned = [line for line in second.stdout.splitlines() if " warning: " in line]
    checks = sorted(re.match(rf"Mandant {MANDANT} warning: check (\w+): ", line).group(1) for line in warned)
    assert checks == ["casavi_drift", "casavi_rejections", "email_rule_dropped"], second.stdout
    assert any("0001-001-01-0002" in line for line in warned if "casavi_drift" in line)
    assert any("0001-00042" in line for line in warned if "casavi_rejections" in line)


def _phone_changed() -> dict:
    rows = default_rows()["mieter"]
    for row in rows:
        if row["person_nr"] == "00042":
            row["telefon"] = "0351 7654321"
    return {"mieter": rows}


def test_a_dry_run_tells_its_true_numbers_and_a_failed_one_never_says_writes_confirmed(
    env, sandbox, tmp_path, monkeypatch
):
    monkeypatch.setenv("CASAVI_DELETE_GUARD_MIN_COUNT", "0")  # the tiny export's 2 deletions trip the guard
    export(env)
    assert sync(tmp_path).returncode == 0
    before = sandbox.write_count()
    big_export(env, CONTRACTS)
    dry = sync(tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    (pending,) = re.findall(r"^Dry run: (\d+) writes would be sent; nothing was written to casavi\.$", dry.stdout, re.M)
    preview = [line for line in dry.stdout.splitlines() if re.match(r"  (create|update|delete) ", line)]
    assert len(preview) == 20, dry.stdout
    more = re.findall(r"^  … (\d+) more; run \S+'s metadata in the Dagster UI lists", dry.stdout, re.M)
    assert more == [str(int(pending) - 20)], dry.stdout  # it said "4 more" when 245 were pending
    assert "writes confirmed" not in dry.stdout

    export(env, {"mietvertraege": [], "mieter": []})  # cut short: a real run would stop at the guard...
    guarded = sync(tmp_path, "--dry-run")
    assert guarded.returncode == 0, guarded.stdout + guarded.stderr  # ...a dry run shows what would wait
    assert "(dry run: a real run would stop here)" in guarded.stdout
    assert "  wait contact 0001-00042: removed from the export, new" in guarded.stdout
    assert "writes confirmed" not in guarded.stdout + guarded.stderr

    rows = default_rows()  # two buildings at one street: a blocking check stops the dry run too
    rows["gebaeude"].append({**rows["gebaeude"][0], "geb_nr": "03"})
    export(env, rows)
    failed = sync(tmp_path, "--dry-run")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Dry run: nothing was written to casavi." in failed.stdout
    assert "writes confirmed" not in failed.stdout + failed.stderr
    assert "check unique_streets_within_property failed" in failed.stderr
    assert sandbox.write_count() == before


def test_audit_of_a_mandant_it_does_not_know_says_so(env, sandbox, tmp_path):
    export(env)
    assert sync(tmp_path).returncode == 0
    assert audit_rows(tmp_path, "--mandant", MANDANT)
    unknown = subprocess.run([CLI, "audit", "--mandant", "9999"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip() == (
        f"audit: no Mandant 9999 here: it has no snapshot in {env['CASAVI_SNAPSHOT_DB']} (Mandanten with an "
        f"audit trail: {MANDANT}); check --mandant, or CASAVI_SNAPSHOT_DB / --snapshot-dir"
    )


@pytest.mark.parametrize("home", ["unset", "without dagster.yaml"])
def test_sync_that_cannot_start_in_the_instance_says_why_in_one_line(env, tmp_path, monkeypatch, home):
    """Without DAGSTER_HOME it printed a 21-line traceback and exited 1; with a home without dagster.yaml
    it ran on Dagster's defaults without a word."""
    if home == "unset":
        monkeypatch.delenv("DAGSTER_HOME")
    else:
        (Path(env["DAGSTER_HOME"]) / "dagster.yaml").unlink()
    refused = sync(tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout == "" and len(refused.stderr.splitlines()) == 1, refused.stderr
    if home == "unset":
        assert refused.stderr.startswith("sync: DAGSTER_HOME is not set: set it to the Dagster instance's folder")
    else:
        assert refused.stderr.startswith(f"sync: DAGSTER_HOME={env['DAGSTER_HOME']} has no dagster.yaml, so Dagster")
    assert not (Path(env["DAGSTER_HOME"]) / "storage").exists()  # no run was made


def test_dg_launch_prints_each_progress_line_once(env, sandbox, monkeypatch):
    """Each progress line was logged (Dagster's console shows it) and printed to stderr as well."""
    monkeypatch.setenv("CASAVI_PROGRESS_SECONDS", "1")  # the shortest: a line a second
    sandbox.configure(latency_ms=400)  # a sync of a few seconds
    export(env)
    launched = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "launch", "--assets", "*", "--partition", MANDANT],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = launched.stdout + launched.stderr
    assert launched.returncode == 0, output[-3000:]
    said = re.findall(rf"Mandant {MANDANT}: \d+/\d+ writes \(.*", output)
    assert said and len(said) == len(set(said)), said
