"""Retrying what is worth retrying: 5xx, timeouts and dropped connections (with exponential backoff and
jitter, through tenacity), and 429 — casavi asking to slow down, which spends no attempt.

Safe for writes too: PUT and DELETE by reference id are idempotent, so resending a write whose answer was
lost leaves one object. A request gives up after `max_attempts` failures or `max_retry_seconds`, 429s
included (`CasaviRateLimitedError` when it met nothing but 429, else `CasaviUnavailableError`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.errors import CasaviRateLimitedError, CasaviUnavailableError
from casavi_pipeline.casavi.ratelimit import MAX_PAUSE_SECONDS

#: Longest wait a `Retry-After` may impose on one retry; beyond it the retry time budget decides.
MAX_RETRY_AFTER_SECONDS = MAX_PAUSE_SECONDS
#: While casavi fails, the outage watch says "still waiting" at most this often.
WAIT_LINE_SECONDS = 30.0


class Transient(Exception):
    """A failure worth retrying; carries casavi's `Retry-After` when it sent one."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after

    @property
    def rate_limited(self) -> bool:
        return self.status == api.STATUS_RATE_LIMITED


def transient(response: httpx.Response) -> Transient:
    """The retryable failure an answer of 429 or 5xx is."""
    status = response.status_code
    reason = "429 too many requests" if status == api.STATUS_RATE_LIMITED else f"{status} server error"
    return Transient(reason, status=status, retry_after=retry_after_seconds(response))


def retry_after_seconds(response: httpx.Response) -> float | None:
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


@dataclass(frozen=True)
class RetryPolicy:
    """How long a request is tried. `budgeted`: an account budget paces the client and holds casavi's
    pause after a 429, so a 429 is tried again at once (the budget waits); `clock` and `sleep` are
    injectable so tests of waiting need no time to pass; `on_retry(reason, attempt)` hears each retry."""

    max_attempts: int = 6
    max_retry_seconds: float = 300.0
    backoff_seconds: float = 0.5  # first retry's base wait; doubles per attempt up to 30 s
    budgeted: bool = False
    clock: Callable[[], float] = lambda: 0.0
    sleep: Callable[[float], None] = lambda seconds: None
    on_retry: Callable[[Transient], None] = lambda exc: None

    def call(
        self, fn: Callable[[], httpx.Response], *, call: str, ref_id: str | None, rate: Callable[[], float | None]
    ) -> httpx.Response:
        """`fn()` until it returns, retrying on `Transient`; the error when the tries run out.
        `rate()` is the budget's rate now, for the message of a casavi that answers only 429."""
        try:
            for attempt in self._retrying():
                with attempt:
                    return fn()
        except Transient as exc:
            if exc.rate_limited:
                slowed = rate()
                raise CasaviRateLimitedError(
                    f"casavi is rate limiting this account: it answered only 429 (too many requests) for "
                    f"{self.max_retry_seconds:g}s"
                    + (f" although the client slowed down to {slowed:.0f} requests/minute" if slowed else ""),
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

    def _retrying(self) -> Retrying:
        backoff = wait_exponential_jitter(multiplier=self.backoff_seconds, max=30.0, jitter=2 * self.backoff_seconds)
        started = self.clock()
        failures = 0

        def stop(retry_state: Any) -> bool:
            nonlocal failures
            if self.clock() - started >= self.max_retry_seconds:
                return True
            exc = retry_state.outcome.exception()
            if isinstance(exc, Transient) and exc.rate_limited:
                return False  # a request to slow down, not a failed attempt
            failures += 1
            return failures >= self.max_attempts

        def wait_for(retry_state: Any) -> float:
            exc = retry_state.outcome.exception()
            if isinstance(exc, Transient) and exc.rate_limited and self.budgeted:
                return 0.0  # the budget has slowed down and holds the pause: it paces the next try
            if isinstance(exc, Transient) and exc.retry_after is not None:
                return exc.retry_after
            return backoff(retry_state)

        def before_sleep(retry_state: Any) -> None:
            self.on_retry(retry_state.outcome.exception())

        return Retrying(
            stop=stop,
            wait=wait_for,
            retry=retry_if_exception_type(Transient),
            before_sleep=before_sleep,
            sleep=self.sleep,
            reraise=True,
        )


class OutageWatch:
    """Tells in one line when requests start waiting for a failing casavi (why, and how long each request
    will try), again at most every `WAIT_LINE_SECONDS` while it lasts, and when casavi answers again: a
    sync is never silent for minutes before it gives up. A 429 is pacing, not an outage: not told."""

    def __init__(
        self, where: str, policy: RetryPolicy, *, say: Callable[[str], None] | None, clock: Callable[[], float]
    ) -> None:
        self._where, self._policy, self._say, self._clock = where, policy, say, clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when requests started waiting for a failing casavi
        self._said = 0.0  # when it was last told

    def failing(self, reason: str) -> None:
        """A request waits to try a failing casavi again."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = self._said = now
                line = (
                    f"casavi at {self._where} fails ({reason}): waiting for it; each request is tried "
                    f"{self._policy.max_attempts} times within {self._policy.max_retry_seconds:g} s before "
                    "the sync gives up"
                )
            elif now - self._said >= WAIT_LINE_SECONDS:
                self._said = now
                line = (
                    f"still waiting for casavi at {self._where} ({reason}) for {now - self._since:.0f} s; a "
                    f"request gives up after {self._policy.max_attempts} tries or {self._policy.max_retry_seconds:g} s"
                )
            else:
                return
        if self._say is not None:
            self._say(line)

    def answered(self, sent: float) -> None:
        """casavi answered (not with a 5xx) a request sent at `sent`: it is back, unless the request left
        before it failed (an answer already on its way says nothing about now)."""
        with self._lock:
            if self._since is None or sent < self._since:
                return
            waited, self._since = self._clock() - self._since, None
        if self._say is not None:
            self._say(f"casavi at {self._where} answers again, after {waited:.0f} s")
