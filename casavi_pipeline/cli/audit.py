"""`casavi-pipeline audit`: what the sync did in casavi, write by write (the audit trail).

Every write attempt casavi answered is a row: when (UTC), the run, the Mandant, the object (kind and
reference id), create / update / delete, casavi's HTTP status, for an update the names of the fields that
changed and for a refusal the names of the fields casavi named. So is every deletion a person approved
(`casavi-pipeline deletions`): change `approve`, and in `by` who approved (an OS or Dagster user name).
Never a value: the trail holds no personal data. Rows are kept CASAVI_AUDIT_RETENTION_DAYS (default 400)
in each Mandant's snapshot of each casavi account (a CSV's last column, and the table's when there are
several, names the account), wherever the state lives (CASAVI_SNAPSHOT_DB, or PostgreSQL with
CASAVI_STATE_URL; see `casavi_pipeline.state.audit`).

Snapshots are opened read-only for the few milliseconds of the query. A Mandant whose snapshot a running
sync holds shows only that sync's rows not yet folded in (it is named on stderr; exit code 1).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import duckdb
import pandas as pd

from casavi_pipeline.settings import SettingsError, load_settings
from casavi_pipeline.state import audit
from casavi_pipeline.state.files import StateBusyError
from casavi_pipeline.state.homes import AUDIT
from casavi_pipeline.state.store import StateStore, known_accounts

TABLE_COLUMNS = ("time", "mandant", "run", "kind", "ref_id", "change", "status", "fields", "refused", "by")
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


def query(stores: Sequence[StateStore], filters: Filters) -> tuple[pd.DataFrame, list[str]]:
    """The rows matching `filters` in the state of every casavi account (`stores`), oldest first, each with
    its account (`account`; empty for state kept before accounts were told apart), and the Mandanten whose
    folded rows could not be read."""
    where, params = filters.sql()
    frames, busy = [], []
    for store in stores:
        for mandant in store.mandanten():
            if filters.mandant not in (None, mandant):
                continue
            try:
                snapshot = store.open(mandant, read_only=True)
            except StateBusyError:
                busy.append(mandant)  # a running sync holds it: only its rows not yet folded in are shown
                unfolded, _ = audit.read_lines(store.snapshot_home(mandant).log(AUDIT).read()[0])
                frames.append(_matching(unfolded, None, where, params).assign(account=store.account or ""))
                continue
            with snapshot:
                # The rows a sync appended and has not folded yet (running, or killed) count too; a fold
                # replayed after a crash may have left a row in both places.
                unfolded, _ = audit.read_lines(snapshot.home.log(AUDIT).read()[0])
                rows = _matching(unfolded, snapshot.connection, where, params)
                frames.append(rows.assign(account=store.account or ""))
    rows = pd.concat(frames, ignore_index=True) if frames else audit.as_frame([]).assign(account="")
    return rows.sort_values(["answered_at", "mandant", "ref_id"], kind="stable", ignore_index=True), busy


def _matching(
    unfolded: pd.DataFrame, con: duckdb.DuckDBPyConnection | None, where: str, params: list[object]
) -> pd.DataFrame:
    """The folded rows of `con`'s audit table (none without one) and the unfolded ones, filtered."""
    with contextlib.closing(duckdb.connect()) as scratch:
        target = con.cursor() if con is not None else scratch
        if con is None:
            target.execute(audit.SCHEMA)
        target.register("unfolded", unfolded)
        # A trail begun before approvals existed, not yet opened by a sync, has no `actor` column.
        has_actor = target.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'audit' AND column_name = 'actor'"
        ).fetchone()[0]  # type: ignore[index]
        folded = "audit" if has_actor else "(SELECT *, NULL::VARCHAR AS actor FROM audit)"
        try:
            return target.execute(
                f"SELECT * FROM (SELECT * FROM {folded} UNION ALL "
                "SELECT * FROM unfolded WHERE entry NOT IN (SELECT entry FROM audit)) "
                f"WHERE {where}",
                params,
            ).df()
        finally:
            target.unregister("unfolded")


