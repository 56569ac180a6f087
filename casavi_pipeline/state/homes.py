"""Where a DuckDB state file persists, and who may hold it: its *home*.

A state file (a Mandant's snapshot, the shared casavi listing) is always worked on as a local DuckDB
file: DuckDB does the diff, fastest on local disk. Its home decides what is durable:

- `LocalHome` (the embedded default, CASAVI_SNAPSHOT_DB): the local file *is* the state; its logs are
  files beside it; a second process is kept out by DuckDB's file lock (snapshots) or an `flock` on a lock
  file (the listing, whose users wait their turn). Both die with their process.
- `PostgresHome` (`casavi_pipeline.state.postgres`, when CASAVI_STATE_URL is set): PostgreSQL holds the
  state; the local file is a working copy, fetched when PostgreSQL holds a newer one (a fresh container,
  another machine), and saved back after every fold. Its logs are rows; its lock an advisory lock that
  dies with the connection.

A home is opened (lock, bring the local copy up to date), `saved` after each fold (make the
checkpointed file durable, then drop the log lines it now holds, in that order or atomically), and
closed (release the lock).
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Protocol, TextIO

from casavi_pipeline.state.files import StateCorruptError, delete_files, moved_aside
from casavi_pipeline.state.logs import FileLog, Log

JOURNAL = "journal"
AUDIT = "audit"


class Home(Protocol):
    path: Path
    #: Does `saved` store the file itself elsewhere (then every fold checkpoints it first)?
    saves_file: bool

    def open(self, *, read_only: bool) -> None:
        """Take the lock (raise `StateBusyError` when held and the home does not wait) and make the
        local file the current state."""

    def exists(self) -> bool:
        """Is there any state yet (before `open`: a read-only open of nothing needs no file)?"""

    def log(self, stream: str) -> Log:
        """The log `stream` (JOURNAL or AUDIT) of this state."""

    def saved(self, clears: list[tuple[Log, int]]) -> None:
        """The local file changed and was checkpointed: make it durable, then clear the logs to their marks."""

    def moved_aside(self, error: StateCorruptError) -> bool:
        """The local file was unreadable and moved aside. True: the home fetched an intact copy again (open
        the file again); False: the state starts afresh (the home's own copy is moved aside too)."""

    def leftovers(self) -> list[str]:
        """Everything moved aside from this state (what an erasure must reach), for messages."""

    def erase_leftovers(self) -> int:
        """Delete what was moved aside (an erasure request); return how many."""

    def close(self) -> None: ...


class LocalHome:
    """The state in a local file; `lock_file` (with `wait`) when DuckDB's own lock is not the right one."""

    saves_file = False

    def __init__(self, path: Path, *, lock_file: Path | None = None) -> None:
        self.path = Path(path)
        self._lock_file = lock_file
        self._lock: TextIO | None = None
        self._logs = {
            JOURNAL: FileLog(self.path.with_suffix(".journal")),
            AUDIT: FileLog(self.path.with_suffix(".audit")),
        }

    def open(self, *, read_only: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock_file is not None:
            self._lock = self._lock_file.open("a")
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies

    def exists(self) -> bool:
        return self.path.exists()

    def log(self, stream: str) -> Log:
        return self._logs[stream]

    @property
    def companions(self) -> list[Path]:
        """The files that move aside with the state file: its journal (of confirmations of its state).
        The audit lines stay: they hold no personal data and belong to the trail, not to the file."""
        return [self._logs[JOURNAL].path]

    def saved(self, clears: list[tuple[Log, int]]) -> None:
        for log, mark in clears:  # the file is the state: the checkpoint made it durable
            if mark:
                log.clear(mark)

    def moved_aside(self, error: StateCorruptError) -> bool:
        return False  # the local file was the state, and `quarantine` moved it

    def leftovers(self) -> list[str]:
        return [str(path) for path in self._leftover_paths()]

    def _leftover_paths(self) -> list[Path]:
        return [p for base in (self.path, *self.companions) for p in moved_aside(base)]

    def erase_leftovers(self) -> int:
        doomed = self._leftover_paths()
        delete_files(doomed, self.path.parent)
        return len(doomed)

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
