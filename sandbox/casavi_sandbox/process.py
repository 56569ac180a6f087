"""`SandboxProcess`: the sandbox as a real subprocess, for tests, the demo and the benchmarks.

A real process (not an in-process thread) so that clients meet real sockets, dropped connections and
restarts, and the sandbox does not compete with the test's own interpreter lock.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from casavi_sandbox.admin import ADMIN_PREFIX
from casavi_sandbox.chaos import DROPPED, Knobs

#: The credentials a sandbox accepts when none are configured: a fake for a local process, not a secret.
DEFAULT_KEY = "sandbox-key"
DEFAULT_SECRET = "sandbox-secret"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the casavi_sandbox package
_KNOB_FLAGS = {name: "--" + name.replace("_", "-") for name in (f.name for f in dataclasses.fields(Knobs))}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SandboxProcess:
    """Starts `python -m casavi_sandbox` on a free port and talks to its admin endpoints.

    Knobs (`rate_limit`, `latency_ms`, `error_rate`, `token_ttl`, `drop_rate`, `seed`) given here or via
    `configure` are kept and passed again on `restart`. The port stays the same across restarts, so
    clients keep their base URL. Output goes to `<db folder>/<db name>.log`; `access_log=True` adds a
    line per request there (off by default: it costs the benchmarks about 15 % of the sandbox's CPU).
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key: str = DEFAULT_KEY,
        api_secret: str = DEFAULT_SECRET,
        access_log: bool = False,
        startup_timeout: float = 20.0,
        **knobs: Any,
    ) -> None:
        unknown = sorted(set(knobs) - set(_KNOB_FLAGS))
        if unknown:
            raise TypeError(f"unknown sandbox knobs {unknown}; known: {sorted(_KNOB_FLAGS)}")
        self.db_path = Path(db_path)
        self.log_path = self.db_path.with_suffix(".log")
        self.host = host
        self.port = port or free_port(host)
        self.api_key = api_key
        self.api_secret = api_secret
        self.access_log = access_log
        self.startup_timeout = startup_timeout
        self._knobs: dict[str, Any] = dict(knobs)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._admin = httpx.Client(base_url=self.base_url, timeout=10.0, trust_env=False)

    @property
    def base_url(self) -> str:
        """The host root; clients append `/v2/...`."""
        return f"http://{self.host}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> SandboxProcess:
        if self._process is not None:
            raise RuntimeError("the sandbox is already running")
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "casavi_sandbox", "--host", self.host]
        command += ["--port", str(self.port), "--db", str(self.db_path), "--log-level", "info"]
        command += ["--access-log"] if self.access_log else ["--no-access-log"]
        for name, value in self._knobs.items():
            if value is not None:
                command += [_KNOB_FLAGS[name], str(value)]
        env = {
            **os.environ,
            # always the sandbox's own pair: real credentials in the environment must not leak into it
            "CASAVI_API_KEY": self.api_key,
            "CASAVI_API_SECRET": self.api_secret,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self._wait_until_healthy()
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> SandboxProcess:
        """Stop and start again on the same port and database (objects and tokens survive)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        self._admin.close()

    def __enter__(self) -> SandboxProcess:
        return self.start() if self._process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the casavi sandbox exited at start; see {self.log_path}")
            try:
                if self._admin.get(f"{ADMIN_PREFIX}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the casavi sandbox did not answer within {self.startup_timeout:g}s; see {self.log_path}"
        )

    # --- admin endpoints ---------------------------------------------------------------------------
    def _call(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self._admin.request(method, f"{ADMIN_PREFIX}/{name}", json=body)
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        try:
            return self._admin.get(f"{ADMIN_PREFIX}/health").status_code == 200
        except httpx.TransportError:
            return False

    def state(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every stored object: collection → reference ID → payload as stored (without internalId)."""
        return self._call("GET", "state")

    def requests(self) -> dict[str, Any]:
        """Request counts since the last reset: `{"total", "routes": {route: {status: n}}, "statuses"}`."""
        return self._call("GET", "requests")

    def write_count(self, *, ok_only: bool = False) -> int:
        """PUT and DELETE requests on /v2 (all answers, or only the 2xx ones)."""
        total = 0
        for route, by_status in self.requests()["routes"].items():
            if route.split(" ", 1)[0] in ("PUT", "DELETE"):
                total += sum(
                    count
                    for status, count in by_status.items()
                    if not ok_only or (status != DROPPED and 200 <= int(status) < 300)
                )
        return total

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs on the running sandbox (kept for restarts); returns all knobs now in force."""
        current = self._call("POST", "config", knobs)
        self._knobs.update(knobs)
        return current

    def reset(self, *, objects: bool = True, knobs: bool = True) -> None:
        """Clear the request counters, and unless told otherwise the stored objects and all knobs."""
        self._call("POST", "reset", {"objects": objects})
        if knobs:
            self._knobs = {}
            self._call("POST", "config", dataclasses.asdict(Knobs()))
