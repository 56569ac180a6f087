"""The operator's path, end to end: what a person running the sync sees when something goes wrong, and
that nothing personal leaks on the way (the sandbox as a real process, a real Dagster instance on disk,
the demo as a real subprocess).

Every test prints the number of output lines per failure kind (`pytest -s` shows them), for the note on
"lines of demo output per failure kind".
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.state.listing import CACHE_FILE
from casavi_pipeline.sync.progress import is_progress_line
from casavi_pipeline_tests.e2e import (
    MANDANT,
    assert_created_once,
    assert_sandbox_holds,
    big_export,
    contents_under,
    export,
    run_job,
    state_folder,
)
from casavi_pipeline_tests.erp_fixtures import default_rows, write_export

pytestmark = pytest.mark.e2e

TRACEBACK = "Traceback (most recent call last)"
STACK_TRACE = "Stack Trace:"  # how Dagster's console logger prints one
DEMO_TIMEOUT = 240  # seconds: a bound, not an expectation
REJECTED_ID = f"{MANDANT}-00042"


# --- helpers ----------------------------------------------------------------------------------------
def tracebacks(output: str) -> int:
    return output.count(TRACEBACK) + output.count(STACK_TRACE)


def demo(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = DEMO_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`python -m casavi_harness.demo` with this process's environment (the `env` fixture set it)."""
    return subprocess.run(
        [sys.executable, "-m", "casavi_harness.demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env if env is not None else os.environ),
        stdin=subprocess.DEVNULL,
    )


def lines(output: subprocess.CompletedProcess[str]) -> int:
    return len((output.stdout + output.stderr).splitlines())


def report(counts: dict[str, Any]) -> None:
    print(f"\noperator output lines: {json.dumps(counts)}")


def tenant(person_nr: str = "00042") -> dict[str, str]:
    """The personal values of one tenant of the default export."""
    row = next(r for r in default_rows()["mieter"] if r["person_nr"] == person_nr)
    return {name: str(row[name]) for name in ("vorname", "nachname", "email", "telefon")}


def needles(values: Mapping[str, str]) -> dict[str, list[bytes]]:
    """Each value as it could sit in a file or a stream: UTF-8, JSON-escaped (\\u00fc), Latin-1."""
    found: dict[str, list[bytes]] = {}
    for name, value in values.items():
        forms = {value.encode(), json.dumps(value)[1:-1].encode()}
        with contextlib.suppress(UnicodeEncodeError):
            forms.add(value.encode("latin-1"))
        found[name] = sorted(forms)
    return found


def leaks(blob: bytes | str, values: Mapping[str, str]) -> list[str]:
    """The names of the values found in `blob`. A last name that is only part of a longer word (the
    street "Müllerstraße" holds "Müller") does not count: a leak quotes the value on its own."""
    data = blob.encode() if isinstance(blob, str) else blob
    hits = []
    for name, forms in needles(values).items():
        for form in forms:
            start = data.find(form)
            while start != -1:
                end = start + len(form)
                before, after = data[start - 1 : start], data[end : end + 2]
                # part of a longer word: an ASCII letter, a UTF-8 letter (ß is C3 9F) or a \u escape
                if not (before.isalnum() or after[:1].isalnum() or after[:1] == b"\xc3" or after == b"\\u"):
                    hits.append(name)
                    break
                start = data.find(form, start + 1)
            if name in hits:
                break
    return hits


def files_under(root: Path) -> Iterator[Path]:
    return (path for path in sorted(root.rglob("*")) if path.is_file())


def write_quoted_csv(path: Path, rows: list[dict[str, object]], entity_name: str) -> None:
    """One export file with every field quoted (as ERP exports often write them)."""
    entity = next(e for e in ENTITIES if e.name == entity_name)
    header = list(entity.column_names)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", quotechar='"', quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if row.get(name) is None else str(row[name]) for name in header])


def failure_descriptions(result: dg.ExecuteInProcessResult) -> list[str]:
    texts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            texts.append(data.user_failure_data.description)
        elif data.error:
            texts.append(data.error.message)
    return texts


# --- a. a casavi that echoes the body leaks nothing ---------------------------------------------------
def test_an_echoing_casavi_leaks_no_personal_data_into_events_tags_logs_files_or_the_terminal(
    env, sandbox, capfd, monkeypatch
):
    person = tenant("00042")  # Jürgen Müller, his email and phone: contact 0001-00042
    # One refusal of 7 writes is above 5 % (CASAVI_MAX_REJECTED_SHARE): with no minimum count it fails the
    # run, so the failure paths (step failure, reason tag, the demo's error line) are the ones checked.
    monkeypatch.setenv("CASAVI_REJECTED_MIN_COUNT", "0")
    export(env)
    sandbox.configure(echo_errors=True, reject_ids=REJECTED_ID)
    capfd.readouterr()  # only what the run prints from here on

    result = run_job(env)
    assert not result.success
    reasons = failure_descriptions(result)
    assert any("casavi rejected" in r and REJECTED_ID in r and "400" in r for r in reasons), reasons
    # the sandbox did quote the body: the test would catch a client that copied casavi's text
    assert sandbox.requests()["routes"]["PUT /v2/contacts/{id}"].get("400", 0) >= 1
    printed = capfd.readouterr()
    assert REJECTED_ID in printed.out + printed.err  # the capture works, and names the object

    with dg.DagsterInstance.get() as instance:
        records = instance.get_records_for_run(result.run_id, limit=100_000).records
        assert records
        for record in records:
            serialized = serialize_value(record.event_log_entry)
            assert not leaks(serialized, person), (leaks(serialized, person), serialized[:2000])
        tags = instance.get_run_by_id(result.run_id).tags
        assert "casavi/failure_reason" in tags and REJECTED_ID in tags["casavi/failure_reason"]
        assert not leaks(json.dumps(tags, ensure_ascii=False), person), tags
    assert not leaks(printed.out + printed.err, person)

    # The same through the demo, against the same echoing casavi: it sends the pending writes again.
    sandbox.reset(objects=False, knobs=False)
    run = demo("--mandant", MANDANT)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert sandbox.requests()["routes"]["PUT /v2/contacts/{id}"].get("400", 0) >= 1
    assert REJECTED_ID in run.stderr
    assert not leaks(output, person), output

    # Dagster's storage of both runs (run and event log databases, compute logs), read as bytes: nothing
    # personal at all (the run values are kept beside the snapshot, not here).
    home = Path(env["DAGSTER_HOME"])
    scanned = list(files_under(home))
    assert any(path.suffix in (".out", ".err", ".complete") for path in scanned), scanned  # compute logs
    assert any(path.suffix == ".db" for path in scanned), scanned
    for path, content in contents_under(home):
        assert not leaks(content, person), path
    # The snapshot folder: the run values, the snapshot and the casavi listing keep people's data by design
    # (README, "Where personal data lives"); nothing else there may.
    snapshot_dir = Path(env["CASAVI_SNAPSHOT_DB"])
    values = snapshot_dir / "values"
    assert any(leaks(path.read_bytes(), person) for path in files_under(values))  # the search finds it
    snapshot = state_folder(env) / f"snapshot_{MANDANT}.duckdb"
    others = [
        p
        for p in files_under(snapshot_dir)
        if not p.name.startswith((snapshot.name, CACHE_FILE)) and values not in p.parents
    ]
    for path in others:
        assert not leaks(path.read_bytes(), person), path
    report({"a: casavi rejected a write (demo)": lines(run), "a: stack traces": tracebacks(output)})


# --- b. wrong secret ----------------------------------------------------------------------------------
def test_a_wrong_secret_is_one_login_and_one_line(env, sandbox, monkeypatch):
    export(env)
    env["CASAVI_API_SECRET"] = "wrong"
    monkeypatch.setenv("CASAVI_API_SECRET", "wrong")

    run = demo("--mandant", MANDANT)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    routes = sandbox.requests()["routes"]
    assert routes == {"POST /v2/authenticate": {"401": 1}}, routes  # one login, nothing else on /v2
    told = [
        line
        for line in run.stderr.splitlines()
        if sandbox.base_url in line and "CASAVI_API_KEY" in line and "CASAVI_API_SECRET" in line
    ]
    assert told, run.stderr
    assert f"Mandant {MANDANT} did not sync" in told[-1]  # the demo's own line is among them
    report({"b: wrong secret": lines(run), "b: lines naming URL and variables": len(told),
            "b: stack traces": tracebacks(output)})  # fmt: skip
    assert len(told) == 1 and tracebacks(output) == 0, f"{len(told)} lines, {tracebacks(output)} traces"


# --- c. mass-deletion guard ---------------------------------------------------------------------------
def test_a_truncated_export_stops_the_demo_with_one_line_and_no_writes(env, sandbox, monkeypatch):
    export(env)
    assert run_job(env).success
    export(env, {"mietvertraege": [], "mieter": []})  # a delivery cut short: no rental contracts at all
    env["CASAVI_DELETE_GUARD_MIN_COUNT"] = "0"
    monkeypatch.setenv("CASAVI_DELETE_GUARD_MIN_COUNT", "0")
    before = sandbox.state()
    sandbox.reset(objects=False)

    run = demo("--mandant", MANDANT)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert sandbox.write_count() == 0 and sandbox.state() == before
    told = [
        line
        for line in run.stderr.splitlines()
        if "would leave the sync" in line and "Is the export truncated?" in line
    ]
    assert told and told[-1].startswith(f"Mandant {MANDANT} did not sync"), run.stderr
    report({"c: mass-deletion guard": lines(run), "c: lines with the reason": len(told),
            "c: stack traces": tracebacks(output)})  # fmt: skip
    assert len(told) == 1 and tracebacks(output) == 0, f"{len(told)} lines, {tracebacks(output)} traces"


# --- d. missing Mandant folder ------------------------------------------------------------------------
def test_a_missing_mandant_folder_is_said_once(env, sandbox):
    write_export(Path(env["ERP_EXPORT_DIR"]), {"0002": {}})  # the export holds another Mandant only
    missing = Path(env["ERP_EXPORT_DIR"]) / MANDANT

    run = demo()  # CASAVI_MANDANTEN=0001 from the environment
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    message = f"Mandant folder {missing} is missing"
    assert message in run.stderr, output
    assert sandbox.requests()["routes"] == {}  # it stopped at its first step: casavi was not contacted
    report({"d: missing Mandant folder": lines(run), "d: times the message is printed": output.count(message),
            "d: stack traces": tracebacks(output)})  # fmt: skip
    assert output.count(message) == 1 and tracebacks(output) == 0, (
        f"{output.count(message)} times, {tracebacks(output)} traces"
    )


# --- e. port taken ------------------------------------------------------------------------------------
def test_a_taken_port_is_refused_in_one_line_and_no_credentials_are_sent(env, tmp_path, impostor):
    export(env)
    port, sent = impostor
    environ = {k: v for k, v in os.environ.items() if k != "CASAVI_BASE_URL"}
    key, secret = "operator-key-must-stay-home", "operator-secret-must-stay-home"
    environ.update({"CASAVI_API_KEY": key, "CASAVI_API_SECRET": secret})
    run = demo("--port", str(port), "--data-dir", str(tmp_path / "data"), env=environ)
    output = run.stdout + run.stderr
    assert run.returncode == 2, output[-3000:]
    told = [line for line in output.splitlines() if str(port) in line]
    assert len(told) == 1 and "taken" in told[0], output
    assert tracebacks(output) == 0, output
    assert not [r for r in sent if r[1].startswith("/v2/authenticate")], sent
    assert not [r for r in sent if key.encode() in r[2] or secret.encode() in r[2]], sent
    report({"e: port taken": lines(run), "e: requests the squatter got": len(sent)})


# --- f. control characters in an ERP number -----------------------------------------------------------
@pytest.mark.parametrize("char", ["\t", "\n", "\x00"], ids=["tab", "newline", "nul"])
def test_a_control_character_in_an_erp_number_is_a_clear_ingestion_error(env, sandbox, char):
    root = export(env)
    leases = default_rows()["mietvertraege"] + [
        {"vertrag_nr": f"100{char}003", "we_nr": "001", "ve_nr": "0003", "beginn": "2021-03-01"}
    ]
    path = root / MANDANT / "mietvertraege.csv"
    write_quoted_csv(path, leases, "mietvertraege")
    assert char.encode() in path.read_bytes()

    result = run_job(env)
    assert not result.success
    reasons = failure_descriptions(result)
    assert reasons, "the run failed without a step failure"
    reason = reasons[0]
    assert "mietvertraege.csv" in reason, reasons
    assert "row 3" in reason, reasons  # the third data row (the header is line 1)
    assert sandbox.write_count() == 0
    print(f"\nf[{char!r}]: {reason}")


# --- g. SIGTERM ---------------------------------------------------------------------------------------
def step_retries(instance: dg.DagsterInstance) -> list[str]:
    """The steps of any run on this instance that asked for a retry, each with the error that asked."""
    return [
        f"{record.event_log_entry.dagster_event.step_key}: "
        f"{record.event_log_entry.dagster_event.step_retry_data.error.to_string()}"
        for run in instance.get_runs()
        for record in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY
        ).records
    ]


