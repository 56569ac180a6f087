"""`./run bench budget`: where can an account's request budget live so that it keeps up at casavi's rates?

    python -m benchmarks.budget                               # every backend at 8, 25 and 200 requests/s
    python -m benchmarks.budget --rates 25 --processes 8 --seconds 20

Many processes (`--processes`, each with `--threads` sending threads, like the client's 4 in flight) take
turns on one account's budget at a fixed rate, without HTTP: each thread asks for leave to send, sleeps
when told to wait, and counts the grants. Backends:

| backend | what |
|---|---|
| sqlite | the embedded default: pyrate-limiter's `SQLiteBucket` in one file, under its file lock (one machine only) |
| pg_table | what CASAVI_STATE_URL uses: a table under a transaction-level advisory lock (`PostgresBudgetStore`) |
| pyrate_pg | pyrate-limiter's own `PostgresBucket` (psycopg 3, a connection pool, `LOCK TABLE … NOWAIT`: a turn that finds the table locked is refused and tried again 5 ms later) |

Figures: grants per second ÷ the rate (1.00 = keeps up; above 1 it lets more through than allowed), and
the time one decision takes (a turn: lock, count, log), median and 99th percentile, over all processes.
PostgreSQL is a throw-away server from `casavi_pipeline_tests/postgres.py` (Debian's postgresql, on the
same machine: no network between). Not a test: it prints a table. Results: `benchmarks/out/budget.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from casavi_pipeline.casavi.budget_store import PostgresBudgetStore, SqliteBudgetStore
from casavi_pipeline.casavi.ratelimit import window

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
BACKENDS = ("sqlite", "pg_table", "pyrate_pg")
ACCOUNT = "0123456789abcdef"
#: How long a turn refused by pyrate-limiter's NOWAIT lock waits before it asks again.
CONTENDED_POLL_SECONDS = 0.005


def ours(backend: str, where: str):
    """A `decide()` over one of the budget's own stores: seconds to wait, 0.0 when granted."""
    store = SqliteBudgetStore(Path(where)) if backend == "sqlite" else PostgresBudgetStore(where, ACCOUNT)
    threads = threading.Lock()  # as AccountBudget: the threads of a process queue before the store

    def decide(rate: float) -> float:
        with threads, store.turn() as now:
            return store.put(now, rate)

    return decide, store.close


def pyrates(url: str):
    """A `decide()` over pyrate-limiter's PostgresBucket."""
    from psycopg_pool import ConnectionPool
    from pyrate_limiter import Rate, RateItem
    from pyrate_limiter.buckets.postgres import PostgresBucket

    pool = ConnectionPool(url, min_size=1, max_size=4, open=True)
    bucket = PostgresBucket(pool, "casavi_budget_bench", [Rate(1, 1000)])
    lock = threading.Lock()

    def decide(rate: float) -> float:
        per_window, seconds = window(rate)
        with lock:  # as pyrate-limiter's Limiter: a bucket remembers its last verdict for `waiting`
            bucket.rates = [Rate(per_window, round(seconds * 1000))]
            item = RateItem("casavi", int(time.time() * 1000))
            if bucket.put(item):
                return 0.0
            waiting = bucket.waiting(item)
        return waiting / 1000 if waiting and waiting > 0 else CONTENDED_POLL_SECONDS

    return decide, pool.close


def worker(argv: list[str]) -> None:
    backend, where, rate, seconds, threads = argv[0], argv[1], float(argv[2]), float(argv[3]), int(argv[4])
    decide, close = pyrates(where) if backend == "pyrate_pg" else ours(backend, where)
    latencies: list[float] = []
    grants = [0]
    lock = threading.Lock()
    start_at = float(argv[5])  # every process starts at the same moment
    time.sleep(max(0.0, start_at - time.time()))
    deadline = start_at + seconds

    def send() -> None:
        while time.time() < deadline:
            began = time.perf_counter()
            wait = decide(rate)
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                grants[0] += wait <= 0
            if wait > 0:
                time.sleep(wait)

    pool = [threading.Thread(target=send) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    close()
    print(json.dumps({"grants": grants[0], "latencies": latencies}))


def run_case(backend: str, where: str, rate: float, processes: int, threads: int, seconds: float) -> dict:
    start_at = time.time() + 8  # time for every process to import and connect
    command = [sys.executable, "-m", "benchmarks.budget", "worker", backend, where, str(rate), str(seconds),
               str(threads), str(start_at)]  # fmt: skip
    workers = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outputs = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    latencies = sorted(x for o in outputs for x in o["latencies"])
    grants = sum(o["grants"] for o in outputs)
    row = {
        "backend": backend,
        "rate_per_s": rate,
        "processes": processes,
        "threads": threads,
        "seconds": seconds,
        "of_rate": grants / seconds / rate,
        "decisions": len(latencies),
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "load": os.getloadavg()[0],
    }
    print(row, file=sys.stderr, flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| backend | rate | processes × threads | grants ÷ rate | decisions | median ms | p99 ms | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['rate_per_s']:g}/s | {r['processes']} × {r['threads']} | {r['of_rate']:.2f} | "
            f"{r['decisions']} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default: all")
    parser.add_argument("--rates", default="8,25,200", help="requests per second of the account")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    from casavi_pipeline_tests.postgres import MISSING, PostgresServer, pg_bin

    if pg_bin() is None:
        raise SystemExit(MISSING)
    server = PostgresServer(pg_bin()).start()  # type: ignore[arg-type]
    rows = []
    try:
        for backend in args.backend or BACKENDS:
            for rate in (float(x) for x in args.rates.split(",")):
                if backend == "sqlite":
                    where = str(Path(tempfile.mkdtemp(prefix="budget-")) / "casavi_budget.sqlite3")
                else:
                    where = server.url(server.create_database("budget"))
                rows.append(run_case(backend, where, rate, args.processes, args.threads, args.seconds))
    finally:
        server.stop()
    print(table(rows))
    OUT.mkdir(exist_ok=True)
    (OUT / "budget.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2:])
    else:
        main()
