"""Which fixtures start processes: the tests using them are end-to-end tests (`e2e`, conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])
_STARTS_PROCESSES = "__casavi_starts_processes__"


def starts_processes(fixture: _F) -> _F:
    """Declare that a fixture starts processes (a sandbox, PostgreSQL, `dagster dev`, a CLI): every test
    using it, directly or through another fixture, is an end-to-end test. Put it under `@pytest.fixture`."""
    setattr(fixture, _STARTS_PROCESSES, True)
    return fixture


def is_starting_processes(fixture: Callable[..., Any]) -> bool:
    return bool(getattr(fixture, _STARTS_PROCESSES, False))


class Processes:
    """Processes one test starts: `run` one to its end, or `start` one in the background (in a session of
    its own, so `stop_all` can end it with everything it started)."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen] = []

    def run(self, args: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess:
        """`subprocess.run`, text with output captured and a timeout unless the test says otherwise."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 300)
        return subprocess.run(args, check=False, **kwargs)

    def start(self, args: Sequence[str | Path], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(args, **kwargs)
        self._started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self._started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
