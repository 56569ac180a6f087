"""`./run dev` (`python -m casavi_harness.dev`): stopped by SIGTERM without leftovers; a taken port named
with the option that moves it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from casavi_harness.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN
from casavi_sandbox.process import free_port, port_taken

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def shell_env(tmp_path: Path) -> dict[str, str]:
    """A new engineer's shell: no casavi settings (conftest's stand-ins would make dev skip the sandbox)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASAVI_")}
    env |= {"DAGSTER_HOME": str(home), "ERP_EXPORT_DIR": str(SAMPLE_EXPORT_DIR)}
    env["CASAVI_MANDANTEN"] = SAMPLE_MANDANTEN
    return env


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # the parent pid is the 4th field; the command name (2nd) may hold spaces, but ends with ')'
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie holds no port and runs nothing


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:.0f} s: {what}")
        time.sleep(0.2)


def test_sigterm_stops_the_sandbox_and_dagster_dev_and_frees_both_ports(tmp_path):
    ui_port, sandbox_port = free_port(), free_port()
    while sandbox_port == ui_port:
        sandbox_port = free_port()
    env = shell_env(tmp_path)
    subprocess.run(  # as ./run does: the instance's storage once, before webserver and daemon start
        [sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().get_runs(limit=1)"],
        env=env, cwd=ROOT, check=True, timeout=120,
    )  # fmt: skip
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "casavi_harness.dev", "--port", str(ui_port),
             "--sandbox-port", str(sandbox_port), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started: set[int] = set()
        try:

            def up() -> bool:
                assert process.poll() is None, log_path.read_text()
                with contextlib.suppress(httpx.TransportError):
                    return httpx.get(f"http://127.0.0.1:{ui_port}/server_info", timeout=2).status_code == 200
                return False

            wait_until(up, 180, "the Dagster UI answers")
            assert port_taken("127.0.0.1", sandbox_port)
            started = descendants(process.pid)
            assert len(started) >= 3  # the sandbox, dagster dev, its webserver and daemon (and code servers)

            process.send_signal(signal.SIGTERM)  # the process only, as a service manager or `kill` sends it
            process.wait(timeout=120)

            wait_until(lambda: not any(alive(pid) for pid in started), 60, "every process it started ends")
            wait_until(lambda: not port_taken("127.0.0.1", ui_port), 30, "the UI's port is free")
            wait_until(lambda: not port_taken("127.0.0.1", sandbox_port), 30, "the sandbox's port is free")
        finally:
            for pid in {process.pid, *started, *descendants(process.pid)}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(timeout=30)


def run_dev(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`./run dev` expected to give up at once; if it starts instead, everything it started is stopped."""
    with subprocess.Popen(
        [sys.executable, "-m", "casavi_harness.dev", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_taken_sandbox_port_names_the_sandbox_port_option(tmp_path, impostor):
    taken, _received = impostor
    env = shell_env(tmp_path)
    run = run_dev(
        ["--port", str(free_port()), "--sandbox-port", str(taken), "--data-dir", str(tmp_path / "data")], env
    )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"./run dev: port {taken} (the casavi sandbox) is taken by another program; "
        "free it or pass --sandbox-port N"
    )


def test_a_taken_ui_port_names_the_port_option(tmp_path, impostor):
    taken, _received = impostor
    run = run_dev(["--port", str(taken), "--data-dir", str(tmp_path / "data")], shell_env(tmp_path))
    assert run.returncode == 2
    assert "--port N" in run.stderr and "(the Dagster UI)" in run.stderr
