"""The casavi client against the sandbox as a real process on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.budget_store import SqliteBudgetStore, budget_file
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.errors import CasaviAuthError, CasaviUnavailableError
from casavi_pipeline.casavi.ratelimit import AccountBudget
from casavi_pipeline_tests.fake_time import FakeTime

pytestmark = pytest.mark.e2e


def client_for(sandbox, **kwargs) -> CasaviClient:
    kwargs.setdefault("budget", None)
    kwargs.setdefault("backoff_seconds", 0.02)
    return CasaviClient(sandbox.base_url, sandbox.api_key, sandbox.api_secret, **kwargs)


def contact(i: int) -> dict:
    return {
        "id": f"0001-{i:06d}",
        "lastName": "Weiß",
        "email": f"m{i}@example.org",
        "preferredWayOfContact": "ONLINE",
    }


def test_wrong_secret_is_a_clear_auth_error(sandbox):
    with (
        CasaviClient(sandbox.base_url, sandbox.api_key, "wrong", budget=None) as client,
        pytest.raises(CasaviAuthError) as info,
    ):
        client.upsert(ObjectKind.CONTACT, contact(1))
    assert "CASAVI_API_SECRET" in str(info.value) and "wrong" not in str(info.value)


def test_a_wrong_secret_costs_one_login_however_many_writes_wait(sandbox):
    ops = [Operation(ObjectKind.CONTACT, "upsert", c["id"], c) for c in map(contact, range(50))]
    with CasaviClient(sandbox.base_url, sandbox.api_key, "wrong", budget=None, max_concurrency=4) as client:
        with pytest.raises(CasaviAuthError):
            list(client.execute(iter(ops)))
        with pytest.raises(CasaviAuthError):
            client.authenticate()
    assert sandbox.requests()["routes"] == {"POST /v2/authenticate": {"401": 1}}


def test_token_expiry_mid_sequence_is_survived(sandbox):
    sandbox.configure(token_ttl=1)
    with client_for(sandbox) as client:
        for i in range(3):
            assert client.upsert(ObjectKind.CONTACT, contact(i)).ok
            time.sleep(1.1)
        assert client.stats.authentications >= 2
    assert len(sandbox.state()["contacts"]) == 3


def test_paging_over_more_than_three_pages(sandbox):
    with client_for(sandbox, max_concurrency=8) as client:
        list(
            client.execute(
                Operation(ObjectKind.CONTACT, "upsert", c["id"], c) for c in map(contact, range(230))
            )
        )
        listed = [o["id"] for o in client.list_objects(ObjectKind.CONTACT, page_size=50)]
    assert sorted(listed) == sorted(contact(i)["id"] for i in range(230))
    assert sandbox.requests()["routes"]["GET /v2/contacts"]["200"] == 5


def test_validation_errors_are_surfaced_with_field_and_reference_id(sandbox):
    with client_for(sandbox) as client:
        result = client.upsert(ObjectKind.UNIT, {"id": "0001-1-1-1", "propertyId": "0001-1", "name": ""})
    assert (result.ok, result.status) == (False, 400)
    assert "PUT /v2/units/{id} [0001-1-1-1] → 400: casavi refused a field value" in str(result.error)
    assert "name" in result.error.fields and "address" in result.error.fields
    assert "must not be empty" not in str(result.error)  # casavi's prose stays out of logs


def test_timeouts_are_retried_then_reported(sandbox):
    sandbox.configure(latency_ms=400)
    with (
        client_for(sandbox, timeout=0.1, max_attempts=2) as client,
        pytest.raises(CasaviUnavailableError) as info,
    ):
        client.get_object(ObjectKind.CONTACT, "0001-1")
    assert "ReadTimeout" in str(info.value) or "Timeout" in str(info.value)


def test_dropped_connections_are_retried_without_duplicates(sandbox):
    sandbox.configure(drop_rate=0.3, seed=7)
    ops = [Operation(ObjectKind.CONTACT, "upsert", c["id"], c) for c in map(contact, range(100))]
    with client_for(sandbox, max_concurrency=4, max_attempts=10) as client:
        results = list(client.execute(iter(ops)))
        assert client.stats.transport_errors > 0
    assert all(r.ok for r in results)
    assert sandbox.state()["contacts"] == {c["id"]: c | _nulls(c) for c in map(contact, range(100))}


def _nulls(c: dict) -> dict:
    fields = (
        "salutation",
        "title",
        "firstName",
        "companyName",
        "telephone",
        "mobile",
        "street",
        "postalCode",
        "city",
        "country",
        "contracts",
    )
    return {f: c.get(f) for f in fields}


def test_1000_upserts_arrive_exactly_once_under_500s_and_a_rate_limit(sandbox):
    """Acceptance: 20 % injected 500s and a 429 rate limit; every upsert lands exactly once."""
    sandbox.configure(error_rate=0.2, rate_limit=6000, seed=1)
    ops = [Operation(ObjectKind.CONTACT, "upsert", c["id"], c) for c in map(contact, range(1000))]
    with client_for(sandbox, max_concurrency=8, max_attempts=12) as client:
        results = list(client.execute(iter(ops)))
        stats = client.stats
    assert len(results) == 1000 and all(r.ok for r in results)
    assert stats.server_errors > 100 and stats.rate_limited > 0  # both kinds of trouble really happened
    assert sandbox.state()["contacts"] == {c["id"]: c | _nulls(c) for c in map(contact, range(1000))}
    by_status = sandbox.requests()["routes"]["PUT /v2/contacts/{id}"]
    assert by_status.get("201") == 1000 and "200" not in by_status  # created once, never written twice


def test_a_contacts_ended_contracts_are_read_back_by_listing_and_by_id(sandbox):
    """casavi leaves ended contracts out of reads unless asked: every read of contacts asks."""
    prop = {"id": "0001-1", "name": "Lindenhof", "addresses": [{"street": "Weg 1"}]}
    unit = {"id": "0001-1-1-1", "propertyId": "0001-1", "address": "Weg 1", "name": "Wohnung 1"}
    ended = {"type": "RENTER", "propertyId": "0001-1", "unitId": "0001-1-1-1", "number": "1",
             "startDate": "2019-01-01", "endDate": "2020-12-31"}  # fmt: skip
    with client_for(sandbox) as client:
        for kind, body in ((ObjectKind.PROPERTY, prop), (ObjectKind.UNIT, unit)):
            assert client.upsert(kind, body).ok
        assert client.upsert(ObjectKind.CONTACT, {**contact(1), "contracts": [ended]}).ok
        [listed] = [c for c in client.list_objects(ObjectKind.CONTACT) if c["id"] == "0001-000001"]
        one = client.get_object(ObjectKind.CONTACT, "0001-000001")
    assert listed["contracts"] == one["contracts"] == [ended]


SHARING_WORKER = """
import json, sys
from pathlib import Path
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.budget_store import SqliteBudgetStore, budget_file
from casavi_pipeline.casavi.ratelimit import AccountBudget

