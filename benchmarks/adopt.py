"""Adopting a filled casavi account: `python -m benchmarks.adopt --units 100000`.

Generates an export (`casavi_harness.sample`), seeds a fresh sandbox with exactly what it maps to
(`SandboxProcess.seed` of `casavi_harness.accounts.mapped_bodies`: casavi already holds everything, as after
an import), then runs in ONE child process, Mandant after Mandant, what the first nightly run does:

- map:  read the seven ERP files + `map_mandant`
- read: `RemoteCache.refresh` with a real `CasaviClient` against the sandbox (no rate limit): the account
        listed page by page (pageSize 500, `_links.next`), normalised, hashed into the shared DuckDB cache.
        The first Mandant lists in full (nothing adopted yet); later ones reuse the listing (`max_age` 10 min)
- diff: `RemoteCache.take_slice` (the Mandant's slice) + `adopt_remote` + `compute_changeset` (expect 0 writes)

and prints per Mandant: seconds per part, requests (authentication + list pages), writes; the child's peak
RSS comes from `os.wait4`. Beside it the naive first sync, which PUTs every object (requests = objects + 1):
its wall time is extrapolated from a measured PUT sample (`--put-sample N` objects PUT again to the same
sandbox; 0 skips it), and both are expressed at a casavi rate (`--rate-per-minute`, default 600: the client's
default ceiling, the fastest it goes unless configured otherwise; casavi publishes no limit).

    python -m benchmarks.adopt --units 100000                 # one 100k-unit Mandant (~425 000 objects)
    python -m benchmarks.adopt --units 40000 --mandanten 20   # 20 × 2 000 units: do 20 runs share one listing?
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from casavi_sandbox import SandboxProcess

OUT = Path(__file__).resolve().parent / "out"
SEPARATOR = "-"


# --- the child: map + read + diff, Mandant after Mandant -------------------------------------------------
def work(export: Path, work_dir: Path, url: str, key: str, secret: str, mandanten: list[str]) -> None:
    from benchmarks.stages import KINDS
    from casavi_pipeline.casavi.client import CasaviClient
    from casavi_pipeline.erp.contract import ENTITIES
    from casavi_pipeline.erp.reader import read_entity
    from casavi_pipeline.mapping import map_mandant
    from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
    from casavi_pipeline.mapping.scope import SyncRule
    from casavi_pipeline.state.diff import compute_changeset
    from casavi_pipeline.state.listing import RemoteCache
    from casavi_pipeline.state.snapshot import Snapshot

    cache = RemoteCache(work_dir / "snapshots")
    # the configured Mandanten with any separator: what the asset keeps of the account listing
    prefixes = tuple(f"{m}{s}" for m in mandanten for s in ALLOWED_SEPARATORS)
    rows = []
    for mandant in mandanten:
        # one client per Mandant, as each nightly partition run has its own
        client = CasaviClient(url, key, secret, budget=None, max_concurrency=8)
        started = time.perf_counter()
        erp = {e.name: read_entity(export, mandant, e).frame for e in ENTITIES}
        out = map_mandant(erp, mandant=mandant, separator=SEPARATOR, rule=SyncRule.EMAIL)
        frames = {kind: out[name] for name, kind in KINDS.items()}
        mapped = time.perf_counter()
        with Snapshot(work_dir / "snapshots" / f"snapshot_{mandant}.duckdb", mandant) as snap:
            never_synced = snap.synced_total() == 0
            client.authenticate()  # as the asset does: every run proves the credentials
            read = cache.refresh(
                client, prefixes=prefixes, full=never_synced, max_age=dt.timedelta(minutes=10)
            )
            listed = time.perf_counter()
            in_slice = cache.take_slice(snap, ALLOWED_SEPARATORS)
            adopted = sum(snap.adopt_remote().values()) if never_synced and in_slice else 0
            writes = compute_changeset(snap, frames).total_writes
        done = time.perf_counter()
        rows.append({
            "mandant": mandant, "objects": sum(len(f) for f in frames.values()),
            "map_s": mapped - started, "read_s": listed - mapped, "diff_s": done - listed,
            "total_s": done - started, "requests": client.stats.requests, "pages": client.stats.pages,
            "authentications": client.stats.authentications, "full": read.full, "reused": read.reused,
            "account_objects": read.account_objects, "in_slice": in_slice, "adopted": adopted,
            "writes": writes,
        })  # fmt: skip
        client.close()
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"rows": rows}))


def put_sample(export: Path, url: str, key: str, secret: str, mandant: str, count: int) -> None:
    """PUT the first `count` mapped objects (upsert order) again: the naive first sync's throughput."""
    import itertools

    from casavi_harness.accounts import mapped_bodies
    from casavi_pipeline.casavi.client import CasaviClient, Operation

    ops = [
        Operation(kind, "upsert", body["id"], body)
        for kind, body in itertools.islice(mapped_bodies(export, mandant, separator=SEPARATOR), count)
    ]
    client = CasaviClient(url, key, secret, budget=None, max_concurrency=8)
    started = time.perf_counter()
    ok = sum(1 for result in client.execute(iter(ops)) if result.ok)
    seconds = time.perf_counter() - started
    print(json.dumps({"puts": ok, "requests": client.stats.requests, "seconds": seconds}))
    client.close()


