"""The state store: the one owner of where the sync's state lives and who may hold it.

    state/
      store.py     this: one casavi account's state — names and paths, the backend, snapshots, the listing,
                   erasure; and the accounts a deployment knows
      upgrade.py   state kept before accounts were told apart, moved under the account it was made with
      homes.py     where a state file persists: a local file (default) or PostgreSQL (postgres.py)
      files.py     DuckDB files' lifecycle: open (busy or damaged), move aside, compact
      logs.py      append-only logs: the journal of confirmed writes and the audit lines
      snapshot.py  a Mandant's tables: synced, pending, remote slice, meta, audit
      listing.py   the account-wide listing of casavi shared by every Mandant
      hashing.py   the one hash of a body; diff.py the changeset; audit.py the audit trail's rows

Backends: DuckDB files in CASAVI_SNAPSHOT_DB (the embedded default), or PostgreSQL when CASAVI_STATE_URL
is set (then CASAVI_SNAPSHOT_DB holds only working copies, which a fresh container fetches).

Everything belongs to one casavi account (`casavi_pipeline.account`, rule 7 of the export contract): its
files live in `CASAVI_SNAPSHOT_DB/account-<id>/`, its rows in the state database under names starting
with `account-<id>/`. A store pointed at another account sees none of it and touches none of it.
`account=None` is the layout from before accounts were told apart (`upgrade.py`): only erasure and the
audit trail open it, to reach what it may still hold.
"""

from __future__ import annotations

import re
from pathlib import Path

from casavi_pipeline import account as accounts
from casavi_pipeline.state.files import StateCorruptError
from casavi_pipeline.state.homes import Home, LocalHome
from casavi_pipeline.state.listing import CACHE_FILE, RemoteCache
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.state.upgrade import move_old_state
from casavi_pipeline.urls import shown_url

_SNAPSHOT = re.compile(r"snapshot_[0-9A-Za-z]{1,16}\.duckdb")
_BUSY_HINT = "Another run of this Mandant is probably still going; wait for it, or stop it, then rerun."


