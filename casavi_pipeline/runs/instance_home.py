"""`$DAGSTER_HOME`: made ready by `./run` (`python -m casavi_pipeline.runs.instance_home DAGSTER_YAML`), and
checked by `casavi-pipeline sync` before a run starts in it.

`prepare` installs the repository's dagster.yaml into the home and creates the instance's storage once,
both under a lock in `$DAGSTER_HOME`, so any number of processes may start on a fresh home at once: two
processes migrating fresh SQLite storage side by side corrupt it ("alembic_version has more than one
head"). The marker file is written only after the storage is complete, so a process that finds it never
uses half-created storage.

The repository's dagster.yaml is copied into a home without one, and replaces a copy it made earlier
(after a `git pull` changed it) — never a file of someone's own: a `dagster.postgres.yaml` put there, or
an edited copy. That one is kept, and one line (once per change of the repository's file) says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

#: Written into $DAGSTER_HOME once its storage exists and is migrated.
READY = ".casavi-storage-ready"
LOCK = ".casavi-setup.lock"
#: The digest of the dagster.yaml `prepare` copied into the home: a file with it is ours to replace.
INSTALLED = ".casavi-installed-dagster-yaml"
#: The digest of the repository's dagster.yaml last reported as not installed (said once per version).
REPORTED = ".casavi-reported-dagster-yaml"
#: The instance's configuration file in $DAGSTER_HOME.
INSTANCE_FILE = "dagster.yaml"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def prepare(home: Path, config: Path) -> str | None:
    """Bring `home` up to date with `config` and create its storage; safe to call from many processes.

    Returns the one line to show when the home keeps a dagster.yaml of its own that differs from
    `config` (once per version of `config`), else None.
    """
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        notice = _install(home, config)
        if not (home / READY).exists():
            import dagster as dg  # only here: the common case (ready) needs no dagster import

            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.get_runs(limit=1)  # creates and migrates the storage
            (home / READY).touch()
    return notice


def _install(home: Path, config: Path) -> str | None:
    target = home / INSTANCE_FILE
    wanted = _digest(config)
    present = _digest(target) if target.exists() else None
    if present == wanted:
        (home / INSTALLED).write_text(wanted)
        return None
    if present is None or present == _read(home / INSTALLED):
        fresh = home / ".dagster.yaml.new"
        shutil.copy2(config, fresh)  # with its mtime: ./run compares the two
        os.replace(fresh, target)  # a reader sees the old file or the new one, never half of it
        (home / INSTALLED).write_text(wanted)
        return None
    if _read(home / REPORTED) == wanted:
        return None
    (home / REPORTED).write_text(wanted)
    return (
        f"./run: kept {target}: it differs from the repository's {config.name} (your own, e.g. "
        f"dagster.postgres.yaml, or an edited copy); to use the repository's, copy {config} there"
    )


def instance_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why a run cannot start in the instance of `DAGSTER_HOME`, in one line; None when it can.

    Without a dagster.yaml Dagster would run on its defaults: no health-checked run launcher, no limit of
    one run per Mandant, telemetry on. A missing `DAGSTER_HOME` would be a traceback.
    """
    home = environ.get("DAGSTER_HOME")
    if not home:
        return (
            "DAGSTER_HOME is not set: set it to the Dagster instance's folder (the one `dagster dev` and the "
            "daemon use, holding the project's dagster.yaml; in the repository ./run uses .dagster_home)"
        )
    if not (Path(home) / INSTANCE_FILE).is_file():
        return (
            f"DAGSTER_HOME={home} has no {INSTANCE_FILE}, so Dagster would run on its defaults (no run "
            "launcher health check, no limit of one run per Mandant): copy the repository's dagster.yaml (or "
            "dagster.postgres.yaml) there, or point DAGSTER_HOME at the instance `dagster dev` uses"
        )
    return None


if __name__ == "__main__":
    said = prepare(Path(os.environ["DAGSTER_HOME"]), Path(sys.argv[1]))
    if said:
        print(said, file=sys.stderr)