url, key, secret, folder, prefix, n = sys.argv[1:]
bodies = [{"id": f"{prefix}-{i:06d}", "lastName": "Weiß"} for i in range(int(n))]
with (
    AccountBudget(SqliteBudgetStore(budget_file(Path(folder), key)), ceiling_per_minute=180) as budget,
    CasaviClient(url, key, secret, budget=budget, max_concurrency=4) as client,
):
    confirmed = sum(r.ok for r in client.execute(Operation(ObjectKind.CONTACT, "upsert", b["id"], b) for b in bodies))
print(json.dumps({"confirmed": confirmed}))
"""


def _learned(path: Path, per_minute: float) -> None:
    """A budget file that earlier runs left at `per_minute` (learned on a clock an hour back: no
    request of theirs is still in the window)."""
    clock = FakeTime(start=time.time() - 3600)
    with AccountBudget(SqliteBudgetStore(path, clock=clock), ceiling_per_minute=per_minute, sleep=clock.sleep) as budget:
        while budget.rate_per_minute < per_minute:
            grant = budget.acquire()
            budget.answered(grant, call="PUT /v2/contacts/{id}", seconds=0.01, status=201)


def test_two_processes_sharing_one_budget_stay_under_a_hidden_limit(sandbox, tmp_path):
    """Two Mandanten syncing side by side. Each may send 3 requests/s (the ceiling, which earlier
    runs reached), casavi allows 3.5/s: sharing the account's budget they send 3/s together and casavi
    refuses nothing; each with a budget of its own they start at 6/s together (4-5 answers of 429 in
    this test, until each has slowed down for itself)."""
    sandbox.configure(rate_limit=210)
    _learned(budget_file(tmp_path, sandbox.api_key), 180)
    account = [sandbox.base_url, sandbox.api_key, sandbox.api_secret, str(tmp_path)]
    workers = [
        subprocess.Popen([sys.executable, "-c", SHARING_WORKER, *account, prefix, "40"], stdout=subprocess.PIPE)
        for prefix in ("0001", "0002")
    ]
    outputs = [json.loads(worker.communicate(timeout=280)[0]) for worker in workers]
    assert [output["confirmed"] for output in outputs] == [40, 40]
    statuses = sandbox.requests()["statuses"]
    assert statuses.get("201") == 80  # the sandbox's own counts
    assert int(statuses.get("429", 0)) <= 2  # generous: a shared budget at 3/s meets none at 3.5/s
