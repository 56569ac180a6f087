"""Interrupts (Ctrl-C, SIGTERM, a terminate from Dagster's UI) where the state must not be cut in half.

Python runs a signal's handler in the main thread, between two bytecodes or inside a DuckDB query; Dagster's
handler raises. Raised inside a query, DuckDB ends the query with `RuntimeError('Query interrupted')` — a
COMMIT too, which can leave its transaction open for the next statement to trip over — and that is an
ordinary error, which a retry policy would start again. Two consequences, one module:

- What the state writes in one piece (a fold of the logs, the counts of an attempt, the snapshot's save)
  runs `held()`: an interrupt arriving meanwhile waits until the piece is done, then goes on. Held, never
  dropped: a second Ctrl-C during the cleanup after the first is as welcome as the first. The operator's
  command reads the run's events `held()` too, so its Ctrl-C lands between two reads, never in a
  finalizer of Dagster's storage that would swallow it and print a traceback.
- `interrupted_query(exc)` tells DuckDB's form of an interrupt from an error, so the step can treat it as
  the person stopping the run it is.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The signals that stop a run: a terminal's Ctrl-C, and `kill`, a service manager or Dagster's terminate.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Whether a `held()` block is running (only the main thread enters one).
_holding = False


@contextmanager
def held() -> Iterator[None]:
    """Run the block to its end even when a stop signal arrives meanwhile; deliver it afterwards.

    A no-op outside the main thread (where no handler runs, so nothing interrupts the block) and inside
    another `held()` (the outermost one delivers).
    """
    global _holding
    if threading.current_thread() is not threading.main_thread() or _holding:
        yield
        return
    arrived: list[int] = []
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    # A handler of None was set outside Python: it cannot be put back, so it is left alone.
    replaced = [signum for signum, handler in before.items() if handler is not None]
    for signum in replaced:
        signal.signal(signum, lambda signum, _frame: arrived.append(signum))
    _holding = True
    try:
        yield
    finally:
        _holding = False
        for signum in replaced:
            signal.signal(signum, before[signum])
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)  # to the handler that was there before: it raises here, or exits


def interrupted_query(exc: BaseException) -> bool:
    """Whether `exc` is DuckDB's report of a signal handler that raised during a query (an interrupt).

    DuckDB 2.0 raises a plain RuntimeError with this message; `con.interrupt()` raises
    `duckdb.InterruptException` instead, which the pipeline never calls. Pinned by the module's tests.
    """
    return type(exc) is RuntimeError and str(exc) == "Query interrupted"
