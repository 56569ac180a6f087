"""Dagster run ÷ bare work for an unchanged Mandant: `python benchmarks/dagster_run.py --units 25000`.

Runs with the interpreter of the tree it measures, so the same file measures an older commit too:

    .venv/bin/python benchmarks/dagster_run.py --units 25000                     # this tree
    /work/wt/bench-old/.venv/bin/python benchmarks/dagster_run.py --units 25000 \\
        --tree /work/wt/bench-old --export benchmarks/out/dagster_25000/export     # commit 661dbb7

1. one Mandant (0001) of `--units` units is generated (or `--export` reused), a sandbox started;
   where the tree has `SandboxProcess.seed` (the read-back round) the sandbox is seeded with the export's
   mapping, so the first run adopts the account (0 writes); an older tree's first run PUTs everything.
2. `dagster asset materialize -m casavi_pipeline.definitions --select '*' --partition 0001` twice in a
   fresh DAGSTER_HOME (the repo's dagster.yaml); the second run has nothing to write. With the read-back,
   `CASAVI_READ_MAX_AGE_MINUTES=0` makes the second run read incrementally as a later night would,
   instead of reusing the first run's listing.
3. the bare work (`benchmarks.bare`: ingest, map + checks, changeset; with the read-back also the
   incremental read) on a copy of the snapshot the runs keep.

Wall times include interpreter start and imports on both sides; peak RSS from os.wait4 (the CLI process
and the processes it waited for).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from casavi_pipeline import account

MANDANT = "0001"


#: CPU seconds (user + system) of the last `measured` process: less moved by other load than wall time.
last_cpu_seconds = 0.0


def measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[str, float, float]:
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    global last_cpu_seconds
    last_cpu_seconds = usage.ru_utime + usage.ru_stime
    if os.waitstatus_to_exitcode(status) != 0:
        print(out[-4000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(command)} failed")
    return out, wall, usage.ru_maxrss / 1024


def step_seconds(home: Path) -> tuple[dict[str, float], float]:
    """Seconds per step of the latest run in the instance at `home` (STEP_START → its end), and the
    run's own span (first to last event)."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        started: dict[str, float] = {}
        seconds: dict[str, float] = {}
        records = instance.all_logs(run.run_id)
        for record in records:
            event, key = record.dagster_event, record.step_key
            if event is None or key is None:
                continue
            if event.event_type_value == "STEP_START":
                started[key] = record.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED") and key in started:
                seconds[key] = record.timestamp - started[key]
        span = records[-1].timestamp - records[0].timestamp if records else 0.0
    return seconds, span


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=25_000)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--export", type=Path, help="reuse this export instead of generating one")
    parser.add_argument(
        "--py-spy", type=Path, metavar="PY_SPY",
        help="record the unchanged run with this py-spy binary (speedscope JSON beside the logs; slows it down)",
    )  # fmt: skip
    args = parser.parse_args()
    tree = args.tree.resolve()
    py = str(tree / ".venv" / "bin")
    work = tree / "benchmarks" / "out" / f"dagster_{args.units}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        from casavi_sandbox import SandboxProcess

        new = True
    except ImportError:  # before the harness moved to its own package
        from casavi_pipeline.casavi.sandbox import SandboxProcess  # type: ignore[no-redef]

        new = False
    # where the measured tree keeps the harness: its own package since the sandbox became independent
    harness = "casavi_harness" if importlib.util.find_spec("casavi_harness") else "casavi_sandbox"
    export = args.export.resolve() if args.export else work / "export"
    env = {**os.environ, "PATH": f"{py}:{os.environ['PATH']}", "PYTHONPATH": str(tree)}
    if not args.export:
        generator = f"{harness}.sample" if new else "casavi_pipeline.sample"
        measured(
            [sys.executable, "-m", generator, "--out", str(export), "--units", str(args.units),
             "--mandanten", MANDANT],
            env, tree,
        )  # fmt: skip
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(tree / "dagster.yaml", home / "dagster.yaml")
    snapshots = work / "snapshots"
    rows = []
    with SandboxProcess(work / "sandbox.sqlite3", access_log=False) as sandbox:
        if new:
            mapped_bodies = importlib.import_module(f"{harness}.accounts").mapped_bodies
            sandbox.seed(mapped_bodies(export, MANDANT))
        env |= {
            "DAGSTER_HOME": str(home), "ERP_EXPORT_DIR": str(export), "CASAVI_MANDANTEN": MANDANT,
            "CASAVI_BASE_URL": sandbox.base_url, "CASAVI_API_KEY": sandbox.api_key,
            "CASAVI_API_SECRET": sandbox.api_secret, "CASAVI_SNAPSHOT_DB": str(snapshots),
            "CASAVI_REQUESTS_PER_MINUTE": "0", "CASAVI_MAX_CONCURRENCY": "8",
        }  # fmt: skip
        # create the instance's storage once, outside the measured runs
        measured(
            [sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().get_runs(limit=1)"],
            env,
            tree,
        )
        dagster = [f"{py}/dagster", "asset", "materialize", "-m", "casavi_pipeline.definitions", "--select", "*",
                   "--partition", MANDANT]  # fmt: skip
        for run in ("first", "unchanged"):
            if run == "unchanged":
                env["CASAVI_READ_MAX_AGE_MINUTES"] = "0"
            command = dagster
            if run == "unchanged" and args.py_spy:
                profile = work / "unchanged.speedscope.json"
                command = [str(args.py_spy), "record", "--format", "speedscope", "-o", str(profile), "--", *dagster]
            out, wall, rss = measured(command, env, tree)
            steps, span = step_seconds(home)
            rows.append({"what": f"dagster run ({run})", "seconds": wall, "cpu_s": last_cpu_seconds, "rss": rss,
                         "run_span_s": span,
                         "steps_s": {k: round(v, 2) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])}})
            (work / f"run_{run}.log").write_text(out)
            print(rows[-1], file=sys.stderr)
        bare = [
            sys.executable,
            "-m",
            "benchmarks.bare",
            str(export),
            str(account.folder(snapshots, account.account_id(sandbox.api_key)) / f"snapshot_{MANDANT}.duckdb"),
            MANDANT,
        ]
        if new:
            bare += [sandbox.base_url, sandbox.api_key, sandbox.api_secret]
        out, wall, rss = measured(bare, env, tree)
        parts = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        rows.append({"what": "bare work", "seconds": wall, "cpu_s": last_cpu_seconds, "rss": rss, **parts})
        print(rows[-1], file=sys.stderr)
    ratio = rows[1]["seconds"] / rows[2]["seconds"]
    cpu_ratio = rows[1]["cpu_s"] / rows[2]["cpu_s"]
    print(json.dumps({"tree": str(tree), "units": args.units, "rows": rows, "ratio": ratio, "cpu_ratio": cpu_ratio}))
    print("\n| what | wall s | CPU s | peak RSS MiB |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['rss']:.0f} |")
    print(f"| **Dagster (unchanged) ÷ bare** | **{ratio:.2f}×** | **{cpu_ratio:.2f}×** | |")
    print(f"bare parts: {json.dumps(rows[2])}")


if __name__ == "__main__":
    main()
