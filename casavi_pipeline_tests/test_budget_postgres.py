"""The account's request budget in the state database (CASAVI_STATE_URL), on a real PostgreSQL server.

Two `PostgresBudgetStore`s on one database stand for two machines: nothing else is shared. The policy is
the same as with the SQLite file (test_casavi_ratelimit_unit.py); these tests are about where it lives:
shared across machines, a damaged row or table moved aside with one line, a killed process blocking no
one, the database going away failing in one line.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from casavi_pipeline import account
from casavi_pipeline.casavi.budget_store import PostgresBudgetStore, learned_rate, open_budget
from casavi_pipeline.casavi.ratelimit import AccountBudget, Grant, RateState
from casavi_pipeline.database import StateUnavailableError
from casavi_pipeline_tests.fake_time import FakeTime
from casavi_pipeline_tests.postgres import PostgresServer, pg_bin

pytestmark = pytest.mark.e2e

KEY = "the-api-key"
ACCOUNT = account.account_id(KEY)
CALL = "PUT /v2/contacts/{id}"
#: CASAVI_SNAPSHOT_DB: with the state in PostgreSQL the budget is never a file there.
NO_FOLDER = Path("/nonexistent")


@pytest.fixture
def database(postgres_server: PostgresServer) -> tuple[PostgresServer, str, str]:
    """(server, database name, URL) of a fresh database."""
    name = postgres_server.create_database("budget")
    return postgres_server, name, postgres_server.url(name)


def machine(url: str, fake: FakeTime, warn=lambda line: None, ceiling: float | None = None) -> AccountBudget:
    """One machine's budget of the account: its own connection, its own process state."""
    return AccountBudget(
        PostgresBudgetStore(url, ACCOUNT, clock=fake), ceiling_per_minute=ceiling, sleep=fake.sleep, warn=warn
    )


def send(budget: AccountBudget, fake: FakeTime, n: int) -> list[Grant]:
    grants = []
    for _ in range(n):
        grant = budget.acquire()
        fake.advance(0.02)
        budget.answered(grant, call=CALL, seconds=0.02, status=201)
        grants.append(grant)
    return grants


def test_two_machines_share_one_rate_and_casavis_pause(database):
    _, _, url = database
    fake = FakeTime()
    with machine(url, fake) as a, machine(url, fake) as b:
        grants = [budget.acquire() for _ in range(10) for budget in (a, b)]
        assert [y.at - x.at for x, y in itertools.pairwise(grants)] == pytest.approx([1.0] * 19, abs=0.01)
        send(a, fake, 60)
        refused = a.acquire()
        a.pushed_back(refused, retry_after=7)
        pushed_at = fake.now
        assert b.acquire().at - pushed_at == pytest.approx(7.0)  # the other machine waits casavi's pause
        assert b.rate_per_minute == pytest.approx(a.rate_per_minute)
    assert learned_rate(NO_FOLDER, url, KEY) == pytest.approx(b.rate_per_minute / 60)
    with open_budget(NO_FOLDER, url, "another-key", ceiling_per_minute=None, warn=print) as other_account:
        assert other_account.rate_per_minute == pytest.approx(60)


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE casavi_budget SET rate = 'NaN'",
        "UPDATE casavi_budget SET paused_until = -5, limit_rate = 0",
        "ALTER TABLE casavi_budget DROP COLUMN limit_rate",
        "ALTER TABLE casavi_budget ALTER COLUMN rate TYPE text USING 'fast'",
    ],
)
def test_a_damaged_budget_in_the_database_is_moved_aside_with_one_line(database, damage):
    server, name, url = database
    fake = FakeTime()
    with machine(url, fake) as budget:
        send(budget, fake, 80)
    server.psql(name, damage)
    lines: list[str] = []
    with machine(url, fake, warn=lines.append) as budget:
        assert budget.rate_per_minute == pytest.approx(60)  # learned anew
        send(budget, fake, 5)
    [line] = lines
    assert "\n" not in line and "moved aside" in line and ACCOUNT in line and "learned anew" in line
    if "ALTER" in damage:  # the table is not ours any more: kept under another name, a new one made
        assert "table casavi_budget_corrupt_" in line
        assert server.psql(name, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'casavi_budget_corrupt_%'") == "1"
    else:
        assert server.psql(name, f"SELECT count(*) FROM casavi_budget WHERE account LIKE '{ACCOUNT}.corrupt-%'") == "1"
    assert learned_rate(NO_FOLDER, url, KEY) == pytest.approx(budget.rate_per_minute / 60)


HOLD_A_TURN = """
import sys, time
from casavi_pipeline.casavi.budget_store import PostgresBudgetStore
from casavi_pipeline.casavi.ratelimit import RateState
store = PostgresBudgetStore(sys.argv[1], sys.argv[2])
with store.turn() as now:
    store.write(RateState(rate=12.0, limit=15.0, paused_until=0.0, decreased_at=now))
    for i in range(50):
        store.put(now + i / 1000, 1000.0)  # log rows, as a run sending fast leaves them
    print("holding", flush=True)  # the turn's transaction and its advisory lock stay open
    time.sleep(600)
"""


def test_a_run_killed_in_its_turn_blocks_no_one_and_slows_no_one(database):
    """SIGKILL while holding the account's lock in an open transaction: PostgreSQL ends the transaction
    with the connection, the next run takes its turn at once at the rate learned before."""
    _, _, url = database
    fake = FakeTime()
    store = PostgresBudgetStore(url, ACCOUNT, clock=fake)
    with store.turn() as now:  # what earlier runs learned: 12 requests/s
        store.write(RateState(rate=12.0, limit=15.0, decreased_at=now))
    store.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_TURN, url, ACCOUNT], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    finally:
        holder.kill()
        holder.wait()
    granted: list[tuple[Grant, float]] = []

    def next_run() -> None:
        clock = FakeTime(start=fake.now + 1)
        with AccountBudget(PostgresBudgetStore(url, ACCOUNT, clock=clock), ceiling_per_minute=None, sleep=clock.sleep) as run:
            grants = [run.acquire() for _ in range(5)]
            granted.extend((grant, run.rate_per_minute) for grant in grants)

    thread = threading.Thread(target=next_run, daemon=True)
    thread.start()
    thread.join(timeout=120)  # a deadline, not a measurement: it takes milliseconds unless the lock outlived its holder
    assert len(granted) == 5
    assert granted[0][1] == pytest.approx(12 * 60)  # the rate the killed run had learned, not slowed
    assert sum(grant.waited for grant, _ in granted) <= 5 / 12 + 0.01  # paced at 12/s: no pause, no leftovers


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test alone: it is stopped in the middle."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


def test_the_database_going_away_mid_run_is_one_line_naming_it(own_postgres):
    name = own_postgres.create_database("budget")
    url = own_postgres.url(name).replace("casavi@", "casavi:Geheim42@")  # trust auth: any password passes
    fake = FakeTime()
    with pytest.raises(StateUnavailableError) as info, machine(url, fake) as budget:
        send(budget, fake, 3)
        own_postgres.halt()
        budget.acquire()
    message = str(info.value)
    assert "\n" not in message and "Geheim42" not in message and "went away" in message
    assert f"{own_postgres.host}:{own_postgres.port}/{name}" in message
