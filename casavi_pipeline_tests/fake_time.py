"""A clock that moves only when someone sleeps: tests of waiting record the waits and spend none."""

from __future__ import annotations

import threading


class FakeTime:
    """Call it for the time; `sleep` advances it. Use one for a budget and a client alike."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += max(seconds, 0.0)

    def advance(self, seconds: float) -> None:
        """Time passes without anyone waiting (an answer takes this long, say)."""
        with self._lock:
            self.now += seconds
