"""End to end with the other ERP sources (docs/erp-sources.md): the ERP's database (PostgreSQL views) and
a foreign export read through a mapping file give casavi the same state as the contract's CSV export.

Each test syncs one Mandant from the CSV export first, then switches the source on the unchanged
account: the same objects with the same hashes are 0 writes. The ERP's database as an operator meets it
through `casavi-pipeline sync`: a password anywhere in the URLs stays out of every file and terminal line,
a mapping file's second statement never reaches the database, a locked table stops the run in one line
after ERP_QUERY_TIMEOUT_SECONDS, and SIGTERM ends a run blocked on it at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import psycopg2
import pytest

from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline_tests.e2e import (
    MANDANT,
    assert_sandbox_holds,
    contents_under,
    expected_state,
    export,
    run_job,
)
from casavi_pipeline_tests.erp_database import load_into_database, write_foreign_export
from casavi_pipeline_tests.erp_fixtures import Append, default_rows

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
RUN_TIMEOUT = 300  # seconds: a bound, not an expectation
#: A password given in the URLs' query parameters (libpq and SQLAlchemy take `?password=`); the test
#: server trusts loopback, so it is sent nowhere, and must be nowhere afterwards.
SECRET = "Geheim-7f3a9c"


def _read_from(env, monkeypatch, source_url: str) -> None:
    """Switch the settings to the ERP's database: ERP_SOURCE_URL set (bound through dg.EnvVar, so in the
    environment too), ERP_EXPORT_DIR unset and the folder gone, so nothing can come from the files."""
    shutil.rmtree(env.pop("ERP_EXPORT_DIR"))
    monkeypatch.delenv("ERP_EXPORT_DIR")
    env["ERP_SOURCE_URL"] = source_url
    monkeypatch.setenv("ERP_SOURCE_URL", source_url)


def _sync(settings: dict[str, str], *, background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    """`casavi-pipeline sync --mandant 0001` as an operator starts it: the test's settings (the
    environment) with `settings` on top."""
    command = [str(BIN / "casavi-pipeline"), "sync", "--mandant", MANDANT]
    options = {"env": {**os.environ, **settings}, "text": True, "stdin": subprocess.DEVNULL}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)
    return subprocess.run(command, capture_output=True, timeout=RUN_TIMEOUT, **options)


def _files_holding(folder: Path, needle: str) -> list[Path]:
    """Every file below `folder` (SQLite databases and their journals included) holding `needle`,
    as written or URL-encoded."""
    forms = {needle.encode(), quote(needle, safe="").encode()}
    return [path for path, content in contents_under(folder) if any(form in content for form in forms)]


def _sources(result: dg.ExecuteInProcessResult) -> set[str]:
    """Where the run's ERP assets were read from (their `source` metadata)."""
    return {str(m.metadata["source"].value) for m in result.asset_materializations_for_node("erp_export")}


def test_switching_an_unchanged_account_from_the_csv_export_to_database_views_writes_nothing(
    env, sandbox, postgres_server, monkeypatch
):
    """Decimals, an ended contract, a co-tenant without email, a company, an owner: typed columns in the
    database (date, numeric) read back as the CSV reader sees them."""
    export(env)
    from_csv = run_job(env)
    assert from_csv.success
    assert sandbox.write_count() == 7  # 1 property, 3 units, 3 contacts
    url = postgres_server.url(postgres_server.create_database("erp"))
    load_into_database(url, Path(env["ERP_EXPORT_DIR"]), [MANDANT])
    _read_from(env, monkeypatch, url)
    sandbox.reset(objects=False)

    from_sql = run_job(env)
    assert from_sql.success
    assert _sources(from_sql) == {f"table/view {e.name} (ERP_SOURCE_URL)" for e in ENTITIES}  # no URL
    assert expected_state(from_sql) == expected_state(from_csv)  # object for object
    assert sandbox.write_count() == 0  # the same hashes: nothing to send
    assert_sandbox_holds(sandbox, from_sql)


def test_a_duplicate_key_in_a_database_view_stops_the_run_in_one_line_and_sends_nothing(
    env, sandbox, postgres_server, monkeypatch
):
    export(env)
    url = postgres_server.url(postgres_server.create_database("erp"))
    database = url.rsplit("/", 1)[1]
    load_into_database(url, Path(env["ERP_EXPORT_DIR"]), [MANDANT])
    # Jürgen Müller's row of contract 100001 a second time, with another email: the ERP's view doubled him.
    postgres_server.psql(
        database,
        "INSERT INTO erp_mieter (mandant_nr, c_vertrag_nr, c_person_nr, c_vorname, c_nachname, c_email) "
        "VALUES ('0001', '100001', '00042', 'Jürgen', 'Müller', 'j.mueller@example.com')",
    )
    _read_from(env, monkeypatch, url)

    result = run_job(env)
    assert not result.success
    with dg.DagsterInstance.get() as instance:
        reason = instance.get_run_by_id(result.run_id).tags[FAILURE_REASON_TAG]
        logged = "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))
    assert "\n" not in reason
    assert reason.startswith(f"erp_export: table/view mieter of postgresql://casavi@{postgres_server.host}:")
    assert f"Mandant {MANDANT} breaks the ERP export contract in 1 place(s): " in reason
    assert "vertrag_nr=100001, person_nr=00042: the key (vertrag_nr, person_nr) appears 2 times" in reason
    for person_value in ("Jürgen", "Müller", "mueller", "example.com"):
        assert person_value not in logged
    assert sandbox.write_count() == 0 and not any(sandbox.state().values())


