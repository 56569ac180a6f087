"""`./run dev`: the Dagster UI (`dagster dev`) with a working local setup.

Starts the casavi sandbox beside the webserver with matching credentials and points the pipeline at the
bundled sample export, so *Materialize all* works right after the quick start. With `CASAVI_BASE_URL`
set, your own settings are used instead (the sample only ever towards a loopback casavi).

Ctrl-C and SIGTERM (a service manager, `kill`, a script that started it in the background) both stop
everything it started: `dagster dev` with its webserver, daemon and code servers (one process group of
their own), then the sandbox, so no process is left holding a port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from casavi_harness.local import PROJECT_ROOT, SANDBOX_PORT, LocalSetupError, local_environment
from casavi_sandbox.process import PortTakenError, port_taken

#: How long `dagster dev` may take to stop its webserver and daemon before they are killed (so that all
#: of it is gone within a minute, as a service manager expects).
STOP_SECONDS = 40
#: How long what is left of its process group may take to end on SIGTERM before it is killed.
LEFTOVER_SECONDS = 10
#: `dagster dev` through this module: without two notices that do not apply to `./run dev`.
DAGSTER_DEV = [sys.executable, "-m", "casavi_harness.dagster_dev"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run dev", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="sandbox database and snapshots")
    parser.add_argument("--sandbox-port", type=int, default=SANDBOX_PORT, help="default %(default)s")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("DAGSTER_PORT") or 3000),
        help="webserver port (default $DAGSTER_PORT or 3000)",
    )
    args, dagster_args = parser.parse_known_args(argv)
    # SIGTERM would end this process at once and leave the sandbox and `dagster dev` running with their
    # ports bound: treat it like Ctrl-C, so the `with` blocks below stop them. SIGINT is handled here too:
    # a background job of a non-interactive shell (a script, a service manager, `nohup … &`) starts
    # with SIGINT ignored, an ignored signal stays ignored in every program started from it, and
    # `dagster dev` maps SIGTERM onto its SIGINT handler, so it would ignore both. A handled signal is
    # reset to its default in a started program: the sandbox and `dagster dev` can be stopped again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if port_taken("127.0.0.1", args.port):
        print(
            f"./run dev: port {args.port} (the Dagster UI) is taken by another program; "
            "free it or pass --port N",
            file=sys.stderr,
        )
        return 2
    try:
        with local_environment(args.data_dir.resolve(), args.sandbox_port) as environ:
            print(
                f"casavi: {environ['CASAVI_BASE_URL']}; ERP export: {environ['ERP_EXPORT_DIR']}; "
                f"Mandanten: {environ.get('CASAVI_MANDANTEN', '(from your settings)')}",
                flush=True,
            )
            command = [*DAGSTER_DEV, "-w", str(PROJECT_ROOT / "workspace.yaml")]
            command += ["-h", "127.0.0.1", "-p", str(args.port), *dagster_args]
            return _run_until_stopped(command, environ)
    except PortTakenError as exc:
        print(
            f"./run dev: port {exc.port} (the casavi sandbox) is taken by another program; "
            "free it or pass --sandbox-port N",
            file=sys.stderr,
        )
        return 2
    except LocalSetupError as exc:
        print(f"./run dev: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # stopped while the sandbox was starting: it is stopped again already
        return 130


def _run_until_stopped(command: list[str], environ: dict[str, str]) -> int:
    """Run `dagster dev` until it ends or this process is interrupted; then stop all of it.

    It runs in a process group of its own, which its webserver, daemon and code servers join: whatever
    happens to `dagster dev` itself, the group is what is stopped, so nothing it started is left behind.
    """
    with subprocess.Popen(command, env=environ, cwd=PROJECT_ROOT, process_group=0) as process:
        try:
            code = process.wait()
        except KeyboardInterrupt:
            # A terminal's Ctrl-C reached only this process group: pass it on, so `dagster dev` shuts
            # its services down itself (SIGTERM from a service manager ends up the same way).
            _signal_group(process.pid, signal.SIGINT)
            _wait(process, STOP_SECONDS)
            code = 130
        _stop_group(process.pid)
        return code


def _wait(process: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait up to `seconds` for `process`; a second Ctrl-C or SIGTERM meanwhile does not cut it short."""
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(KeyboardInterrupt, subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.01))


def _stop_group(group: int) -> None:
    """End what is left of the process group: SIGTERM, then SIGKILL after `LEFTOVER_SECONDS`."""
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_SECONDS
    while _group_alive(group) and time.monotonic() < deadline:
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (a zombie, waiting to be reaped, runs nothing)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # after the command name (which may hold spaces and ends with ')'): state, ppid, pgrp
                state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                if int(pgrp) == group and state != "Z":
                    return True
    return False


if __name__ == "__main__":
    sys.exit(main())
