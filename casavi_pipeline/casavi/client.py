"""The casavi manager API v2 client over httpx: auth, paging, upserts and deletes by reference id.

Transient trouble (5xx, timeouts, dropped connections) is retried with exponential backoff and jitter
through tenacity, at most `max_attempts` times or `max_retry_seconds`. That is safe for writes too: PUT
and DELETE by reference id are idempotent, so resending a write whose answer was lost leaves one object.
Answers that will not change on retry (400, 409, 422; a 404 or 405 where our model expects none is `CasaviModelMismatchError`) are never retried. A 429 is casavi asking to
slow down, not a failure: the request is sent again once the budget allows, without spending an attempt,
until casavi has answered it with nothing but 429 for `max_retry_seconds` (`CasaviRateLimitedError`).

While casavi fails (not for a 429: that is pacing), `on_wait` hears it in one line when the first request
starts waiting (why, and how long each request will try), again at most every `WAIT_LINE_SECONDS` while it
lasts, and when casavi answers again: a sync is never silent for minutes before it gives up.

Every request, retries and authentication included, passes the account's budget (`ratelimit`): an
adaptive rate shared by every thread and process that talks to the account, so neither concurrency nor
Mandanten syncing side by side multiply the rate casavi sees.

Credentials are never sprayed: a key/secret refused by `/v2/authenticate` is tried once per client,
never retried, and the refusal is latched, so every thread and every later call fails at once without
sending anything. Errors carry no casavi prose and no body (see `errors`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, TypeVar

import httpx
from tenacity import Retrying, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.errors import (
    CasaviAuthError,
    CasaviError,
    CasaviModelMismatchError,
    CasaviRateLimitedError,
    CasaviRejectedError,
    CasaviUnavailableError,
)
from casavi_pipeline.casavi.ratelimit import MAX_PAUSE_SECONDS, AccountBudget

try:
    USER_AGENT = f"casavi_pipeline/{version('casavi_pipeline')}"
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    USER_AGENT = "casavi_pipeline"

#: Longest wait a `Retry-After` may impose on one retry; beyond it the retry time budget decides.
MAX_RETRY_AFTER_SECONDS = MAX_PAUSE_SECONDS
#: While casavi fails, `on_wait` hears "still waiting" at most this often.
WAIT_LINE_SECONDS = 30.0
_REJECTED = {api.STATUS_INVALID, api.STATUS_CONFLICT, api.STATUS_UNKNOWN_REFERENCE}
#: A PUT (which creates), a DELETE or a listing answered so: the path or method is not what our model
#: says, for every object alike. One error that stops the run, not a rejection per object.
_MODEL_MISMATCH = {api.STATUS_NOT_FOUND, api.STATUS_METHOD_NOT_ALLOWED}
MODEL_MISMATCH_WORDING = (
    "casavi's API differs from casavi_pipeline's model at this call: run `casavi-pipeline check-casavi`"
)


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


@dataclass(frozen=True)
class Page:
    """One page of a listing: its objects and the envelope's field names (never its values)."""

    objects: list[dict[str, Any]]
    envelope: tuple[str, ...]  # the body's keys, e.g. ("list", "_links")
    links: tuple[str, ...]  # the keys of `_links`, e.g. ("next",)
    next_url: str | None  # the next page, checked to stay on the configured casavi


