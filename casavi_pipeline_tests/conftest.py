"""Shared fixtures: one casavi sandbox process for the whole session, reset before each test using it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from casavi_sandbox import SandboxProcess


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
