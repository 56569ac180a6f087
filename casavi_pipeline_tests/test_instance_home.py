"""./run's setup of DAGSTER_HOME: any number of commands may start on a fresh one at once; the repository's
dagster.yaml is installed and refreshed there, never over a dagster.yaml of your own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from casavi_pipeline.runs.instance_home import prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("attempt", range(3))
def test_commands_on_a_fresh_dagster_home_at_once_all_work(tmp_path, attempt, processes):
    """Without the lock, three at once failed in 3 of 4 attempts ("alembic_version ...")."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}  # does not exist yet
    command = [str(REPO / "run"), "dagster", "instance", "info"]
    started = [
        processes.start(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in started]
    for process, output in zip(started, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        assert "class: HealthCheckedRunLauncher" in output, output[-3000:]  # the shipped instance loads
    assert (tmp_path / "dagster_home" / "dagster.yaml").read_bytes() == (REPO / "dagster.yaml").read_bytes()


def test_a_copy_it_made_is_refreshed_and_a_file_of_your_own_is_kept_saying_so_once(tmp_path):
    home, config = tmp_path / "dagster_home", tmp_path / "repo" / "dagster.yaml"
    config.parent.mkdir()
    config.write_text((REPO / "dagster.yaml").read_text())
    assert prepare(home, config) is None  # a fresh home gets the repository's file
    assert (home / "dagster.yaml").read_text() == config.read_text()

    config.write_text(config.read_text() + "# changed by a pull\n")
    assert prepare(home, config) is None  # its own copy is refreshed without a word
    assert (home / "dagster.yaml").read_text().endswith("# changed by a pull\n")

    mine = (REPO / "dagster.yaml").read_text().replace("max_concurrent_runs: 4", "max_concurrent_runs: 2")
    (home / "dagster.yaml").write_text(mine)  # edited by its operator
    config.write_text(config.read_text() + "# changed again\n")
    said = prepare(home, config)
    assert said == (
        f"./run: kept {home / 'dagster.yaml'}: it differs from the repository's dagster.yaml (your own, e.g. "
        f"dagster.postgres.yaml, or an edited copy); to use the repository's, copy {config} there"
    )
    assert prepare(home, config) is None  # said once per version of the repository's file
    assert (home / "dagster.yaml").read_text() == mine


def test_run_keeps_a_postgresql_dagster_yaml_when_the_repositorys_is_newer(postgres_server, tmp_path):
    """After a `git pull` the repository's dagster.yaml is newer than the PostgreSQL one in $DAGSTER_HOME:
    ./run used to replace it with the SQLite one, silently. Runs keep going to PostgreSQL, and Dagster's
    console shows INFO, not every DEBUG event (python_logs in dagster.postgres.yaml)."""
    database = postgres_server.create_database("dagster")
    home = tmp_path / "dagster_home"
    home.mkdir()
    mine = home / "dagster.yaml"
    shutil.copy(REPO / "dagster.postgres.yaml", mine)
    past = (REPO / "dagster.yaml").stat().st_mtime - 3600
    os.utime(mine, (past, past))
    env = {
        **os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": postgres_server.host,
        "DAGSTER_PG_PORT": str(postgres_server.port), "DAGSTER_PG_USER": postgres_server.USER,
        "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": database, "CASAVI_SNAPSHOT_DB": str(tmp_path / "snapshots"),
    }  # fmt: skip
    launch = [str(REPO / "run"), "dg", "launch", "--assets", "group:erp", "--partition", "0420"]
    first = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert mine.read_bytes() == (REPO / "dagster.postgres.yaml").read_bytes()
    kept = [line for line in first.stderr.splitlines() if line.startswith("./run: kept ")]
    assert len(kept) == 1 and str(mine) in kept[0], first.stderr[-3000:]
    assert postgres_server.psql(database, "SELECT count(*) FROM runs") == "1"  # stored in PostgreSQL
    output = first.stdout + first.stderr
    assert "DEBUG" not in output, output  # 52 lines, 50 of them DEBUG, without python_logs
    second = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "./run: kept" not in second.stderr  # once is enough
    assert postgres_server.psql(database, "SELECT count(*) FROM runs") == "2"
