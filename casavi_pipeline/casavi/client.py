"""The casavi manager API v2 client: the verbs the sync needs — authenticate, list, get, upsert, delete, and
writes sent concurrently — over httpx. The rest has its own room, as in dlt's REST client:

    transport.py  every request through the account's budget (`ratelimit`), counted (`ClientStats`)
    auth.py       the token flow (login, renewal on the injected clock, one fresh token after a 401, latch)
    retry.py      what is retried and for how long (5xx, timeouts, 429s that spend no attempt)
    classify.py   one classifier from casavi's answer to what it means for the call
    paging.py     following `_links.next`, never off the configured host
    concurrency.py  writes sent side by side, each result handed back in the caller's thread
    errors.py     the client's errors, and the one place that reads an error out of an answer

Errors carry no casavi prose and no body; credentials never appear in a repr.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import httpx

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.auth import LOGIN_CALL, REF_ID, TokenAuth
from casavi_pipeline.casavi.classify import Call, Outcome, classify
from casavi_pipeline.casavi.concurrency import in_flight
from casavi_pipeline.casavi.errors import (
    MODEL_MISMATCH_WORDING,
    CasaviAuthError,
    CasaviError,
    CasaviModelMismatchError,
    CasaviRejectedError,
    error_from,
    json_body,
)
from casavi_pipeline.casavi.paging import Page, pages
from casavi_pipeline.casavi.retry import OutageWatch, RetryPolicy, Transient, transient
from casavi_pipeline.casavi.transport import CALL, Budget, BudgetedTransport, ClientStats

try:
    USER_AGENT = f"casavi_pipeline/{version('casavi_pipeline')}"
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    USER_AGENT = "casavi_pipeline"

@dataclass(frozen=True)
class Operation:
    """One write to casavi."""

    kind: ObjectKind
    action: Literal["upsert", "delete"]
    ref_id: str
    payload: dict[str, Any] | None = None  # casavi body (`api.to_payload`) for upserts


@dataclass(frozen=True)
class WriteResult:
    operation: Operation
    ok: bool  # confirmed by casavi (a 404 on delete counts: the object is gone either way)
    status: int | None
    created: bool = False
    error: CasaviError | None = None


class CasaviClient:
    """A casavi API client for one account. Thread-safe; use as a context manager.

    `budget` paces every request (the caller opens and closes it); None sends as fast as `max_concurrency`
    allows, for the local sandbox and benchmarks only. `clock`/`sleep` (retry time, latency) and `now`
    (the token's expiry, a wall clock) are injectable so tests of waiting need no time to pass. `on_wait`
    is told (one line) when requests start waiting for a failing casavi, while they keep waiting, and when
    it answers again (`retry.OutageWatch`).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        budget: Budget | None,
        timeout: float = 30.0,
        max_concurrency: int = 4,
        max_attempts: int = 6,
        max_retry_seconds: float = 300.0,
        backoff_seconds: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self._budget = budget
        self.stats = ClientStats(rate_per_minute=budget.rate_per_minute if budget is not None else None)
        self.retry = RetryPolicy(
            max_attempts=max_attempts, max_retry_seconds=max_retry_seconds, backoff_seconds=backoff_seconds,
            budgeted=budget is not None, clock=clock, sleep=sleep, on_retry=self._retrying,
        )  # fmt: skip
        self.outage = OutageWatch(self.base_url, self.retry, say=on_wait, clock=clock)
        limits = httpx.Limits(max_connections=max_concurrency + 1, max_keepalive_connections=max_concurrency + 1)
        self._auth = TokenAuth(
            self.base_url, api_key, api_secret, on_login=lambda: self.stats.count("authentications"), now=now
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=BudgetedTransport(
                transport or httpx.HTTPTransport(limits=limits), budget, self.stats, clock, self.outage.answered
            ),
            headers={"User-Agent": USER_AGENT},
            auth=self._auth,
        )

    def __repr__(self) -> str:  # never the key, secret or token
        return f"CasaviClient({self.base_url!r})"

    def __enter__(self) -> CasaviClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _retrying(self, exc: Transient) -> None:
        self.stats.count("retries")
        if not exc.rate_limited:
            self.outage.failing(exc.reason)

    # --- one exchange, retried -----------------------------------------------------------------------
    def _exchange(
        self, method: str, url: str, kind: Call, *, call: str, ref_id: str | None = None, **kwargs: Any
    ) -> tuple[httpx.Response, Outcome]:
        """Send until casavi answers something other than 429/5xx (or the retries run out); its outcome.
        A refusal (403, or a 401 after the fresh token) is `CasaviAuthError`; a 404/405 where the model
        expects none is `CasaviModelMismatchError`."""

        def attempt() -> tuple[httpx.Response, Outcome]:
            try:
                response = self._http.request(method, url, extensions={CALL: call, REF_ID: ref_id}, **kwargs)
            except httpx.TransportError as exc:
                raise Transient(f"{type(exc).__name__} talking to casavi") from exc
            outcome = classify(Call.LOGIN if response.url.path == api.AUTH_PATH else kind, response.status_code)
            if outcome is Outcome.RETRY:
                raise transient(response)
            return response, outcome

        response, outcome = self.retry.call(attempt, call=call, ref_id=ref_id, rate=lambda: self.stats.rate_per_minute)
        if outcome is Outcome.REFUSED:  # valid token, missing permission (a 401 latched in the flow)
            raise error_from(response, CasaviAuthError, call=call, ref_id=ref_id)
        if outcome is Outcome.MISMATCH:
            raise error_from(response, CasaviModelMismatchError, call=call, ref_id=ref_id, message=MODEL_MISMATCH_WORDING)
        if outcome is Outcome.UNEXPECTED:
            raise error_from(response, CasaviError, call=call, ref_id=ref_id)
        return response, outcome

    # --- authentication ----------------------------------------------------------------------------
    def authenticate(self, *, force: bool = False) -> None:
        """Prove that casavi accepts the key/secret: log in, or keep a valid token unless `force`.

        Call it at the start of every run, so the night the credentials break fails loudly even when
        there is nothing to write. Raises `CasaviAuthError` (latched: this client never tries again)
        or `CasaviUnavailableError` when casavi cannot be reached.
        """

        def attempt() -> None:
            try:
                response = self._auth.login(lambda request: self._http.send(request, auth=None), force=force)
            except httpx.TransportError as exc:
                raise Transient(f"{type(exc).__name__} talking to casavi") from exc
            if response is not None and classify(Call.LOGIN, response.status_code) is Outcome.RETRY:
                raise transient(response)

        self.retry.call(attempt, call=LOGIN_CALL, ref_id=None, rate=lambda: self.stats.rate_per_minute)

    # --- reads -------------------------------------------------------------------------------------
    def list_objects(
        self, kind: ObjectKind, *, page_size: int = api.MAX_PAGE_SIZE, modified_after: dt.datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every object of a kind as casavi returns it, following `_links.next` through all pages.

        `modified_after` (timezone-aware) asks only for objects changed after it.
        """
        for page in self.list_pages(kind, page_size=page_size, modified_after=modified_after):
            yield from page.objects

    def list_pages(
        self, kind: ObjectKind, *, page_size: int = api.MAX_PAGE_SIZE, modified_after: dt.datetime | None = None
    ) -> Iterator[Page]:
        """The pages of a listing, one request each, fetched as the caller asks for the next (`paging`)."""
        if not 1 <= page_size <= api.MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {api.MAX_PAGE_SIZE}")
        call = f"GET {kind.collection_path}"
        params: dict[str, Any] = {api.PAGE_SIZE_PARAM: page_size, **kind.read_params}
        if modified_after is not None:
            params[api.MODIFIED_AFTER_PARAM] = api.utc_stamp(modified_after)

        def fetch(url: str, query: dict[str, Any] | None) -> Any:
            response, _ = self._exchange("GET", url, Call.LIST, call=call, params=query)
            self.stats.count("pages")
            return json_body(response, call=call)

        yield from pages(fetch, kind.collection_path, params, base=self._http.base_url, call=call)

    def get_object(self, kind: ObjectKind, ref_id: str) -> dict[str, Any] | None:
        """One object as casavi returns it, or None when casavi does not know the reference id (404)."""
        call = f"GET {kind.collection_path}/{{id}}"
        response, outcome = self._exchange(
            "GET", kind.object_path(ref_id), Call.GET, call=call, ref_id=ref_id, params=kind.read_params
        )
        if outcome is Outcome.ABSENT:
            return None
        body = json_body(response, call=call, ref_id=ref_id)
        if not isinstance(body, dict):
            raise CasaviError("casavi answered an object that is not one", call=call, ref_id=ref_id, status=200)
        return body

    # --- writes ------------------------------------------------------------------------------------
    def upsert(self, kind: ObjectKind, payload: dict[str, Any]) -> WriteResult:
        return self._write(Operation(kind, "upsert", str(payload[api.ID_FIELD]), payload))

    def delete(self, kind: ObjectKind, ref_id: str) -> WriteResult:
        return self._write(Operation(kind, "delete", ref_id))

    def _write(self, op: Operation) -> WriteResult:
        method, kind = ("PUT", Call.PUT) if op.action == "upsert" else ("DELETE", Call.DELETE)
        call = f"{method} {op.kind.collection_path}/{{id}}"
        kwargs = {"json": op.payload} if op.action == "upsert" else {}
        self.stats.count("writes")
        response, outcome = self._exchange(method, op.kind.object_path(op.ref_id), kind, call=call, ref_id=op.ref_id, **kwargs)
        status = response.status_code
        if outcome is Outcome.REJECTED:
            error = error_from(response, CasaviRejectedError, call=call, ref_id=op.ref_id)
            return WriteResult(op, ok=False, status=status, error=error)
        return WriteResult(op, ok=True, status=status, created=status == api.STATUS_CREATED and op.action == "upsert")

    def execute(self, operations: Iterable[Operation]) -> Iterator[WriteResult]:
        """Send writes with at most `max_concurrency` in flight; yield each result as it completes
        (`concurrency.in_flight`: a rejection is a result, a failure stops new writes and is raised)."""
        return in_flight(self._write, operations, self.max_concurrency)