def _cells(row: pd.Series, *, short: bool, account: bool) -> list[str]:
    when = row["answered_at"].tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    run = row["run_id"][:SHORT_RUN] if short else row["run_id"]
    status = "" if pd.isna(row["status"]) else str(int(row["status"]))
    actor = "" if pd.isna(row["actor"]) else row["actor"]
    cells = [when, row["mandant"], run, row["kind"], row["ref_id"], row["change"], status,
             ", ".join(row["fields"]), ", ".join(row["refused"]), actor]  # fmt: skip
    return [*cells, row["account"]] if account else cells


def write_table(rows: pd.DataFrame, out: TextIO) -> None:
    """An aligned plain-text table (the run id shortened as the Dagster UI shows it); the casavi account
    in a last column when the trail holds more than one."""
    account = rows["account"].nunique() > 1
    header = [*TABLE_COLUMNS, "account"] if account else list(TABLE_COLUMNS)
    lines = [header, *(_cells(row, short=True, account=account) for _, row in rows.iterrows())]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        )


def write_csv(rows: pd.DataFrame, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["time", "mandant", "run_id", *TABLE_COLUMNS[3:], "account"])
    for _, row in rows.iterrows():
        writer.writerow(_cells(row, short=False, account=True))


def run(stores: Sequence[StateStore], filters: Filters, *, as_csv: bool, out: TextIO = sys.stdout) -> int:
    """Print the matching rows; 0, or 1 when a Mandant's snapshot was busy (named on stderr), or 2 when
    `--mandant` names a Mandant without a snapshot here (an empty table would look like "no writes")."""
    known = sorted({mandant for store in stores for mandant in store.mandanten()})
    if filters.mandant is not None and filters.mandant not in known:
        root = stores[0] if stores else None
        where = "in the state database (CASAVI_STATE_URL)" if root and root.url else f"in {root.root if root else 'this folder'}"
        print(
            f"audit: no Mandant {filters.mandant} here: it has no snapshot {where} (Mandanten with an audit "
            f"trail: {', '.join(known) or 'none yet'}); check --mandant, or CASAVI_SNAPSHOT_DB / --snapshot-dir",
            file=sys.stderr,
        )
        return 2
    rows, busy = query(stores, filters)
    (write_csv if as_csv else write_table)(rows, out)
    for mandant in busy:
        print(
            f"audit: the snapshot of Mandant {mandant} is in use by a running sync; only its rows not yet "
            "folded are shown. Ask again when the sync has finished.",
            file=sys.stderr,
        )
    return 1 if busy else 0


def audit_trail(args: argparse.Namespace) -> int:
    try:
        state = load_settings().state if args.snapshot_dir is None else None
        filters = Filters(
            mandant=args.mandant,
            ref_id=args.ref_id,
            run=args.run,
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
        )
    except (SettingsError, ValueError) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    directory, url = (
        (Path(args.snapshot_dir), None)
        if state is None
        else (state.directory, state.url.get_secret_value() if state.url else None)
    )
    stores = [StateStore(directory, url, account=account) for account in known_accounts(directory, url)]
    return run(stores, filters, as_csv=args.csv)


def add(commands: argparse._SubParsersAction) -> None:
    trail = commands.add_parser(
        "audit",
        help="what the sync wrote to casavi, write by write (the audit trail)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trail.add_argument("--mandant", help="only this Mandant, e.g. 0001")
    trail.add_argument("--ref-id", help="only this object, by reference id, e.g. 0001-00042")
    trail.add_argument("--run", help="only this run (its id, or the first characters as the UI shows them)")
    trail.add_argument("--since", help="from this UTC time on (ISO: 2025-01-31 or 2025-01-31T02:00)")
    trail.add_argument("--until", help="before this UTC time (ISO)")
    trail.add_argument("--csv", action="store_true", help="CSV with full run ids instead of a table")
    trail.add_argument(
        "--snapshot-dir",
        type=Path,
        help="default: CASAVI_SNAPSHOT_DB from the settings (environment or .env)",
    )
    trail.set_defaults(command=audit_trail)