def test_a_foreign_export_read_through_a_mapping_file_gives_the_account_the_contract_exports_state(
    env, sandbox, monkeypatch
):
    """The foreign ERP: its own column names and codes of the use, PLZ and Ort in one column, free-text
    Anrede (`Sehr geehrter Herr`, `Frau Dr.`), floors as text (`Erdgeschoss`, `1. Etage`, `Keller`)."""
    rows = default_rows()
    for unit, floor in zip(rows["verwaltungseinheiten"], ("0", "1", "-1"), strict=True):
        unit["lage"] = floor  # the contract export gives the floor number as the position
    export(env, rows)
    from_contract = run_job(env)
    assert from_contract.success
    assert sandbox.write_count() == 7  # 1 property, 3 units, 3 contacts
    foreign = Path(env["ERP_EXPORT_DIR"]).parent / "foreign"
    mapping = write_foreign_export(Path(env["ERP_EXPORT_DIR"]), foreign, [MANDANT], floors_as_text=True)
    units = (foreign / MANDANT / "verwaltungseinheiten.csv").read_text(encoding="utf-8")
    tenants = (foreign / MANDANT / "mieter.csv").read_text(encoding="utf-8")
    assert "NUTZUNG" in units and "Erdgeschoss" in units and "Wohnraum" in units  # the foreign shape, really
    assert "PLZ_ORT" in tenants and "01067 Dresden" in tenants and "Sehr geehrter Herr" in tenants
    for key, value in {"ERP_EXPORT_DIR": str(foreign), "ERP_MAPPING_FILE": str(mapping)}.items():
        env[key] = value
        monkeypatch.setenv(key, value)
    sandbox.reset(objects=False)

    from_foreign = run_job(env)
    assert from_foreign.success
    assert expected_state(from_foreign) == expected_state(from_contract)
    assert sandbox.write_count() == 0
    assert_sandbox_holds(sandbox, from_foreign)
    units = sorted(unit["name"] for unit in sandbox.state()["units"].values())
    assert units == ["Gewerbe 1", "Stellplatz -1", "Wohnung 0"]


def test_a_password_in_the_urls_query_reaches_no_file_of_the_instance_the_state_or_the_terminal(
    env, sandbox, postgres_server, monkeypatch
):
    """The forms that carry it outside `user:password@` (`?password=`), for the ERP's database and the
    state database, through a successful and a failing run of `casavi-pipeline sync`."""
    export(env)
    erp = postgres_server.url(postgres_server.create_database("erp"))
    load_into_database(erp, Path(env["ERP_EXPORT_DIR"]), [MANDANT])
    _read_from(env, monkeypatch, f"{erp}?password={SECRET}")
    state = postgres_server.url(postgres_server.create_database("state"))
    settings = {
        "ERP_SOURCE_URL": f"{erp}?password={SECRET}",
        "CASAVI_STATE_URL": f"{state}?sslmode=disable&password={SECRET}",
    }

    synced = _sync(settings)
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.splitlines()[0] == f"casavi {sandbox.base_url}; ERP {erp}"  # dialect, user, host, port, db
    assert sandbox.write_count() == 7
    # Jürgen Müller's row a second time: the view doubles him, the next run stops in the ERP step.
    postgres_server.psql(
        erp.rsplit("/", 1)[1],
        "INSERT INTO erp_mieter (mandant_nr, c_vertrag_nr, c_person_nr, c_nachname) VALUES ('0001', '100001', '00042', 'Müller')",
    )
    failed = _sync(settings)
    assert failed.returncode == 1
    reason = failed.stderr.strip().splitlines()[-1]
    assert reason.startswith(f"Mandant {MANDANT} did not sync (run ")
    assert f"erp_export: table/view mieter of {erp}, Mandant {MANDANT} breaks the ERP export contract" in reason

    home, snapshots = Path(env["DAGSTER_HOME"]), Path(env["CASAVI_SNAPSHOT_DB"])
    assert _files_holding(home, "table/view mieter"), "the scan reads the instance's databases"
    assert _files_holding(home, SECRET) == [] and _files_holding(snapshots, SECRET) == []
    for output in (synced.stdout, synced.stderr, failed.stdout, failed.stderr):
        assert SECRET not in output and quote(SECRET) not in output
    stored = postgres_server.psql(state.rsplit("/", 1)[1], "SELECT count(*) FROM casavi_state_heads")
    assert int(stored) >= 1  # the state went to PostgreSQL through its ?password= URL


