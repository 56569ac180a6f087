"""One casavi account's request budget: adaptive, and shared by every process that talks to the account.

casavi publishes no rate limit (docs/casavi-api.md, "Rate limit"), so the client finds it out:

- **Start cautiously**: at a tenth of the ceiling but at least 1 request/s (so 1/s with the default ceiling
  or none), or at the rate earlier runs learned (it is kept in the budget).
- **Send faster while casavi answers promptly**, counted per answered request that had to wait for the
  budget (a client that is slower than its budget gains nothing by a higher one): while nothing is known
  near the current rate, +0.1 request/s per request (about +10 % a second: 1 → 25 requests/s in half a
  minute); below the rate casavi last refused, 2 % of the gap plus that 0.1/s per request, up to it.
- **Let the remembered limit decay**: the rate casavi last refused is trusted for `TRUST_SECONDS` after
  that refusal; then it is raised, slowly at first and ever faster (× 2^((t / `PROBE_SECONDS`)²): × 2
  after another minute, × 16 after two, × 512 after three), and the rate follows it. Near casavi's real
  limit that is a gentle probe (one round of `429`s every minute and a half or so), so a limit that
  was raised is found again; after a burst of `429`s that was no limit at all (a proxy refusing
  everything for a while, say), the rate is back within about four minutes, in this run and the next,
  instead of staying at the floor for good.
- **Slow down at once** (multiplicative decrease, × 0.8 of the lower of the allowed rate and the rate
  really sent in the last 10 s) on `429` — and then send nothing, from any process, until casavi's
  `Retry-After` has passed —, on `503`, on a timeout, and when answers get markedly slower than the
  recent baseline (smoothed latency above twice the slowly moving average plus 0.25 s). Once per round:
  answers to requests sent before the last decrease do not decrease again (they describe the old rate).
- **Never above the ceiling** `CASAVI_REQUESTS_PER_MINUTE` (`settings.py`: default 600/min, 0 = none),
  never below 6 requests/minute.

Where the budget lives (`budget_store.py`): one per casavi account (`casavi_pipeline.account`), a SQLite
file in the account's folder, or rows in PostgreSQL when the state lives there (CASAVI_STATE_URL), so
every process and thread of every Mandant's run, on every machine, shares one rate, and the next run starts
from what this one learned. `AccountBudget` is the same over both: it asks its `BudgetStore` for an
exclusive turn (a file lock; a transaction under an advisory lock), reads the shared state, logs a grant.
Nothing a killed process leaves behind blocks anyone: the lock dies with its process (or connection), the
log's entries leave the window within seconds, and a pause is casavi's own `Retry-After`, at most
`MAX_PAUSE_SECONDS`. A budget found damaged is moved aside with one line and learned anew: it holds
nothing that cannot be relearned.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

#: The longest pause one `Retry-After` imposes on the account (the client clamps to the same bound).
MAX_PAUSE_SECONDS = 120.0
#: CASAVI_REQUESTS_PER_MINUTE by default: the most the client sends, whatever casavi would allow (docs/settings.md).
DEFAULT_CEILING_PER_MINUTE = 600.0
#: How far back the rate really sent is measured when casavi pushes back.
SENT_WINDOW_SECONDS = 10.0
#: The rate casavi last refused is taken as its limit this long after the refusal ...
TRUST_SECONDS = 60.0
#: ... and then raised × 2^((t / PROBE_SECONDS)²) for t seconds beyond that.
PROBE_SECONDS = 60.0
#: A window of the request log holds about this long: a rate of r allows round(r × 0.1) requests per
#: window, so pacing stays smooth (no burst beyond a tenth of a second's worth) and whole milliseconds
#: still express the rate within 1 %.
WINDOW_SECONDS = 0.1
LEAK_EVERY = 64  # grants between two clean-ups of the log

_T = TypeVar("_T")


@dataclass(frozen=True)
class RateState:
    """What all processes of one account share, in requests per second and clock seconds."""

    rate: float  # allowed now
    limit: float | None = None  # the rate casavi last pushed back at; None until it does
    paused_until: float = 0.0  # nothing is sent before (casavi's Retry-After)
    decreased_at: float = 0.0  # when the rate was last decreased

    @classmethod
    def parsed(cls, row: tuple[object, ...]) -> RateState:
        """The state from a stored row; `ValueError` naming what is wrong when it is not a state."""
        names = ("rate", "limit", "paused_until", "decreased_at")
        if len(row) != len(names):
            raise ValueError(f"a row of {len(row)} values")
        values = dict(zip(names, row, strict=True))
        for name, value in values.items():
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} is not a number")
            if not math.isfinite(value) or value < 0 or (value == 0 and name in ("rate", "limit")):
                raise ValueError(f"{name} is {value!r}")
        return cls(**{name: None if value is None else float(value) for name, value in values.items()})  # type: ignore[arg-type]


@dataclass(frozen=True)
class AdaptiveRate:
    """The policy (increase while answered promptly, multiplicative decrease): numbers in, numbers out."""

    ceiling: float | None = None  # requests per second; None: no ceiling
    start: float = 1.0
    floor: float = 0.1
    slow_start_step: float = 0.1  # per request, while nothing is known near the current rate
    approach: float = 0.02  # share of the gap to the remembered limit closed per request
    decrease: float = 0.8
    trust_seconds: float = TRUST_SECONDS
    probe_seconds: float = PROBE_SECONDS

    def bounded(self, rate: float) -> float:
        return max(self.floor, min(rate, self.ceiling) if self.ceiling else rate)

    def initial(self) -> RateState:
        return RateState(rate=self.bounded(self.start))

    def remembered_limit(self, state: RateState, now: float) -> float | None:
        """The rate casavi last refused, raised with the time since (None: nothing is known)."""
        if state.limit is None:
            return None
        beyond = max(0.0, now - state.decreased_at - self.trust_seconds) / self.probe_seconds
        if beyond * beyond > 30:  # × 10⁹: long forgotten (and 2.0 ** a large number overflows)
            return None
        return state.limit * 2.0 ** (beyond * beyond)

    def increased(self, state: RateState, requests: int, *, now: float) -> RateState:
        """After `requests` prompt answers to requests that waited for the budget."""
        limit = self.remembered_limit(state, now)
        rate = state.rate
        for _ in range(requests):
            if limit is None or limit >= 2 * rate:  # nothing known near: climb like a fresh start
                rate += self.slow_start_step
            elif limit > rate:  # close in on the rate casavi last allowed
                rate += min(limit - rate, self.slow_start_step + self.approach * (limit - rate))
        return dataclasses.replace(state, rate=self.bounded(rate))

    def decreased(
        self, state: RateState, *, now: float, sent_at: float, sent_rate: float | None
    ) -> RateState:
        """casavi pushed back on a request sent at `sent_at`; `sent_rate`: requests/s really sent lately."""
        if sent_at <= state.decreased_at:  # sent before the last decrease: already answered for
            return state
        refused = min(state.rate, sent_rate) if sent_rate else state.rate
        return dataclasses.replace(
            state, rate=self.bounded(refused * self.decrease), limit=refused, decreased_at=now
        )


@dataclass(frozen=True)
class Grant:
    """Leave to send one request."""

    at: float  # clock time it was granted
    waited: float  # seconds spent waiting for it (rate and pause)
    binding: bool  # the rate held it back: sending faster would have helped


@dataclass
class _Latency:
    """Smoothed answer times of one call: a fast average and a slowly moving baseline."""

    fast: float = 0.0
    baseline: float = 0.0
    samples: int = 0

    def add(self, seconds: float) -> None:
        if self.samples == 0:
            self.fast = self.baseline = seconds
        else:
            self.fast += 0.3 * (seconds - self.fast)
            self.baseline += 0.02 * (seconds - self.baseline)
        self.samples += 1

    @property
    def markedly_slower(self) -> bool:
        return self.samples >= 20 and self.fast > 2 * self.baseline + 0.25


class BudgetDamagedError(Exception):
    """The store holds something that is not a budget (a garbled file, a wrong row): `reason` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BudgetStore(Protocol):
    """Where one account's budget lives, shared by every process; see `budget_store.py`.

    Everything but `turn`, `where`, `move_aside` and `close` is called inside `turn()`: one process and
    thread at a time. Any of them may raise `BudgetDamagedError`.
    """

    where: str  # how a message names it (a path; a row of the state database), never a secret

    def turn(self) -> AbstractContextManager[float]:
        """An exclusive turn across processes; yields the clock time of the turn (seconds)."""
        ...

    def read(self) -> tuple[object, ...] | None:
        """The stored state row (rate, limit, paused_until, decreased_at); None before the first write."""
        ...

    def write(self, state: RateState) -> None: ...

    def put(self, now: float, rate: float) -> float:
        """Log one request at `now` if the last window allows it at `rate` (0.0); else seconds to wait."""
        ...

    def sent_rate(self, now: float) -> float | None:
        """Requests per second the account really sent in the last SENT_WINDOW_SECONDS (None: too few)."""
        ...

    def leak(self, now: float) -> None:
        """Forget log entries older than SENT_WINDOW_SECONDS."""
        ...

    def move_aside(self) -> str:
        """Keep the damaged budget under another name and start an empty one; returns that name."""
        ...

    def close(self) -> None: ...


