"""End to end with the other ERP sources (docs/erp-sources.md): the ERP's database (PostgreSQL views) and
a foreign export read through a mapping file give casavi the same state as the contract's CSV export.

Each test syncs one Mandant from the CSV export first, then switches the source on the unchanged
account: the same objects with the same hashes are 0 writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
from casavi_pipeline_tests.e2e import (
    MANDANT,
    assert_sandbox_holds,
    expected_state,
    export,
    run_job,
)
from casavi_pipeline_tests.erp_database import load_into_database, write_foreign_export
from casavi_pipeline_tests.erp_fixtures import default_rows

pytestmark = pytest.mark.e2e


def _read_from(env, monkeypatch, source_url: str) -> None:
    """Switch the settings to the ERP's database: ERP_SOURCE_URL set (bound through dg.EnvVar, so in the
    environment too), ERP_EXPORT_DIR unset and the folder gone, so nothing can come from the files."""
    shutil.rmtree(env.pop("ERP_EXPORT_DIR"))
    monkeypatch.delenv("ERP_EXPORT_DIR")
    env["ERP_SOURCE_URL"] = source_url
    monkeypatch.setenv("ERP_SOURCE_URL", source_url)


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
    assert all(s.startswith("table/view ") and " of postgresql://" in s for s in _sources(from_sql))
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
