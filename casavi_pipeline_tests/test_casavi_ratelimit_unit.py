"""The account's adaptive request budget (`casavi_pipeline.casavi.ratelimit`), on a fake clock: no test
here waits for real time. Two budgets on one file stand for two processes of one account."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from casavi_pipeline.casavi.ratelimit import (
    MAX_PAUSE_SECONDS,
    AccountBudget,
    Grant,
    budget_path,
    learned_rate,
)
from casavi_pipeline_tests.fake_time import FakeTime

CALL = "PUT /v2/units/{id}"


def budget_on(path: Path, fake: FakeTime, ceiling: float | None = None) -> AccountBudget:
    return AccountBudget(path, ceiling_per_minute=ceiling, clock=fake, sleep=fake.sleep)


def send(budget: AccountBudget, fake: FakeTime, n: int, *, seconds: float = 0.02) -> list[Grant]:
    """`n` requests one after another, each answered promptly (201) after `seconds`."""
    grants = []
    for _ in range(n):
        grant = budget.acquire()
        fake.advance(seconds)
        budget.answered(grant, call=CALL, seconds=seconds, status=201)
        grants.append(grant)
    return grants


def gaps(grants: list[Grant]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(grants)]


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def test_starts_cautiously_then_sends_faster_while_casavi_answers_promptly(tmp_path, fake):
    with budget_on(tmp_path / "b.sqlite3", fake) as budget:
        assert budget.rate_per_minute == pytest.approx(60)
        grants = send(budget, fake, 80)
        assert gaps(grants)[0] == pytest.approx(1.0, abs=0.01)  # one a second at first
        assert budget.rate_per_minute > 5 * 60  # +0.1/s per answered request that had to wait
        assert max(gaps(grants)[-10:]) < 0.2
        assert sum(g.waited for g in grants) == pytest.approx(grants[-1].at - grants[0].at - 79 * 0.02)


@pytest.mark.parametrize(("ceiling", "start"), [(None, 60), (600, 60), (6000, 600), (30, 30)])
def test_a_fresh_budget_starts_at_a_tenth_of_the_ceiling_at_least_one_a_second(tmp_path, fake, ceiling, start):
    with budget_on(tmp_path / "b.sqlite3", fake, ceiling=ceiling) as budget:
        assert budget.rate_per_minute == pytest.approx(start)


def test_only_requests_the_budget_held_back_raise_the_rate(tmp_path, fake):
    """A client slower than its budget would gain nothing from a higher one: the rate stays."""
    with budget_on(tmp_path / "b.sqlite3", fake) as budget:
        grants = send(budget, fake, 30, seconds=1.5)
        assert not any(g.binding for g in grants)
        assert budget.rate_per_minute == pytest.approx(60)


def test_a_429_slows_every_process_down_at_once_and_pauses_them_for_retry_after(tmp_path, fake):
    path = tmp_path / "b.sqlite3"
    with budget_on(path, fake) as one, budget_on(path, fake) as other:
        send(one, fake, 60)
        before = one.rate_per_minute
        refused = one.acquire()
        one.pushed_back(refused, retry_after=7)
        assert one.rate_per_minute <= 0.8 * before + 1e-6
        pushed_at = fake.now
        grant = other.acquire()  # the other process: same pause, same rate
        assert grant.at - pushed_at == pytest.approx(7.0)
        assert other.rate_per_minute == pytest.approx(one.rate_per_minute)


def test_answers_to_requests_sent_before_a_decrease_do_not_decrease_again(tmp_path, fake):
    with budget_on(tmp_path / "b.sqlite3", fake) as budget:
        send(budget, fake, 60)
        in_flight = [budget.acquire() for _ in range(4)]  # sent together, all refused
        before = budget.rate_per_minute
        budget.pushed_back(in_flight[0])
        decreased = budget.rate_per_minute
        assert decreased <= 0.8 * before + 1e-6
        for grant in in_flight[1:]:
            budget.pushed_back(grant)
        assert budget.rate_per_minute == decreased
        budget.pushed_back(budget.acquire())  # one sent after the decrease: a new round
        assert budget.rate_per_minute <= 0.8 * decreased + 1e-6


def test_a_decrease_starts_from_the_rate_really_sent_when_that_is_lower(tmp_path, fake):
    """Allowed 10/s but sending 2/s when casavi refuses: casavi's limit is below 2/s, not below 10/s."""
    with budget_on(tmp_path / "b.sqlite3", fake) as budget:
        send(budget, fake, 100)
        assert budget.rate_per_minute > 600
        send(budget, fake, 25, seconds=0.5)  # 2 a second, the budget holding nothing back
        budget.pushed_back(budget.acquire())
        assert budget.rate_per_minute <= 0.8 * 2.2 * 60


