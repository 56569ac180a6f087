"""Interrupts held while the state writes in one piece, and DuckDB's form of an interrupt (`interrupts`)."""

from __future__ import annotations

import os
import signal
import threading

import duckdb
import pytest

from casavi_pipeline.interrupts import held, interrupted_query


def test_a_ctrl_c_during_a_held_block_lets_the_block_finish_then_raises():
    done: list[str] = []
    con = duckdb.connect()
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt), held():  # raised after the block, not inside it
            signal.raise_signal(signal.SIGINT)
            con.execute("BEGIN TRANSACTION")
            con.execute("CREATE TABLE t AS SELECT 1 AS x")
            con.execute("COMMIT")
            done.append("committed")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, before)
    assert done == ["committed"]
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_held_blocks_nest_and_the_outermost_delivers_once():
    delivered: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: delivered.append(signum))
    try:
        with held():
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
            assert delivered == []  # the inner block ended; the outer still holds
        assert delivered == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_held_outside_the_main_thread_runs_the_block_as_it_is():
    ran: list[bool] = []

    def work() -> None:
        with held():
            ran.append(True)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert ran == [True]


class _Stopped(BaseException):
    """What Dagster's handler raises (DagsterExecutionInterruptedError is a BaseException too)."""


def _raise_stopped(_signum: int, _frame: object) -> None:
    raise _Stopped


def test_duckdb_reports_a_handler_that_raised_mid_query_as_an_interrupted_query():
    """Pins DuckDB's behaviour `interrupted_query` relies on: an upgrade that changes it fails here."""
    con = duckdb.connect()
    done = threading.Event()

    def keep_interrupting() -> None:
        while not done.wait(0.02):
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.signal(signal.SIGINT, _raise_stopped)
    sender = threading.Thread(target=keep_interrupting)
    sender.start()
    error: RuntimeError | None = None
    try:
        while error is None:
            try:  # a query that runs until a signal ends it, however loaded the machine
                con.execute("SELECT count(*) FROM range(1000000000000) a WHERE hash(a.range) = 0").fetchall()
            except _Stopped:
                continue  # the signal came before the query started: again
            except RuntimeError as exc:
                error = exc
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGINT, before)
    assert interrupted_query(error)
    assert not interrupted_query(RuntimeError("Query failed")) and not interrupted_query(KeyboardInterrupt())
