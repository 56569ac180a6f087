"""`./run bench`: per-stage wall time and peak RSS on generated exports, printed as a table.

    python -m benchmarks                         # 10k (2 Mandanten) and 100k (1 Mandant), all stages
    python -m benchmarks --scale 500000:20 --no-sync     # ingest/map/changeset only at 500k
    python -m benchmarks --workers 1                     # one process for all Mandanten (default: 1 per core)
    python -m benchmarks --scale 10000:2 --rate-limit 3000   # sync paced by a sandbox rate limit
    python -m benchmarks --scale 500000:20 --sync-stages sync_first,sync_unchanged   # skip the rest
    python -m benchmarks --scale 250000:1 --sync-stages confirm_all,links   # the links files of ~1 M objects
    python -m benchmarks adopt --units 100000            # adopt a filled account: map + read + diff (adopt.py)
    python -m benchmarks adopt --units 40000 --mandanten 20   # 20 Mandanten share one listing
    python -m benchmarks dagster --units 25000           # Dagster run ÷ bare work, unchanged Mandant
    python -m benchmarks state --units 25000             # an unchanged night per state backend (state.py)
    python -m benchmarks rate                            # finding a hidden rate limit, alone and shared (rate.py)
    python -m benchmarks budget                          # the account's budget: SQLite, PostgreSQL (budget.py)
    python -m benchmarks queue                           # many Mandanten of one account at once (queue.py)

Each stage is a separate process (`benchmarks.stages`); its peak RSS is read with os.wait4. The
sandbox runs as a real process on 127.0.0.1. Not a test: it prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from casavi_sandbox import SandboxProcess

OUT = Path(__file__).resolve().parent / "out"
PREPARE = ["ingest", "map_checks", "changeset"]
# a rate is "sustained" only over a stage this long; shorter ones mostly spend the limiter's burst
SUSTAINED_S = 30
# in this order; confirm_all (every pending write recorded as confirmed, nothing sent) stands in for a
# first sync at scales too large to send; links writes the Mandant's links files from what is confirmed
SYNC = ["sync_first", "confirm_all", "sync_unchanged", "links", "change_1pct", "sync_1pct", "naive_full_put"]
DEFAULT_SYNC = [stage for stage in SYNC if stage != "confirm_all"]


def run_measured(command: list[str]) -> tuple[dict, float, float]:
    """Run a command; return its JSON line (if any), wall seconds and peak RSS in MiB."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), wall, usage.ru_maxrss / 1024


