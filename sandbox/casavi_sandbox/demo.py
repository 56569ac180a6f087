"""`./run demo`: the main job end to end, for every configured Mandant, then a short summary.

Without `CASAVI_BASE_URL` in the environment it starts the local casavi sandbox (its database under
`data/`, so a second demo run finds what the first wrote and sends nothing) with a fresh random key and
secret for this run, and syncs the bundled sample export. Runs go through the real Dagster instance in
`$DAGSTER_HOME`, so they show in `./run dev` afterwards. With `CASAVI_BASE_URL` set it syncs to that
casavi with the settings from the environment — never the bundled sample to a casavi off this machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path

from casavi_pipeline.casavi import api
from casavi_pipeline.settings import SettingsError
from casavi_sandbox.local import SANDBOX_PORT, LocalSetupError, local_environment
from casavi_sandbox.process import PortTakenError

KIND_ORDER = tuple(kind.value for kind in api.UPSERT_ORDER)
#: The demo prints a summary; the full event log of each run is in the Dagster UI (./run dev).
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
#: How long the demo waits for the casavi_api pool before it gives up with the holder's run id.
POOL_WAIT_SECONDS = 120.0


def _summary_rows(result, mandant: str) -> list[tuple[str, ...]]:
    """Per kind: created/updated/deleted as confirmed by casavi, from the sync's materialization."""
    events = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "casavi_sync"
    ]
    if not events:
        return []
    metadata = {k: v.value for k, v in events[-1].step_materialization_data.materialization.metadata.items()}
    rows = []
    for kind in KIND_ORDER:
        counts = [
            int(metadata.get(f"confirmed/{kind}/{change}", 0)) for change in ("create", "update", "delete")
        ]
        rows.append((mandant, kind, *map(str, counts)))
    return rows


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
    except SettingsError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: stopped; what casavi confirmed is recorded.", file=sys.stderr)
        return 130


class _Print:
    """A `log` for casavi_pipeline.runs.health that prints to the terminal."""

    def info(self, message: str) -> None:
        print(message, flush=True)

    warning = info


def _interrupted(result) -> bool:
    """Was the run stopped by a person (Ctrl-C, SIGTERM)? Then the demo stops too: no next Mandant."""
    from casavi_pipeline.defs.sync import INTERRUPTED

    def stopped(event) -> bool:
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        error = data.error if data else None
        return bool(
            (user and INTERRUPTED in (user.description or ""))
            or (error and error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"))
        )

    return result.dagster_run.status.value == "CANCELED" or any(
        stopped(e) for e in result.get_step_failure_events()
    )


def _run(only: list[str] | None) -> int:
    # Imported only now: the code location reads its settings when it loads.
    import dagster as dg

    from casavi_pipeline.definitions import defs
    from casavi_pipeline.defs.failures import failure_reason
    from casavi_pipeline.defs.jobs import SYNC_JOB_NAME
    from casavi_pipeline.defs.resources import SETTINGS
    from casavi_pipeline.runs.health import PoolBusyError, run_host_tags, wait_for_pool

    print(f"casavi {SETTINGS.casavi_base_url}; ERP export {SETTINGS.erp_export_dir}", flush=True)
    mandanten = only or SETTINGS.mandanten
    job = defs.resolve_job_def(SYNC_JOB_NAME)
    rows: list[tuple[str, ...]] = []
    failed: list[tuple[str, str | None, str]] = []
    stopped = False
    with dg.DagsterInstance.get() as instance:
        for mandant in mandanten:
            print(f"Mandant {mandant}: syncing", flush=True)
            try:
                # A killed earlier run may still hold the casavi_api pool slot: free it, or say who holds it.
                wait_for_pool(instance, "casavi_api", log=_Print(), timeout_seconds=POOL_WAIT_SECONDS)
                result = job.execute_in_process(
                    run_config=QUIET,
                    partition_key=mandant,
                    instance=instance,
                    raise_on_error=False,
                    tags=run_host_tags(),
                )
            except PoolBusyError as exc:
                failed.append((mandant, None, str(exc)))
                break
            except KeyboardInterrupt:
                stopped = True
                break
            rows += _summary_rows(result, mandant)
            if _interrupted(result):
                stopped = True
                break
            if not result.success or not _summary_rows(result, mandant):
                reason = failure_reason(
                    result.get_asset_check_evaluations(), result.get_step_failure_events()
                )
                failed.append((mandant, result.run_id, reason))

    header = ("Mandant", "kind", "created", "updated", "deleted")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    total = sum(int(r[2]) + int(r[3]) + int(r[4]) for r in rows)
    print(f"\n{total} writes confirmed by casavi.")
    for mandant, run_id, reason in failed:
        where = f" (run {run_id})" if run_id else ""
        print(f"Mandant {mandant} did not sync{where}: {reason}", file=sys.stderr)
    if stopped:
        print("Stopped: what casavi confirmed is recorded; run the demo again to continue.", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
