"""Real receivers of alerts on 127.0.0.1: an SMTP server (aiosmtpd) and an HTTP server for webhooks.

The webhook server answers each POST with 200, or, on a path set slow, dribbles its answer a byte at a
time until the client hangs up: what a Slack URL looked like that sent one byte every few seconds.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import http.server
import json
import threading
import time
from collections.abc import Iterator

from aiosmtpd.controller import Controller

from casavi_sandbox.process import free_port

#: How long a slow webhook waits between the bytes of its answer.
DRIBBLE_SECONDS = 1.0
#: A slow webhook gives up on a client that never hangs up after this long.
DRIBBLE_LIMIT_SECONDS = 300.0


class Inbox:
    """What a real SMTP server on 127.0.0.1 accepted."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.port = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@contextlib.contextmanager
def smtp_inbox() -> Iterator[Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    try:
        yield inbox
    finally:
        controller.stop()


class Webhooks:
    """An HTTP server on 127.0.0.1 standing in for Slack's and Teams' incoming webhooks."""

    def __init__(self) -> None:
        self.port = 0
        self.slow_paths: set[str] = set()
        self._received: list[tuple[str, dict]] = []
        self._abandoned: list[str] = []
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str | None = None) -> list[dict]:
        """The JSON bodies posted (to `path`), answered or not."""
        with self._lock:
            return [body for p, body in self._received if path is None or p == path]

    def paths(self) -> set[str]:
        with self._lock:
            return {p for p, _ in self._received}

    def abandoned(self, path: str) -> int:
        """How many clients of a slow `path` hung up before its answer was complete."""
        with self._lock:
            return self._abandoned.count(path)

    def _record(self, path: str, body: dict) -> None:
        with self._lock:
            self._received.append((path, body))

    def _hung_up(self, path: str) -> None:
        with self._lock:
            self._abandoned.append(path)


def _handler(hooks: Webhooks) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            hooks._record(self.path, json.loads(body or b"null"))
            if self.path in hooks.slow_paths:
                self._dribble()
                return
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def _dribble(self) -> None:
            answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + b"x-slow: " + b"." * 10_000
            deadline = time.monotonic() + DRIBBLE_LIMIT_SECONDS
            try:
                for byte in answer:
                    if time.monotonic() > deadline:
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(DRIBBLE_SECONDS)
            except (BrokenPipeError, ConnectionResetError):
                hooks._hung_up(self.path)
            finally:
                self.close_connection = True

        def log_message(self, *_args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hooks))
    server.daemon_threads = True
    hooks.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hooks
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def wait_for(condition, seconds: float, what: str):
    """`condition()`'s first truthy value, polled until the deadline; else fail naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {seconds:.0f} s for {what}"
        time.sleep(0.2)
