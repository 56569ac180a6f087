"""The same pipeline on Dagster's production storage: a real PostgreSQL server on 127.0.0.1.

Uses Debian's PostgreSQL binaries; when they are missing, it tries to install them once (CI runs as root
on Debian with the package index reachable) and otherwise skips, saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline.defs.resources import ErpExport
from casavi_sandbox.local import SAMPLE_EXPORT_DIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None


def _install_postgres() -> str | None:
    """Install Debian's postgresql package once; return why not, or None when it worked."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed and this user cannot install Debian packages"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=300, check=True)
        except (subprocess.SubprocessError, OSError) as exc:
            return f"could not install PostgreSQL ({' '.join(command)}: {type(exc).__name__})"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on loopback; yields its connection settings."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        reason = _install_postgres()
        bin_dir = _pg_bin()
        if bin_dir is None:
            pytest.skip(reason or "PostgreSQL binaries not found after installing")
    # PostgreSQL refuses to run as root: run it as `nobody` in a folder of its own (pytest's tmp
    # folders are private to root, so this one lives directly under the system temp dir).
    data = Path(tempfile.mkdtemp(prefix="casavi-pg-"))
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "nobody", "nogroup")
    port = _free_port()
    subprocess.run(
        [*as_user, bin_dir / "initdb", "-D", data / "db", "-U", "dagster", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, bin_dir / "pg_ctl", "-D", data / "db", "-o", options, "-l", data / "log", "-w", "start"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*as_user, bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"],
        check=True,
        capture_output=True,
    )
    yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USER": "dagster",
           "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster", "bin": bin_dir, "as_user": as_user}  # fmt: skip
    subprocess.run(
        [*as_user, bin_dir / "pg_ctl", "-D", data / "db", "-m", "fast", "stop"], capture_output=True
    )


def test_partitioned_materialization_through_postgres_storage(postgres, tmp_path, monkeypatch):
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

    psql = [*postgres["as_user"], postgres["bin"] / "psql", "-h", "127.0.0.1", "-p", postgres["DAGSTER_PG_PORT"],
            "-U", "dagster", "-d", "dagster", "-tAc", f"SELECT count(*) FROM runs WHERE run_id = '{run_id}'"]  # fmt: skip
    assert subprocess.run(psql, capture_output=True, text=True, check=True).stdout.strip() == "1"
