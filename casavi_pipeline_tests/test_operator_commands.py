"""The operator's small commands and guards: `./run` itself, the sample kept to loopback, run counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from casavi_harness.local import (
    SAMPLE_EXPORT_DIR,
    LocalSetupError,
    local_environment,
    refuse_dotenv_over_sandbox,
    refuse_sample_outside_loopback,
)
from casavi_pipeline.state.audit import Attempt
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.sync.run import begin_attempt, confirmed_line, recorded_totals

REPO = Path(__file__).resolve().parents[1]


def test_run_help_lists_the_commands_and_an_unknown_one_exits_2(processes):
    shown = processes.run([REPO / "run", "help"], timeout=60)
    assert shown.returncode == 0
    for command in (
        "demo",
        "test",
        "dev",
        "sandbox",
        "bench",
        "lint",
        "dagster",
        "dg",
        "erase-personal-data",
        "casavi-pipeline",
    ):
        assert f"./run {command}" in shown.stdout
    for operator_command in ("sync --mandant M", "audit", "check-casavi"):  # casavi-pipeline's
        assert f"\n                  {operator_command}" in shown.stdout
    assert "set -euo" not in shown.stdout and "usage()" not in shown.stdout  # text, not script code
    unknown = processes.run([REPO / "run", "foo"], timeout=60)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("./run: unknown command 'foo'")


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://api.mycasavi.com", True),
        ("https://sync:Geheim42@api.mycasavi.com/?token=Geheim42", True),
        ("http://10.0.0.5:8765", True),
        ("http://127.0.0.1:8765", False),
        ("http://localhost:8765", False),
        ("http://[::1]:8765", False),
    ],
)
def test_the_bundled_sample_only_goes_to_a_casavi_on_this_machine(url, refused):
    environ = {"CASAVI_BASE_URL": url, "ERP_EXPORT_DIR": str(SAMPLE_EXPORT_DIR)}
    if refused:
        with pytest.raises(LocalSetupError, match="refusing to sync the bundled sample export") as caught:
            refuse_sample_outside_loopback(environ)
        assert "Geheim42" not in str(caught.value)
    else:
        refuse_sample_outside_loopback(environ)
    # A real export may go anywhere the user points it.
    refuse_sample_outside_loopback({"CASAVI_BASE_URL": url, "ERP_EXPORT_DIR": "/srv/erp/export"})


@pytest.mark.parametrize("name", ["CASAVI_BASE_URL", "CASAVI_API_KEY", "ERP_EXPORT_DIR", "CASAVI_MANDANTEN"])
def test_a_dotenv_that_would_override_the_local_sandbox_is_refused_before_a_sandbox_starts(
    tmp_path, monkeypatch, name
):
    monkeypatch.delenv("CASAVI_BASE_URL", raising=False)
    (tmp_path / ".env").write_text(f"DAGSTER_PORT=3001\n{name}=https://api.mycasavi.com\n", encoding="utf-8")
    with (
        pytest.raises(
            LocalSetupError, match=rf"\.env sets {name}, which would override the local sandbox"
        ) as info,
        local_environment(tmp_path / "data", port=1, env_dirs=[tmp_path]),
    ):
        pytest.fail("the sandbox setup must not start")
    assert "\n" not in str(info.value) and "remove them from .env" in str(info.value)


def test_a_dotenv_without_the_local_settings_or_none_at_all_is_fine(tmp_path):
    refuse_dotenv_over_sandbox([tmp_path])
    (tmp_path / ".env").write_text("DAGSTER_PORT=3001\nCASAVI_MAX_CONCURRENCY=2\n", encoding="utf-8")
    refuse_dotenv_over_sandbox([tmp_path])


def test_with_own_settings_a_dotenv_pointing_dagster_dev_at_production_is_refused_for_the_sample(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("CASAVI_BASE_URL", "http://127.0.0.1:9999")
    monkeypatch.delenv("ERP_EXPORT_DIR", raising=False)
    (tmp_path / ".env").write_text("CASAVI_BASE_URL=https://api.mycasavi.com\n", encoding="utf-8")
    refused = pytest.raises(LocalSetupError, match="refusing to sync the bundled sample export")
    with refused, local_environment(tmp_path / "data", env_dirs=[tmp_path]):
        pytest.fail("must not be used")
    (tmp_path / ".env").unlink()
    with local_environment(tmp_path / "data", env_dirs=[tmp_path]) as environ:
        assert environ["CASAVI_BASE_URL"] == "http://127.0.0.1:9999"


def _answered(snapshot: Snapshot, run_id: str, label: str, status: int, n: int) -> None:
    kind, change = label.split("/")
    for i in range(n):
        snapshot.record_attempt(Attempt(run_id, "0001", kind, f"0001-{label}-{i}", change, status))


def test_a_runs_counts_add_up_over_its_attempts_from_the_audit_trail(tmp_path):
    """A retried sync step reports what the whole run wrote, not only its last attempt; counted from the
    audit trail (every answered write is a line there before it is confirmed), so an attempt interrupted
    while it cleans up loses no count."""
    with Snapshot(tmp_path / "snapshot_0001.duckdb", "0001") as snapshot:
        assert recorded_totals(snapshot, "run-a") is None  # nothing written yet
        begin_attempt(snapshot, "run-a", planned=120)
        _answered(snapshot, "run-a", "unit/create", 201, 58)
        _answered(snapshot, "run-a", "unit/create", 400, 2)
        begin_attempt(snapshot, "run-a", planned=62)  # the retry starts with what was left
        _answered(snapshot, "run-a", "unit/create", 201, 42)
        _answered(snapshot, "run-a", "contact/create", 201, 4)
        _answered(snapshot, "run-a", "contact/create", 422, 1)
        totals = recorded_totals(snapshot, "run-a")  # the attempts' lines are not folded yet: they count
        begin_attempt(snapshot, "run-b", planned=50)
        _answered(snapshot, "run-b", "unit/create", 201, 42)
        other = recorded_totals(snapshot, "run-b")
    assert totals["confirmed"] == {"unit/create": 100, "contact/create": 4}
    assert totals["sent"] == {"unit/create": 102, "contact/create": 5}
    assert totals["rejected"] == {"unit/create": 2, "contact/create": 1}
    assert totals["attempts"] == {"n": 2}
    assert totals["planned"] == {"n": 120}  # the first attempt's
    assert confirmed_line(totals) == "104 of 120 writes confirmed by casavi"
    assert other["attempts"] == {"n": 1} and other["confirmed"] == {"unit/create": 42}


def test_the_sandboxs_help_says_which_credentials_it_accepts(processes):
    shown = processes.run([REPO / "run", "sandbox", "--help"], timeout=120)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "CASAVI_API_KEY and CASAVI_API_SECRET" in text and "'sandbox-key' / 'sandbox-secret'" in text
