"""A throw-away PostgreSQL server on 127.0.0.1 for the tests (Debian's binaries, installed by
`./run setup-system`, never from inside a test).

One server per test session (`conftest.postgres_server`); each test that needs a database of its own asks
for one (`PostgresServer.create_database`), so tests never see each other's tables.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: Why the tests that need PostgreSQL are skipped when its binaries are missing (shown in the run's summary).
MISSING = "PostgreSQL is not installed: run `./run setup-system` (Debian's postgresql package) once"


def pg_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (initdb, pg_ctl), or None."""
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in a private folder; trust auth on loopback only; fsync off (test data only)."""

    USER = "casavi"

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        # PostgreSQL refuses to run as root: run it as `nobody` in a folder of its own (pytest's tmp
        # folders are private to root, so this one lives directly under the system temp dir).
        self.folder = Path(tempfile.mkdtemp(prefix="casavi-pg-"))
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "nobody", "nogroup")
        self.host = "127.0.0.1"
        self.port = _free_port()
        self._names = itertools.count(1)

    def _run(self, *command: object) -> None:
        subprocess.run([*self.as_user, *map(str, command)], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self._run(self.bin / "initdb", "-D", self.folder / "db", "-U", self.USER, "--auth=trust")
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server on its database (again, after `halt`), on the same port."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            self.bin / "pg_ctl",
            "-D",
            self.folder / "db",
            "-o",
            options,
            "-l",
            self.folder / "log",
            "-w",
            "start",
        )

    def halt(self) -> None:
        """Stop the server at once, as a crash would (connections dropped), keeping its data for `resume`."""
        self._run(self.bin / "pg_ctl", "-D", self.folder / "db", "-m", "immediate", "stop")

    def stop(self) -> None:
        subprocess.run(
            [
                *self.as_user,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.folder / "db"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, prefix: str = "db") -> str:
        """A new empty database; returns its name."""
        name = f"{prefix}_{next(self._names)}"
        self._run(self.bin / "createdb", "-h", self.host, "-p", self.port, "-U", self.USER, name)
        return name

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of a database of this server (psycopg2, as dagster-postgres uses)."""
        return f"postgresql://{self.USER}@{self.host}:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        """Run one statement with psql; return its unaligned output (for assertions from outside)."""
        result = subprocess.run(
            [*self.as_user, str(self.bin / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.USER,
             "-d", database, "-tAc", sql],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return result.stdout.strip()
