"""`casavi-pipeline erase-personal-data M` (`./run erase-personal-data M`): erase what casavi_pipeline keeps about Mandant M's people on this machine.

A housing company must answer erasure requests (GDPR art. 17). casavi_pipeline keeps personal data
(names, emails, phones, postal addresses) in these places of its own, under CASAVI_SNAPSHOT_DB and,
when CASAVI_STATE_URL is set, in its PostgreSQL database (docs/operating.md, "Where personal data lives"):

- the run values: the ERP and casavi frames between steps (`values/<run id>/<asset>/<M>`, kept only
  while a run may need them: `casavi_pipeline/runs/values.py`), M's of every run deleted here;
- the Mandant's snapshot, of every casavi account whose state is kept here (a test account and production,
  say): the bodies last written or read per object, set to NULL here (ids and hashes stay: all the sync
  needs to know what casavi holds) and the pending changeset deleted;
- the account-wide listing of casavi: the bodies of the objects with M's prefix, set to NULL here;
- copies moved aside as unreadable, of the Mandant's snapshot and of the listing (`*.corrupt-*`, their
  `.wal` and journals, local files also when the state is in PostgreSQL; there the rows under such names),
  deleted here: diagnostics of a damaged file, which after an erasure request must go (a moved-aside
  listing holds every Mandant's bodies).

The snapshot's audit trail (`state/audit.py`: reference ids, statuses, field names) holds no personal
data and is kept as it is; the rewrite copies it over.

Setting a column to NULL leaves the old bytes in DuckDB's freed blocks, so the snapshot and the listing
are then rewritten into fresh files (`state.files.rewrite_compacted`) that hold only what is left; in
PostgreSQL the rewritten file replaces the stored one, whose rows are deleted in the same transaction.

It does not touch the ERP export (the ERP's data) or casavi itself: to remove people from casavi, remove
them from the ERP export and let the next sync delete them there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from casavi_pipeline.erp.contract import MANDANT_PATTERN
from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
from casavi_pipeline.runs.values import VALUES_FOLDER
from casavi_pipeline.settings import SettingsError, load_settings
from casavi_pipeline.state.files import StateBusyError
from casavi_pipeline.state.store import StateStore, known_accounts


class EraseError(ValueError):
    """The erasure cannot run as asked; the message says why in one line."""


def erase(snapshot_dir: Path, mandant: str, state_url: str | None = None) -> list[str]:
    """Erase Mandant `mandant`'s personal data under `snapshot_dir`; return what was done, one line each."""
    if not MANDANT_PATTERN.fullmatch(mandant):
        raise EraseError(f"{mandant!r} is not a Mandant number (1-16 letters or digits, e.g. 0001)")
    done: list[str] = []
    values = snapshot_dir / VALUES_FOLDER
    # `*/M`: the layout before values were kept per run (one folder per asset), on machines that had it.
    doomed = sorted([*values.glob(f"*/*/{mandant}"), *values.glob(f"*/{mandant}")]) if values.exists() else []
    _refuse_outside(doomed, values)
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    done.append(f"run values: {len(doomed)} files deleted under {values}")
    # Every separator: an account adopted with another separator may hold the Mandant's ids under it.
    prefixes = [f"{mandant}{s}" for s in ALLOWED_SEPARATORS]
    # Every casavi account's state (a test account and production, say), and any kept from before accounts
    # were told apart: the Mandant's people may be in each.
    held = known_accounts(snapshot_dir, state_url)
    for account in held:
        done += StateStore(snapshot_dir, state_url, account=account).erase(mandant, prefixes)
    if not held:
        done.append("state: none kept here for any casavi account")
    return done


def _refuse_outside(paths: list[Path], folder: Path) -> None:
    """Everything to delete must lie inside `folder` (a link pointing out of it is never followed)."""
    root = folder.resolve()
    for path in paths:
        if not path.resolve().is_relative_to(root) or not path.parent.resolve().is_relative_to(root):
            raise EraseError(f"refusing to delete {path}: it resolves outside {folder}")


def erase_personal_data(args: argparse.Namespace) -> int:
    """`casavi-pipeline erase-personal-data M`: see the module's docstring."""
    try:
        state = load_settings().state if args.snapshot_dir is None else None
    except SettingsError as exc:
        print(f"erase-personal-data: {exc} (or pass --snapshot-dir)", file=sys.stderr)
        return 2
    snapshot_dir = args.snapshot_dir or state.directory  # type: ignore[union-attr]
    state_url = state.url.get_secret_value() if state and state.url else None
    try:
        for line in erase(Path(snapshot_dir).resolve(), args.mandant, state_url):
            print(line)
    except EraseError as exc:
        print(f"erase-personal-data: {exc}", file=sys.stderr)
        return 2
    except StateBusyError as exc:
        print(f"erase-personal-data: {exc}", file=sys.stderr)
        return 1
    return 0


def add(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "erase-personal-data",
        help="erase what casavi_pipeline keeps about one Mandant's people (an erasure request)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("mandant", help="the Mandant number, e.g. 0001")
    command.add_argument(
        "--snapshot-dir",
        type=Path,
        help="default: CASAVI_SNAPSHOT_DB from the settings (environment or .env)",
    )
    command.set_defaults(command=erase_personal_data)
