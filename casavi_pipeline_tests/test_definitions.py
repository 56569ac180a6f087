"""The code location as Dagster sees it: assets, partitions, checks, and the checks' effect on a run."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

from casavi_pipeline.settings import SAMPLE_EXPORT_DIR, get_settings
from casavi_pipeline_tests.erp_fixtures import default_rows, write_export

ERP = {"wirtschaftseinheiten", "gebaeude", "verwaltungseinheiten", "mietvertraege", "mieter",
       "eigentuemervertraege", "eigentuemer"}  # fmt: skip
CASAVI = {"casavi_addresses", "casavi_properties", "casavi_units", "casavi_contacts", "casavi_contracts"}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CASAVI_SNAPSHOT_DB", str(tmp_path / "snapshots"))
    monkeypatch.setenv("CASAVI_API_KEY", "unused-in-dry-run")
    monkeypatch.setenv("CASAVI_API_SECRET", "unused-in-dry-run")
    monkeypatch.setenv("CASAVI_DRY_RUN", "true")  # no casavi needed: the sync computes and shows only
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def run_partition(mandant: str) -> dg.ExecuteInProcessResult:
    from casavi_pipeline.definitions import defs

    job = defs.resolve_job_def("casavi_sync_job")
    return job.execute_in_process(
        partition_key=mandant, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_groups_lineage_and_partitions():
    from casavi_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups == {"erp": ERP, "casavi": CASAVI, "sync": {"casavi_changeset", "casavi_sync"}}
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents["casavi_properties"] == {"wirtschaftseinheiten", "casavi_addresses"}
    assert parents["casavi_addresses"] == {"gebaeude"}
    assert parents["casavi_units"] == {"verwaltungseinheiten"}
    assert parents["casavi_changeset"] == {
        "casavi_properties",
        "casavi_units",
        "casavi_contacts",
        "casavi_contracts",
    }
    assert parents["casavi_sync"] == {"casavi_changeset"}
    partitions = graph.get(dg.AssetKey("casavi_sync")).partitions_def
    assert partitions.get_partition_keys() == get_settings().mandanten


def test_partitions_follow_the_mandanten_setting():
    code = "from casavi_pipeline.definitions import defs; print(defs.resolve_job_def('casavi_sync_job').partitions_def.get_partition_keys())"
    env = {"CASAVI_MANDANTEN": "0007,0420", "PATH": "", "HOME": "/tmp"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['0007', '0420']"


def test_invalid_separator_fails_at_load_time_listing_the_allowed_values():
    code = "import casavi_pipeline.definitions"
    env = {"CASAVI_ID_SEPARATOR": "#", "PATH": "", "HOME": "/tmp"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "CASAVI_ID_SEPARATOR='#' is not allowed; use one of '-' '_' '.' '/' '|'" in out.stderr


def test_on_the_sample_every_blocking_check_passes(env, monkeypatch):
    monkeypatch.setenv("ERP_EXPORT_DIR", str(SAMPLE_EXPORT_DIR))
    get_settings.cache_clear()
    result = run_partition("0001")
    assert result.success
    checks = check_results(result)
    failed_errors = {
        n: c.description
        for n, c in checks.items()
        if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    }
    assert failed_errors == {}
    assert len(checks) == 17
    # The sample has tenants without a valid email on purpose: the WARN check reports them.
    assert not checks["email_rule_dropped"].passed
    assert checks["email_rule_dropped"].severity == dg.AssetCheckSeverity.WARN
    assert checks["email_rule_dropped"].metadata["tenants_dropped"].value > 0
    # Dry run: the sync shows what it would send and sends nothing.
    sync = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "casavi_sync"
    )
    metadata = sync.step_materialization_data.materialization.metadata
    assert metadata["dry_run"].value is True
    assert metadata["writes"].value == metadata["unit/create"].value + metadata["contact/create"].value + (
        metadata["property/create"].value + metadata["contract/create"].value
    )
    assert metadata["unit/create"].value == 100


def test_a_failing_blocking_check_stops_the_sync_of_that_mandant(env, monkeypatch):
    rows = default_rows()
    rows["gebaeude"].append(
        {
            "we_nr": "001",
            "geb_nr": "01-02",
            "strasse": "Hof",
            "hausnummer": "2",
            "plz": "01067",
            "ort": "Dresden",
        }
    )
    rows["gebaeude"].append(
        {
            "we_nr": "001-01",
            "geb_nr": "02",
            "strasse": "Hof",
            "hausnummer": "1",
            "plz": "01067",
            "ort": "Dresden",
        }
    )
    rows["wirtschaftseinheiten"].append({"we_nr": "001-01", "bezeichnung": "Anbau"})
    monkeypatch.setenv("ERP_EXPORT_DIR", str(write_export(env / "export", {"0001": rows})))
    get_settings.cache_clear()

    result = run_partition("0001")
    checks = check_results(result)
    assert not checks["unique_address_ids"].passed
    assert "0001-001-01-02" in checks["unique_address_ids"].description
    executed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert "casavi_changeset" not in executed and "casavi_sync" not in executed