def test_a_mapping_files_second_statement_never_reaches_the_erp_database(env, postgres_server, monkeypatch, tmp_path):
    export(env)
    erp = postgres_server.url(postgres_server.create_database("erp"))
    load_into_database(erp, Path(env["ERP_EXPORT_DIR"]), [MANDANT])
    _read_from(env, monkeypatch, erp)
    database = erp.rsplit("/", 1)[1]
    postgres_server.psql(database, "CREATE TABLE canary (n int)")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        'mieter:\n  source: "SELECT * FROM mieter WHERE mandant_nr = :mandant; COMMIT; '
        'INSERT INTO canary VALUES (1); SELECT * FROM mieter WHERE mandant_nr = :mandant"\n',
        encoding="utf-8",
    )
    refused = _sync({"ERP_MAPPING_FILE": str(mapping)})
    assert refused.returncode == 2  # could not start
    assert refused.stderr.strip() == (
        f"sync: casavi_pipeline settings: ERP_MAPPING_FILE {mapping}: mieter.source holds 4 SQL statements (a "
        "`;` outside quotes and comments ends one); give one SELECT (or WITH ... SELECT): the ERP is only "
        "read. Set them in the environment or in .env (docs/settings.md)."
    )
    assert postgres_server.psql(database, "SELECT count(*) FROM canary") == "0"


def _waiting_for_a_lock(postgres_server, database: str) -> int:
    """Sessions of the pipeline waiting for a lock in `database`."""
    return int(
        postgres_server.psql(
            database,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            f"AND datname = '{database}' AND application_name <> 'psql'",
        )
    )


def test_a_table_locked_by_another_session_stops_the_run_in_one_line_and_sigterm_ends_it_at_once(
    env, sandbox, postgres_server, monkeypatch
):
    """An ERP batch job holds an exclusive lock on the tenants' table for as long as it likes."""
    export(env)
    erp = postgres_server.url(postgres_server.create_database("erp"))
    database = erp.rsplit("/", 1)[1]
    load_into_database(erp, Path(env["ERP_EXPORT_DIR"]), [MANDANT])
    _read_from(env, monkeypatch, erp)
    batch_job = psycopg2.connect(erp)
    blocked = None
    try:
        with batch_job.cursor() as cursor:
            cursor.execute("LOCK TABLE erp_mieter IN ACCESS EXCLUSIVE MODE")  # held until the rollback

        bounded = _sync({"ERP_QUERY_TIMEOUT_SECONDS": "2"})
        assert bounded.returncode == 1
        assert bounded.stderr.strip().splitlines()[-1].endswith(
            f"erp_export: reading mieter from table/view mieter of {erp} waited longer than "
            "ERP_QUERY_TIMEOUT_SECONDS (2 s) for a lock another session holds on it (an ERP batch job?); "
            "run the Mandant again when that is done, or raise ERP_QUERY_TIMEOUT_SECONDS"
        )

        blocked = _sync({"ERP_QUERY_TIMEOUT_SECONDS": "3600"}, background=True)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not _waiting_for_a_lock(postgres_server, database):
            assert blocked.poll() is None and time.monotonic() < deadline, "the run never reached the lock"
            time.sleep(0.2)
        blocked.send_signal(signal.SIGTERM)
        _, stderr = blocked.communicate(timeout=60)  # a bound: it ends within seconds
        assert blocked.returncode == 130, stderr
        assert "Stopped by Ctrl-C or SIGTERM: what casavi confirmed is recorded" in stderr and "Traceback" not in stderr
        # Its query was cancelled on the server, not left waiting for the lock it asked for.
        deadline = time.monotonic() + 30
        while _waiting_for_a_lock(postgres_server, database):
            assert time.monotonic() < deadline, "the run's query still waits for the lock"
            time.sleep(0.2)
        assert batch_job.closed == 0  # the lock was held throughout: SIGTERM, not the lock, ended the run
    finally:
        if blocked is not None and blocked.poll() is None:
            blocked.kill()  # the test failed: leave no process behind
            blocked.communicate()
        batch_job.rollback()
        batch_job.close()
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
    assert len(runs) == 2 and not any(run.status == dg.DagsterRunStatus.STARTED for run in runs)
    assert sandbox.write_count() == 0


def test_a_csv_with_four_problems_names_all_four_in_the_runs_one_line(env, sandbox):
    export(
        env,
        {
            "mietvertraege": Append(
                [
                    {"vertrag_nr": "100001", "we_nr": "001", "ve_nr": "0002", "beginn": "2021-01-01"},
                    {"vertrag_nr": "100077", "we_nr": "001", "ve_nr": "0003", "beginn": ""},
                    {"vertrag_nr": "100078", "we_nr": "001", "ve_nr": "0003", "beginn": "2024-02-30"},
                    {"vertrag_nr": "100079", "we_nr": "001", "ve_nr": "0003", "beginn": "gestern"},
                ]
            )
        },
    )
    result = run_job(env)
    assert not result.success
    with dg.DagsterInstance.get() as instance:
        reason = instance.get_run_by_id(result.run_id).tags[FAILURE_REASON_TAG]
    assert "breaks the ERP export contract in 4 place(s)" in reason and "\n" not in reason
    for key in ("vertrag_nr=100001", "vertrag_nr=100077", "vertrag_nr=100078", "vertrag_nr=100079"):
        assert key in reason
    assert sandbox.write_count() == 0
