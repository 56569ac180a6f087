"""`./run dev`: the Dagster UI (`dagster dev`) with a working local setup.

Starts the casavi sandbox beside the webserver with matching credentials and points the pipeline at the
bundled sample export, so *Materialize all* works right after the quick start. With `CASAVI_BASE_URL`
set, your own settings are used instead (the sample only ever towards a loopback casavi).

Ctrl-C and SIGTERM (a service manager, `kill`) both stop what it started: `dagster dev` (which shuts
its webserver and daemon down itself on SIGTERM), then the sandbox, so no process is left holding a port.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from casavi_harness.local import PROJECT_ROOT, SANDBOX_PORT, LocalSetupError, local_environment
from casavi_sandbox.process import PortTakenError, port_taken

#: How long `dagster dev` may take to stop its webserver and daemon before it is killed.
STOP_SECONDS = 60


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
    # ports bound: treat it like Ctrl-C, so the `with` blocks below stop them.
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
            command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml")]
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
    """Run `dagster dev` until it ends or this process is interrupted; then stop it and wait for it."""
    with subprocess.Popen(command, env=environ, cwd=PROJECT_ROOT) as process:
        try:
            return process.wait()
        except KeyboardInterrupt:
            # Under Ctrl-C it got SIGINT itself (same process group); under SIGTERM only we did.
            process.terminate()
            while True:
                try:
                    process.wait(timeout=STOP_SECONDS)
                    return 130
                except subprocess.TimeoutExpired:
                    process.kill()
                except KeyboardInterrupt:  # a second signal while it stops: keep waiting
                    continue


if __name__ == "__main__":
    sys.exit(main())
