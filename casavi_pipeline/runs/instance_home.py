"""`python -m casavi_pipeline.runs.instance_home DAGSTER_YAML`: make `$DAGSTER_HOME` ready (./run's setup).

Copies the project's dagster.yaml into it when the repo's is newer, and creates the instance's storage
once. Both under a lock in `$DAGSTER_HOME`, so any number of processes may start on a fresh home at
once: two processes migrating fresh SQLite storage side by side corrupt it ("alembic_version has more
than one head"). The marker file is written only after the storage is complete, so a process that finds
it never uses half-created storage.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

#: Written into $DAGSTER_HOME once its storage exists and is migrated.
READY = ".casavi-storage-ready"
LOCK = ".casavi-setup.lock"


def prepare(home: Path, config: Path) -> None:
    """Bring `home` up to date with `config` and create its storage; safe to call from many processes."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        target = home / "dagster.yaml"
        if not target.exists() or config.stat().st_mtime > target.stat().st_mtime:
            fresh = home / ".dagster.yaml.new"
            shutil.copy2(config, fresh)  # with its mtime: ./run compares the two
            os.replace(fresh, target)  # a reader sees the old file or the new one, never half of it
        if not (home / READY).exists():
            import dagster as dg  # only here: the common case (ready) needs no dagster import

            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.get_runs(limit=1)  # creates and migrates the storage
            (home / READY).touch()


if __name__ == "__main__":
    prepare(Path(os.environ["DAGSTER_HOME"]), Path(sys.argv[1]))
