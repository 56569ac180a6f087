"""What a deployment installs: casavi_pipeline alone, without the harness, loading from its settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from casavi_harness.local import SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _uv() -> Path:
    found = sorted(REPO.glob(".tools/uv-*/bin/uv")) + sorted(REPO.glob(".tools/uv/bin/uv"))
    if not found:
        pytest.skip("uv is installed by ./run into .tools/; run the suite through ./run test")
    return found[-1]


def test_a_deployment_installs_and_loads_without_the_harness(tmp_path, processes):
    uv, venv = _uv(), tmp_path / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([uv, "venv", "-q", venv, "--python", sys.executable], check=True, env=env, timeout=120)
    python = venv / "bin" / "python"
    # `pip install .`, no extras, not editable: what a Dockerfile or a server install does. From a copy of
    # what the package is built from, so the build leaves nothing in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # (sandbox/ and harness/ too: the uv workspace names them, though the package built here never
    # includes them)
    for folder in ("casavi_pipeline", "sandbox", "harness"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "build"))
    subprocess.run([uv, "pip", "install", "-q", "--python", python, source], check=True, env=env, timeout=600)
    installed = subprocess.run(
        [uv, "pip", "freeze", "--python", python], capture_output=True, text=True, check=True, env=env
    ).stdout.lower()
    assert "casavi-pipeline" in installed
    assert not any(name in installed for name in ("casavi-sandbox", "casavi-harness", "faker"))
    # starlette and uvicorn come only with dagster-webserver (the UI), never as our own requirements;
    # the sandbox and the harness only with the extras (`sandbox`, `harness`, `dev`).
    requires = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('casavi_pipeline')))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    runtime = [line for line in requires.splitlines() if "extra ==" not in line]
    assert runtime and not any(
        n in line for line in runtime for n in ("starlette", "uvicorn", "faker", "sandbox", "harness")
    )

    settings = {
        "ERP_EXPORT_DIR": str(SAMPLE_EXPORT_DIR),
        "CASAVI_MANDANTEN": "0001",
        "CASAVI_BASE_URL": "https://api.mycasavi.com",
        "CASAVI_API_KEY": "k",
        "CASAVI_API_SECRET": "s",
    }
    code = "import casavi_pipeline.definitions as d; print(len(d.defs.resolve_asset_graph().get_all_asset_keys()))"
    loaded = subprocess.run(
        [python, "-W", "ignore", "-c", code], env={"PATH": "", "HOME": str(tmp_path), **settings},
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert int(loaded.stdout.strip()) == 17  # 7 ERP, 5 casavi, remote, changeset, left out, sync, links
    # the operator's command, installed as a console script
    check = subprocess.run(
        [venv / "bin" / "casavi-pipeline", "check-casavi"], env={"PATH": "", "HOME": str(tmp_path), **settings,
        "CASAVI_BASE_URL": "http://127.0.0.1:9"}, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert check.returncode == 2 and "cannot check casavi at http://127.0.0.1:9" in check.stderr, check.stderr
    missing = subprocess.run(
        [python, "-W", "ignore", "-c", "import casavi_pipeline.definitions"], env={"PATH": "", "HOME": str(tmp_path)},
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "ERP_EXPORT_DIR is not set" in missing.stderr
