"""./run's setup on a fresh DAGSTER_HOME: any number of commands may start on it at once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

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
