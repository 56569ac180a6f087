"""The bare work of one unchanged Mandant's nightly run, without Dagster, in one process:

    python -m benchmarks.bare EXPORT_DIR SNAPSHOT_FILE MANDANT [SANDBOX_URL KEY SECRET]

ingest (seven files read + validated) → map + all quality checks → changeset against a COPY of the given
snapshot (the one the Dagster runs keep, so it is synced: expect 0 writes). With sandbox credentials (new
code only) it also does the read-back the `casavi_remote` asset does on a later night: authenticate +
`RemoteCache.refresh` (incremental: `max_age` 0) + `RemoteCache.take_slice`, on a copy of the Dagster runs' cache.
Compare its wall time with `dagster asset materialize ... --select '*' --partition MANDANT` on the same
data (see RESULTS.md). Uses only `benchmarks.stages` functions, which are the same at commit 661dbb7, so
the old commit runs it too (`PYTHONPATH=<old worktree> <old venv>/bin/python <this file> ...`).
Prints one JSON line; wall time includes imports (as the Dagster run's does).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks import stages  # noqa: E402


def main(argv: list[str]) -> None:
    export, snapshot_file, mandant = Path(argv[0]), Path(argv[1]), argv[2]
    imported = time.perf_counter()
    parts: dict[str, float] = {"imports_s": imported - STARTED}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "snapshots").mkdir()
        shutil.copy(snapshot_file, work / "snapshots" / f"snapshot_{mandant}.duckdb")
        t = time.perf_counter()
        stages.ingest(export, work, mandant)
        parts["ingest_s"] = time.perf_counter() - t
        t = time.perf_counter()
        checks = stages.map_and_check(work, mandant)
        parts["map_checks_s"] = time.perf_counter() - t
        if len(argv) > 3:
            import datetime as dt

            from casavi_pipeline.casavi.client import CasaviClient
            from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
            from casavi_pipeline.state.listing import CACHE_FILE, RemoteCache
            from casavi_pipeline.state.snapshot import Snapshot

            t = time.perf_counter()
            shutil.copy(snapshot_file.parent / CACHE_FILE, work / "snapshots" / CACHE_FILE)
            cache = RemoteCache(work / "snapshots")
            client = CasaviClient(argv[3], argv[4], argv[5], budget=None)
            client.authenticate()
            prefixes = tuple(f"{mandant}{s}" for s in ALLOWED_SEPARATORS)
            cache.refresh(client, prefixes=prefixes, max_age=dt.timedelta(0))
            with Snapshot(work / "snapshots" / f"snapshot_{mandant}.duckdb", mandant) as snap:
                cache.take_slice(snap, ALLOWED_SEPARATORS)
            parts["read_s"] = time.perf_counter() - t
            parts["requests"] = client.stats.requests
            client.close()
        t = time.perf_counter()
        result = stages.changeset(work, mandant)
        parts["changeset_s"] = time.perf_counter() - t
    total = time.perf_counter() - STARTED
    print(json.dumps({**parts, **checks, **result, "total_s": total}))


if __name__ == "__main__":
    main(sys.argv[1:])