class StateStore:
    """One casavi account's snapshots and listing: under `directory` (local files), in `url` (PostgreSQL)
    if set. `account` is the account's id (`casavi_pipeline.account.account_id`)."""

    def __init__(
        self, directory: Path, url: str | None = None, *, account: str | None, old_budget: str | None = None
    ) -> None:
        self.root = Path(directory)
        #: The budget file an older version kept for this account (`upgrade.old_budget_name`), if known.
        self.old_budget = old_budget
        self.url = url or None
        self.account = account
        #: The account's folder: its state files, or their working copies when the state is in PostgreSQL.
        self.directory = accounts.folder(self.root, account) if account else self.root
        #: What the account's names start with in the state database.
        self.prefix = f"{accounts.PREFIX}{account}/" if account else ""
        self._schema_ready = False

    @property
    def backend(self) -> str:
        return "postgresql" if self.url else "duckdb"

    @property
    def where(self) -> str:
        """Where this account's state is, for messages (never a password)."""
        if self.url is None:
            return str(self.directory)

        return f"{self.prefix}* in the state database {shown_url(self.url)}"

    def snapshot_path(self, mandant: str) -> Path:
        return self.directory / f"snapshot_{mandant}.duckdb"

    def _ensure_schema(self) -> None:
        if self.url is not None and not self._schema_ready:
            from casavi_pipeline.state.postgres import ensure_schema

            ensure_schema(self.url)
            self._schema_ready = True

    def _home(self, path: Path, *, what: str, wait: bool) -> Home:
        if self.url is None:
            return LocalHome(path, lock_file=path.with_suffix(".lock") if wait else None)
        from casavi_pipeline.state.postgres import PostgresHome

        self._ensure_schema()
        name = self.prefix + path.name
        return PostgresHome(self.url, name, path, what=what, wait=wait, busy_hint="" if wait else _BUSY_HINT)

    def mandanten(self) -> list[str]:
        """The Mandanten of this account that have a snapshot (moved-aside copies do not count)."""
        if self.url is not None:
            from casavi_pipeline.state.postgres import stored_names

            self._ensure_schema()
            names = [n.removeprefix(self.prefix) for n in stored_names(self.url) if n.startswith(self.prefix)]
        else:
            names = [path.name for path in self.directory.glob("snapshot_*.duckdb")]
        return sorted(n.removeprefix("snapshot_").removesuffix(".duckdb") for n in names if _SNAPSHOT.fullmatch(n))

    def is_new(self) -> bool:
        """Has the sync never kept anything for this account here (no snapshot, no listing)?"""
        return not self.mandanten() and not self.listing().home.exists()

    def upgrade(self) -> list[str]:
        """Move state kept before accounts were told apart under this account, if it was made with it
        (`upgrade.py`); what was done, one line each."""
        if self.account is None:
            return []
        self._ensure_schema()
        return move_old_state(self.root, self.url, self.account, own_budget=self.old_budget)

    def snapshot_home(self, mandant: str) -> Home:
        return self._home(self.snapshot_path(mandant), what=f"snapshot of Mandant {mandant}", wait=False)

    def open(self, mandant: str, *, read_only: bool = False) -> Snapshot:
        """The Mandant's snapshot (one writer: `StateBusyError` when another process holds it)."""
        return Snapshot(self.snapshot_path(mandant), mandant, read_only=read_only, home=self.snapshot_home(mandant))

    def listing(self) -> RemoteCache:
        """The account-wide listing of casavi that every Mandant takes its slice from."""
        path = self.directory / CACHE_FILE
        return RemoteCache(self.directory, home=self._home(path, what="casavi listing", wait=True))

    def erase(self, mandant: str, prefixes: list[str]) -> list[str]:
        """Erase the Mandant's personal data from this account's state: the bodies in its snapshot and in
        the listing (ids with `prefixes`), both rewritten so no old bytes stay, and every copy moved aside
        from either, local and stored (their bodies are the same data). Returns what was done, one line each."""
        done = []
        whose = f" ({accounts.label(self.account)})" if self.account else " (kept before accounts were told apart)"
        home = self.snapshot_home(mandant)
        if home.exists():
            try:
                with Snapshot(self.snapshot_path(mandant), mandant, home=home) as snapshot:
                    erased = snapshot.erase_payloads()
                done.append(f"snapshot of Mandant {mandant}{whose}: bodies erased ({erased}), rewritten")
            except StateCorruptError:
                done.append(f"snapshot of Mandant {mandant}{whose}: unreadable, moved aside (deleted below)")
        else:
            done.append(f"snapshot of Mandant {mandant}{whose}: none")
        listing = self.listing()
        if listing.home.exists():
            count = listing.erase_payloads(prefixes)
            done.append(f"casavi listing{whose}: {count} bodies of Mandant {mandant} erased, rewritten")
        for what, leftover in (("snapshot", self.snapshot_home(mandant)), ("listing", listing.home)):
            names = leftover.leftovers()
            deleted = leftover.erase_leftovers()
            done.append(
                f"moved-aside {what} copies{whose}: {deleted} deleted" + (f" ({', '.join(names)})" if names else "")
            )
        return done


def known_accounts(directory: Path, url: str | None = None) -> list[str | None]:
    """Every account whose state this deployment keeps (folders, or name prefixes in the state database),
    and None when state from before accounts were told apart is still there (`upgrade.py`)."""
    found: set[str | None] = set()
    root = Path(directory)
    if url is not None:
        from casavi_pipeline.state.postgres import all_names, ensure_schema

        ensure_schema(url)
        for name in all_names(url):
            head, slash, _ = name.partition("/")
            if slash and head.startswith(accounts.PREFIX):
                found.add(head.removeprefix(accounts.PREFIX))
            else:
                found.add(None)
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and path.name.startswith(accounts.PREFIX):
                found.add(path.name.removeprefix(accounts.PREFIX))
            elif path.name.startswith(("snapshot_", CACHE_FILE)):
                found.add(None)
    return sorted(found, key=lambda a: (a is not None, a or ""))
