"""State kept before casavi accounts were told apart, moved under the account it was made with, in one step.

Until revision 3 of the export contract the sync kept its state at the top of CASAVI_SNAPSHOT_DB
(`snapshot_<M>.duckdb`, `casavi_remote.duckdb`, their journals, audit lines, locks, spill folders and
moved-aside copies) and, with CASAVI_STATE_URL, in the state database under those bare names. Now every
account has its own (`store.py`). An existing deployment keeps its state: the first run after the upgrade
moves it under the account that run talks to — the account the state was made with, as nothing else
changed. One piece of evidence can say otherwise: that version kept the request budget in a file per base
URL and API key (`casavi_budget_<hash>.sqlite3`). When such files exist and none is the configured
account's, the state was made with another account: it stays where it is, and that account starts on
its own (it adopts what casavi holds, by reads). Erasure and the audit trail reach it either way.

Files move by rename within one folder tree and rows by one UPDATE per table in one transaction, under a
lock, so two runs starting at once move everything exactly once.
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

from casavi_pipeline import account as accounts

#: Top-level names of the old layout: every file and folder of a snapshot or of the listing.
_OLD_NAMES = ("snapshot_*", "casavi_remote.*")
_LOCK_FILE = ".upgrade.lock"
_BUDGETS = "casavi_budget_*.sqlite3"


def old_budget_name(base_url: str, api_key: str) -> str:
    """The budget file the old version kept for this base URL and key (its evidence of the account)."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:16]
    return f"casavi_budget_{digest}.sqlite3"


def _old_files(root: Path) -> list[Path]:
    return sorted({path for pattern in _OLD_NAMES for path in root.glob(pattern)})


def move_old_state(root: Path, url: str | None, account: str, *, own_budget: str | None) -> list[str]:
    """Move the old layout's state (files under `root`, rows in `url`) under `account`; return what was
    done or why not, one line each (nothing when there was nothing to move)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / _LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        files = _old_files(root)
        rows = _old_rows(url) if url is not None else 0
        if not files and not rows:
            return []
        budgets = {path.name for path in root.glob(_BUDGETS)}
        if budgets and own_budget not in budgets:
            return [
                f"The sync's state from before casavi accounts were told apart stays in {root}"
                + (" and the state database" if rows else "")
                + f": it was made with another casavi account (its request budget is not this key's). "
                f"{accounts.label(account)} starts on its own (it adopts what casavi holds). "
                "`./run erase-personal-data` still reaches the old state; delete it when that account is gone."
            ]
        target = accounts.folder(root, account)
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            path.rename(target / path.name)
        if url is not None:
            from casavi_pipeline.state.postgres import prefix_old_rows

            prefix_old_rows(url, f"{accounts.PREFIX}{account}/")
        where = f"{target}" + (" and the state database" if url is not None else "")
        return [
            f"The sync's state from before casavi accounts were told apart ({len(files)} files"
            + (f", {rows} stored files and log rows" if rows else "")
            + f") now belongs to {accounts.label(account)}, the one configured (moved to {where})."
        ]


def _old_rows(url: str) -> int:
    from casavi_pipeline.state.postgres import count_old_rows

    return count_old_rows(url)
