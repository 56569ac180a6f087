"""An unchanged night of one Mandant with each state backend: `python -m benchmarks state --units 25000`.

1. One Mandant (0001) of `--units` units is generated and a casavi sandbox (a real process) is seeded with
   exactly its mapping, as a first sync would leave it; one object per kind is stored again once the
   bulk is older than the incremental read's overlap (`listing.OVERLAP`, a minute), so a later night's
   read re-reads those few objects, not the whole bulk. A throw-away PostgreSQL server is started (`casavi_pipeline_tests.postgres`, Debian's
   binaries; `./run setup-system` installs them).
2. Through the real job, `dagster asset materialize -m casavi_pipeline.definitions --select '*'
   --partition 0001` (as `benchmarks/dagster_run.py`), one fresh DAGSTER_HOME for all runs:
   - the first run of each backend adopts the account (full listing, 0 writes) and fills the state;
   - a) DuckDB (CASAVI_SNAPSHOT_DB only): an unchanged night;
   - b) PostgreSQL (CASAVI_STATE_URL), warm working copy: an unchanged night;
   - c) PostgreSQL from a fresh container: an empty CASAVI_SNAPSHOT_DB, every state file fetched;
   - d) DuckDB from a fresh container: an empty folder, so the snapshot and the listing are rebuilt
        from casavi (a full listing, adopted).
   Every night reads casavi incrementally where it can (CASAVI_READ_MAX_AGE_MINUTES=0), as a later
   night does, instead of reusing the first run's listing.
3. Per night: wall seconds of the CLI (interpreter start included), peak RSS, requests the sandbox
   counted, seconds of the Dagster steps that touch the state (from the run's event log), and for
   PostgreSQL what `casavi_state_heads` holds (bytes raw, bytes of the compressed chunks).
4. Fetching and saving alone, in this process, on the state the nights left: `PostgresHome.open` into an
   empty folder (fetch + decompress) and one save of each file (digest + compress + insert a generation).

Not a test: it prints a table and a JSON line, it asserts only that every night wrote nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.dagster_run import MANDANT, measured, step_seconds
from casavi_pipeline.state.listing import OVERLAP

TREE = Path(__file__).resolve().parent.parent
OUT = TREE / "benchmarks" / "out"
STATE_STEPS = ("erp_export", "casavi_remote", "casavi_changeset", "casavi_sync")


def postgres_figures(server, database: str) -> dict[str, dict[str, int]]:
    """Per state name: raw bytes (casavi_state_heads.bytes), compressed bytes stored, generation."""
    sql = (
        "SELECT h.name, h.bytes, coalesce(sum(length(c.data)), 0), h.generation FROM casavi_state_heads h "
        "LEFT JOIN casavi_state_chunks c USING (name, generation) GROUP BY h.name, h.bytes, h.generation "
        "ORDER BY 1"
    )
    figures = {}
    for line in server.psql(database, sql).splitlines():
        name, raw, stored, generation = line.split("|")
        figures[name] = {"bytes": int(raw), "stored_bytes": int(stored), "generation": int(generation)}
    return figures


def fetch_and_save(url: str, names: list[str]) -> dict[str, dict[str, float]]:
    """Each state file fetched into an empty folder, then saved once as a new generation, timed alone."""
    from casavi_pipeline.state.postgres import PostgresHome

    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            home = PostgresHome(url, name, Path(tmp) / name, wait=True)
            started = time.perf_counter()
            home.open(read_only=False)
            fetched = time.perf_counter() - started
            home._digest = None  # as if the fold had changed the file: `saved` stores a generation
            started = time.perf_counter()
            home.saved([])
            saved = time.perf_counter() - started
            home.close()
            timings[name] = {"fetch_s": fetched, "save_s": saved, "mib": (Path(tmp) / name).stat().st_size / 2**20}
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=25_000)
    parser.add_argument("--export", type=Path, help="reuse this export (one Mandant 0001) instead of generating")
    args = parser.parse_args()
    from casavi_harness.accounts import mapped_bodies
    from casavi_pipeline_tests.postgres import MISSING, PostgresServer, pg_bin
    from casavi_sandbox import SandboxProcess

    bin_dir = pg_bin()
    if bin_dir is None:
        raise SystemExit(MISSING)
    work = OUT / f"state_{args.units}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = str(TREE / ".venv" / "bin")
    env = {**os.environ, "PATH": f"{py}:{os.environ['PATH']}", "PYTHONPATH": str(TREE)}
    export = args.export.resolve() if args.export else work / "export"
    if not args.export:
        measured(
            [sys.executable, "-m", "casavi_harness.sample", "--out", str(export), "--units", str(args.units),
             "--mandanten", MANDANT],
            env, TREE,
        )  # fmt: skip
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(TREE / "dagster.yaml", home / "dagster.yaml")
    server = PostgresServer(bin_dir).start()
    rows: list[dict] = []
    try:
        database = server.create_database("state")
        url = server.url(database)
        with SandboxProcess(work / "sandbox.sqlite3", access_log=False) as sandbox:
            bodies = list(mapped_bodies(export, MANDANT))
            sandbox.seed(bodies)
            # One object per kind stored again once the bulk is older than the read's overlap: the nights'
            # incremental reads then re-read those few, as after a real day, not the whole bulk seed.
            time.sleep(OVERLAP.total_seconds() + 1)
            sandbox.seed(list({kind: (kind, body) for kind, body in bodies}.values()))
            env |= {
                "DAGSTER_HOME": str(home), "ERP_EXPORT_DIR": str(export), "CASAVI_MANDANTEN": MANDANT,
                "CASAVI_BASE_URL": sandbox.base_url, "CASAVI_API_KEY": sandbox.api_key,
                "CASAVI_API_SECRET": sandbox.api_secret, "CASAVI_REQUESTS_PER_MINUTE": "0",
                "CASAVI_MAX_CONCURRENCY": "8", "CASAVI_READ_MAX_AGE_MINUTES": "0",
            }  # fmt: skip
            measured(
                [sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().get_runs(limit=1)"], env, TREE
            )  # the instance's storage, created outside the measured runs
            dagster = [f"{py}/dagster", "asset", "materialize", "-m", "casavi_pipeline.definitions", "--select",
                       "*", "--partition", MANDANT]  # fmt: skip

            def night(label: str, folder: Path, state_url: str | None) -> dict:
                run_env = {**env, "CASAVI_SNAPSHOT_DB": str(folder)}
                if state_url:
                    run_env["CASAVI_STATE_URL"] = state_url
                sandbox.reset(objects=False, knobs=False)  # the request counters only
                out, wall, rss = measured(dagster, run_env, TREE)
                (work / f"{label.split(')')[0].strip('(')}.log").write_text(out)
                counted = sandbox.requests()
                steps, span = step_seconds(home)
                writes = sandbox.write_count()
                if writes and "first" not in label:
                    raise SystemExit(f"{label}: {writes} writes on an unchanged night")
                row = {"what": label, "seconds": wall, "rss": rss, "requests": counted["total"],
                       "writes": writes, "run_span_s": span,
                       **{f"{s}_s": steps[s] for s in STATE_STEPS if s in steps}}  # fmt: skip
                if state_url:
                    row["postgres"] = postgres_figures(server, database)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                return row

            duck, pg = work / "duckdb", work / "postgres"
            night("first run, DuckDB (adopts)", duck, None)
            night("a) DuckDB", duck, None)
            night("first run, PostgreSQL (adopts)", pg, url)
            night("b) PostgreSQL, warm working copy", pg, url)
            night("c) PostgreSQL, fresh container", work / "postgres_fresh", url)
            night("d) DuckDB, fresh container", work / "duckdb_fresh", None)
        names = sorted(rows[-2]["postgres"])
        timings = fetch_and_save(url, names)
    finally:
        server.stop()
    print(json.dumps({"units": args.units, "rows": rows, "fetch_save": timings}))
    print(
        "\n| night | wall s | peak RSS MiB | requests | writes | casavi_remote s | casavi_changeset s | casavi_sync s |"
        "\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        cells = [r["what"], f"{r['seconds']:.1f}", f"{r['rss']:.0f}", str(r["requests"]), str(r["writes"]),
                 *(f"{r.get(f'{s}_s', 0):.1f}" for s in STATE_STEPS[1:])]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print("\n| state file in PostgreSQL | bytes (heads) | stored (compressed) | fetch s | save s |\n|---|---:|---:|---:|---:|")
    stored = rows[-2]["postgres"]
    for name in names:
        print(f"| {name} | {stored[name]['bytes']:,} | {stored[name]['stored_bytes']:,} | "
              f"{timings[name]['fetch_s']:.2f} | {timings[name]['save_s']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
