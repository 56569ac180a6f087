"""A damaged file is moved aside, never deleted: renamed to `<file>.corrupt-<UTC stamp>` beside it, for
diagnosis, until an erasure (or a person) deletes it. The state's DuckDB files (`state/files.py`) and the
account's request budget (`casavi/budget_store.py`) are moved aside alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

#: The name part of a moved-aside file: `<file>.corrupt-<UTC stamp>[-n]`.
MOVED_ASIDE = ".corrupt-"


def quarantine(path: Path, *companions: Path) -> Path:
    """Move an unreadable file aside, to `<path>.corrupt-<UTC timestamp>`; return the new path.

    Its `.wal` goes first (to `<new path>.wal`, so the moved file opens with it for diagnosis): a WAL
    left beside a fresh file would be replayed into it. `companions` (a journal, say) go last, each to
    `<companion>.corrupt-<same stamp>`. Nothing is deleted, and nothing existing is overwritten.
    """
    path = Path(path)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    moved_to = path.with_name(f"{path.name}{MOVED_ASIDE}{stamp}")
    counter = 0
    while moved_to.exists() or moved_to.with_name(f"{moved_to.name}.wal").exists():
        counter += 1
        moved_to = path.with_name(f"{path.name}{MOVED_ASIDE}{stamp}-{counter}")
    suffix = moved_to.name.removeprefix(path.name)
    wal = path.with_name(f"{path.name}.wal")
    if wal.exists():
        wal.rename(moved_to.with_name(f"{moved_to.name}.wal"))
    if path.exists():
        path.rename(moved_to)
    for companion in companions:
        if companion.exists():
            companion.rename(companion.with_name(companion.name + suffix))
    return moved_to


def moved_aside(path: Path) -> list[Path]:
    """Every file moved aside from `path` (and their WALs): what an erasure must reach too."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.name}{MOVED_ASIDE}*"))


def delete_files(paths: Sequence[Path], folder: Path) -> None:
    """Delete `paths` (an erasure), all or none: each must lie inside `folder`, no link followed out of it."""
    root = Path(folder).resolve()
    for path in paths:
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise ValueError(f"refusing to delete {path}: it resolves outside {folder}")
    for path in paths:
        path.unlink(missing_ok=True)
