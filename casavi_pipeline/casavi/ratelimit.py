"""One casavi account's request budget: adaptive, and shared by every process that talks to the account.

casavi publishes no rate limit (docs/casavi-api.md, "Rate limit"), so the client finds it out:

- **Start cautiously**: at a tenth of the ceiling but at least 1 request/s (so 1/s with the default ceiling
  or none), or at the rate earlier runs learned (it is kept in the budget's file).
- **Send faster while casavi answers promptly** (additive increase), counted per answered request that
  had to wait for the budget (a client that is slower than its budget gains nothing by a higher one):
  until casavi first pushes back, +0.1 request/s per request (about +10 % a second: 1 → 25 requests/s in
  half a minute); after that, 2 % of the gap to the rate casavi last refused, plus 0.1 % of that rate,
  per request: a slow probe, so a limit that was raised is found again, at the price of about one `429`
  per few hundred requests.
- **Slow down at once** (multiplicative decrease, × 0.8 of the lower of the allowed rate and the rate
  really sent in the last 10 s) on `429` — and then send nothing, from any process, until casavi's
  `Retry-After` has passed —, on `503`, on a timeout, and when answers get markedly slower than the
  recent baseline (smoothed latency above twice the slowly moving average plus 0.25 s). Once per round:
  answers to requests sent before the last decrease do not decrease again (they describe the old rate).
- **Never above the ceiling** `CASAVI_REQUESTS_PER_MINUTE` (`settings.py`: default 600/min, 0 = none),
  never below 6 requests/minute.

The budget is one SQLite file per account (base URL and API key, hashed: the file name carries neither)
in the state folder: pyrate-limiter's `SQLiteBucket` keeps the log of requests sent (a sliding window,
under its file lock), and a table beside it holds the adaptive state (rate, the rate casavi last refused,
pause), so every process and thread of every Mandant's run shares one rate, and the next run starts from
what this one learned. Nothing a killed process leaves behind blocks anyone: the file lock (`flock`) dies
with its process, the log's entries leave the window within seconds, and a pause is casavi's own
`Retry-After`, at most `MAX_PAUSE_SECONDS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyrate_limiter import Rate, RateItem, SQLiteBucket

#: The longest pause one `Retry-After` imposes on the account (the client clamps to the same bound).
MAX_PAUSE_SECONDS = 120.0
#: CASAVI_REQUESTS_PER_MINUTE by default: the most the client sends, whatever casavi would allow (README).
DEFAULT_CEILING_PER_MINUTE = 600.0
#: How far back the rate really sent is measured when casavi pushes back.
SENT_WINDOW_SECONDS = 10.0
#: A window of the request log holds about this long: a rate of r allows round(r × 0.1) requests per
#: window, so pacing stays smooth (no burst beyond a tenth of a second's worth) and whole milliseconds
#: still express the rate within 1 %.
_WINDOW_SECONDS = 0.1
_LOG_TABLE = "casavi_requests"
_STATE_TABLE = "casavi_rate"
_LEAK_EVERY = 64  # requests between two clean-ups of the log


@dataclass(frozen=True)
class RateState:
    """What all processes of one account share, in requests per second and clock seconds."""

    rate: float  # allowed now
    limit: float | None = None  # the rate casavi last pushed back at; None until it does
    paused_until: float = 0.0  # nothing is sent before (casavi's Retry-After)
    decreased_at: float = 0.0  # when the rate was last decreased


@dataclass(frozen=True)
class AdaptiveRate:
    """The policy (additive increase, multiplicative decrease): numbers in, numbers out, no I/O."""

    ceiling: float | None = None  # requests per second; None: no ceiling
    start: float = 1.0
    floor: float = 0.1
    slow_start_step: float = 0.1  # per request, until casavi first pushes back
    approach: float = 0.02  # share of the gap to the last refused rate closed per request
    probe: float = 0.001  # share of the last refused rate added per request
    decrease: float = 0.8

    def bounded(self, rate: float) -> float:
        return max(self.floor, min(rate, self.ceiling) if self.ceiling else rate)

    def initial(self) -> RateState:
        return RateState(rate=self.bounded(self.start))

    def increased(self, state: RateState, requests: int = 1) -> RateState:
        """After `requests` prompt answers to requests that waited for the budget."""
        rate = state.rate
        for _ in range(requests):
            if state.limit is None:
                rate += self.slow_start_step
            else:
                rate += self.approach * max(0.0, state.limit - rate) + self.probe * state.limit
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


def budget_path(directory: Path, base_url: str, api_key: str) -> Path:
    """The account's budget file: one per casavi (base URL) and API key, neither readable from the name."""
    account = hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:16]
    return Path(directory) / f"casavi_budget_{account}.sqlite3"


