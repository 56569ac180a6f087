"""The same pipeline on Dagster's production storage: a real PostgreSQL server on 127.0.0.1
(the session's `postgres_server`; skipped, saying why, where `./run setup-system` was not run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from casavi_harness.local import SAMPLE_EXPORT_DIR
from casavi_pipeline.defs.resources import ErpExport

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_partitioned_materialization_through_postgres_storage(postgres_server, tmp_path, monkeypatch):
    database = postgres_server.create_database("dagster")
    postgres = {"DAGSTER_PG_HOST": postgres_server.host, "DAGSTER_PG_PORT": str(postgres_server.port),
                "DAGSTER_PG_USER": postgres_server.USER, "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": database}  # fmt: skip
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.postgres.yaml", home / "dagster.yaml")
    for key, value in postgres.items():
        if key.startswith("DAGSTER_PG_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    from casavi_pipeline.defs.erp import erp_assets

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_launcher).__name__ == "HealthCheckedRunLauncher"
        result = dg.materialize(
            erp_assets,
            partition_key="0420",
            instance=instance,
            resources={"erp_export": ErpExport(directory=str(SAMPLE_EXPORT_DIR))},
        )
        assert result.success
        run_id = result.run_id

    with dg.DagsterInstance.get() as fresh:  # a new instance sees what the first one stored
        run = fresh.get_run_by_id(run_id)
        assert run is not None and run.tags["dagster/partition"] == "0420"
        materialized = fresh.get_materialized_partitions(dg.AssetKey("mieter"))
        assert materialized == {"0420"}

    assert postgres_server.psql(database, f"SELECT count(*) FROM runs WHERE run_id = '{run_id}'") == "1"
