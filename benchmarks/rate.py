"""`./run bench rate`: does the client find a rate limit casavi does not publish, and share it?

    python -m benchmarks.rate                                  # every case below (about 17 minutes)
    python -m benchmarks.rate --case adaptive --limits 5       # one case, one hidden limit
    python -m benchmarks.rate --case two --seconds 90

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

Not a test: it prints a table, it asserts nothing. Results of the last run: `benchmarks/out/rate.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.errors import CasaviError
from casavi_pipeline.casavi.ratelimit import AccountBudget, budget_path
from casavi_sandbox import SandboxProcess

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
#: The last commit whose client throttled itself with a fixed token bucket (80/min by default).
BASELINE = "c5cd697"
CASES = ("adaptive", "fixed80", "two", "two_fixed80")
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


def baseline_client() -> ModuleType:
    """The client module of BASELINE, with its fixed-rate limiter, imported from git under another name."""
    modules = {}
    for name in ("ratelimit", "client"):
        source = subprocess.run(
            ["git", "show", f"{BASELINE}:casavi_pipeline/casavi/{name}.py"],
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
    """One process of a case: PUT until the deadline, then print what the client saw as JSON."""
    mode, url, key, secret, budget_dir, prefix, seconds = argv
    deadline = time.monotonic() + float(seconds)
    budget = None
    if mode == "fixed80":
        old = baseline_client()
        client = old.CasaviClient(url, key, secret, max_concurrency=4, requests_per_minute=80.0)
        operation = old.Operation
    else:
        budget = AccountBudget(budget_path(Path(budget_dir), url, key), ceiling_per_minute=CEILING_PER_MINUTE)
        client = CasaviClient(url, key, secret, budget=budget, max_concurrency=4)
        operation = Operation
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


def answered(sandbox: SandboxProcess) -> tuple[int, int]:
    """(answers other than 429, 429 answers) the sandbox counted so far."""
    statuses = sandbox.requests()["statuses"]
    limited = int(statuses.get("429", 0))
    return sum(int(n) for n in statuses.values()) - limited, limited


def run_case(case: str, limit_per_s: float, seconds: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"rate-{case}-"))
    mode = "fixed80" if case.endswith("fixed80") else "adaptive"
    processes = 2 if case.startswith("two") else 1
    with SandboxProcess(work / "sandbox.sqlite3", rate_limit=limit_per_s * 60, access_log=False) as sandbox:
        started = time.monotonic()
        account = [sandbox.base_url, sandbox.api_key, sandbox.api_secret]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.rate", "worker", mode, *account, str(work),
                 f"{9001 + n:04d}", str(seconds + 5)],
                cwd=REPO, stdout=subprocess.PIPE, text=True,
            )
            for n in range(processes)
        ]  # fmt: skip
        time.sleep(max(0.0, started + WARM_UP_SECONDS - time.monotonic()))
        ok_before, limited_before = answered(sandbox)
        at_minute = time.monotonic()
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        ok_after, limited_after = answered(sandbox)
        window = time.monotonic() - at_minute
        outputs = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    ok, limited = ok_after - ok_before, limited_after - limited_before
    row = {
        "case": case,
        "hidden_limit_per_s": limit_per_s,
        "processes": processes,
        "seconds": seconds,
        "of_limit": ok / window / limit_per_s,
        "share_429": limited / max(ok + limited, 1),
        "requests_after_first_minute": ok + limited,
        "rate_found_per_min": [o["rate_found_per_min"] for o in outputs],
        "failures": [o["failure"] for o in outputs if o["failure"]],
    }
    print(row, file=sys.stderr, flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| case | hidden limit | processes | of limit (after 1st min) | 429 share | rate found | ended |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        found = ", ".join(f"{f:.0f}/min" if f else "-" for f in r["rate_found_per_min"])
        ended = "; ".join(r["failures"]) or f"ran {r['seconds']:.0f} s"
        lines.append(
            f"| {r['case']} | {r['hidden_limit_per_s']:g}/s | {r['processes']} | {r['of_limit']:.2f} | "
            f"{r['share_429']:.1%} | {found} | {ended} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=CASES, help="repeatable; default: all")
    parser.add_argument("--limits", default="1,5,25", help="hidden limits, requests/s, for the one-process cases")
    parser.add_argument("--two-limit", type=float, default=2.0, help="hidden limit of the two-process cases")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each case (first minute excluded)")
    args = parser.parse_args()
    if args.seconds <= WARM_UP_SECONDS + 10:
        parser.error(f"--seconds must be more than {WARM_UP_SECONDS + 10:.0f}: the first minute is left out")
    rows = []
    for case in args.case or CASES:
        limits = [args.two_limit] if case.startswith("two") else [float(x) for x in args.limits.split(",")]
        rows.extend(run_case(case, limit, args.seconds) for limit in limits)
    print(table(rows))
    OUT.mkdir(exist_ok=True)
    (OUT / "rate.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2:])
    else:
        main()