# --- the parent -----------------------------------------------------------------------------------------
def measured(command: list[str]) -> tuple[dict, float, float]:
    """Run a child; return its last JSON line, wall seconds (interpreter start included), peak RSS MiB."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stdout = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), wall, usage.ru_maxrss / 1024


def minutes_at(requests: int, per_minute: float) -> str:
    minutes = requests / per_minute
    return (
        f"{minutes:.1f} min"
        if minutes < 120
        else f"{minutes / 60:.1f} h"
        if minutes < 2880
        else (f"{minutes / 1440:.1f} days")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=100_000, help="units in total (default 100000)")
    parser.add_argument("--mandanten", type=int, default=1, help="Mandanten sharing the units (default 1)")
    parser.add_argument(
        "--rate-per-minute", type=float, default=600.0,
        help="the casavi rate the request counts are expressed at (default 600, the client's default ceiling)",
    )  # fmt: skip
    parser.add_argument(
        "--put-sample", type=int, default=20_000, help="objects PUT to measure the naive rate"
    )
    args = parser.parse_args()

    work_dir = OUT / f"adopt_{args.units}_{args.mandanten}"
    shutil.rmtree(work_dir, ignore_errors=True)
    (work_dir / "snapshots").mkdir(parents=True)
    export = work_dir / "export"
    numbers = [f"{i:04d}" for i in range(1, args.mandanten + 1)]
    _, gen_s, _ = measured([
        sys.executable, "-m", "casavi_harness.sample", "--out", str(export), "--units", str(args.units),
        "--mandanten", ",".join(numbers),
    ])  # fmt: skip

    from casavi_harness.accounts import mapped_bodies

    with SandboxProcess(work_dir / "sandbox.sqlite3", access_log=False) as sandbox:
        started = time.perf_counter()
        seeded = 0
        for mandant in numbers:
            seeded += sandbox.seed(mapped_bodies(export, mandant, separator=SEPARATOR))["seeded"]
        seed_s = time.perf_counter() - started
        creds = [sandbox.base_url, sandbox.api_key, sandbox.api_secret]
        result, child_wall, child_rss = measured([
            sys.executable, "-m", "benchmarks.adopt", "--child", str(export), str(work_dir), *creds,
            ",".join(numbers),
        ])  # fmt: skip
        rows = result["rows"]
        put = {}
        if args.put_sample:
            put, _, _ = measured([
                sys.executable, "-m", "benchmarks.adopt", "--put", str(export), *creds, numbers[0],
                str(args.put_sample),
            ])  # fmt: skip

    objects = sum(r["objects"] for r in rows)
    requests = sum(r["requests"] for r in rows)
    pages = sum(r["pages"] for r in rows)
    naive_requests = objects + len(rows)  # one PUT per object + one authentication per run
    print(f"\ngenerated {args.units} units / {args.mandanten} Mandanten in {gen_s:.1f} s; seeded {seeded} "
          f"objects in {seed_s:.1f} s ({seeded / seed_s:.0f}/s)\n")  # fmt: skip
    print(
        "| Mandant | objects | listing | map s | read s | diff s | total s | requests (auth + pages) | writes |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        kind = "full" if r["full"] else "reused" if r["reused"] else "incremental"
        print(f"| {r['mandant']} | {r['objects']} | {kind} | {r['map_s']:.1f} | {r['read_s']:.1f} | "
              f"{r['diff_s']:.1f} | {r['total_s']:.1f} | {r['requests']} ({r['authentications']} + {r['pages']}) "
              f"| {r['writes']} |")  # fmt: skip
    total_s = sum(r["total_s"] for r in rows)
    print(f"\nmap + read + diff, all Mandanten in one process: {total_s:.1f} s in-process "
          f"({child_wall:.1f} s with interpreter start), peak RSS {child_rss:.0f} MiB")  # fmt: skip
    rpm = args.rate_per_minute
    print(f"requests: {requests} ({pages} list pages) = {minutes_at(requests, rpm)} at {rpm:g}/min")
    line = f"naive first sync (PUT every object): {naive_requests} requests = {minutes_at(naive_requests, rpm)}"
    if put:
        rate = put["puts"] / put["seconds"]
        line += (f" at {rpm:g}/min; against this sandbox ~{naive_requests / rate:.0f} s (extrapolated from "
                 f"{put['puts']} PUTs in {put['seconds']:.1f} s = {rate:.0f}/s)")  # fmt: skip
    print(line)
    print(f"requests ÷ naive: {requests / naive_requests:.3%}")
    (OUT / f"adopt_{args.units}_{args.mandanten}.json").write_text(json.dumps({
        "rows": rows, "child_wall_s": child_wall, "child_rss_mib": child_rss, "seeded": seeded,
        "seed_s": seed_s, "put_sample": put, "naive_requests": naive_requests,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        a = sys.argv[2:]
        work(Path(a[0]), Path(a[1]), a[2], a[3], a[4], a[5].split(","))
    elif len(sys.argv) > 1 and sys.argv[1] == "--put":
        a = sys.argv[2:]
        put_sample(Path(a[0]), a[1], a[2], a[3], a[4], int(a[5]))
    else:
        main()