def run_parallel(commands: list[list[str]]) -> tuple[dict, float, float]:
    """Run commands at the same time (one per worker, like a backfill's partition runs on a multiprocess
    executor); return their summed JSON figures, the wall time until the last one ends, and the sum of their
    peak RSS — an upper bound of the memory they held together."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(commands)) as pool:
        outcomes = list(pool.map(run_measured, commands))
    wall = time.perf_counter() - started
    totals: dict = {}
    for result, _, _ in outcomes:
        for key, value in result.items():
            if key != "stage":
                totals[key] = totals.get(key, 0) + value
    totals["seconds"] = wall  # in-process seconds overlap; the stage took as long as its slowest worker
    return totals, wall, sum(rss for _, _, rss in outcomes)


def bench_scale(
    units: int,
    mandanten: int,
    *,
    sync_stages: list[str],
    rate_limit: float,
    workers: int,
    rows: list[dict],
) -> None:
    label = f"{units // 1000}k units / {mandanten} M" if units >= 1000 else f"{units} units / {mandanten} M"
    work = OUT / f"{units}_{mandanten}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "snapshots").mkdir(parents=True)
    export = work / "export"
    numbers = [f"{i:04d}" for i in range(1, mandanten + 1)]
    _, wall, rss = run_measured(
        [sys.executable, "-m", "casavi_harness.sample", "--out", str(export), "--units", str(units),
         "--mandanten", ",".join(numbers)]
    )  # fmt: skip
    rows.append({"scale": label, "stage": "generate", "seconds": wall, "rss": rss})
    base = [sys.executable, "-m", "benchmarks.stages"]
    shares = [numbers[i::workers] for i in range(min(workers, len(numbers)))]
    for stage in PREPARE:
        commands = [[*base, stage, str(export), str(work), ",".join(share)] for share in shares]
        result, wall, rss = run_parallel(commands)
        rows.append({"scale": label, "stage": stage, "seconds": wall, "rss": rss, **result})
        print(rows[-1], file=sys.stderr)
    prepared = [r for r in rows[-len(PREPARE) :] if r["stage"] in ("map_checks", "changeset")]
    rows.append({
        "scale": label, "stage": "map_checks + changeset", "seconds": sum(r["seconds"] for r in prepared),
        "rss": max(r["rss"] for r in prepared),
    })  # fmt: skip
    if not sync_stages:
        return
    with SandboxProcess(work / "sandbox.sqlite3", rate_limit=rate_limit or None, access_log=False) as sandbox:
        for stage in (s for s in SYNC if s in sync_stages):
            args = [sandbox.base_url, sandbox.api_key, sandbox.api_secret, str(rate_limit)]
            result, wall, rss = run_measured([*base, stage, str(export), str(work), ",".join(numbers), *args])
            row = {"scale": label, "stage": stage, "seconds": wall, "rss": rss, **result}
            if result.get("writes") and stage != "change_1pct":
                row["writes_per_s"] = result["writes"] / result["seconds"]
                if rate_limit and result["seconds"] >= SUSTAINED_S:  # short stages only show the burst
                    row["of_limit"] = result.get("requests", 0) / result["seconds"] / (rate_limit / 60)
            rows.append(row)
            print(rows[-1], file=sys.stderr)
        by_stage = {r["stage"]: r for r in rows if r["scale"] == label}
        if not {"naive_full_put", "sync_unchanged"} <= by_stage.keys():
            return
        naive, unchanged = by_stage["naive_full_put"]["seconds"], by_stage["sync_unchanged"]["seconds"]
        rows.append({"scale": label, "stage": "naive ÷ unchanged", "ratio": naive / unchanged})


def table(rows: list[dict]) -> str:
    header = "| scale | stage | wall s | peak RSS MiB | writes (links: rows) | requests | writes/s | of rate limit |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "ratio" in r:
            lines.append(
                f"| {r['scale']} | **naive full PUT ÷ unchanged re-run** | **{r['ratio']:.0f}×** | | | | | |"
            )
            continue
        cells = [
            r["scale"], r["stage"], f"{r['seconds']:.1f}", f"{r['rss']:.0f}",
            str(r.get("writes", r.get("link_rows", ""))), str(r.get("requests", "")),
            f"{r['writes_per_s']:.0f}" if "writes_per_s" in r else "",
            f"{r['of_limit']:.0%}" if "of_limit" in r else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", action="append", help="UNITS:MANDANTEN (repeatable); default 10000:2 and 100000:1"
    )
    parser.add_argument("--no-sync", action="store_true", help="only generate, ingest, map+checks, changeset")
    parser.add_argument(
        "--sync-stages", default=",".join(DEFAULT_SYNC),
        help=f"comma-separated sync stages to run, in their fixed order {','.join(SYNC)} "
        f"(default: {','.join(DEFAULT_SYNC)})",
    )  # fmt: skip
    parser.add_argument(
        "--rate-limit", type=float, default=0, help="sandbox and client requests/minute (0 = none)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="processes splitting the Mandanten for ingest/map/changeset, as parallel partition runs do "
        "(default: one per core; peak RSS is then their sum)",
    )  # fmt: skip
    args = parser.parse_args()
    sync_stages = [] if args.no_sync else args.sync_stages.split(",")
    if unknown := set(sync_stages) - set(SYNC):
        parser.error(f"unknown sync stage(s) {sorted(unknown)}; choose from {','.join(SYNC)}")
    rows: list[dict] = []
    for scale in args.scale or ["10000:2", "100000:1"]:
        units, mandanten = map(int, scale.split(":"))
        bench_scale(
            units,
            mandanten,
            sync_stages=sync_stages,
            rate_limit=args.rate_limit,
            workers=args.workers,
            rows=rows,
        )
    print(f"\nMachine: {machine()}; sandbox rate limit: {args.rate_limit or 'none'}; "
          f"workers for ingest/map/changeset: {args.workers}\n")  # fmt: skip
    print(table(rows))
    (OUT / "last_results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["adopt"]:  # ./run bench adopt --units 100000: the read-back of a filled account
        from benchmarks import adopt

        sys.argv = [f"{sys.argv[0]} adopt", *sys.argv[2:]]
        adopt.main()
    elif sys.argv[1:2] == ["rate"]:  # ./run bench rate: finding a hidden rate limit, alone and shared
        from benchmarks import rate

        sys.argv = [f"{sys.argv[0]} rate", *sys.argv[2:]]
        rate.main()
    elif sys.argv[1:2] == ["dagster"]:  # ./run bench dagster --units 25000: Dagster run ÷ bare work
        from benchmarks import dagster_run

        sys.argv = [f"{sys.argv[0]} dagster", *sys.argv[2:]]
        dagster_run.main()
    elif sys.argv[1:2] == ["state"]:  # ./run bench state --units 25000: an unchanged night per state backend
        from benchmarks import state

        sys.argv = [f"{sys.argv[0]} state", *sys.argv[2:]]
        state.main()
    elif sys.argv[1:2] == ["budget"]:  # ./run bench budget: where the account's budget keeps up
        from benchmarks import budget

        sys.argv = [f"{sys.argv[0]} budget", *sys.argv[2:]]
        budget.main()
    elif sys.argv[1:2] == ["queue"]:  # ./run bench queue: many Mandanten of one account at once, pool or not
        from benchmarks import queue

        sys.argv = [f"{sys.argv[0]} queue", *sys.argv[2:]]
        queue.main()
    else:
        main()
