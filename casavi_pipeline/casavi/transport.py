"""The wire under the client: every request, logins and retries included, passes the account's budget
(`ratelimit`), which learns from each answer, and is counted.

An httpx transport wrapping the real one, so nothing can reach casavi around it: not a retry, not the
token flow's login (`auth.py`), not a next page.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.retry import retry_after_seconds

#: The request extension that names a call (method + path template) for the budget's latency baseline.
CALL = "casavi_call"


class Grant(Protocol):
    at: float
    waited: float


class Budget(Protocol):
    """The account's request budget (`ratelimit.AccountBudget`)."""

    @property
    def rate_per_minute(self) -> float: ...

    def acquire(self) -> Grant: ...

    def answered(self, grant: Grant, *, call: str, seconds: float, status: int) -> None: ...

    def pushed_back(self, grant: Grant, retry_after: float | None = None) -> None: ...


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


class BudgetedTransport(httpx.BaseTransport):
    """Sends through `inner` once `budget` (None: no pacing) grants it; feeds the answer back."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        budget: Budget | None,
        stats: ClientStats,
        clock: Callable[[], float],
        on_answer: Callable[[float], None] = lambda sent: None,
    ) -> None:
        self._inner, self._budget, self._stats, self._clock = inner, budget, stats, clock
        self._on_answer = on_answer  # told when casavi answered (not with a 5xx) a request sent then

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        budget = self._budget
        grant = budget.acquire() if budget is not None else None
        if grant is not None:
            self._stats.count("budget_wait_seconds", grant.waited)
        started = self._clock()
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError as exc:
            self._stats.count("requests")
            self._stats.count("transport_errors")
            if budget is not None and grant is not None and isinstance(exc, httpx.TimeoutException):
                budget.pushed_back(grant)  # too slow to answer at all
            raise
        status = response.status_code
        self._stats.answered(status)
        if status < 500:
            self._on_answer(started)
        if budget is not None and grant is not None:
            if status in (api.STATUS_RATE_LIMITED, api.STATUS_UNAVAILABLE):
                budget.pushed_back(grant, retry_after_seconds(response))
            else:
                call = str(request.extensions.get(CALL, request.method))
                budget.answered(grant, call=call, seconds=self._clock() - started, status=status)
            self._stats.rate_per_minute = budget.rate_per_minute
        return response

    def close(self) -> None:
        self._inner.close()
