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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


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


def two_ports() -> tuple[int, int]:
    ui_port, sandbox_port = free_port(), free_port()
    while sandbox_port == ui_port:
        sandbox_port = free_port()
    return ui_port, sandbox_port


def stop_with_sigterm(pid: int, ended, ui_port: int, sandbox_port: int, log_path: Path, while_up=None) -> None:
    """Wait for the UI (then call `while_up`), send SIGTERM to `pid` (the process only, as a service
    manager or `kill` sends it), then everything `pid` started must end and both ports must be free
    within 60 s."""
    started: set[int] = set()
    try:

        def up() -> bool:
            assert not ended(), log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"http://127.0.0.1:{ui_port}/server_info", timeout=2).status_code == 200
            return False

        wait_until(up, 300, "the Dagster UI answers")
        assert port_taken("127.0.0.1", sandbox_port)
        started = descendants(pid)
        assert len(started) >= 3  # the sandbox, dagster dev, its webserver and daemon (and code servers)
        if while_up is not None:
            while_up()

        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not any(alive(p) for p in {pid, *started}), 60, "every process it started ends")
        assert not port_taken("127.0.0.1", ui_port), "the UI's port is free"
        assert not port_taken("127.0.0.1", sandbox_port), "the sandbox's port is free"
        assert "SupersessionWarning" not in log_path.read_text()  # ./run dev's own notices only
        assert "Found a dagster instance configuration value" not in log_path.read_text()
    finally:
        for leftover in {pid, *started, *descendants(pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)


def test_sigterm_stops_the_sandbox_and_dagster_dev_and_frees_both_ports(tmp_path):
    ui_port, sandbox_port = two_ports()
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
        try:
            stop_with_sigterm(process.pid, lambda: process.poll() is not None, ui_port, sandbox_port, log_path)
            assert process.wait(timeout=30) == 130
        finally:
            process.kill()
            process.wait(timeout=30)


def sigint_ignored(status: str) -> bool:
    """From /proc/<pid>/status: is SIGINT (2) among the ignored signals?"""
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & 1 << (signal.SIGINT - 1))


def test_sigterm_stops_dev_started_as_a_background_job_of_a_script(tmp_path):
    """A script, a service manager or `nohup … &` starts `./run dev` as a background job of a
    non-interactive shell, which starts it with SIGINT ignored; `dagster dev` maps SIGTERM onto its
    SIGINT handler. Before the fix `dagster dev` ignored SIGTERM and was killed after 60 s, and its
    webserver, daemon and code servers stayed, holding the port."""
    premise = subprocess.run(
        ["bash", "-c", "cat /proc/self/status & wait"], capture_output=True, text=True, check=True
    )
    assert sigint_ignored(premise.stdout)  # what the job below starts with
    ui_port, sandbox_port = two_ports()
    log_path = tmp_path / "dev.log"
    job = (
        f"{ROOT}/run dev --port {ui_port} --sandbox-port {sandbox_port} --data-dir {tmp_path / 'data'} "
        f">{log_path} 2>&1 & echo $!; wait"
    )
    env = shell_env(tmp_path)
    shell = subprocess.Popen(
        ["bash", "-c", job], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )

    def a_second_daemon_is_refused() -> None:
        """`./run dg dev` beside `./run dev` on one DAGSTER_HOME would run every sensor twice."""
        second = subprocess.run(
            [str(ROOT / "run"), "dg", "dev", "-p", str(free_port())], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=120, start_new_session=True,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip() == (
            f"./run: a Dagster daemon already runs on {env['DAGSTER_HOME']} (./run dev or ./run dg dev): a "
            "second one would run every schedule and sensor twice; stop the other first, or set another "
            "DAGSTER_HOME"
        )

    try:
        assert shell.stdout is not None
        pid = int(shell.stdout.readline())  # `./run` execs Python: the job's pid is ./run dev's
        stop_with_sigterm(
            pid, lambda: shell.poll() is not None, ui_port, sandbox_port, log_path, a_second_daemon_is_refused
        )
        assert shell.wait(timeout=30) == 0  # the shell's `wait` saw its job end
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(timeout=30)


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
