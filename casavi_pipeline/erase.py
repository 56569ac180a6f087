"""`./run erase-personal-data M`: erase what casavi_pipeline keeps about Mandant M's people on this machine.

A housing company must answer erasure requests (GDPR art. 17). casavi_pipeline keeps personal data
(names, emails, phones, postal addresses) in three places of its own, all under CASAVI_SNAPSHOT_DB
(README, "Where personal data lives"):

- the run values: the ERP and casavi frames between steps (`values/<run id>/<asset>/<M>`, kept only
  while a run may need them: `casavi_pipeline/runs/values.py`), M's of every run deleted here;
- the Mandant's snapshot: the bodies last written or read per object, set to NULL here (ids and hashes
  stay: all the sync needs to know what casavi holds) and the pending changeset deleted;
- the account-wide listing of casavi: the bodies of the objects with M's prefix, set to NULL here;
- snapshot files moved aside as unreadable (`snapshot_<M>.duckdb.corrupt-*` and their `.wal`),
  deleted here: diagnostics of a damaged file, which after an erasure request must go.

The snapshot's audit trail (`sync/audit.py`: reference ids, statuses, field names) holds no personal
data and is kept as it is; the rewrite copies it over.

Setting a column to NULL leaves the old bytes in DuckDB's freed blocks, so the snapshot and the listing
are then rewritten into fresh files (`rewrite_compacted`) that hold only what is left.

It does not touch the ERP export (the ERP's data) or casavi itself: to remove people from casavi, remove
them from the ERP export and let the next sync delete them there.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import sys
from pathlib import Path

import duckdb

from casavi_pipeline.settings import ALLOWED_SEPARATORS, MANDANT_PATTERN, SettingsError, load_settings
from casavi_pipeline.sync.remote import RemoteCache
from casavi_pipeline.sync.snapshot import Snapshot, SnapshotBusyError, SnapshotCorruptError

#: Folder (inside CASAVI_SNAPSHOT_DB) of the asset values the IO manager keeps (`defs.resources`).
VALUES_FOLDER = "values"
#: Where a fresh copy is built before it replaces the file (same folder: `os.replace` stays atomic).
_REWRITE_SUFFIX = ".erase-rewrite"


class EraseError(ValueError):
    """The erasure cannot run as asked; the message says why in one line."""


def erase(snapshot_dir: Path, mandant: str) -> list[str]:
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
    snapshot_path = snapshot_dir / f"snapshot_{mandant}.duckdb"
    if snapshot_path.exists():
        try:
            with Snapshot(snapshot_path, mandant) as snapshot:
                erased = snapshot.erase_payloads()
        except SnapshotCorruptError:
            done.append(f"snapshot {snapshot_path}: unreadable, moved aside (deleted below)")
        else:
            _rewrite_snapshot(snapshot_path, mandant)
            done.append(f"snapshot {snapshot_path}: bodies erased ({erased}), file rewritten")
    else:
        done.append(f"snapshot {snapshot_path}: none")
    moved_aside = sorted(snapshot_dir.glob(f"snapshot_{mandant}.duckdb.corrupt-*"))
    _refuse_outside(moved_aside, snapshot_dir)
    for path in moved_aside:
        path.unlink()
    listed = f": {', '.join(str(path) for path in moved_aside)}" if moved_aside else ""
    done.append(f"moved-aside snapshot files: {len(moved_aside)} deleted{listed}")
    cache = RemoteCache(snapshot_dir)
    # Every separator: an account adopted with another separator may hold the Mandant's ids under it.
    count = sum(cache.erase_payloads(f"{mandant}{separator}") for separator in ALLOWED_SEPARATORS)
    if cache.path.exists():
        # The same lock every access to the cache holds (RemoteCache._locked); taken after
        # erase_payloads returned, since a second flock of the same file in this process would wait forever.
        with cache.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rewrite_compacted(cache.path)
    done.append(f"casavi listing {cache.path}: {count} bodies erased, file rewritten")
    return done


def _refuse_outside(paths: list[Path], folder: Path) -> None:
    """Everything to delete must lie inside `folder` (a link pointing out of it is never followed)."""
    root = folder.resolve()
    for path in paths:
        if not path.resolve().is_relative_to(root) or not path.parent.resolve().is_relative_to(root):
            raise EraseError(f"refusing to delete {path}: it resolves outside {folder}")


def _rewrite_snapshot(path: Path, mandant: str) -> None:
    try:
        rewrite_compacted(path)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise SnapshotBusyError(
                f"The snapshot of Mandant {mandant} ({path}) is in use by another process; its bodies are "
                "erased, but the file still holds their old bytes. Wait for the run, then erase again."
            ) from exc
        raise


def rewrite_compacted(path: Path) -> None:
    """Replace the DuckDB file at `path` by a fresh copy of its contents, so freed blocks are gone.

    `UPDATE … SET payload = NULL` and a CHECKPOINT leave the old values in blocks DuckDB marks free
    but does not overwrite. The file is opened for writing (DuckDB's lock keeps any other process
    out), checkpointed (its WAL folded in and gone), copied table by table into a new file beside it,
    and the new file atomically takes its name while the old one is still held.
    """
    fresh = path.with_name(path.name + _REWRITE_SUFFIX)
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    with contextlib.closing(duckdb.connect(str(path))) as con:
        con.execute("CHECKPOINT")
        name = con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        quoted_path, quoted_name = str(fresh).replace("'", "''"), name.replace('"', '""')
        con.execute(f"ATTACH '{quoted_path}' AS erase_rewrite")
        try:
            con.execute(f'COPY FROM DATABASE "{quoted_name}" TO erase_rewrite')
        finally:
            con.execute("DETACH erase_rewrite")
        # A WAL beside the new file would be replayed into it; after the CHECKPOINT it holds nothing.
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
        fresh.with_name(fresh.name + ".wal").unlink(missing_ok=True)
        os.replace(fresh, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run erase-personal-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("mandant", help="the Mandant number, e.g. 0001")
    parser.add_argument(
        "--snapshot-dir",
        type=Path,
        help="default: CASAVI_SNAPSHOT_DB from the settings (environment or .env)",
    )
    args = parser.parse_args(argv)
    try:
        snapshot_dir = args.snapshot_dir or load_settings().snapshot_dir
    except SettingsError as exc:
        print(f"erase-personal-data: {exc} (or pass --snapshot-dir)", file=sys.stderr)
        return 2
    try:
        for line in erase(Path(snapshot_dir).resolve(), args.mandant):
            print(line)
    except EraseError as exc:
        print(f"erase-personal-data: {exc}", file=sys.stderr)
        return 2
    except SnapshotBusyError as exc:
        print(f"erase-personal-data: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
