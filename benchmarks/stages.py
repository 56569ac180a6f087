"""One benchmark stage, run in its own process so its wall time and peak RSS are its own.

    python -m benchmarks.stages STAGE EXPORT_DIR WORK_DIR MANDANTEN [SANDBOX_URL KEY SECRET RPM]

Stages hand data on through pickles in WORK_DIR, like Dagster's IO manager does between steps (streamed to
and from the file, as `casavi_pipeline.runs.values` does: never a second copy of the frames as one bytes object).
Prints one JSON line: {"stage", "seconds", "requests", "writes", ...}.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.budget_store import SqliteBudgetStore, budget_file
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.ratelimit import AccountBudget
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.links import write_links
from casavi_pipeline.mapping import map_mandant, quality
from casavi_pipeline.mapping.people import conflicting_persons
from casavi_pipeline.mapping.schemas import contract_problems, payload_problems
from casavi_pipeline.mapping.scope import SyncRule
from casavi_pipeline.state.diff import compute_changeset
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.sync.apply import apply_changeset

SEPARATOR = "-"
KINDS = {
    "properties": ObjectKind.PROPERTY,
    "units": ObjectKind.UNIT,
    "contacts": ObjectKind.CONTACT,
}


def _dump(path: Path, value: object) -> None:
    with path.open("wb") as file:
        pickle.dump(value, file, pickle.HIGHEST_PROTOCOL)


def _load(path: Path) -> Any:  # whatever the stage before stored
    with path.open("rb") as file:
        return pickle.load(file)


def ingest(export: Path, work: Path, mandant: str) -> dict:
    frames = {e.name: read_entity(export, mandant, e).frame for e in ENTITIES}
    _dump(work / f"erp_{mandant}.pkl", frames)
    return {"rows": sum(len(f) for f in frames.values())}


def map_and_check(work: Path, mandant: str) -> dict:
    erp = _load(work / f"erp_{mandant}.pkl")
    ids = {"mandant": mandant, "separator": SEPARATOR}
    people = (erp["mieter"], erp["mietvertraege"], erp["eigentuemer"], erp["eigentuemervertraege"])
    out = map_mandant(erp, **ids, rule=SyncRule.EMAIL)
    outcomes = [quality.unique_ids(name, out[name], SEPARATOR) for name in KINDS]
    outcomes += [
        quality.unique_streets(out["addresses"]),
        quality.unit_references(out["units"], out["properties"]),
        quality.contract_references(out["contracts"], out["units"]),
        quality.erp_foreign_keys(erp),
        quality.email_rule(out["contracts"], out["contacts"], api.ContractType.RENTER.value),
    ]
    conflicting_persons(*people, **ids, rule=SyncRule.EMAIL)
    problems = sum(len(payload_problems(kind, out[name])) for name, kind in KINDS.items())
    problems += len(contract_problems(out["contracts"]))
    _dump(work / f"casavi_{mandant}.pkl", out)
    return {
        "objects": sum(len(out[n]) for n in KINDS),
        "failed_checks": sum(not o.passed for o in outcomes) + (problems > 0),
    }


def _frames(work: Path, mandant: str) -> dict[ObjectKind, object]:
    out = _load(work / f"casavi_{mandant}.pkl")
    return {kind: out[name] for name, kind in KINDS.items()}


def changeset(work: Path, mandant: str) -> dict:
    with Snapshot(work / "snapshots" / f"snapshot_{mandant}.duckdb", mandant) as snap:
        return {"writes": compute_changeset(snap, _frames(work, mandant)).total_writes}


def confirm_all(work: Path, mandant: str) -> dict:
    """Benchmark only: record every pending write as confirmed, as if casavi had taken them all.

    Lets the unchanged re-run be measured at scales whose first sync would take too long to send.
    """
    confirmed = 0
    with Snapshot(work / "snapshots" / f"snapshot_{mandant}.duckdb", mandant) as snap:
        for kind in api.UPSERT_ORDER:
            for op in snap.pending_ops(kind, "upsert"):
                snap.confirm(kind, "upsert", op.ref_id, op.content_hash)
                confirmed += 1
    return {"confirmed": confirmed}


def links(work: Path, mandant: str) -> dict:
    """The Mandant's links files (CSV and Parquet) from its snapshot and mapped frames, as `casavi_links`
    writes them; without a listing in this benchmark the link column is empty (the rows are the work)."""
    with Snapshot(work / "snapshots" / f"snapshot_{mandant}.duckdb", mandant) as snap:
        written = write_links(snap, _frames(work, mandant), work / "links")
    return {"link_rows": written.rows, "files_replaced": len(written.replaced)}


def change_one_percent(work: Path, mandant: str) -> dict:
    """1 % of contacts get a new phone number (as if the ERP changed them)."""
    path = work / f"casavi_{mandant}.pkl"
    out = _load(path)
    contacts = out["contacts"]
    step = 100
    contacts.loc[contacts.index[::step], "telephone"] = "0800 1234567"
    _dump(path, out)
    return {"changed": len(contacts.index[::step])}


def sync(work: Path, mandant: str, client: CasaviClient) -> dict:
    """Changeset + apply: what the sync asset does (the changeset is recomputed: a rerun sees new data)."""
    with Snapshot(work / "snapshots" / f"snapshot_{mandant}.duckdb", mandant) as snap:
        compute_changeset(snap, _frames(work, mandant))
        report = apply_changeset(snap, client)
    return {"writes": report.total_confirmed, "rejected": len(report.rejections)}


def naive_put_all(work: Path, mandant: str, client: CasaviClient) -> dict:
    """The baseline without a snapshot: PUT every object, every time."""
    sent = 0
    for kind, frame in _frames(work, mandant).items():
        ops = (
            Operation(kind, "upsert", row["id"], api.to_payload(kind, row))
            for row in frame.to_dict("records")
        )
        sent += sum(1 for result in client.execute(ops) if result.ok)
    return {"writes": sent}


def main(argv: list[str]) -> None:
    stage, export, work, mandanten = argv[0], Path(argv[1]), Path(argv[2]), argv[3].split(",")
    client = budget = None
    if len(argv) > 4:
        url, key, secret, rpm = argv[4], argv[5], argv[6], float(argv[7])
        # with a sandbox rate limit, the client finds it as it would casavi's (ceiling: the same figure)
        budget = AccountBudget(SqliteBudgetStore(budget_file(work, key)), ceiling_per_minute=rpm) if rpm else None
        client = CasaviClient(url, key, secret, budget=budget, max_concurrency=8)
    started = time.perf_counter()
    totals: dict[str, int] = {}
    for mandant in mandanten:
        if stage == "ingest":
            result = ingest(export, work, mandant)
        elif stage == "map_checks":
            result = map_and_check(work, mandant)
        elif stage == "changeset":
            result = changeset(work, mandant)
        elif stage == "confirm_all":
            result = confirm_all(work, mandant)
        elif stage == "links":
            result = links(work, mandant)
        elif stage == "change_1pct":
            result = change_one_percent(work, mandant)
        elif stage in ("sync_first", "sync_unchanged", "sync_1pct"):
            result = sync(work, mandant, client)
        elif stage == "naive_full_put":
            result = naive_put_all(work, mandant, client)
        else:
            raise SystemExit(f"unknown stage {stage}")
        for key, value in result.items():
            totals[key] = totals.get(key, 0) + value
    seconds = time.perf_counter() - started
    if client is not None:
        totals["requests"] = client.stats.requests
        client.close()
    if budget is not None:
        budget.close()
    print(json.dumps({"stage": stage, "seconds": round(seconds, 2), **totals}))


if __name__ == "__main__":
    main(sys.argv[1:])
