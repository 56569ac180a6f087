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
import sys
import warnings
from pathlib import Path

from casavi_sandbox.local import SANDBOX_PORT, LocalSetupError, local_environment

KIND_ORDER = ("property", "unit", "contact", "contract")
#: The demo prints a summary; the full event log of each run is in the Dagster UI (./run dev).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


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
    try:
        with local_environment(args.data_dir.resolve(), args.port) as environ:
            os.environ.update(environ)
            return _run(args.mandant)
    except LocalSetupError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


def _run(only: list[str] | None) -> int:
    # Imported only now: the code location reads its settings when it loads.
    import dagster as dg

    from casavi_pipeline.definitions import defs
    from casavi_pipeline.defs.jobs import SYNC_JOB_NAME
    from casavi_pipeline.defs.resources import SETTINGS

    print(f"casavi {SETTINGS.casavi_base_url}; ERP export {SETTINGS.erp_export_dir}")
    mandanten = only or SETTINGS.mandanten
    print(f"Mandanten {', '.join(mandanten)}")
    job = defs.resolve_job_def(SYNC_JOB_NAME)
    rows: list[tuple[str, ...]] = []
    failed = []
    with dg.DagsterInstance.get() as instance:
        for mandant in mandanten:
            result = job.execute_in_process(
                run_config=QUIET, partition_key=mandant, instance=instance, raise_on_error=False
            )
            rows += _summary_rows(result, mandant)
            if not result.success or not _summary_rows(result, mandant):
                failed.append((mandant, result.run_id, _failure_reason(result)))

    header = ("Mandant", "kind", "created", "updated", "deleted")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    total = sum(int(r[2]) + int(r[3]) + int(r[4]) for r in rows)
    print(f"\n{total} writes confirmed by casavi.")
    for mandant, run_id, reason in failed:
        print(f"Mandant {mandant}: run {run_id} did not sync: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _failure_reason(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE" and event.step_failure_data:
            error = event.step_failure_data.error
            user = event.step_failure_data.user_failure_data
            return (user.description if user and user.description else error.message if error else "").strip()
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed and evaluation.severity.value == "ERROR":
                return f"check {evaluation.check_name} failed: {evaluation.description}"
    return "see the run in the Dagster UI (./run dev)"


if __name__ == "__main__":
    sys.exit(main())
