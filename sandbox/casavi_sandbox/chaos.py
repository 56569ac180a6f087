"""The sandbox's misbehaviour knobs and the ASGI middleware that applies them and counts requests.

Everything under the API prefix passes through `Misbehaviour`: rate limit (429 + Retry-After), added
latency, injected 500s, dropped connections. The admin endpoints (`/_sandbox/...`) bypass it, so tests
can inspect and reconfigure a misbehaving server. All knobs are off by default. The knobs that change
what is stored, read or said (`drop_field`, `rename_field`, `echo_errors`, `reject_ids`,
`unmanaged_fields`, `omit_app_link`) are applied by the API handlers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from casavi_sandbox import contract as c
from casavi_sandbox.contract import Kind
from casavi_sandbox.model import unmanaged_field_problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The status recorded for a request whose connection was dropped instead of answered.
DROPPED = "dropped"


@dataclass(frozen=True)
class Knobs:
    """How the sandbox misbehaves; the defaults are a well-behaved casavi."""

    rate_limit: float | None = None  # requests per minute over all /v2 calls; None = unlimited
    latency_ms: float = 0.0  # added before every /v2 answer
    error_rate: float = 0.0  # fraction of /v2 requests answered 500 (before they are processed)
    token_ttl: float | None = None  # seconds a new token lives; None = casavi's default (30 days)
    drop_rate: float = 0.0  # fraction of /v2 requests processed, then closed without an answer
    seed: int = 0  # seeds the random choice of 500s and drops, so a run can be repeated
    # "units.rooms": API writes of that kind silently lose that field (the write model is broken); a
    # field of embedded entries is named through its list: "contacts.contracts.number"
    drop_field: str | None = None
    # "units.rooms=roomCount": API writes store that field under another name, so reads return it so
    # ("contacts.contracts.number=contractNumber" inside each entry)
    rename_field: str | None = None
    # 400/409/422 answers to PUTs quote the submitted values and the whole body in their messages, and
    # put values into a `code` slot of the body and of each error (a chatty validation layer)
    echo_errors: bool = False
    # "0001-00042,0001-00043": PUTs of these reference ids are answered 400 after the body was read, as
    # a casavi validation rejecting a value would (with echo_errors, the answer quotes the body)
    reject_ids: str | None = None
    # "images,customFields": every read (of every kind) also carries these fields the sync does not
    # manage; each must be one of `contract.UNMANAGED_READ_FIELDS` (or match its prefix, `msc*`), other
    # than appLink, which every read carries already
    unmanaged_fields: str | None = None
    # reads carry no appLink (a casavi that returns none)
    omit_app_link: bool = False

    def updated(self, changes: Mapping[str, Any]) -> Knobs:
        """A copy with the given knobs changed; ValueError names an unknown knob or a bad value."""
        names = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown knobs {unknown}; known: {sorted(names)}")
        knobs = dataclasses.replace(self, **changes)
        knobs._check()
        # 0 means "off" for the optional limits, the same as null
        return dataclasses.replace(
            knobs,
            rate_limit=knobs.rate_limit or None,
            token_ttl=knobs.token_ttl or None,
            drop_field=knobs.drop_field or None,
            rename_field=knobs.rename_field or None,
            reject_ids=",".join(knobs.rejected_ids()) or None,
            unmanaged_fields=",".join(knobs.unmanaged_names()) or None,
        )

    def rejected_ids(self) -> list[str]:
        """The reference ids of `reject_ids`, in order, blanks dropped."""
        return [ref.strip() for ref in (self.reject_ids or "").split(",") if ref.strip()]

    def unmanaged_names(self) -> list[str]:
        """The field names of `unmanaged_fields`, in order, blanks and repeats dropped."""
        names = [name.strip() for name in (self.unmanaged_fields or "").split(",")]
        return list(dict.fromkeys(name for name in names if name))

    def field_changes(self, kind: Kind) -> list[tuple[tuple[str, ...], str | None]]:
        """How API writes of `kind` break its write model: (field path, new name, or None to drop it).
        A path is a field (`rooms`), or a list field and a field of its entries (`contracts`, `number`)."""
        changes: list[tuple[tuple[str, ...], str | None]] = []
        if self.drop_field:
            collection, path = _field_knob("drop_field", self.drop_field)
            if collection == kind.collection:
                changes.append((path, None))
        if self.rename_field:
            target, _, new_name = self.rename_field.partition("=")
            collection, path = _field_knob("rename_field", target)
            if collection == kind.collection:
                changes.append((path, new_name))
        return changes

    def _check(self) -> None:
        for name in ("rate_limit", "token_ttl"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value < 0):
                raise ValueError(f"{name} must be a number >= 0 or null")
        if not _is_number(self.latency_ms) or self.latency_ms < 0:
            raise ValueError("latency_ms must be a number >= 0")
        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a fraction between 0 and 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError("seed must be an integer")
        for name in ("echo_errors", "omit_app_link"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        if self.reject_ids is not None and not isinstance(self.reject_ids, str):
            raise ValueError("reject_ids must be a comma-separated list of reference ids, e.g. '0001-00042'")
        if self.unmanaged_fields is not None:
            if not isinstance(self.unmanaged_fields, str):
                raise ValueError("unmanaged_fields must be a comma-separated list, e.g. 'images,appLink'")
            for name in self.unmanaged_names():
                if problem := unmanaged_field_problem(name):
                    raise ValueError(f"unmanaged_fields: {problem}")
        if self.drop_field:
            _field_knob("drop_field", self.drop_field)
        if self.rename_field:
            target, equals, new_name = (
                self.rename_field.partition("=") if isinstance(self.rename_field, str) else ("", "", "")
            )
            _field_knob("rename_field", target)
            if not equals or not new_name.strip() or new_name == target.rpartition(".")[2]:
                raise ValueError("rename_field must look like 'units.rooms=roomCount' (a new name)")


def _field_knob(name: str, value: Any) -> tuple[str, tuple[str, ...]]:
    """'units.rooms' (or 'unit.rooms') → ('units', ('rooms',)); 'contacts.contracts.number' →
    ('contacts', ('contracts', 'number')); ValueError unless it names a casavi field."""
    if not isinstance(value, str) or "." not in value:
        raise ValueError(f"{name} must look like 'units.rooms' (collection.field), not {value!r}")
    collection, *path = value.split(".")
    try:
        kind = c.kind_named(collection)
    except ValueError:
        raise ValueError(
            f"{name}: unknown collection {collection!r}; known: {sorted(c.KINDS_BY_COLLECTION)}"
        ) from None
    rules = {rule.name: rule for rule in c.FIELDS[kind]}
    rule = rules.get(path[0])
    if rule is None or len(path) > 2:
        raise ValueError(f"{name}: {kind.collection} has no field {'.'.join(path)!r}; known: {list(rules)}")
    if len(path) == 2:
        items = [item.name for item in rule.items]
        if path[1] not in items:
            raise ValueError(
                f"{name}: {kind.collection}.{path[0]} entries have no field {path[1]!r}; known: {items}"
            )
    return kind.collection, tuple(path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TokenBucket:
    """`per_minute` requests a minute, with a burst of one second's worth (at least one request)."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._capacity = max(1.0, self._rate)
        self._tokens = self._capacity
        self._clock = clock  # a test's own clock: refilling is tested without waiting
        self._updated = clock()

    def take(self) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RequestCounter:
    """Counts per route template ("PUT /v2/units/{id}") and status, the way the admin endpoint shows them."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def record(self, route: str, status: int | str) -> None:
        self._counts[route, str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        routes: dict[str, dict[str, int]] = {}
        statuses: Counter[str] = Counter()
        for (route, status), count in sorted(self._counts.items()):
            routes.setdefault(route, {})[status] = count
            statuses[status] += count
        return {"total": sum(statuses.values()), "routes": routes, "statuses": dict(sorted(statuses.items()))}

    def reset(self) -> None:
        self._counts.clear()


def route_template(method: str, path: str) -> str:
    """'PUT /v2/units/0001-12%2F3' → 'PUT /v2/units/{id}': counts must not grow with every id."""
    if path == c.AUTH_PATH:
        return f"{method} {c.AUTH_PATH}"
    collection, has_id, _ = path.removeprefix(c.API_PREFIX + "/").partition("/")
    if collection not in c.KINDS_BY_COLLECTION:
        return f"{method} {c.API_PREFIX}/*"
    return f"{method} {c.API_PREFIX}/{collection}" + ("/{id}" if has_id else "")


class Controls:
    """The live knobs plus the state they need (rate-limit bucket, random source, request counts)."""

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.counter = RequestCounter()
        self.knobs = Knobs()
        self.configure(dataclasses.asdict(knobs or Knobs()))

    def configure(self, changes: Mapping[str, Any]) -> Knobs:
        self.knobs = self.knobs.updated(changes)
        self.bucket = TokenBucket(self.knobs.rate_limit) if self.knobs.rate_limit else None
        self.random = random.Random(self.knobs.seed)
        return self.knobs

    def reset_counters(self) -> None:
        self.counter.reset()
        if self.knobs.rate_limit:  # a fresh start: a full bucket
            self.bucket = TokenBucket(self.knobs.rate_limit)


class Misbehaviour:
    """ASGI middleware around the whole app. It must be the outermost layer: dropping a connection
    needs uvicorn's own `send`, whose owner holds the socket's transport."""

    def __init__(self, app: ASGIApp, controls: Controls) -> None:
        self.app = app
        self.controls = controls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(c.API_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        controls, knobs = self.controls, self.controls.knobs
        route = route_template(scope["method"], scope["path"])
        wait = controls.bucket.take() if controls.bucket else 0.0
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000.0)
        if wait:
            retry_after = str(max(1, math.ceil(wait)))
            await _answer(
                send, c.STATUS_RATE_LIMITED, "rate limit exceeded", [(c.RETRY_AFTER_HEADER, retry_after)]
            )
            controls.counter.record(route, c.STATUS_RATE_LIMITED)
            return
        if knobs.error_rate and controls.random.random() < knobs.error_rate:
            await _answer(send, c.STATUS_SERVER_ERROR, "injected server error")
            controls.counter.record(route, c.STATUS_SERVER_ERROR)
            return
        drop = bool(knobs.drop_rate) and controls.random.random() < knobs.drop_rate
        statuses: list[int] = []

        async def answer_or_drop(message: Message) -> None:
            # The request is processed (a write is stored); only its answer is lost: the case that
            # makes a client retry a write that already happened.
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
                if drop:
                    await _drop_connection(send, message)
                    return
            if not drop:
                await send(message)

        await self.app(scope, receive, answer_or_drop)
        controls.counter.record(
            route, DROPPED if drop else (statuses[0] if statuses else c.STATUS_SERVER_ERROR)
        )


async def _answer(send: Send, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
    body = json.dumps({c.ERROR_MESSAGE_KEY: message}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _drop_connection(send: Send, start: Message) -> None:
    """Close the socket without answering, so the client sees a connection error.

    Raising in the app would not do it: uvicorn answers an exception with a 500. uvicorn's `send` is a
    bound method of its request cycle, which holds the transport; closing it and letting the loop run
    `connection_lost` marks the cycle disconnected, so uvicorn neither answers nor logs an error.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:  # another server: start the answer and never finish it (the server closes)
        await send(start)
        return
    transport.close()
    for _ in range(10):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)
