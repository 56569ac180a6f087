"""The account's adaptive request budget (`casavi_pipeline.casavi.ratelimit`), on a fake clock: no test
here waits for real time. Two budgets on one file stand for two processes of one account."""

from __future__ import annotations

import itertools
import math
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from casavi_pipeline import account
from casavi_pipeline.casavi.budget_store import BUDGET_FILE, SqliteBudgetStore, budget_file, learned_rate
from casavi_pipeline.casavi.ratelimit import MAX_PAUSE_SECONDS, AccountBudget, Grant
from casavi_pipeline_tests.fake_time import FakeTime

CALL = "PUT /v2/units/{id}"


def budget_on(path: Path, fake: FakeTime, ceiling: float | None = None, warn=lambda line: None) -> AccountBudget:
    return AccountBudget(SqliteBudgetStore(path, clock=fake), ceiling_per_minute=ceiling, sleep=fake.sleep, warn=warn)


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
    path = budget_file(tmp_path, "key-1")
    assert learned_rate(tmp_path, None, "key-1") is None
    with budget_on(path, fake) as run:
        send(run, fake, 50)
    learned = run.rate_per_minute  # closing handed over the last answers too
    assert learned > 200 and learned_rate(tmp_path, None, "key-1") == pytest.approx(learned / 60)
    with budget_on(path, fake) as next_run:
        assert next_run.rate_per_minute == pytest.approx(learned)
    with budget_on(budget_file(tmp_path, "key-2"), fake) as other_account:
        assert other_account.rate_per_minute == pytest.approx(60)


def test_one_budget_per_account_in_its_folder_naming_no_key(tmp_path):
    """The account is its API key (hashed); the host casavi is reached under is no part of it."""
    first = budget_file(tmp_path, "the-key")
    assert first == tmp_path / f"account-{account.account_id('the-key')}" / BUDGET_FILE
    assert first != budget_file(tmp_path, "another-key")
    assert "the-key" not in str(first)


def test_a_ceiling_that_is_no_number_is_refused(tmp_path):
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="finite"):
            AccountBudget(SqliteBudgetStore(tmp_path / "b.sqlite3"), ceiling_per_minute=bad)


class HiddenLimit:
    """casavi's limit as the sandbox models it: `per_second`, a burst of one second's worth; on the fake clock."""

    def __init__(self, per_second: float, fake: FakeTime) -> None:
        self.per_second, self.fake = per_second, fake
        self.tokens, self.updated = max(1.0, per_second), fake.now

    def retry_after(self) -> float | None:
        """None: the request passes; else casavi's Retry-After (whole seconds)."""
        capacity = max(1.0, self.per_second)
        now = self.fake.now
        self.tokens = min(capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return float(max(1, math.ceil((1 - self.tokens) / self.per_second)))


def sync_against(budget: AccountBudget, fake: FakeTime, seconds: float, refuse_all: bool = False,
                 limit: HiddenLimit | None = None) -> list[float]:
    """Send for `seconds` (answers take 10 ms): every request refused (429, Retry-After: 1) if `refuse_all`,
    else refused only above `limit`. Returns when each accepted request was sent."""
    accepted, end = [], fake.now + seconds
    while fake.now < end:
        grant = budget.acquire()
        fake.advance(0.01)
        retry_after = 1.0 if refuse_all else limit.retry_after() if limit else None
        if retry_after is not None:
            budget.pushed_back(grant, retry_after)
        else:
            budget.answered(grant, call=CALL, seconds=0.01, status=200)
            accepted.append(grant.at)
    return accepted


def first_time_above(accepted: list[float], since: float, per_second: float) -> float | None:
    """Seconds after `since` until a 10 s window first holds more than `per_second` accepted requests/s."""
    for i, start in enumerate(accepted):
        if start >= since and sum(1 for t in accepted[i:] if t < start + 10) > per_second * 10:
            return start - since
    return None


def test_a_burst_of_429s_does_not_collapse_the_rate_for_good(tmp_path, fake):
    """Issue 26 (high): a proxy answering 429 (Retry-After: 1) to everything for 90 s drives the rate to
    the floor; once casavi answers again, it is back above 80 % of casavi's limit within 5 minutes, in the
    same run and in the next run of another Mandant (which sees no 429 at all)."""
    path = tmp_path / "b.sqlite3"
    limit = HiddenLimit(8.0, fake)
    with budget_on(path, fake) as run:
        assert first_time_above(sync_against(run, fake, 120, limit=limit), fake.now - 120, 0.8 * 8) is not None
        sync_against(run, fake, 90, refuse_all=True)
        assert run.rate_per_minute <= 6.5  # at the floor: every request refused, pause after pause
        burst_over = fake.now
        accepted = sync_against(run, fake, 360, limit=limit)
    recovered = first_time_above(accepted, burst_over, 0.8 * 8)
    assert recovered is not None and recovered <= 300

    with budget_on(path, fake) as run:  # the same, with the next run starting right after the burst
        sync_against(run, fake, 90, refuse_all=True)
    burst_over = fake.now
    with budget_on(path, fake) as next_run:
        accepted = sync_against(next_run, fake, 360, limit=HiddenLimit(8.0, fake))
    recovered = first_time_above(accepted, burst_over, 0.8 * 8)
    assert recovered is not None and recovered <= 300


def test_the_rate_casavi_refused_is_kept_for_a_minute_then_probed_above(tmp_path, fake):
    """Near casavi's real limit the decay is a gentle probe: no second 429 within a minute."""
    with budget_on(tmp_path / "b.sqlite3", fake) as budget:
        send(budget, fake, 100)
        budget.pushed_back(budget.acquire())
        refused = budget.rate_per_minute / 0.8
        send(budget, fake, 400)  # 50+ s of prompt answers
        assert budget.rate_per_minute == pytest.approx(refused, rel=0.01)  # back at it, not beyond
        send(budget, fake, 1500)
        assert budget.rate_per_minute > 1.2 * refused  # then probing above it


@pytest.mark.parametrize("damage", ["garbled", "truncated", "wrong state"])
def test_a_damaged_budget_file_is_moved_aside_with_one_line_and_learned_anew(tmp_path, fake, damage):
    path = budget_file(tmp_path, "key")
    with budget_on(path, fake) as budget:
        send(budget, fake, 80)
    if damage == "garbled":
        path.write_bytes(b"\x00garbage" * 500)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1500])
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE casavi_rate SET rate = 'fast', paused_until = -1")
    lines: list[str] = []
    with budget_on(path, fake, warn=lines.append) as budget:
        assert budget.rate_per_minute == pytest.approx(60)  # learned anew, from the cautious start
        send(budget, fake, 5)
    [line] = lines
    [aside] = path.parent.glob(f"{BUDGET_FILE}.corrupt-*")
    assert "\n" not in line and str(path) in line and str(aside) in line and "learned anew" in line
    assert learned_rate(tmp_path, None, "key") == pytest.approx(budget.rate_per_minute / 60)


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


def test_a_killed_process_leaves_nothing_that_blocks_the_others(processes, tmp_path):
    path = tmp_path / "b.sqlite3"
    AccountBudget(SqliteBudgetStore(path), ceiling_per_minute=None).close()
    holder = processes.start([sys.executable, "-c", HOLD_THE_BUDGET, str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    granted: list[Grant] = []

    def take() -> None:
        with AccountBudget(SqliteBudgetStore(path), ceiling_per_minute=None) as budget:
            granted.append(budget.acquire())

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(timeout=60)  # generous: it takes milliseconds unless a lease outlived its process
    assert len(granted) == 1
