"""`./run bench queue`: many Mandanten of one account started at once — does a pool per account help?

    python -m benchmarks.queue                                  # 8 Mandanten, hidden limit 4/s, both variants
    python -m benchmarks.queue --mandanten 20 --writes 40 --limit 8 --max-runs 4

What the nightly schedule does, through Dagster's own machinery: a real instance (the shipped dagster.yaml,
`max_concurrent_runs` from `--max-runs`, SQLite storage), `dagster-daemon run` dequeuing and launching, and
one run of `casavi_sync_job` per Mandant submitted at once (`dagster job backfill`), against a sandbox
process with a hidden rate limit; the account's budget is the shipped one (a file, one machine). Two
nights per variant, each on a fresh instance, export and sandbox:

- *first sync*: every Mandant writes `--writes` objects (units and tenants);
- *quiet night*: afterwards one phone number per Mandant changes (one write each), the usual night.

Variants: *none* — the shipped configuration (the account's budget alone shares the rate); *pool* — the
same, with `casavi_sync` in a concurrency pool per account (`benchmarks/queue_location.py`) limited to
one run at a time (`concurrency.pools.default_limit: 1`, `run_monitoring.free_slots_after_run_end_seconds`).

Figures: the night's wall time (first run started → last run ended), the slowest run's time in the queue
and in all, requests answered 429, the 1-minute load. Not a test: it prints a table. Results:
`benchmarks/out/queue.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from casavi_sandbox import SandboxProcess

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
BIN = Path(sys.executable).parent
VARIANTS = ("none", "pool")
FREE_SLOTS_AFTER_RUN_END_SECONDS = 300


def instance_yaml(variant: str, max_runs: int) -> str:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = max_runs
    if variant == "pool":
        config["concurrency"]["pools"] = {"default_limit": 1}
        config["run_monitoring"]["free_slots_after_run_end_seconds"] = FREE_SLOTS_AFTER_RUN_END_SECONDS
    return yaml.safe_dump(config)


def exports(root: Path, mandanten: list[str], writes: int, changed: bool) -> None:
    """Every Mandant's export: `writes` objects to send in a first sync; `changed`: one phone number more."""
    from casavi_pipeline_tests.erp_fixtures import big_rows, write_export

    rows = {}
    for mandant in mandanten:
        rows[mandant] = big_rows(max(1, writes // 2 - 2))  # 2 writes per contract, plus the defaults' few
        if changed:
            rows[mandant]["mieter"][0]["telefon"] = "0351 7654321"
    write_export(root, rows)


def night(env: dict[str, str], work: Path, mandanten: list[str], sandbox: SandboxProcess) -> dict:
    """Submit one run per Mandant at once; wait until every run ended; the night's figures."""
    import dagster as dg

    before = sandbox.requests()["statuses"]
    submitted = time.time()
    done = subprocess.run(
        [str(BIN / "dagster"), "job", "backfill", "-w", str(work / "workspace.yaml"), "-j", "casavi_sync_job",
         "--partitions", ",".join(mandanten), "--noprompt"],
        env=env, cwd=work, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"dagster job backfill failed: {done.stderr[-2000:]}")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        while True:
            records = [r for r in instance.get_run_records() if r.create_timestamp.timestamp() >= submitted - 5]
            if len(records) >= len(mandanten) and all(r.dagster_run.is_finished for r in records):
                break
            time.sleep(2)
        spans = [sync_step_span(instance, r.dagster_run.run_id) for r in records]
    after = sandbox.requests()["statuses"]
    limited = int(after.get("429", 0)) - int(before.get("429", 0))
    total = sum(int(n) for n in after.values()) - sum(int(n) for n in before.values())
    starts = [r.start_time for r in records if r.start_time]
    ends = [r.end_time for r in records if r.end_time]
    return {
        "runs": len(records),
        "succeeded": sum(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records),
        "night_s": max(ends) - min(starts),
        "since_submitted_s": max(ends) - submitted,
        "longest_queue_s": max(r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time),
        "longest_run_s": max(r.end_time - r.start_time for r in records if r.start_time and r.end_time),
        "most_syncs_at_once": most_at_once([span for span in spans if span is not None]),
        "requests": total,
        "rate_limited_429": limited,
        "load": os.getloadavg()[0],
    }


def sync_step_span(instance, run_id: str) -> tuple[float, float] | None:
    """When the run's casavi_sync step started and ended (None: it did not run)."""
    import dagster as dg

    times = [
        entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.is_dagster_event
        and entry.step_key == "casavi_sync"
        and entry.dagster_event_type
        in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)
    ]
    return (min(times), max(times)) if len(times) >= 2 else None


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans overlapping at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def run_variant(variant: str, args: argparse.Namespace) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"queue-{variant}-"))
    mandanten = [f"{n:04d}" for n in range(1, args.mandanten + 1)]
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(variant, args.max_runs))
    module = "benchmarks.queue_location" if variant == "pool" else "casavi_pipeline.definitions"
    (work / "workspace.yaml").write_text(f"load_from:\n  - python_module: {module}\n")
    rows = []
    with SandboxProcess(work / "sandbox.sqlite3", rate_limit=args.limit * 60, access_log=False) as sandbox:
        env = {
            **os.environ,
            "ERP_EXPORT_DIR": str(work / "export"),
            "CASAVI_MANDANTEN": ",".join(mandanten),
            "CASAVI_SNAPSHOT_DB": str(work / "state"),
            "CASAVI_BASE_URL": sandbox.base_url,
            "CASAVI_API_KEY": sandbox.api_key,
            "CASAVI_API_SECRET": sandbox.api_secret,
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        subprocess.run([sys.executable, "-m", "casavi_pipeline.runs.instance_home", str(home / "dagster.yaml")],
                       env=env, check=True, timeout=600)  # fmt: skip
        log = (work / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(work / "workspace.yaml")],
            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            for name, changed in (("first sync", False), ("quiet night", True)):
                exports(work / "export", mandanten, args.writes, changed)
                row = {"variant": variant, "night": name, "mandanten": args.mandanten, "writes_each": args.writes,
                       "hidden_limit_per_s": args.limit, "max_runs": args.max_runs,
                       **night(env, work, mandanten, sandbox)}  # fmt: skip
                print(row, file=sys.stderr, flush=True)
                rows.append(row)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(120)
            log.close()
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | night | runs ok | submitted → last run ended, s | first start → last end, s | longest in queue s "
        "| longest run s | most sync steps at once | requests | 429 | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['night']} | {r['succeeded']}/{r['runs']} | {r['since_submitted_s']:.0f} | "
            f"{r['night_s']:.0f} | {r['longest_queue_s']:.0f} | {r['longest_run_s']:.0f} | {r['most_syncs_at_once']} | "
            f"{r['requests']} | {r['rate_limited_429']} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="repeatable; default: both")
    parser.add_argument("--mandanten", type=int, default=8)
    parser.add_argument("--writes", type=int, default=60, help="writes per Mandant in the first sync")
    parser.add_argument("--limit", type=float, default=4.0, help="the sandbox's hidden limit, requests/s")
    parser.add_argument("--max-runs", type=int, default=4, help="concurrency.runs.max_concurrent_runs")
    args = parser.parse_args()
    rows = [row for variant in args.variant or VARIANTS for row in run_variant(variant, args)]
    print(table(rows))
    OUT.mkdir(exist_ok=True)
    (OUT / "queue.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
