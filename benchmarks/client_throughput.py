"""Client throughput against the sandbox: upserts/s with 20 ms injected latency at concurrency 1, 4, 16,
and the share of a sandbox rate limit the client sustains when its budget's ceiling is that limit (the
adaptive rate and the limit-finding are measured by `benchmarks.rate`).

    python -m benchmarks.client_throughput [--upserts 400] [--rate-limit 1200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.budget_store import SqliteBudgetStore
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.ratelimit import AccountBudget
from casavi_sandbox import SandboxProcess


def ops(n: int, prefix: str):
    for i in range(n):
        ref = f"{prefix}-{i:06d}"
        yield Operation(
            ObjectKind.CONTACT,
            "upsert",
            ref,
            {"id": ref, "lastName": "Weiß", "preferredWayOfContact": "POSTAL"},
        )


def timed(client: CasaviClient, n: int, prefix: str) -> float:
    started = time.perf_counter()
    confirmed = sum(r.ok for r in client.execute(ops(n, prefix)))
    assert confirmed == n
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upserts", type=int, default=400)
    parser.add_argument("--rate-limit", type=float, default=1200, help="requests/minute for the pacing run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    with SandboxProcess(work / "sandbox.sqlite3", latency_ms=20) as sandbox:
        print("| concurrency | upserts/s (20 ms latency) |\n|---:|---:|")
        for concurrency in (1, 4, 16):
            with CasaviClient(sandbox.base_url, sandbox.api_key, sandbox.api_secret,
                              max_concurrency=concurrency, budget=None) as client:  # fmt: skip
                print(f"| {concurrency} | {timed(client, args.upserts, f'c{concurrency}'):.0f} |")
        sandbox.configure(latency_ms=0, rate_limit=args.rate_limit)
        limit_per_s = args.rate_limit / 60
        n = int(limit_per_s * 60)  # one minute of traffic at the limit
        with AccountBudget(SqliteBudgetStore(work / "budget.sqlite3"), ceiling_per_minute=args.rate_limit) as budget, \
                CasaviClient(sandbox.base_url, sandbox.api_key, sandbox.api_secret,
                             max_concurrency=4, budget=budget) as client:  # fmt: skip
            rate = timed(client, n, "paced")
            print(f"\nrate limit {args.rate_limit:.0f}/min (sandbox and client): {rate:.1f} upserts/s = "
                  f"{rate / limit_per_s:.0%} of the limit over {n} upserts; 429s seen: {client.stats.rate_limited}")  # fmt: skip


if __name__ == "__main__":
    main()
