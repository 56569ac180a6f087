"""`casavi-pipeline`: the operator's commands of an installed casavi_pipeline (no Dagster needed).

    casavi-pipeline check-casavi [--write-test]
        compare the casavi account of the settings with casavi_pipeline's model of its API
        (exit 0 it matches, 1 it contradicts the model, 2 it cannot be checked: settings, network,
        credentials, or an empty account, which compares nothing without --write-test)
    casavi-pipeline sync --mandant M [--dry-run]
        run the main job for one Mandant in the Dagster instance ($DAGSTER_HOME) and print a short
        summary: progress, per kind what casavi confirmed, a dry run's preview, or why it stopped
    casavi-pipeline audit [--mandant M] [--ref-id ID] [--run RUN] [--since T] [--until T] [--csv]
        the audit trail: every write attempt casavi answered (names and statuses, never values)
    casavi-pipeline deletions --mandant M [--approve ID [ID ...] | --approve-all]
        the Mandant's pending deletions (kind, id, since, why, approved?); approve some or all of them:
        the next run of the Mandant deletes them in casavi

Settings come from the environment or `.env` in the working directory, exactly as the code location
reads them (README, section Settings). In the repository, `./run check-casavi` runs the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from casavi_pipeline import audit, run_sync
from casavi_pipeline.account import account_id
from casavi_pipeline.casavi import conformance
from casavi_pipeline.casavi.budget_store import open_budget
from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.database import StateUnavailableError
from casavi_pipeline.settings import Settings, SettingsError, load_settings
from casavi_pipeline.state import deletions
from casavi_pipeline.state.deletions import Deletions, PendingDeletion, UnknownDeletionError
from casavi_pipeline.state.files import StateBusyError, StateCorruptError
from casavi_pipeline.state.store import StateStore, known_accounts

#: The check tries a request at most this often: a casavi that is down says so in seconds, not minutes.
CHECK_MAX_ATTEMPTS = 3
CHECK_MAX_RETRY_SECONDS = 30.0


@contextlib.contextmanager
def check_casavi_client(settings: Settings) -> Iterator[CasaviClient]:
    """A client for the check, from the sync's own settings, pacing its requests through the account's
    budget like every other process that talks to the account."""
    casavi, state = settings.casavi, settings.state
    key = casavi.api_key.get_secret_value()
    with (
        open_budget(
            state.directory,
            state.url.get_secret_value() if state.url else None,
            key,
            ceiling_per_minute=casavi.requests_per_minute or None,
            warn=lambda line: print(f"check-casavi: {line}", file=sys.stderr),
        ) as budget,
        CasaviClient(
            casavi.base_url,
            key,
            casavi.api_secret.get_secret_value(),
            budget=budget,
            max_attempts=CHECK_MAX_ATTEMPTS,
            max_retry_seconds=CHECK_MAX_RETRY_SECONDS,
        ) as client,
    ):
        yield client


def check_casavi(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"check-casavi: cannot check: {exc}", file=sys.stderr)
        return conformance.CANNOT_CHECK
    try:
        with check_casavi_client(settings) as client:
            report = conformance.check_account(
                client, separator=settings.sync.id_separator, write_test=args.write_test
            )
    except StateUnavailableError as exc:  # the account's request budget lives there
        print(f"check-casavi: cannot check: {exc}", file=sys.stderr)
        return conformance.CANNOT_CHECK
    if report.exit_code == conformance.CANNOT_CHECK:
        print(f"check-casavi: {report.summary}", file=sys.stderr)
    else:
        print("\n".join(report.lines()))
    return report.exit_code


def audit_trail(args: argparse.Namespace) -> int:
    try:
        state = load_settings().state if args.snapshot_dir is None else None
        filters = audit.Filters(
            mandant=args.mandant,
            ref_id=args.ref_id,
            run=args.run,
            since=audit.parse_time(args.since) if args.since else None,
            until=audit.parse_time(args.until) if args.until else None,
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
    return audit.run(stores, filters, as_csv=args.csv)


def _account_store(settings: Settings) -> StateStore:
    """The state of the casavi account the settings name (their API key, hashed), where they keep it."""
    state = settings.state
    return StateStore(
        state.directory,
        state.url.get_secret_value() if state.url else None,
        account=account_id(settings.casavi.api_key.get_secret_value()),
    )


def _os_user() -> str:
    """Who approves from the command line: the OS user (no tenant data; it goes into the audit trail)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name known to the system (a container's bare uid)
        return "unknown"


def _deletions_table(rows: list[PendingDeletion]) -> list[str]:
    def approved(row: PendingDeletion) -> str:
        if row.approved_at is None:
            return "no"
        held = f", held by {row.held_by}" if row.held_by else ""
        return f"yes, by {row.approved_by} {deletions.minute(row.approved_at)}{held}"

    cells = [("kind", "id", "since", "why", "approved")] + [
        (r.kind, r.ref_id, deletions.minute(r.since), r.why, approved(r)) for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]


def pending_deletions(args: argparse.Namespace) -> int:
    """`casavi-pipeline deletions`: list the Mandant's pending deletions, or approve some or all of them."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"deletions: {exc}", file=sys.stderr)
        return 2
    if args.mandant not in settings.mandanten:
        print(f"deletions: Mandant {args.mandant} is not in CASAVI_MANDANTEN ({', '.join(settings.mandanten)})",
              file=sys.stderr)  # fmt: skip
        return 2
    store = _account_store(settings)
    approving = args.approve_all or bool(args.approve)
    try:
        if approving and store.snapshot_home(args.mandant).exists():
            with store.open(args.mandant) as snapshot:  # the writer: refused while a sync holds it
                ids = None if args.approve_all else args.approve
                approved = deletions.approve(snapshot, ids, by=_os_user(), run_id="cli")
            named = ", ".join(f"{row.kind} {row.ref_id}" for row in approved) or "nothing new"
            print(f"Mandant {args.mandant}: approved {named}")
        elif approving and args.approve:
            raise UnknownDeletionError(
                f"Mandant {args.mandant} has no state yet (no sync ran): nothing waits for deletion, nothing was approved"
            )
        with store.open(args.mandant, read_only=True) as snapshot:
            rows = deletions.pending(snapshot)
    except StateBusyError:
        print(f"deletions: a sync of Mandant {args.mandant} holds its snapshot; try again when it has finished "
              "(nothing was approved)", file=sys.stderr)  # fmt: skip
        return 1
    except (UnknownDeletionError, StateCorruptError) as exc:
        print(f"deletions: {exc}", file=sys.stderr)
        return 1
    print("\n".join(_deletions_table(rows)))
    print(_deletions_footer(args.mandant, rows, settings.sync.deletions))
    return 0


def _deletions_footer(mandant: str, rows: list[PendingDeletion], setting: Deletions) -> str:
    if setting is Deletions.KEEP:
        return (
            f"{len(rows)} objects out of scope are kept in casavi, no longer synced (CASAVI_DELETIONS=keep)."
        )
    if setting is Deletions.DELETE:
        return f"CASAVI_DELETIONS=delete: the next run of Mandant {mandant} deletes what is out of scope, approved or not."
    approved = sum(row.approved_at is not None and row.held_by is None for row in rows)
    waiting = sum(row.waits_for_a_person for row in rows)
    return (
        f"{waiting} wait for a person, {approved} approved: the next run of Mandant {mandant} deletes those "
        f"approved (CASAVI_DELETIONS={setting.value}). Approve: casavi-pipeline deletions --mandant {mandant} "
        "--approve ID [ID ...] (or --approve-all)."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casavi-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check-casavi",
        help="compare the casavi account with casavi_pipeline's model (read-only)",
        description=conformance.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--write-test",
        action="store_true",
        help="also create, read back and delete one property, unit and contact under the reserved "
        f"reference-id prefix {conformance.RESERVED_PREFIX!r} (for a casavi TEST account only)",
    )
    check.set_defaults(command=check_casavi)
    trail = commands.add_parser(
        "audit",
        help="what the sync wrote to casavi, write by write (the audit trail)",
        description=audit.__doc__,
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
    _add_sync(commands)
    _add_deletions(commands)
    return parser


def _add_deletions(commands: argparse._SubParsersAction) -> None:
    pending = commands.add_parser(
        "deletions",
        help="the Mandant's pending deletions; approve some or all of them",
        description=deletions.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pending.add_argument("--mandant", required=True, help="the Mandant (one of CASAVI_MANDANTEN)")
    which = pending.add_mutually_exclusive_group()
    which.add_argument(
        "--approve",
        nargs="+",
        metavar="ID",
        help="approve these pending deletions by reference id (`kind:id` when one id names two kinds)",
    )
    which.add_argument(
        "--approve-all", action="store_true", help="approve every pending deletion of the Mandant"
    )
    pending.set_defaults(command=pending_deletions)


def _add_sync(commands: argparse._SubParsersAction) -> None:
    sync = commands.add_parser(
        "sync",
        help="run the main job for one Mandant and print a short summary",
        description=run_sync.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync.add_argument("--mandant", required=True, help="the Mandant (one of CASAVI_MANDANTEN)")
    sync.add_argument(
        "--dry-run", action="store_true", help="compute and preview the changeset, write nothing to casavi"
    )
    sync.set_defaults(command=run_sync.sync)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
