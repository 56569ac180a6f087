"""Shared fixtures: one casavi sandbox process for the whole session, reset before each test using it.

Tests that start processes are end-to-end tests (`e2e`), marked here from the fixtures they use: a
fixture that starts a process (a sandbox, PostgreSQL, `dagster dev`, a CLI, ruff) is decorated with
`@starts_processes`, and every test using it — directly or through another fixture — gets the mark.
`pytest --fast` (`./run test --fast`) runs the others: units and in-process `materialize()` tests, no
process started; a test that starts one anyway fails there, naming the fixture to use.

The code location reads its settings from the environment once per process, when it loads, as in
production. The in-process tests load it with the sample's Mandanten as partitions and a casavi that
does not exist (port 9 on loopback); each test then hands in its own resources (`harness.py`).
Subprocess tests (the CLI, the demo, `dagster dev`) pass their own environment.
"""

from __future__ import annotations

import http.server
import multiprocessing.process
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from casavi_harness.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN
from casavi_pipeline_tests.postgres import MISSING, PostgresServer, pg_bin
from casavi_pipeline_tests.processes import Processes, is_starting_processes, starts_processes
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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="only tests that start no process (units, in-process materialize()): `./run test --fast`",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    fast = config.getoption("--fast")
    kept, deselected = [], []
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        fixtures = info.name2fixturedefs.values() if info is not None else ()
        if any(is_starting_processes(d.func) for defs in fixtures for d in defs):
            item.add_marker(pytest.mark.e2e)
        (deselected if fast and item.get_closest_marker("e2e") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(autouse=True)
def _no_process_in_fast_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `--fast`, a test that starts a process without a `@starts_processes` fixture fails at once."""
    if not request.config.getoption("--fast"):
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(
            f"{request.node.nodeid} starts a process: use a fixture marked @starts_processes "
            "(e.g. `processes`), so the test is an e2e test and `--fast` leaves it out"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


@pytest.fixture
@starts_processes
def processes() -> Iterator[Processes]:
    """Commands a test starts itself (a CLI, ruff, a second interpreter holding a lock); what is still
    running when the test ends is killed with its process group."""
    started = Processes()
    yield started
    started.stop_all()


@pytest.fixture(scope="session")
@starts_processes
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
@starts_processes
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
