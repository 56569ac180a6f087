"""The progress line of a long sync: written / total, rate, time left.

A first sync of a large Mandant takes hours at casavi's rate limit; a person watching the run page or a
terminal needs to see it move and how long it still takes. Where the line goes (the run's events, the
terminal) is the caller's choice: `Progress` only decides when a line is due and what it says.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from casavi_pipeline.casavi.transport import ClientStats
from casavi_pipeline.sync.apply import SyncReport

#: The start of every progress line (`Progress`): how a command following a run's events picks them out.
_PROGRESS_LINE = re.compile(r"Mandant [^:]+: \d+/\d+ writes \(")


def is_progress_line(line: str) -> bool:
    return bool(_PROGRESS_LINE.match(line))


def duration(seconds: float | None) -> str:
    """A duration for people ("1 h 05 min", "4 min 07 s"); None is what an unknown rate makes of it."""
    if seconds is None:
        return "no rate limit"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


class Progress:
    """A line every `every` seconds: written / total, rate, ETA at the rate seen (or the expected one).

    Called with the sync's report (`apply_changeset`'s `on_progress`); `expected_seconds` estimates the
    time left before any write was answered, and `stats` (the client's) adds what casavi's rate limit did.
    """

    def __init__(
        self,
        mandant: str,
        total: int,
        *,
        every: float,
        emit: Callable[[str], None],
        expected_seconds: Callable[[int], float | None],
        stats: ClientStats | None = None,
    ) -> None:
        self.mandant, self.total, self.every = mandant, total, every
        self.emit, self.expected_seconds, self.stats = emit, expected_seconds, stats
        self.started = self.last = time.monotonic()

    def __call__(self, report: SyncReport) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        done = report.total_sent
        rate = done / max(now - self.started, 1e-9) * 60.0
        left = max(self.total - done, 0)
        eta = left / rate * 60.0 if rate > 0 else self.expected_seconds(left)
        self.emit(
            f"Mandant {self.mandant}: {done}/{self.total} writes "
            f"({done / max(self.total, 1):.0%}), {rate:.0f}/min, about {duration(eta)} left"
            + (f"; {self.stats.rate_line()}" if self.stats else "")
        )