def learned_rate(path: Path) -> float | None:
    """The rate (requests/s) the account's budget holds, without taking part in it; None if none yet."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=1.0)
    try:
        row = conn.execute(f"SELECT rate FROM {_STATE_TABLE}").fetchone()
    except sqlite3.Error:  # no state yet (or not a budget file): nothing learned
        return None
    finally:
        conn.close()
    return float(row[0]) if row else None


class AccountBudget:
    """The request budget of one casavi account, shared through `path` by every process using it.

    Thread-safe. `acquire()` before every request; afterwards `answered(...)` or `pushed_back(...)`.
    """

    def __init__(
        self,
        path: Path,
        *,
        ceiling_per_minute: float | None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if ceiling_per_minute is not None and not 0 <= ceiling_per_minute < float("inf"):
            raise ValueError("ceiling_per_minute must be a finite number >= 0 (0 or None: no ceiling)")
        ceiling = ceiling_per_minute / 60.0 if ceiling_per_minute else None
        self.policy = AdaptiveRate(ceiling=ceiling, start=max(1.0, ceiling / 10) if ceiling else 1.0)
        self._clock = clock  # wall time: the processes sharing the file compare their timestamps
        self._sleep = sleep
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._bucket = SQLiteBucket.init_from_file(
            [self._window(self.policy.start)], table=_LOG_TABLE, db_path=str(path), use_file_lock=True
        )
        self._threads = threading.Lock()  # the threads of this process queue here, not by polling the file
        self._pending = 0  # prompt answers not yet added to the shared rate (added at the next acquire)
        self._latency: dict[str, _Latency] = {}
        self._grants = 0
        with self._locked():
            conn = self._bucket.conn
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_STATE_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), "
                "rate REAL NOT NULL, limit_rate REAL, paused_until REAL NOT NULL, decreased_at REAL NOT NULL)"
            )
            conn.commit()
            self._rate = self._read().rate

    def __enter__(self) -> AccountBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Hand what this process learned to the shared state, then let go of the file."""
        with self._locked():
            if self._bucket.conn is None:
                return
            self._write(self._read())  # adds the pending increases
        self._bucket.close()

    @property
    def rate_per_minute(self) -> float:
        """The rate allowed when this process last asked (what the account's budget found so far)."""
        return self._rate * 60.0

    # --- the shared state ----------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._threads:
            self._bucket.lock.acquire(poll_interval=0.005)  # the file lock: other processes
            try:
                yield
            finally:
                self._bucket.lock.release()

    def _read(self) -> RateState:
        row = self._bucket.conn.execute(
            f"SELECT rate, limit_rate, paused_until, decreased_at FROM {_STATE_TABLE}"
        ).fetchone()
        state = self.policy.initial() if row is None else RateState(*row)
        state = dataclasses.replace(state, rate=self.policy.bounded(state.rate))  # this process's ceiling
        if self._pending:
            state = self.policy.increased(state, self._pending)
        return state

    def _write(self, state: RateState) -> None:
        self._pending = 0
        self._rate = state.rate
        self._bucket.conn.execute(
            f"INSERT OR REPLACE INTO {_STATE_TABLE} VALUES (1, ?, ?, ?, ?)",
            (state.rate, state.limit, state.paused_until, state.decreased_at),
        )
        self._bucket.conn.commit()

    def _sent_rate(self, now: float) -> float | None:
        """Requests per second the account really sent in the last SENT_WINDOW_SECONDS (None: too few)."""
        count, first = self._bucket.conn.execute(
            f"SELECT COUNT(*), MIN(item_timestamp) FROM {_LOG_TABLE} WHERE item_timestamp >= ?",
            (int((now - SENT_WINDOW_SECONDS) * 1000),),
        ).fetchone()
        span = now - first / 1000 if first is not None else 0.0
        return (count - 1) / span if count >= 10 and span >= 1.0 else None

    @staticmethod
    def _window(rate: float) -> Rate:
        per_window = max(1, round(rate * _WINDOW_SECONDS))
        return Rate(per_window, max(1, round(per_window * 1000 / rate)))

    # --- what the client calls -----------------------------------------------------------------------
    def acquire(self) -> Grant:
        """Wait until the account may send one more request: casavi's pause is over and the rate allows."""
        waited, binding = 0.0, False
        while True:
            with self._locked():
                now = self._clock()
                state = self._read()
                if self._pending:
                    self._write(state)
                self._rate = state.rate
                wait = state.paused_until - now
                if wait <= 0:
                    self._bucket.rates = [self._window(state.rate)]
                    item = RateItem(_LOG_TABLE, int(now * 1000))
                    if self._bucket.put(item):
                        self._grants += 1
                        if self._grants % _LEAK_EVERY == 0:  # keep the last SENT_WINDOW_SECONDS
                            self._bucket.leak(int((now - SENT_WINDOW_SECONDS) * 1000))
                        return Grant(at=now, waited=waited, binding=binding)
                    wait = max(1, self._bucket.waiting(item)) / 1000
                    binding = True
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
        with self._locked():
            now = self._clock()
            state = self.policy.decreased(
                self._read(), now=now, sent_at=grant.at, sent_rate=self._sent_rate(now)
            )
            if retry_after:
                pause = now + min(retry_after, MAX_PAUSE_SECONDS)
                state = dataclasses.replace(state, paused_until=max(state.paused_until, pause))
            self._write(state)
