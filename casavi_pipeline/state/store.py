"""The state store: the one owner of where the sync's state lives and who may hold it.

    state/
      store.py     this: names and paths, picks the backend, opens snapshots and the listing, erases
      homes.py     where a state file persists: a local file (default) or PostgreSQL (postgres.py)
      files.py     DuckDB files' lifecycle: open (busy or damaged), move aside, compact
      logs.py      append-only logs: the journal of confirmed writes and the audit lines
      snapshot.py  a Mandant's tables: synced, pending, remote slice, meta, audit
      listing.py   the account-wide listing of casavi shared by every Mandant
      hashing.py   the one hash of a body; diff.py the changeset; audit.py the audit trail's rows

Backends: DuckDB files in CASAVI_SNAPSHOT_DB (the embedded default), or PostgreSQL when CASAVI_STATE_URL
is set (then CASAVI_SNAPSHOT_DB holds only working copies, which a fresh container fetches).
"""

from __future__ import annotations

import re
from pathlib import Path

from casavi_pipeline.state.files import StateCorruptError
from casavi_pipeline.state.homes import Home, LocalHome
from casavi_pipeline.state.listing import CACHE_FILE, RemoteCache
from casavi_pipeline.state.snapshot import Snapshot

_SNAPSHOT = re.compile(r"snapshot_[0-9A-Za-z]{1,16}\.duckdb")
_BUSY_HINT = "Another run of this Mandant is probably still going; wait for it, or stop it, then rerun."


class StateStore:
    """Snapshots and the listing of one deployment: `directory` (local files), `url` (PostgreSQL) if set."""

    def __init__(self, directory: Path, url: str | None = None) -> None:
        self.directory = Path(directory)
        self.url = url or None
        self._schema_ready = False

    @property
    def backend(self) -> str:
        return "postgresql" if self.url else "duckdb"

    def snapshot_path(self, mandant: str) -> Path:
        return self.directory / f"snapshot_{mandant}.duckdb"

    def _home(self, name: str, path: Path, *, what: str, wait: bool) -> Home:
        if self.url is None:
            return LocalHome(path, lock_file=path.with_suffix(".lock") if wait else None)
        from casavi_pipeline.state.postgres import PostgresHome, ensure_schema

        if not self._schema_ready:
            ensure_schema(self.url)
            self._schema_ready = True
        return PostgresHome(self.url, name, path, what=what, wait=wait, busy_hint="" if wait else _BUSY_HINT)

    def mandanten(self) -> list[str]:
        """The Mandanten that have a snapshot (moved-aside copies do not count)."""
        if self.url is not None:
            from casavi_pipeline.state.postgres import ensure_schema, stored_names

            ensure_schema(self.url)
            names = stored_names(self.url)
        else:
            names = [path.name for path in self.directory.glob("snapshot_*.duckdb")]
        return sorted(n.removeprefix("snapshot_").removesuffix(".duckdb") for n in names if _SNAPSHOT.fullmatch(n))

    def snapshot_home(self, mandant: str) -> Home:
        path = self.snapshot_path(mandant)
        return self._home(path.name, path, what=f"snapshot of Mandant {mandant}", wait=False)

    def open(self, mandant: str, *, read_only: bool = False) -> Snapshot:
        """The Mandant's snapshot (one writer: `StateBusyError` when another process holds it)."""
        return Snapshot(self.snapshot_path(mandant), mandant, read_only=read_only, home=self.snapshot_home(mandant))

    def listing(self) -> RemoteCache:
        """The account-wide listing of casavi that every Mandant takes its slice from."""
        path = self.directory / CACHE_FILE
        return RemoteCache(self.directory, home=self._home(path.name, path, what="casavi listing", wait=True))

    def erase(self, mandant: str, prefixes: list[str]) -> list[str]:
        """Erase the Mandant's personal data from the state: the bodies in its snapshot and in the listing
        (ids with `prefixes`), both rewritten so no old bytes stay, and every file moved aside from either
        (their bodies are the same data). Returns what was done, one line each."""
        done = []
        home = self.snapshot_home(mandant)
        if home.exists():
            try:
                with Snapshot(self.snapshot_path(mandant), mandant, home=home) as snapshot:
                    erased = snapshot.erase_payloads()
                done.append(f"snapshot of Mandant {mandant}: bodies erased ({erased}), rewritten")
            except StateCorruptError:
                done.append(f"snapshot of Mandant {mandant}: unreadable, moved aside (deleted below)")
        else:
            done.append(f"snapshot of Mandant {mandant}: none")
        listing = self.listing()
        count = listing.erase_payloads(prefixes)
        done.append(f"casavi listing: {count} bodies of Mandant {mandant} erased, rewritten")
        for what, leftover in (("snapshot", self.snapshot_home(mandant)), ("listing", listing.home)):
            names = leftover.leftovers()
            deleted = leftover.erase_leftovers()
            done.append(f"moved-aside {what} files: {deleted} deleted" + (f" ({', '.join(names)})" if names else ""))
        return done