def _sigterm_to_the_process(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)  # the demo process only, as `kill <pid>` or a service manager sends it


def _ctrl_c_in_a_terminal(pid: int) -> None:
    os.killpg(pid, signal.SIGINT)  # the whole foreground process group: the run's processes get it too


@pytest.mark.parametrize("stop", [_sigterm_to_the_process, _ctrl_c_in_a_terminal], ids=["sigterm", "ctrl-c"])
def test_sigterm_stops_the_demo_cleanly_and_the_next_run_converges(
    env, sandbox, monkeypatch, tmp_path, stop
):
    big_export(env, contracts=230)  # about 460 writes for Mandant 0001
    write_export(Path(env["ERP_EXPORT_DIR"]), {"0002": {}})  # a second Mandant, after 0001
    monkeypatch.setenv("CASAVI_MANDANTEN", f"{MANDANT},0002")
    sandbox.configure(latency_ms=15)
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        cli = subprocess.Popen(
            [sys.executable, "-m", "casavi_harness.demo"],
            env={**os.environ, "CASAVI_MAX_CONCURRENCY": "2"},
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while sandbox.write_count() < 50 and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.05)
        assert cli.poll() is None, "the demo ended before the signal"
        at_signal = sandbox.write_count()
        assert at_signal >= 50
        stop(cli.pid)
        deadline = time.monotonic() + 60
        with dg.DagsterInstance.get() as instance:
            while cli.poll() is None and time.monotonic() < deadline:
                retried = step_retries(instance)
                assert not retried, f"the interrupt became a retry of {retried}; the demo would go on syncing"
                time.sleep(0.2)
        assert cli.poll() is not None, "the demo did not end within 60 s of the signal"
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait(timeout=30)
    out, err = out_path.read_text(), err_path.read_text()
    output = out + err
    written = sandbox.write_count()
    assert written < 460, "the signal should land in the middle of the sync"
    assert cli.returncode == 130, output[-3000:]
    assert "stopped" in err.lower() and "confirmed is recorded" in err, err
    assert tracebacks(output) == 0, output
    assert "Mandant 0002: syncing" not in out, out
    assert not any(ref.startswith("0002") for objects in sandbox.state().values() for ref in objects)

    sandbox.configure(latency_ms=0)
    result = run_job(env)
    assert result.success
    assert_sandbox_holds(sandbox, result)
    assert_created_once(sandbox)
    report({"g: SIGTERM": len(output.splitlines()), "g: writes at signal / at exit": [at_signal, written]})


# --- h. progress of a long sync -----------------------------------------------------------------------
def test_the_demo_prints_progress_of_a_long_sync(env, sandbox, monkeypatch, tmp_path):
    """A 10 000-unit export (10 Mandanten): the demo says written / total, rate and time left as it goes."""
    export_dir = tmp_path / "export10k"
    subprocess.run(
        [sys.executable, "-m", "casavi_harness.sample", "--out", str(export_dir), "--units", "10000",
         "--mandanten", "10"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    mandant = sorted(p.name for p in export_dir.iterdir() if p.is_dir())[0]
    monkeypatch.setenv("ERP_EXPORT_DIR", str(export_dir))
    monkeypatch.setenv("CASAVI_MANDANTEN", mandant)
    monkeypatch.setenv("CASAVI_PROGRESS_SECONDS", "1")
    sandbox.configure(latency_ms=5)  # ~4 200 writes at 4 in flight: several seconds, several progress lines
    run = demo("--mandant", mandant)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    progress = [line for line in run.stderr.splitlines() if is_progress_line(line)]
    assert progress, run.stderr[-3000:]
    assert all(" writes (" in line and "/min, about " in line and " left" in line for line in progress)
    report({"h: progress lines": len(progress)})