def test_markedly_slower_answers_slow_down_and_jitter_does_not(tmp_path, fake):
    with budget_on(tmp_path / "b.sqlite3", fake) as budget:
        send(budget, fake, 30, seconds=0.05)
        send(budget, fake, 10, seconds=0.2)  # 4× slower, but within the margin for noise
        steady = budget.rate_per_minute
        send(budget, fake, 1, seconds=0.05)
        assert budget.rate_per_minute > steady  # still speeding up
        rate = budget.rate_per_minute
        send(budget, fake, 3, seconds=2.0)  # markedly slower: casavi is struggling
        assert budget.rate_per_minute <= 0.8 * rate + 1e-6


def test_never_above_the_ceiling_never_below_six_a_minute(tmp_path, fake):
    with budget_on(tmp_path / "b.sqlite3", fake, ceiling=120) as budget:
        grants = send(budget, fake, 100)
        assert budget.rate_per_minute == pytest.approx(120)
        assert min(gaps(grants)[-20:]) >= 0.5 - 0.002  # whole milliseconds
        for _ in range(40):
            budget.pushed_back(budget.acquire())
        assert budget.rate_per_minute == pytest.approx(6)


def test_two_processes_share_one_rate(tmp_path, fake):
    """Each on its own would send one a second; together they send one a second, not two."""
    path = tmp_path / "b.sqlite3"
    with budget_on(path, fake) as one, budget_on(path, fake) as other:
        grants = [budget.acquire() for _ in range(10) for budget in (one, other)]
    assert gaps(grants) == pytest.approx([1.0] * 19, abs=0.01)


def test_retry_after_pauses_at_most_max_pause_seconds(tmp_path, fake):
    """A pause is casavi's word, bounded: one absurd Retry-After (or a killed process's) blocks no one long."""
    with budget_on(tmp_path / "b.sqlite3", fake) as budget:
        grant = budget.acquire()
        budget.pushed_back(grant, retry_after=100_000)
        assert budget.acquire().at - grant.at == pytest.approx(MAX_PAUSE_SECONDS)


def test_what_a_run_learned_carries_over_to_the_next(tmp_path, fake):
    path = budget_path(tmp_path, "https://api.mycasavi.com", "key-1")
    assert learned_rate(path) is None
    with budget_on(path, fake) as run:
        send(run, fake, 50)
    learned = run.rate_per_minute  # closing handed over the last answers too
    assert learned > 200 and learned_rate(path) == pytest.approx(learned / 60)
    with budget_on(path, fake) as next_run:
        assert next_run.rate_per_minute == pytest.approx(learned)
    other_account = budget_path(tmp_path, "https://api.mycasavi.com", "key-2")
    with budget_on(other_account, fake) as other:
        assert other.rate_per_minute == pytest.approx(60)


def test_one_file_per_account_naming_neither_url_nor_key(tmp_path):
    first = budget_path(tmp_path, "https://api.mycasavi.com", "the-key")
    assert first == budget_path(tmp_path, "https://api.mycasavi.com/", "the-key")
    assert first != budget_path(tmp_path, "https://api.mycasavi.com", "another-key")
    assert first != budget_path(tmp_path, "https://other.example", "the-key")
    assert first.parent == tmp_path and "the-key" not in first.name and "mycasavi" not in first.name


def test_a_ceiling_that_is_no_number_is_refused(tmp_path):
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="finite"):
            AccountBudget(tmp_path / "b.sqlite3", ceiling_per_minute=bad)


HOLD_THE_BUDGET = """
import sqlite3, sys, time
from filelock import FileLock
path = sys.argv[1]
FileLock(path + ".lock").acquire()            # the budget's lock, as pyrate-limiter names it
conn = sqlite3.connect(path)
conn.execute("BEGIN IMMEDIATE")               # and a write transaction on its file
print("holding", flush=True)
time.sleep(600)
"""


def test_a_killed_process_leaves_nothing_that_blocks_the_others(tmp_path):
    path = tmp_path / "b.sqlite3"
    AccountBudget(path, ceiling_per_minute=None).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_BUDGET, str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    granted: list[Grant] = []

    def take() -> None:
        with AccountBudget(path, ceiling_per_minute=None) as budget:
            granted.append(budget.acquire())

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(timeout=60)  # generous: it takes milliseconds unless a lease outlived its process
    assert len(granted) == 1
