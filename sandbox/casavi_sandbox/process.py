"""`SandboxProcess`: the sandbox as a real subprocess, for tests, the demo and the benchmarks.

A real process (not an in-process thread) so that clients meet real sockets, dropped connections and
restarts, and the sandbox does not compete with the test's own interpreter lock.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import httpx

from casavi_sandbox.admin import ADMIN_PREFIX
from casavi_sandbox.chaos import DROPPED, Knobs

#: The credentials a sandbox accepts when none are configured: a fake for a local process, not a secret.
DEFAULT_KEY = "sandbox-key"
DEFAULT_SECRET = "sandbox-secret"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the casavi_sandbox package
_KNOB_FLAGS = {name: "--" + name.replace("_", "-") for name in (f.name for f in dataclasses.fields(Knobs))}
#: The environment variable that hands a started sandbox the nonce it must show on `/_sandbox/health`.
NONCE_ENV = "CASAVI_SANDBOX_NONCE"
#: Objects per `/_sandbox/seed` request when `seed` splits a large import (about 10 MB of JSON).
SEED_BATCH = 50_000
#: How often `start` picks another free port when the one it picked was taken in the meantime.
_PORT_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    """Whether another socket holds the port, checked the way uvicorn binds (SO_REUSEADDR, so a port
    left in TIME_WAIT by a stopped sandbox counts as free). Sends nothing to whoever holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


