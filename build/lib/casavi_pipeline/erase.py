"""`./run erase-personal-data M`: erase what casavi_pipeline keeps about Mandant M's people on this machine.

A housing company must answer erasure requests (GDPR art. 17). casavi_pipeline keeps personal data
(names, emails, phones, postal addresses) in three places of its own, all under CASAVI_SNAPSHOT_DB
(README, "Where personal data lives"):

- the run values: the ERP and casavi frames between steps (`values/<asset>/<M>`), deleted here;
- the Mandant's snapshot: the bodies last written or read per object, set to NULL here (ids and hashes
  stay: all the sync needs to know what casavi holds) and the pending changeset deleted;
- the account-wide listing of casavi: the bodies of the objects with M's prefix, set to NULL here.

It does not touch the ERP export (the ERP's data) or casavi itself: to remove people from casavi, remove
them from the ERP export and let the next sync delete them there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from casavi_pipeline.settings import ALLOWED_SEPARATORS, SettingsError, load_settings
from casavi_pipeline.sync.remote import RemoteCache
from casavi_pipeline.sync.snapshot import Snapshot, SnapshotBusyError

#: Folder (inside CASAVI_SNAPSHOT_DB) of the asset values the IO manager keeps (`defs.resources`).
VALUES_FOLDER = "values"


def erase(snapshot_dir: Path, mandant: str) -> list[str]:
    """Erase Mandant `mandant`'s personal data under `snapshot_dir`; return what was done, one line each."""
    done: list[str] = []
    values = snapshot_dir / VALUES_FOLDER
    removed = 0
    for path in sorted(values.glob(f"*/{mandant}")) if values.exists() else []:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed += 1
    done.append(f"run values: {removed} files deleted under {values}")
    snapshot_path = snapshot_dir / f"snapshot_{mandant}.duckdb"
    if snapshot_path.exists():
        with Snapshot(snapshot_path, mandant) as snapshot:
            erased = snapshot.erase_payloads()
        done.append(f"snapshot {snapshot_path}: bodies erased ({erased})")
    else:
        done.append(f"snapshot {snapshot_path}: none")
    cache = RemoteCache(snapshot_dir)
    # Every separator: an account adopted with another separator may hold the Mandant's ids under it.
    count = sum(cache.erase_payloads(f"{mandant}{separator}") for separator in ALLOWED_SEPARATORS)
    done.append(f"casavi listing {cache.path}: {count} bodies erased")
    return done


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
    except SnapshotBusyError as exc:
        print(f"erase-personal-data: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
