"""`./run bench rate`: does the client find a rate limit casavi does not publish, and share it?

    python -m benchmarks.rate                                  # every case below (about 45 minutes)
    python -m benchmarks.rate --case adaptive --limits 5       # one case, one hidden limit
    python -m benchmarks.rate --case two --seconds 90
    python -m benchmarks.rate --case two_machines --case two_machines_today --machine-limits 2,8
    python -m benchmarks.rate --case two_machines --case two_machines_today --seeded   # the second night
    python -m benchmarks.rate --case burst --burst-limit 8

Each case starts its own sandbox process with a hidden limit (the sandbox's `rate_limit` knob: 429 with
Retry-After above it) and runs a sync-like workload in separate processes: PUTs of 3000 contacts, over and
over, with 4 in flight, for `--seconds`. Figures come from the sandbox's own request counters, sampled one
minute after the start and at the end, so the first minute (finding the limit) is left out:
*of limit* = answers other than 429 per second ÷ hidden limit (target ≥ 0.85), *429 share* = 429 answers ÷
all answers in that window (target ≤ 2 %).

| case | what runs |
|---|---|
| adaptive | one process, the client's adaptive budget, fresh (it starts at 1 request/s), without ceiling |
| fixed80 | one process, the client as it was before the adaptive budget (`BASELINE`, loaded from git): a fixed 80/min and 429 counted as a failed attempt |
| two | two processes (two Mandanten) sharing one account's budget, under one hidden limit |
| two_fixed80 | two processes of the old client, 80/min each, under the same limit |
| two_machines | two processes on "two machines": nothing shared but a PostgreSQL server (a throw-away one from `casavi_pipeline_tests/postgres.py`, Debian's postgresql), which holds the account's budget (CASAVI_STATE_URL) |
| two_machines_today | the same two machines with the client before issue 26 (`PREVIOUS`, loaded from git): each machine its own budget file |
| burst | one process; after a minute, 90 s of `429, Retry-After: 1` to every request (the sandbox's `refuse_all`), then none; it goes on for 5 minutes (*same run*). Then, on a fresh account, the same minute and burst, the process ends with the burst, and the next run (another Mandant, a new process) runs 5 minutes (*next run*). Figures: seconds from the end of the burst until a 10 s window holds more than 80 % of the hidden limit |
| burst_today | the same with the client before issue 26 (`PREVIOUS`) |

With `--seeded`, the two-machine cases start as a second night does: each budget holds the hidden limit,
learned (a minute before) alone — the shared one once, each machine's own file each — and the figures
cover the whole run, the first minute included.

Not a test: it prints a table, it asserts nothing. Results of the last run: `benchmarks/out/rate.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from casavi_pipeline.account import account_id
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.budget_store import PostgresBudgetStore, SqliteBudgetStore, budget_file
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.errors import CasaviError
from casavi_pipeline.casavi.ratelimit import AccountBudget, RateState
from casavi_sandbox import SandboxProcess

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
#: The last commit whose client throttled itself with a fixed token bucket (80/min by default).
BASELINE = "c5cd697"
#: The last commit before issue 26: the adaptive budget, a SQLite file per machine, the limit never decaying.
PREVIOUS = "dcfbcd7"
CASES = ("adaptive", "fixed80", "two", "two_fixed80", "two_machines", "two_machines_today", "burst", "burst_today")
#: The burst case: 429 to everything for this long, after WARM_UP_SECONDS, then this long to recover.
BURST_SECONDS = 90.0
RECOVER_SECONDS = 300.0
#: No ceiling: as far above the hidden limits as it gets (a ceiling would also set the start, at a tenth of it).
CEILING_PER_MINUTE = None
OBJECTS = 3000
WARM_UP_SECONDS = 60.0


def operations(prefix: str):
    """PUTs of OBJECTS contacts, round and round (a re-sent PUT is an update: same request, same cost)."""
    while True:
        for i in range(OBJECTS):
            ref = f"{prefix}-{i:06d}"
            payload = {"id": ref, "lastName": "Weiß", "preferredWayOfContact": "POSTAL"}
            yield Operation(ObjectKind.CONTACT, "upsert", ref, payload)


def old_client(commit: str) -> ModuleType:
    """The client module of `commit`, with its own limiter module, imported from git under another name."""
    modules = {}
    for name in ("ratelimit", "client"):
        source = subprocess.run(
            ["git", "show", f"{commit}:casavi_pipeline/casavi/{name}.py"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        source = source.replace("casavi_pipeline.casavi.ratelimit", "benchmarks_baseline_ratelimit")
        path = Path(tempfile.mkdtemp()) / f"{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"benchmarks_baseline_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["client"]


def worker(argv: list[str]) -> None:
    """One process of a case: PUT until the deadline, then print what the client saw as JSON.

    `where`: the budget's folder (a SQLite file per account in it), or a PostgreSQL URL (the state database).
    """
    mode, url, key, secret, where, prefix, seconds = argv
    deadline = time.monotonic() + float(seconds)
    budget = None
    operation = Operation
    if mode == "fixed80":
        old = old_client(BASELINE)
        client = old.CasaviClient(url, key, secret, max_concurrency=4, requests_per_minute=80.0)
        operation = old.Operation
    elif mode == "previous":
        old = old_client(PREVIOUS)
        ratelimit = sys.modules["benchmarks_baseline_ratelimit"]
        budget = ratelimit.AccountBudget(ratelimit.budget_path(Path(where), url, key), ceiling_per_minute=None)
        client = old.CasaviClient(url, key, secret, budget=budget, max_concurrency=4)
        operation = old.Operation
    else:
        if where.startswith("postgresql://"):
            store = PostgresBudgetStore(where, account_id(key))
        else:
            store = SqliteBudgetStore(budget_file(Path(where), key))
        budget = AccountBudget(store, ceiling_per_minute=CEILING_PER_MINUTE)
        client = CasaviClient(url, key, secret, budget=budget, max_concurrency=4)
    confirmed, failure = 0, None
    started = time.monotonic()
    try:
        ops = (operation(op.kind, op.action, op.ref_id, op.payload) for op in operations(prefix))
        for result in client.execute(itertools.takewhile(lambda _: time.monotonic() < deadline, ops)):
            confirmed += result.ok
    except CasaviError as exc:
        failure = f"{type(exc).__name__} after {time.monotonic() - started:.0f} s: {exc}"
    finally:
        client.close()
        if budget is not None:
            budget.close()
    stats = client.stats
    print(json.dumps({
        "confirmed": confirmed, "requests": stats.requests, "rate_limited": stats.rate_limited,
        "rate_found_per_min": getattr(stats, "rate_per_minute", None),
        "budget_wait_s": getattr(stats, "budget_wait_seconds", None), "failure": failure,
    }))  # fmt: skip


def start_worker(mode: str, sandbox: SandboxProcess, where: str, prefix: str, seconds: float) -> subprocess.Popen:
    account = [sandbox.base_url, sandbox.api_key, sandbox.api_secret]
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.rate", "worker", mode, *account, where, prefix, str(seconds)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def output_of(process: subprocess.Popen) -> dict:
    return json.loads(process.communicate()[0].strip().splitlines()[-1])


def answered(sandbox: SandboxProcess) -> tuple[int, int]:
    """(answers other than 429, 429 answers) the sandbox counted so far."""
    statuses = sandbox.requests()["statuses"]
    limited = int(statuses.get("429", 0))
    return sum(int(n) for n in statuses.values()) - limited, limited


def seed(case: str, where: list[str], sandbox: SandboxProcess, per_second: float) -> None:
    """The budgets as earlier nights left them: each learned `per_second` (a minute ago), alone."""
    url, key = sandbox.base_url, sandbox.api_key
    if case == "two_machines":  # one budget in the database: what either machine learned, both know
        store = PostgresBudgetStore(where[0], account_id(key))
        with store.turn() as now:
            store.write(RateState(rate=per_second, limit=per_second, decreased_at=now - 60))
        store.close()
        return
    old_client(PREVIOUS)  # each machine its own file, each with the rate it found alone
    ratelimit = sys.modules["benchmarks_baseline_ratelimit"]
    for folder in where:
        path = ratelimit.budget_path(Path(folder), url, key)
        ratelimit.AccountBudget(path, ceiling_per_minute=None).close()
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE casavi_rate SET rate = ?, limit_rate = ?, decreased_at = ?",
                         (per_second, per_second, time.time() - 60))  # fmt: skip


def run_case(case: str, limit_per_s: float, seconds: float, postgres_url: str | None, seeded: bool = False) -> dict:
    """One case; `seeded` (two-machine cases): budgets as earlier nights left them, measured from the start."""
    work = Path(tempfile.mkdtemp(prefix=f"rate-{case}-"))
    mode = {"fixed80": "fixed80", "two_fixed80": "fixed80", "two_machines_today": "previous"}.get(case, "adaptive")
    processes = 2 if case.startswith("two") else 1
    if case == "two_machines":  # one budget, in the state database both machines use
        where = [postgres_url] * 2
    elif case == "two_machines_today":  # each machine its own CASAVI_SNAPSHOT_DB, so its own budget file
        where = [str(work / "machine_a"), str(work / "machine_b")]
    else:
        where = [str(work)] * processes
    with SandboxProcess(work / "sandbox.sqlite3", rate_limit=limit_per_s * 60, access_log=False) as sandbox:
        if seeded:
            seed(case, where, sandbox, limit_per_s)
        started = time.monotonic()
        workers = [
            start_worker(mode, sandbox, where[n], f"{9001 + n:04d}", seconds + 5) for n in range(processes)
        ]
        time.sleep(max(0.0, started + (0 if seeded else WARM_UP_SECONDS) - time.monotonic()))
        ok_before, limited_before = answered(sandbox)
        at_minute = time.monotonic()
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        ok_after, limited_after = answered(sandbox)
        window = time.monotonic() - at_minute
        outputs = [output_of(w) for w in workers]
    ok, limited = ok_after - ok_before, limited_after - limited_before
    row = {
        "case": case + (" (seeded)" if seeded else ""),
        "hidden_limit_per_s": limit_per_s,
        "processes": processes,
        "seconds": seconds,
        "of_limit": ok / window / limit_per_s,
        "share_429": limited / max(ok + limited, 1),
        "requests_after_first_minute": ok + limited,
        "rate_found_per_min": [o["rate_found_per_min"] for o in outputs],
        "failures": [o["failure"] for o in outputs if o["failure"]],
        "load": os.getloadavg()[0],
    }
    print(row, file=sys.stderr, flush=True)
    return row


def sampled(sandbox: SandboxProcess, until: float, samples: list[tuple[float, int]]) -> None:
    """Sample (time, answers other than 429) once a second until `until` (monotonic)."""
    while time.monotonic() < until:
        samples.append((time.monotonic(), answered(sandbox)[0]))
        time.sleep(1.0)


def recovered_after(samples: list[tuple[float, int]], since: float, per_second: float) -> float | None:
    """Seconds after `since` until a 10 s window first held more than `per_second` answers per second."""
    for i, (start, count) in enumerate(samples):
        if start < since:
            continue
        later = [(t, c) for t, c in samples[i:] if t >= start + 10]
        if later and (later[0][1] - count) / (later[0][0] - start) > per_second:
            return start - since
    return None


def burst_phase(limit_per_s: float, *, next_run: bool, mode: str = "adaptive") -> dict:
    """A minute at the hidden limit, 90 s of 429 to everything, then RECOVER_SECONDS: in the same run, or
    (`next_run`) in a new process of another Mandant starting as the first one ends with the burst.
    `mode` "previous": the client before issue 26."""
    work = Path(tempfile.mkdtemp(prefix="rate-burst-"))
    samples: list[tuple[float, int]] = []
    with SandboxProcess(work / "sandbox.sqlite3", rate_limit=limit_per_s * 60, access_log=False) as sandbox:
        started = time.monotonic()
        burst_at, burst_over = started + WARM_UP_SECONDS, started + WARM_UP_SECONDS + BURST_SECONDS
        first = start_worker(mode, sandbox, str(work), "9001",
                             (burst_over - started if next_run else burst_over - started + RECOVER_SECONDS) + 2)  # fmt: skip
        sampled(sandbox, burst_at, samples)
        sandbox.configure(refuse_all=True)
        sampled(sandbox, burst_over, samples)
        sandbox.configure(refuse_all=False)
        outputs = []
        if next_run:
            outputs.append(output_of(first))  # it ends with the burst; the next run starts at once
            first = start_worker(mode, sandbox, str(work), "9002", RECOVER_SECONDS + 2)
        sampled(sandbox, burst_over + RECOVER_SECONDS, samples)
        outputs.append(output_of(first))
    recovered = recovered_after(samples, burst_over, 0.8 * limit_per_s)
    during = [c for t, c in samples if burst_at + 5 <= t <= burst_over]
    row = {
        "case": "burst",
        "phase": ("next run" if next_run else "same run") + (" (before issue 26)" if mode == "previous" else ""),
        "hidden_limit_per_s": limit_per_s,
        "recovered_s": recovered,
        "answered_during_burst": during[-1] - during[0] if during else None,
        "rate_found_per_min": [o["rate_found_per_min"] for o in outputs],
        "failures": [o["failure"] for o in outputs if o["failure"]],
        "load": os.getloadavg()[0],
    }
    print(row, file=sys.stderr, flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| case | hidden limit | processes | of limit (after 1st min; seeded: all) | 429 share | rate found | load | ended |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        if r["case"] == "burst":
            continue
        found = ", ".join(f"{f:.0f}/min" if f else "-" for f in r["rate_found_per_min"])
        ended = "; ".join(r["failures"]) or f"ran {r['seconds']:.0f} s"
        lines.append(
            f"| {r['case']} | {r['hidden_limit_per_s']:g}/s | {r['processes']} | {r['of_limit']:.2f} | "
            f"{r['share_429']:.1%} | {found} | {r['load']:.1f} | {ended} |"
        )
    bursts = [r for r in rows if r["case"] == "burst"]
    if bursts:
        lines += ["", "| burst | hidden limit | back above 80 % of it after | rate found at the end | load |",
                  "|---|---:|---:|---|---:|"]  # fmt: skip
        for r in bursts:
            back = f"{r['recovered_s']:.0f} s" if r["recovered_s"] is not None else "not within 300 s"
            found = ", ".join(f"{f:.0f}/min" if f else "-" for f in r["rate_found_per_min"])
            lines.append(f"| {r['phase']} | {r['hidden_limit_per_s']:g}/s | {back} | {found} | {r['load']:.1f} |")
    return "\n".join(lines)


def postgres_server(cases: list[str]):
    """A throw-away PostgreSQL server for the two-machine case (None when no case needs one)."""
    if "two_machines" not in cases:
        return contextlib.nullcontext(None)
    from casavi_pipeline_tests.postgres import MISSING, PostgresServer, pg_bin

    bin_dir = pg_bin()
    if bin_dir is None:
        raise SystemExit(f"two_machines: {MISSING}")

    @contextlib.contextmanager
    def running():
        server = PostgresServer(bin_dir).start()
        try:
            yield server
        finally:
            server.stop()

    return running()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=CASES, help="repeatable; default: all")
    parser.add_argument("--limits", default="1,5,25", help="hidden limits, requests/s, for the one-process cases")
    parser.add_argument("--two-limit", type=float, default=2.0, help="hidden limit of the two-process cases")
    parser.add_argument("--machine-limits", default="2,8", help="hidden limits of the two-machine cases")
    parser.add_argument("--burst-limit", type=float, default=8.0, help="hidden limit of the burst case")
    parser.add_argument(
        "--seeded", action="store_true",
        help="two-machine cases: each budget as earlier nights left it (the hidden limit learned), measured "
        "from the first second instead of after the first minute",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each case (first minute excluded)")
    args = parser.parse_args()
    if args.seconds <= WARM_UP_SECONDS + 10:
        parser.error(f"--seconds must be more than {WARM_UP_SECONDS + 10:.0f}: the first minute is left out")
    cases = args.case or list(CASES)
    rows = []
    with postgres_server(cases) as server:
        for case in cases:
            if case.startswith("burst"):
                mode = "previous" if case == "burst_today" else "adaptive"
                rows += [burst_phase(args.burst_limit, next_run=n, mode=mode) for n in (False, True)]
                continue
            if case.startswith("two_machines"):
                limits = [float(x) for x in args.machine_limits.split(",")]
            elif case.startswith("two"):
                limits = [args.two_limit]
            else:
                limits = [float(x) for x in args.limits.split(",")]
            for limit in limits:
                url = server.url(server.create_database("budget")) if case == "two_machines" else None
                rows.append(run_case(case, limit, args.seconds, url, seeded=args.seeded and "machines" in case))
    print(table(rows))
    OUT.mkdir(exist_ok=True)
    (OUT / "rate.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2:])
    else:
        main()