def window(rate: float) -> tuple[int, float]:
    """(requests, seconds) of one window of the request log at `rate` requests per second."""
    per_window = max(1, round(rate * WINDOW_SECONDS))
    return per_window, max(1, round(per_window * 1000 / rate)) / 1000


class AccountBudget:
    """The request budget of one casavi account, shared through `store` by every process using it.

    Thread-safe. `acquire()` before every request; afterwards `answered(...)` or `pushed_back(...)`.
    `warn` gets the one line saying that a damaged budget was moved aside.
    """

    def __init__(
        self,
        store: BudgetStore,
        *,
        ceiling_per_minute: float | None,
        sleep: Callable[[float], None] = time.sleep,
        warn: Callable[[str], None] = lambda line: None,
    ) -> None:
        if ceiling_per_minute is not None and not 0 <= ceiling_per_minute < float("inf"):
            raise ValueError("ceiling_per_minute must be a finite number >= 0 (0 or None: no ceiling)")
        ceiling = ceiling_per_minute / 60.0 if ceiling_per_minute else None
        self.policy = AdaptiveRate(ceiling=ceiling, start=max(1.0, ceiling / 10) if ceiling else 1.0)
        self._store = store
        self._sleep = sleep
        self._warn = warn
        self._threads = threading.Lock()  # the threads of this process queue here, not in the store
        self._pending = 0  # prompt answers not yet added to the shared rate (added at the next turn)
        self._latency: dict[str, _Latency] = {}
        self._grants = 0
        self._closed = False
        self._rate = self.policy.initial().rate
        self._rate = self._in_turn(self._read).rate

    def __enter__(self) -> AccountBudget:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(hand_over=exc_type is None)

    def close(self, *, hand_over: bool = True) -> None:
        """Hand what this process learned to the shared state (`hand_over`; not when the store may be
        gone), then let go of the store."""
        with self._threads:
            if self._closed:
                return
            self._closed = True
        try:
            if self._pending and hand_over:
                self._in_turn(lambda now: self._write(self._read(now)))  # adds the pending increases
        finally:
            self._store.close()

    @property
    def rate_per_minute(self) -> float:
        """The rate allowed when this process last asked (what the account's budget found so far)."""
        return self._rate * 60.0

    # --- the shared state ----------------------------------------------------------------------------
    def _in_turn(self, step: Callable[[float], _T]) -> _T:
        """`step(now)` in this thread's exclusive turn on the shared budget; a damaged budget is moved
        aside (one line) and the step done again on a fresh one."""
        with self._threads:
            try:
                with self._store.turn() as now:
                    return step(now)
            except BudgetDamagedError as exc:
                moved_to = self._store.move_aside()
                self._warn(
                    f"The casavi request budget ({self._store.where}) was unreadable ({exc.reason}); it was "
                    f"moved aside to {moved_to} and the rate is learned anew (nothing else is lost)."
                )
            with self._store.turn() as now:  # damaged again at once: not the budget's data, raise
                return step(now)

    def _read(self, now: float) -> RateState:
        row = self._store.read()
        try:
            state = self.policy.initial() if row is None else RateState.parsed(row)
        except ValueError as exc:
            raise BudgetDamagedError(str(exc)) from None
        state = dataclasses.replace(
            state,
            rate=self.policy.bounded(state.rate),  # this process's ceiling
            # casavi's longest pause from now: a clock gone wrong (or skewed between machines) blocks no one
            paused_until=min(state.paused_until, now + MAX_PAUSE_SECONDS),
        )
        if self._pending:
            state = self.policy.increased(state, self._pending, now=now)
        return state

    def _write(self, state: RateState) -> None:
        self._pending = 0
        self._rate = state.rate
        self._store.write(state)

    # --- what the client calls -----------------------------------------------------------------------
    def acquire(self) -> Grant:
        """Wait until the account may send one more request: casavi's pause is over and the rate allows."""
        waited, binding = 0.0, False

        def try_once(now: float) -> Grant | tuple[float, bool]:
            """A grant, or (seconds to wait, whether the rate rather than casavi's pause holds it back)."""
            state = self._read(now)
            if self._pending:
                self._write(state)
            self._rate = state.rate
            if state.paused_until > now:
                return state.paused_until - now, False
            wait = self._store.put(now, state.rate)
            if wait > 0:
                return wait, True
            self._grants += 1
            if self._grants % LEAK_EVERY == 0:  # keep the last SENT_WINDOW_SECONDS
                self._store.leak(now)
            return Grant(at=now, waited=waited, binding=binding)

        while True:
            outcome = self._in_turn(try_once)
            if isinstance(outcome, Grant):
                return outcome
            wait, by_rate = outcome
            binding = binding or by_rate
            self._sleep(wait)
            waited += wait

    def answered(self, grant: Grant, *, call: str, seconds: float, status: int) -> None:
        """casavi answered (anything but 429/503): prompt answers raise the rate, markedly slow ones lower it."""
        with self._threads:
            latency = self._latency.setdefault(call, _Latency())
            latency.add(seconds)
            slow = latency.markedly_slower
            if not slow and grant.binding and status < 500:
                self._pending += 1
        if slow:
            self.pushed_back(grant)

    def pushed_back(self, grant: Grant, retry_after: float | None = None) -> None:
        """casavi refused (429), was overloaded (503) or too slow: lower the rate; pause for `retry_after`."""

        def decrease(now: float) -> None:
            state = self.policy.decreased(
                self._read(now), now=now, sent_at=grant.at, sent_rate=self._store.sent_rate(now)
            )
            if retry_after:
                pause = now + min(retry_after, MAX_PAUSE_SECONDS)
                state = dataclasses.replace(state, paused_until=max(state.paused_until, pause))
            self._write(state)

        self._in_turn(decrease)
