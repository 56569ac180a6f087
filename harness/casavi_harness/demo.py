"""`./run demo`: the main job end to end, for every configured Mandant, then a short summary.

Without `CASAVI_BASE_URL` in the environment it starts the local casavi sandbox (its database under
`data/`, so a second demo run finds what the first wrote and sends nothing) with a fresh random key and
secret for this run, and syncs the bundled sample export. Runs go through the real Dagster instance in
`$DAGSTER_HOME`, so they show in `./run dev` afterwards; what it prints is `casavi-pipeline sync`'s summary
(`casavi_pipeline.cli.sync`). With `CASAVI_BASE_URL` set it syncs to that
casavi with the settings from the environment — never the bundled sample to a casavi off this machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path

from casavi_harness.local import SANDBOX_PORT, LocalSetupError, local_environment
from casavi_pipeline.cli.sync import NotStarted, Outcome, print_summary, sync_mandant
from casavi_pipeline.runs.submit import LocationLoadError
from casavi_pipeline.settings import SettingsError, load_settings
from casavi_sandbox.process import PortTakenError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="sandbox database and snapshots")
    parser.add_argument("--port", type=int, default=SANDBOX_PORT, help="sandbox port (default %(default)s)")
    parser.add_argument("--mandant", action="append", help="only these Mandanten (default: all configured)")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*(beta|preview).*", category=Warning)  # dagster notices
    # SIGTERM (a deploy, `kill`) stops the demo like Ctrl-C: no next Mandant, confirmed writes kept.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with local_environment(args.data_dir.resolve(), args.port) as environ:
            os.environ.update(environ)
            return _run(args.mandant)
    except (LocalSetupError, PortTakenError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except (SettingsError, LocationLoadError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: stopped; what casavi confirmed is recorded.", file=sys.stderr)
        return 130


def _run(only: list[str] | None) -> int:
    import dagster as dg

    from casavi_pipeline.runs.submit import code_location

    settings = load_settings()
    print(settings.endpoints, flush=True)
    outcomes: list[Outcome] = []
    with dg.DagsterInstance.get() as instance, code_location(instance) as workspace:
        for mandant in only or settings.mandanten:
            print(f"Mandant {mandant}: syncing", flush=True)
            try:
                outcome = sync_mandant(instance, workspace, mandant)
            except KeyboardInterrupt:
                outcome = Outcome(mandant, interrupted=True)
            except NotStarted as exc:
                outcome = Outcome(mandant, reason=str(exc))
            outcomes.append(outcome)
            if outcome.interrupted:  # stopped by a person: no next Mandant either
                break
    print_summary(outcomes)
    if any(outcome.interrupted for outcome in outcomes):
        print("Stopped: what casavi confirmed is recorded; run the demo again to continue.", file=sys.stderr)
        return 130
    return 1 if any(outcome.reason for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
