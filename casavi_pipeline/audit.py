"""`casavi-pipeline audit`: what the sync did in casavi, write by write (the audit trail).

Every write attempt casavi answered is a row: when (UTC), the run, the Mandant, the object (kind and
reference id), create / update / delete, casavi's HTTP status, for an update the names of the fields that
changed and for a refusal the names of the fields casavi named. Never a value: the trail holds no
personal data. Rows are kept CASAVI_AUDIT_RETENTION_DAYS (default 400) in each Mandant's snapshot under
CASAVI_SNAPSHOT_DB (see `casavi_pipeline.state.audit`).

Snapshots are opened read-only for the few milliseconds of the query. A Mandant whose snapshot a running
sync holds shows only that sync's rows not yet folded in (it is named on stderr; exit code 1).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import duckdb
import pandas as pd

from casavi_pipeline.state import audit
from casavi_pipeline.state.logs import FileLog

#: The Mandant's snapshot files; moved-aside copies (`.duckdb.corrupt-*`) do not match.
SNAPSHOT_GLOB = "snapshot_*.duckdb"
TABLE_COLUMNS = ("time", "mandant", "run", "kind", "ref_id", "change", "status", "fields", "refused")
#: The run id as Dagster's UI shows it: its first 8 characters (`--run` accepts such a prefix).
SHORT_RUN = 8


@dataclass(frozen=True)
class Filters:
    mandant: str | None = None
    ref_id: str | None = None
    run: str | None = None  # a run id or its prefix
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def sql(self) -> tuple[str, list[object]]:
        """A WHERE clause over the audit columns, and its parameters."""
        clauses, params = ["TRUE"], []
        for clause, value in (
            ("ref_id = ?", self.ref_id),
            ("starts_with(run_id, ?)", self.run),
            ("answered_at >= ?", self.since),
            ("answered_at < ?", self.until),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return " AND ".join(clauses), params


def parse_time(text: str) -> dt.datetime:
    """A date or date-time in ISO format; without a zone it is UTC (the zone the trail shows)."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _mandant_of(path: Path) -> str:
    return path.name.removeprefix("snapshot_").removesuffix(".duckdb")


def _attach(con: duckdb.DuckDBPyConnection, path: Path) -> bool | None:
    """Attach a snapshot read-only as `snap`: True if it holds an audit table, None if a sync holds it."""
    quoted = str(path).replace("'", "''")
    try:
        con.execute(f"ATTACH '{quoted}' AS snap (READ_ONLY)")
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        return None
    held = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'snap' AND table_name = 'audit'"
    ).fetchone()[0]  # type: ignore[index]
    return bool(held)


def query(snapshot_dir: Path, filters: Filters) -> tuple[pd.DataFrame, list[str]]:
    """The rows matching `filters`, oldest first, and the Mandanten whose folded rows could not be read."""
    paths = sorted(Path(snapshot_dir).glob(SNAPSHOT_GLOB))
    if filters.mandant is not None:
        paths = [p for p in paths if _mandant_of(p) == filters.mandant]
    where, params = filters.sql()
    frames, busy = [], []
    with contextlib.closing(duckdb.connect()) as con:
        con.execute(audit.SCHEMA)  # an empty table to stand for a snapshot without one
        for path in paths:
            unfolded, _ = audit.read_lines(FileLog(path.with_suffix(".audit")).read()[0])
            con.register("unfolded", unfolded)
            attached = _attach(con, path)
            if attached is None:
                busy.append(_mandant_of(path))
            source = "snap.audit" if attached else "audit"
            try:
                # The rows a sync appended and has not folded yet (running, or killed) count too;
                # a fold replayed after a crash may have left a row in both places.
                frames.append(
                    con.execute(
                        f"SELECT * FROM (SELECT * FROM {source} UNION ALL "
                        f"SELECT * FROM unfolded WHERE entry NOT IN (SELECT entry FROM {source})) "
                        f"WHERE {where}",
                        params,
                    ).df()
                )
            finally:
                con.unregister("unfolded")
                con.execute("DETACH DATABASE IF EXISTS snap")
    rows = pd.concat(frames, ignore_index=True) if frames else audit.as_frame([])
    return rows.sort_values(["answered_at", "mandant", "ref_id"], kind="stable", ignore_index=True), busy


def _cells(row: pd.Series, *, short: bool) -> list[str]:
    when = row["answered_at"].tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    run = row["run_id"][:SHORT_RUN] if short else row["run_id"]
    status = "" if pd.isna(row["status"]) else str(int(row["status"]))
    return [when, row["mandant"], run, row["kind"], row["ref_id"], row["change"], status,
            ", ".join(row["fields"]), ", ".join(row["refused"])]  # fmt: skip


def write_table(rows: pd.DataFrame, out: TextIO) -> None:
    """An aligned plain-text table (the run id shortened as the Dagster UI shows it)."""
    lines = [list(TABLE_COLUMNS), *(_cells(row, short=True) for _, row in rows.iterrows())]
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_COLUMNS))]
    for line in lines:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        )


def write_csv(rows: pd.DataFrame, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["time", "mandant", "run_id", *TABLE_COLUMNS[3:]])
    for _, row in rows.iterrows():
        writer.writerow(_cells(row, short=False))


def run(snapshot_dir: Path, filters: Filters, *, as_csv: bool, out: TextIO = sys.stdout) -> int:
    """Print the matching rows; 0, or 1 when a Mandant's snapshot was busy (named on stderr)."""
    rows, busy = query(snapshot_dir, filters)
    (write_csv if as_csv else write_table)(rows, out)
    for mandant in busy:
        print(
            f"audit: the snapshot of Mandant {mandant} is in use by a running sync; only its rows not yet "
            "folded are shown. Ask again when the sync has finished.",
            file=sys.stderr,
        )
    return 1 if busy else 0
