"""Shared fixtures: one casavi sandbox process for the whole session, reset before each test using it.

The code location reads its settings from the environment once per process, when it loads, as in
production. The in-process tests load it with the sample's Mandanten as partitions and a casavi that
does not exist (port 9 on loopback); each test then hands in its own resources (`harness.py`).
Subprocess tests (the CLI, the demo, `dagster dev`) pass their own environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from casavi_sandbox import SandboxProcess
from casavi_sandbox.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN

os.environ.update(
    {
        "ERP_EXPORT_DIR": str(SAMPLE_EXPORT_DIR),
        "CASAVI_MANDANTEN": SAMPLE_MANDANTEN,
        "CASAVI_BASE_URL": "http://127.0.0.1:9",
        "CASAVI_API_KEY": "tests-hand-in-their-own",
        "CASAVI_API_SECRET": "tests-hand-in-their-own",
    }
)


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """The sandbox as a real subprocess on a free port, with a throw-away database (log beside it)."""
    with SandboxProcess(tmp_path_factory.mktemp("sandbox") / "sandbox.sqlite3", access_log=True) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxProcess) -> SandboxProcess:
    """The session's sandbox, emptied: no objects, no request counts, every misbehaviour knob off."""
    if not sandbox_server.health():  # a test may have stopped it (restart tests)
        sandbox_server.restart()
    sandbox_server.reset()
    return sandbox_server


from casavi_pipeline_tests.e2e import env  # noqa: E402,F401  (the end-to-end tests' settings fixture)
