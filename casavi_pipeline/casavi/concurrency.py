"""Writes sent side by side: at most N in flight, each result handed back in the caller's thread, so the
caller records each confirmed write (the snapshot's journal) before it looks at the next."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from casavi_pipeline.casavi.errors import CasaviError

_Op = TypeVar("_Op")
_Result = TypeVar("_Result")


def in_flight(send: Callable[[_Op], _Result], operations: Iterable[_Op], limit: int) -> Iterator[_Result]:
    """`send` every operation with at most `limit` in flight; yield each result as it completes.

    A `CasaviError` (casavi unavailable, credentials refused, an unexpected answer) starts no new
    operation: the ones in flight finish and are yielded, then the error is raised.
    """
    pending = iter(operations)
    failure: CasaviError | None = None
    running: set[Future[_Result]] = set()
    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="casavi") as pool:
        try:
            while True:
                while failure is None and len(running) < limit:
                    op = next(pending, None)
                    if op is None:
                        break
                    running.add(pool.submit(send, op))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        result = future.result()
                    except CasaviError as exc:
                        failure = failure or exc
                        continue
                    yield result
        finally:
            for future in running:
                future.cancel()
    if failure is not None:
        raise failure
