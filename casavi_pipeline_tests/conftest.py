"""Shared fixtures: one casavi sandbox process for the whole session, reset before each test using it.

The code location reads its settings from the environment once per process, when it loads, as in
production. The in-process tests load it with the sample's Mandanten as partitions and a casavi that
does not exist (port 9 on loopback); each test then hands in its own resources (`harness.py`).
Subprocess tests (the CLI, the demo, `dagster dev`) pass their own environment.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from casavi_harness.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN
from casavi_pipeline_tests.postgres import MISSING, PostgresServer, pg_bin
from casavi_sandbox import SandboxProcess

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server on 127.0.0.1 for the session; tests create their own databases in it."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(MISSING)
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


from casavi_pipeline_tests.e2e import backend, env  # noqa: E402,F401  (the end-to-end tests' fixtures)


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Another program on a port: answers 200 to everything and remembers what it was sent."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def _any(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        # Headers too: credentials could travel in either.
        self.received.append((self.command, self.path, bytes(str(self.headers), "latin-1") + body))
        answer = b'{"status": "ok", "token": "t"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def impostor() -> Iterator[tuple[int, list[tuple[str, str, bytes]]]]:
    """A program squatting a free port on 127.0.0.1: (port, the requests it received)."""
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Impostor,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