class PortTakenError(RuntimeError):
    """The sandbox's port is held by another program; the message is one line for the user."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is taken by another program; free it or pass --port")
        self.host = host
        self.port = port


class SandboxProcess:
    """Starts `python -m casavi_sandbox` on a free port and talks to its admin endpoints.

    Knobs (`rate_limit`, `latency_ms`, `error_rate`, `token_ttl`, `drop_rate`, `seed`, `drop_field`,
    `rename_field`, `echo_errors`, `reject_ids`, `unmanaged_fields`, `omit_app_link`; see `Knobs`) given
    here or via `configure` are kept and passed again on `restart`. The port stays the same across
    restarts, so clients keep their base URL. Output goes
    to `<db folder>/<db name>.log`; `access_log=True` adds a line per request there (off by default: it
    costs the benchmarks about 15 % of the sandbox's CPU).

    Every start hands the process a random nonce; `start` returns only once `/_sandbox/health` answers
    with that nonce, so the key and secret are never given to another program listening on the port.
    A requested `port` held by another program fails at once with `PortTakenError`; without a
    requested port, another free port is picked.

    Besides the API, tests can play someone else changing casavi, none of it counted in `requests()`:
    `seed` (an import), `edit` and `delete_as_user` (a person in casavi's UI).
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
        self._port_requested = port is not None
        self.port = port or free_port(host)
        self.nonce = ""  # set at each start
        self.api_key = api_key
        self.api_secret = api_secret
        self.access_log = access_log
        self.startup_timeout = startup_timeout
        self._knobs: dict[str, Any] = dict(knobs)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # No keep-alive: uvicorn closes an idle connection after 5 s, and a test that paused longer (a run
        # on a loaded machine) would send its next admin call into a closing socket (connection reset).
        self._admin = httpx.Client(
            base_url=self.base_url,
            timeout=10.0,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    @property
    def base_url(self) -> str:
        """The host root; clients append `/v2/...`."""
        return f"http://{self.host}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> SandboxProcess:
        """Start the process and wait until it answers with its nonce; `PortTakenError` if the port is
        held by another program (after retrying other free ports when no port was requested)."""
        if self._process is not None:
            raise RuntimeError("the sandbox is already running")
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._start_once()
                return self
            except PortTakenError:
                if self._port_requested or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self.port = free_port(self.host)
                self._admin.base_url = httpx.URL(self.base_url)
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self) -> None:
        if port_taken(self.host, self.port):
            raise PortTakenError(self.host, self.port)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "casavi_sandbox", "--host", self.host]
        command += ["--port", str(self.port), "--db", str(self.db_path), "--log-level", "info"]
        command += ["--access-log"] if self.access_log else ["--no-access-log"]
        for name, value in self._knobs.items():
            command += _knob_arguments(name, value)
        self.nonce = secrets.token_urlsafe(16)
        env = {
            **os.environ,
            # always the sandbox's own pair: real credentials in the environment must not leak into it
            "CASAVI_API_KEY": self.api_key,
            "CASAVI_API_SECRET": self.api_secret,
            NONCE_ENV: self.nonce,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self._wait_until_healthy()

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
        """Poll health until it answers with this start's nonce. Any other answer, or the process
        exiting while the port is held, means another program owns the port: stop and say so."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                self.stop()
                if port_taken(self.host, self.port):
                    raise PortTakenError(self.host, self.port)
                raise RuntimeError(f"the casavi sandbox exited at start; see {self.log_path}")
            try:
                answer = self._admin.get(f"{ADMIN_PREFIX}/health")
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if self._is_ours(answer):
                return
            self.stop()  # someone else answered: ours cannot have bound the port
            raise PortTakenError(self.host, self.port)
        self.stop()
        raise RuntimeError(
            f"the casavi sandbox did not answer within {self.startup_timeout:g}s; see {self.log_path}"
        )

    def _is_ours(self, answer: httpx.Response) -> bool:
        try:
            return answer.status_code == 200 and answer.json().get("nonce") == self.nonce != ""
        except (ValueError, AttributeError):
            return False

    # --- admin endpoints ---------------------------------------------------------------------------
    def _call(self, method: str, name: str, body: Any = None, *, timeout: float | None = None) -> Any:
        response = self._admin.request(
            method, f"{ADMIN_PREFIX}/{name}", json=body, timeout=timeout or self._admin.timeout
        )
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        """Whether the sandbox this object started answers (with its nonce)."""
        try:
            return self._is_ours(self._admin.get(f"{ADMIN_PREFIX}/health"))
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
        """Change knobs on the running sandbox (kept for restarts); returns all knobs now in force.

        E.g. `configure(drop_field="units.rooms")`: API writes of units silently lose `rooms`
        (`"contacts.contracts.number"`: the `number` of each contract); `configure(rename_field=
        "units.rooms=roomCount")`: they store it as `roomCount`, and reads return that;
        `configure(echo_errors=True)`: 400/409/422 answers to PUTs quote the submitted values and body
        in their messages and put values in a `code` slot (`app.ECHO_CODE_KEY`) of the body and of
        each error; `configure(reject_ids="0001-00042")`: PUTs of that reference id (comma-separate
        several) are answered 400 after the body was read; `configure(unmanaged_fields=
        "images,customFields")`: every read carries these fields the sync does not manage;
        `configure(omit_app_link=True)`: reads carry no `appLink` (by default every object read has one).
        `None` (or "" / 0) turns a knob off. An unknown knob or a bad value is answered 400
        (`httpx.HTTPStatusError`) and changes nothing.
        """
        current = self._call("POST", "config", knobs)
        self._knobs.update(knobs)
        return current

    def reset(self, *, objects: bool = True, knobs: bool = True) -> None:
        """Clear the request counters, and unless told otherwise the stored objects and all knobs."""
        self._call("POST", "reset", {"objects": objects})
        if knobs:
            self._knobs = {}
            self._call("POST", "config", dataclasses.asdict(Knobs()))

    # --- someone else changes casavi (not counted in `requests()`) ----------------------------------
    def seed(
        self,
        objects: Iterable[tuple[str, Mapping[str, Any]] | Mapping[str, Any]],
        *,
        batch_size: int = SEED_BATCH,
    ) -> dict[str, int]:
        """Store objects as an import into casavi would (Aareon Connect, an Excel upload).

        `objects` are `(kind, body)` pairs or `{"kind": ..., "body": ...}` dicts; `kind` is a kind's
        name (`"unit"`, or a `StrEnum` whose value it is) or its collection (`"units"`), `body` uses
        casavi's field names. Each body must pass the field rules of what casavi holds (the sandbox's
        `contract.problems(held=True)`: the API's rules, except that a unit's `usage` may be any string,
        as casavi's UI sets it, e.g. `"PARKING"` or `""`), but its
        references need not resolve (imports can be messy); they are recorded, so the API's 409s
        protect seeded objects as well. Bodies are stored as given (fields outside the model kept,
        absent ones absent), replacing an object with the same id; every one gets a new `modified`.
        Sent in requests of `batch_size` objects (one in flight while the next is built), each stored
        in one transaction; a rejected batch raises `httpx.HTTPStatusError` (its answer lists the
        problems, by index within the batch) and earlier batches stay stored.
        Returns `{"seeded", "created", "updated"}` summed over the batches.
        """
        totals = {"seeded": 0, "created": 0, "updated": 0}
        batch: list[dict[str, Any]] = []
        # one batch in flight while the next is built: the server parses and stores meanwhile
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as sender:
            in_flight: concurrent.futures.Future[dict[str, Any]] | None = None

            def send() -> concurrent.futures.Future[dict[str, Any]]:
                content = json.dumps(batch, ensure_ascii=False, separators=(",", ":")).encode()
                batch.clear()
                if in_flight is not None:
                    collect(in_flight)
                return sender.submit(self._post_seed, content)

            def collect(future: concurrent.futures.Future[dict[str, Any]]) -> None:
                answer = future.result()
                for key in totals:
                    totals[key] += answer[key]

            for item in objects:
                if isinstance(item, tuple):
                    kind, body = item
                else:
                    kind, body = item["kind"], item["body"]
                batch.append({"kind": str(kind), "body": body})
                if len(batch) >= batch_size:
                    in_flight = send()
            if batch:
                in_flight = send()
            if in_flight is not None:
                collect(in_flight)
        return totals

    def _post_seed(self, content: bytes) -> dict[str, Any]:
        response = self._admin.post(
            f"{ADMIN_PREFIX}/seed",
            content=content,
            headers={"content-type": "application/json"},
            timeout=600.0,
        )
        response.raise_for_status()
        return response.json()

    def edit(self, kind: str, ref_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change some fields of one object as a person in casavi's UI would; returns the object as
        the API now reads it. `changes` use casavi's field names (a null clears a field); the result
        must still pass the rules of what casavi holds (as for `seed`; else `httpx.HTTPStatusError`
        400); `modified` is bumped even when nothing changed. 404 for an unknown object; the reference id
        cannot change."""
        return self._call("PATCH", _object_path(kind, ref_id), dict(changes))

    def delete_as_user(self, kind: str, ref_id: str) -> bool:
        """Delete one object as a person in casavi's UI would: no 409 check, so objects referencing it
        are left dangling. Returns False if there was no such object."""
        response = self._admin.delete(f"{ADMIN_PREFIX}/{_object_path(kind, ref_id)}")
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True


def _object_path(kind: str, ref_id: str) -> str:
    return f"objects/{kind}/{quote(ref_id, safe='')}"


def _knob_arguments(name: str, value: Any) -> list[str]:
    """The command-line flags of one knob (booleans as --flag / --no-flag, None as nothing)."""
    flag = _KNOB_FLAGS[name]
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + flag.removeprefix("--")]
    return [flag, str(value)]
