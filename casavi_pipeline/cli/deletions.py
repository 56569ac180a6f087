"""`casavi-pipeline deletions --mandant M [--approve ID [ID ...] | --approve-all]`: the Mandant's pending
deletions (kind, id, since, why, approved?), and a person's approval of some or all of them: the next run of
the Mandant deletes them in casavi (`state/deletions.py`)."""

from __future__ import annotations

import argparse
import getpass
import sys

from casavi_pipeline.account import account_id
from casavi_pipeline.cli.mandant import settings_for
from casavi_pipeline.settings import Settings
from casavi_pipeline.state import deletions
from casavi_pipeline.state.deletions import Deletions, PendingDeletion, UnknownDeletionError
from casavi_pipeline.state.files import StateBusyError, StateCorruptError
from casavi_pipeline.state.store import StateStore


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
    settings = settings_for("deletions", args.mandant)
    if settings is None:
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


def add(commands: argparse._SubParsersAction) -> None:
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