@dataclass
class ClientStats:
    """What the client sent; thread-safe counters."""

    requests: int = 0  # every request sent, retries and authentication included
    pages: int = 0  # list pages received
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    server_errors: int = 0  # 5xx answers
    transport_errors: int = 0  # timeouts, refused or dropped connections
    authentications: int = 0  # attempts, refused ones included
    writes: int = 0  # PUT and DELETE operations (each once; its retries are in `retries`)
    budget_wait_seconds: float = 0.0  # waited for the account's budget (its rate, casavi's Retry-After)
    rate_per_minute: float | None = None  # the rate the account's budget allowed last (None: no budget)
    by_status: Counter[int] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, attribute: str, n: float = 1) -> None:
        with self._lock:
            setattr(self, attribute, getattr(self, attribute) + n)

    def rate_figures(self) -> dict[str, float | int]:
        """What the run learned of casavi's rate limit, for its metadata: the rate found, 429s, waiting."""
        figures: dict[str, float | int] = {
            "rate_limited_429": self.rate_limited,
            "budget_wait_s": round(self.budget_wait_seconds, 1),
        }
        if self.rate_per_minute is not None:
            figures["rate_found_per_min"] = round(self.rate_per_minute, 1)
        return figures

    def rate_line(self) -> str:
        """The same figures for a progress line. The wait is summed over the requests in flight at once
        (4 waiting 10 s side by side make 40 s), so it can exceed the sync's wall time: the line says so."""
        rate = f"rate {self.rate_per_minute:.0f}/min, " if self.rate_per_minute is not None else ""
        return (
            f"{rate}{self.rate_limited}× 429, {self.budget_wait_seconds:.0f} s waited for the budget "
            "(summed over concurrent requests)"
        )

    def answered(self, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.by_status[status] += 1
            if status == api.STATUS_RATE_LIMITED:
                self.rate_limited += 1
            elif status >= 500:
                self.server_errors += 1


class _Transient(Exception):
    """A failure worth retrying; carries casavi's `Retry-After` when it sent one."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def _rate_limited(exc: BaseException | None) -> bool:
    return isinstance(exc, _Transient) and exc.status == api.STATUS_RATE_LIMITED


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds or as an HTTP date (RFC 9110), clamped to [0, MAX_RETRY_AFTER_SECONDS].

    None when absent or unparsable: the caller then falls back to its exponential backoff.
    """
    value = (response.headers.get(api.RETRY_AFTER_HEADER) or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are UTC
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if not math.isfinite(seconds):  # float() also takes "nan" and "inf"
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


_NOT_JSON = object()
_E = TypeVar("_E", bound=CasaviError)


def _json_or_not(response: httpx.Response) -> Any:
    # Returns a sentinel rather than raising: a JSONDecodeError keeps the whole body (`.doc`), and an
    # exception raised while handling it would carry it along as `__context__`.
    try:
        return response.json()
    except ValueError:
        return _NOT_JSON


def _error_from(
    response: httpx.Response,
    cls: type[_E],
    *,
    call: str,
    ref_id: str | None,
    message: str | None = None,
) -> _E:
    """The client's error for an answer: our wording, plus only our model's field names from the body.

    casavi's `message` texts are dropped on purpose: a server or proxy echoing the payload would put
    personal data into the run log and the rejections table.
    """
    fields: list[str] = []
    body = _json_or_not(response)
    if isinstance(body, dict):
        details = body.get(api.ERROR_DETAILS_KEY)
        for detail in details if isinstance(details, list) else []:
            if not isinstance(detail, dict):
                continue
            name = detail.get(api.ERROR_FIELD_KEY)
            if api.is_known_field_path(name) and name not in fields:
                fields.append(name)
    status = response.status_code
    return cls(
        message or api.error_wording(status),
        call=call,
        ref_id=ref_id,
        status=status,
        fields=fields,
    )


def _model_mismatch(response: httpx.Response, *, call: str, ref_id: str | None) -> CasaviModelMismatchError:
    return _error_from(
        response, CasaviModelMismatchError, call=call, ref_id=ref_id, message=MODEL_MISMATCH_WORDING
    )


def _json(response: httpx.Response, *, call: str, ref_id: str | None = None) -> Any:
    body = _json_or_not(response)
    if body is _NOT_JSON:
        raise CasaviError(
            "casavi answered with a body that is not JSON",
            call=call,
            ref_id=ref_id,
            status=response.status_code,
        )
    return body


def _utc_stamp(moment: dt.datetime) -> str:
    """casavi's timestamp form, `YYYY-MM-DDThh:mm:ss.sssZ`."""
    if moment.tzinfo is None:  # a naive time is ambiguous (server time zone, DST): refuse, don't guess
        raise ValueError("modified_after must be timezone-aware")
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CasaviClient:
    """A casavi API client for one account. Thread-safe; use as a context manager.

    `budget` paces every request (see `ratelimit`; the caller opens and closes it); None sends as fast
    as `max_concurrency` allows, for the local sandbox and benchmarks only. `clock` and `sleep` are
    injectable so tests of waiting need no time to pass. `on_wait` is told (one line) when requests start
    waiting for a failing casavi, while they keep waiting, and when it answers again.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        budget: AccountBudget | None,
        timeout: float = 30.0,
        max_concurrency: int = 4,
        max_attempts: int = 6,
        max_retry_seconds: float = 300.0,
        backoff_seconds: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts  # failed tries per request; 429s are not failures
        self.max_retry_seconds = max_retry_seconds  # per request, 429s included
        self.backoff_seconds = backoff_seconds  # first retry's base wait; doubles per attempt up to 30 s
        self._key = api_key
        self._secret = api_secret
        self._budget = budget
        self._clock = clock
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(
                max_connections=max_concurrency + 1, max_keepalive_connections=max_concurrency + 1
            ),
        )
        self._auth_lock = threading.Lock()  # one login at a time; the others wait for its token
        self._latch_lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._auth_failure: CasaviAuthError | None = None  # latched: this client never logs in again
        self.stats = ClientStats(rate_per_minute=budget.rate_per_minute if budget is not None else None)
        self._on_wait = on_wait
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None  # when requests started waiting for a failing casavi
        self._outage_said = 0.0  # when `on_wait` last heard of it

    def __repr__(self) -> str:  # never the key, secret or token
        return f"CasaviClient({self.base_url!r})"

    def __enter__(self) -> CasaviClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- transport ---------------------------------------------------------------------------------
    def _send(self, method: str, url: str, *, call: str, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange through the account's budget, which learns from its answer.

        429, 5xx and transport failures become `_Transient`.
        """
        budget = self._budget
        grant = budget.acquire() if budget is not None else None
        if grant is not None:
            self.stats.count("budget_wait_seconds", grant.waited)
        started = self._clock()
        try:
            response = self._http.request(method, url, **kwargs)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            self.stats.count("requests")
            self.stats.count("transport_errors")
            if budget is not None and grant is not None and isinstance(exc, httpx.TimeoutException):
                budget.pushed_back(grant)  # too slow to answer at all
            raise _Transient(f"{type(exc).__name__} talking to casavi") from exc
        status = response.status_code
        self.stats.answered(status)
        if status < 500 and self._outage_since is not None:
            self._answered_again(started)
        pushed_back = status in (api.STATUS_RATE_LIMITED, api.STATUS_UNAVAILABLE)
        retry_after = _retry_after_seconds(response) if pushed_back else None
        if budget is not None and grant is not None:
            if pushed_back:
                budget.pushed_back(grant, retry_after)
            else:
                budget.answered(grant, call=call, seconds=self._clock() - started, status=status)
            self.stats.rate_per_minute = budget.rate_per_minute
        if status == api.STATUS_RATE_LIMITED:
            raise _Transient("429 too many requests", status=status, retry_after=retry_after)
        if status >= 500:
            raise _Transient(f"{status} server error", status=status, retry_after=retry_after)
        return response

    def _retrying(self) -> Retrying:
        backoff = wait_exponential_jitter(
            multiplier=self.backoff_seconds, max=30.0, jitter=2 * self.backoff_seconds
        )
        started = self._clock()
        failures = 0

        def stop(retry_state: Any) -> bool:
            nonlocal failures
            if self._clock() - started >= self.max_retry_seconds:
                return True
            if _rate_limited(retry_state.outcome.exception()):
                return False  # a request to slow down, not a failed attempt
            failures += 1
            return failures >= self.max_attempts

        def wait_for(retry_state: Any) -> float:
            exc = retry_state.outcome.exception()
            if _rate_limited(exc) and self._budget is not None:
                return 0.0  # the budget has slowed down and holds the pause: it paces the next try
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return exc.retry_after
            return backoff(retry_state)

        def before_sleep(retry_state: Any) -> None:
            self.stats.count("retries")
            exc = retry_state.outcome.exception()
            if isinstance(exc, _Transient) and not _rate_limited(exc):
                self._waiting(exc.reason)

        return Retrying(
            stop=stop,
            wait=wait_for,
            retry=retry_if_exception_type(_Transient),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )

    def _waiting(self, reason: str) -> None:
        """A request waits to try a failing casavi again: say so when the first starts, then now and then."""
        with self._outage_lock:
            now = self._clock()
            if self._outage_since is None:
                self._outage_since = self._outage_said = now
                line = (
                    f"casavi at {self.base_url} fails ({reason}): waiting for it; each request is tried "
                    f"{self.max_attempts} times within {self.max_retry_seconds:g} s before the sync gives up"
                )
            elif now - self._outage_said >= WAIT_LINE_SECONDS:
                self._outage_said = now
                line = (
                    f"still waiting for casavi at {self.base_url} ({reason}) for {now - self._outage_since:.0f} s; "
                    f"a request gives up after {self.max_attempts} tries or {self.max_retry_seconds:g} s"
                )
            else:
                return
        if self._on_wait is not None:
            self._on_wait(line)

    def _answered_again(self, sent: float) -> None:
        """casavi answered a request sent at `sent`: it is back, unless the request left before it failed
        (an answer already on its way says nothing about now)."""
        with self._outage_lock:
            if self._outage_since is None or sent < self._outage_since:
                return
            waited, self._outage_since = self._clock() - self._outage_since, None
        if self._on_wait is not None:
            self._on_wait(f"casavi at {self.base_url} answers again, after {waited:.0f} s")

    def _with_retries(
        self, fn: Callable[[], httpx.Response], *, call: str, ref_id: str | None
    ) -> httpx.Response:
        try:
            for attempt in self._retrying():
                with attempt:
                    return fn()
        except _Transient as exc:
            if _rate_limited(exc):
                rate = self.stats.rate_per_minute
                raise CasaviRateLimitedError(
                    f"casavi is rate limiting this account: it answered only 429 (too many requests) for "
                    f"{self.max_retry_seconds:g}s"
                    + (f" although the client slowed down to {rate:.0f} requests/minute" if rate else ""),
                    call=call,
                    ref_id=ref_id,
                    status=exc.status,
                ) from exc
            raise CasaviUnavailableError(
                f"casavi kept failing ({exc.reason}); gave up after {self.max_attempts} attempts "
                f"or {self.max_retry_seconds:g}s",
                call=call,
                ref_id=ref_id,
                status=exc.status,
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # --- authentication ----------------------------------------------------------------------------
    def authenticate(self, *, force: bool = False) -> None:
        """Prove that casavi accepts the key/secret: log in, or keep a valid token unless `force`.

        Call it at the start of every run, so the night the credentials break fails loudly even when
        there is nothing to write. Raises `CasaviAuthError` (latched: this client never tries again)
        or `CasaviUnavailableError` when casavi cannot be reached.
        """
        with self._auth_lock:
            self._raise_if_latched()
            if force or self._token is None or time.time() >= self._refresh_at:
                self._authenticate()

    def _raise_if_latched(self) -> None:
        if self._auth_failure is not None:
            raise self._auth_failure.copy()

    def _latch(self, error: CasaviAuthError) -> CasaviAuthError:
        with self._latch_lock:
            if self._auth_failure is None:
                self._auth_failure = error
            return error

    def _current_token(self) -> str:
        with self._auth_lock:
            self._raise_if_latched()
            if self._token is None or time.time() >= self._refresh_at:
                self._authenticate()
            assert self._token is not None
            return self._token

    def _authenticate(self) -> None:
        """One login; the caller holds `_auth_lock`. 429/5xx are retried, a refusal never is."""
        call = f"POST {api.AUTH_PATH}"
        body = {api.AUTH_KEY_FIELD: self._key, api.AUTH_SECRET_FIELD: self._secret}

        def send() -> httpx.Response:
            self.stats.count("authentications")
            return self._send("POST", api.AUTH_PATH, call=call, json=body)

        response = self._with_retries(send, call=call, ref_id=None)
        if response.status_code in (api.STATUS_UNAUTHORIZED, api.STATUS_FORBIDDEN):
            # A wrong key/secret stays wrong for the rest of the run: trying again from every thread
            # and every call would only spray failed logins at casavi (and maybe lock the account).
            raise self._latch(
                _error_from(
                    response,
                    CasaviAuthError,
                    call=call,
                    ref_id=None,
                    message="casavi refused the API key/secret; check CASAVI_API_KEY and CASAVI_API_SECRET",
                )
            )
        if response.status_code in _MODEL_MISMATCH:
            raise _model_mismatch(response, call=call, ref_id=None)
        if response.status_code != 200:
            raise _error_from(response, CasaviError, call=call, ref_id=None)
        answer = _json(response, call=call)
        token = answer.get(api.AUTH_TOKEN_FIELD) if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise CasaviError("casavi's authentication answer carries no token", call=call, status=200)
        self._token = token
        now = time.time()
        try:
            expires = dt.datetime.fromisoformat(
                answer[api.AUTH_EXPIRES_FIELD].replace("Z", "+00:00")
            ).timestamp()
        except (KeyError, TypeError, ValueError, AttributeError):
            expires = now + 3600.0
        # Renew shortly before casavi would refuse the token: 5 minutes, or a tenth of a short lifetime.
        self._refresh_at = expires - min(300.0, max(0.0, expires - now) / 10.0)

    def _forget_token(self, token: str) -> None:
        with self._auth_lock:
            if self._token == token:  # another thread may have renewed it already
                self._token = None

    def _request(
        self, method: str, url: str, *, call: str, ref_id: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """An authenticated call with retries; on 401 authenticate again once and repeat it."""

        def attempt() -> httpx.Response:
            token = self._current_token()
            response = self._send(method, url, call=call, headers={api.TOKEN_HEADER: token}, **kwargs)
            if response.status_code == api.STATUS_UNAUTHORIZED:  # expired or revoked: one fresh token
                self._forget_token(token)
                response = self._send(
                    method, url, call=call, headers={api.TOKEN_HEADER: self._current_token()}, **kwargs
                )
                if response.status_code == api.STATUS_UNAUTHORIZED:
                    # A token casavi just issued is refused too: the access is gone for this run.
                    raise self._latch(
                        _error_from(
                            response,
                            CasaviAuthError,
                            call=call,
                            ref_id=ref_id,
                            message=f"{api.error_wording(api.STATUS_UNAUTHORIZED)} (a fresh token too)",
                        )
                    )
            if response.status_code == api.STATUS_FORBIDDEN:  # valid token, missing permission
                raise _error_from(response, CasaviAuthError, call=call, ref_id=ref_id)
            return response

        return self._with_retries(attempt, call=call, ref_id=ref_id)

    # --- reads -------------------------------------------------------------------------------------
    def list_objects(
        self,
        kind: ObjectKind,
        *,
        page_size: int = api.MAX_PAGE_SIZE,
        modified_after: dt.datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every object of a kind as casavi returns it, following `_links.next` through all pages.

        `modified_after` (timezone-aware) asks only for objects changed after it.
        """
        for page in self.list_pages(kind, page_size=page_size, modified_after=modified_after):
            yield from page.objects

    def list_pages(
        self,
        kind: ObjectKind,
        *,
        page_size: int = api.MAX_PAGE_SIZE,
        modified_after: dt.datetime | None = None,
    ) -> Iterator[Page]:
        """The pages of a listing, one request each, fetched as the caller asks for the next.

        A next link must stay on the configured host and scheme: the token is never sent anywhere else.
        """
        if not 1 <= page_size <= api.MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {api.MAX_PAGE_SIZE}")
        call = f"GET {kind.collection_path}"
        params: dict[str, Any] | None = {api.PAGE_SIZE_PARAM: page_size, **kind.read_params}
        if modified_after is not None:
            params[api.MODIFIED_AFTER_PARAM] = _utc_stamp(modified_after)  # type: ignore[index]
        url: str | None = kind.collection_path
        while url:
            response = self._request("GET", url, call=call, params=params)
            if response.status_code in _MODEL_MISMATCH:
                raise _model_mismatch(response, call=call, ref_id=None)
            if response.status_code != 200:
                raise _error_from(response, CasaviError, call=call, ref_id=None)
            body = _json(response, call=call)
            objects = body.get(api.LIST_KEY) if isinstance(body, dict) else None
            if not isinstance(objects, list):
                raise CasaviError("casavi answered a listing without its list", call=call, status=200)
            self.stats.count("pages")
            links = body.get(api.LINKS_KEY)
            links = links if isinstance(links, dict) else {}
            next_link = links.get(api.NEXT_LINK_KEY)
            url = self._same_origin(next_link, call=call) if next_link else None
            yield Page(objects, tuple(body), tuple(links), url)
            params = None  # the next link carries its own query

    def _same_origin(self, link: Any, *, call: str) -> str:
        """The next-page link, if it points at the configured casavi; else an error, sending nothing."""
        try:
            target = self._http.base_url.join(link) if isinstance(link, str) else None
        except (httpx.InvalidURL, ValueError):
            target = None
        base = self._http.base_url
        if target is None or (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            host = target.host if target is not None else "?"
            raise CasaviError(
                f"casavi's next-page link leaves {base.host} (to {host or '?'}); refusing to send the "
                "token there",
                call=call,
            )
        return str(target)

    def get_object(self, kind: ObjectKind, ref_id: str) -> dict[str, Any] | None:
        """One object as casavi returns it, or None when casavi does not know the reference id (404)."""
        call = f"GET {kind.collection_path}/{{id}}"
        response = self._request(
            "GET", kind.object_path(ref_id), call=call, ref_id=ref_id, params=kind.read_params
        )
        if response.status_code == api.STATUS_NOT_FOUND:
            return None
        if response.status_code == api.STATUS_METHOD_NOT_ALLOWED:
            raise _model_mismatch(response, call=call, ref_id=ref_id)
        if response.status_code != 200:
            raise _error_from(response, CasaviError, call=call, ref_id=ref_id)
        body = _json(response, call=call, ref_id=ref_id)
        if not isinstance(body, dict):
            raise CasaviError(
                "casavi answered an object that is not one", call=call, ref_id=ref_id, status=200
            )
        return body

    # --- writes ------------------------------------------------------------------------------------
    def upsert(self, kind: ObjectKind, payload: dict[str, Any]) -> WriteResult:
        ref_id = str(payload[api.ID_FIELD])
        return self._write(Operation(kind, "upsert", ref_id, payload))

    def delete(self, kind: ObjectKind, ref_id: str) -> WriteResult:
        return self._write(Operation(kind, "delete", ref_id))

    def _write(self, op: Operation) -> WriteResult:
        method = "PUT" if op.action == "upsert" else "DELETE"
        call = f"{method} {op.kind.collection_path}/{{id}}"
        kwargs = {"json": op.payload} if op.action == "upsert" else {}
        self.stats.count("writes")
        response = self._request(
            method, op.kind.object_path(op.ref_id), call=call, ref_id=op.ref_id, **kwargs
        )
        status = response.status_code
        if op.action == "delete" and status in (api.STATUS_DELETED, api.STATUS_NOT_FOUND, 200):
            return WriteResult(op, ok=True, status=status)
        if op.action == "upsert" and status in (api.STATUS_UPDATED, api.STATUS_CREATED):
            return WriteResult(op, ok=True, status=status, created=status == api.STATUS_CREATED)
        if status in _MODEL_MISMATCH:  # a PUT creates, so a 404 is no unknown id; a 405 never passes
            raise _model_mismatch(response, call=call, ref_id=op.ref_id)
        if status in _REJECTED:
            error = _error_from(response, CasaviRejectedError, call=call, ref_id=op.ref_id)
            return WriteResult(op, ok=False, status=status, error=error)
        raise _error_from(response, CasaviError, call=call, ref_id=op.ref_id)

    def execute(self, operations: Iterable[Operation]) -> Iterator[WriteResult]:
        """Send writes with at most `max_concurrency` in flight; yield each result as it completes.

        Results are yielded in the calling thread, so the caller can record each confirmed write
        before the next. Rejections are results; when casavi is unavailable or refuses the
        credentials, no new writes start, the ones in flight finish and are yielded, then the error
        is raised.
        """
        pending = iter(operations)
        failure: CasaviError | None = None
        in_flight: set[Future[WriteResult]] = set()
        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="casavi") as pool:
            try:
                while True:
                    while failure is None and len(in_flight) < self.max_concurrency:
                        op = next(pending, None)
                        if op is None:
                            break
                        in_flight.add(pool.submit(self._write, op))
                    if not in_flight:
                        break
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        try:
                            result = future.result()
                        except CasaviError as exc:  # unavailable, credentials refused, unexpected answer
                            failure = failure or exc
                            continue
                        yield result
            finally:
                for future in in_flight:
                    future.cancel()
        if failure is not None:
            raise failure
