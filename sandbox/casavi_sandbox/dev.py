"""`./run dev`: the Dagster UI (`dagster dev`) with a working local setup.

Starts the casavi sandbox beside the webserver with matching credentials and points the pipeline at the
bundled sample export, so *Materialize all* works right after the quick start. With `CASAVI_BASE_URL`
set, your own settings are used instead (the sample only ever towards a loopback casavi).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from casavi_sandbox.local import PROJECT_ROOT, SANDBOX_PORT, LocalSetupError, local_environment
from casavi_sandbox.process import PortTakenError


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
    try:
        with local_environment(args.data_dir.resolve(), args.sandbox_port) as environ:
            print(
                f"casavi: {environ['CASAVI_BASE_URL']}; ERP export: {environ['ERP_EXPORT_DIR']}; "
                f"Mandanten: {environ.get('CASAVI_MANDANTEN', '(from your settings)')}",
                flush=True,
            )
            command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml")]
            command += ["-h", "127.0.0.1", "-p", str(args.port), *dagster_args]
            with subprocess.Popen(command, env=environ, cwd=PROJECT_ROOT) as process:
                try:
                    return process.wait()
                except KeyboardInterrupt:
                    process.terminate()
                    return process.wait()
    except (LocalSetupError, PortTakenError) as exc:
        print(f"./run dev: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
