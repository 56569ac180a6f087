"""Unit tests of the casavi client's corner cases with httpx.MockTransport (no network)."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time

import httpx
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.errors import CasaviAuthError, CasaviUnavailableError
from casavi_pipeline.casavi.ratelimit import RateLimiter

FUTURE = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat().replace("+00:00", "Z")


class FakeCasavi:
    """A scripted casavi: answers for /v2/properties/... come from `script` (status list), auth always works."""

    def __init__(self, *statuses: int, retry_after: str | None = None, expires: str = FUTURE) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.expires = expires
        self.calls: list[tuple[str, str, str | None]] = []
        self.tokens = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls.append((request.method, request.url.path, request.headers.get("token")))
            if request.url.path == "/v2/authenticate":
                self.tokens += 1
                return httpx.Response(200, json={"token": f"t{self.tokens}", "expiresAt": self.expires})
            status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
        if status == 400:
            body = {"message": "invalid property", "errors": [{"field": "name", "message": "is required"}]}
            return httpx.Response(400, json=body)
        return httpx.Response(status, json={"message": f"status {status}"}, headers=headers)

    def writes(self) -> list[tuple[str, str, str | None]]:
        return [c for c in self.calls if c[1] != "/v2/authenticate"]


def client_for(fake, sleeps: list[float] | None = None, **kwargs) -> CasaviClient:
    kwargs.setdefault("requests_per_minute", None)
    return CasaviClient(
        "https://casavi.test",
        "the-key",
        "the-secret",
        transport=httpx.MockTransport(fake),
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        backoff_seconds=0.01,
        **kwargs,
    )


PAYLOAD = {"id": "0001-1", "name": "Haus Müller", "addresses": []}


def test_authenticates_once_and_sends_the_token_header():
    fake = FakeCasavi(201, 200)
    with client_for(fake) as client:
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).created
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).status == 200
    assert fake.tokens == 1
    assert fake.writes() == [("PUT", "/v2/properties/0001-1", "t1")] * 2


def test_a_401_re_authenticates_once_and_repeats_the_call():
    fake = FakeCasavi(401, 200)
    with client_for(fake) as client:
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).ok
    assert [token for _, _, token in fake.writes()] == ["t1", "t2"]


def test_a_second_401_is_an_auth_error():
    fake = FakeCasavi(401, 401)
    with client_for(fake) as client, pytest.raises(CasaviAuthError):
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)


def test_token_is_renewed_before_it_expires():
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    fake = FakeCasavi(200, 200, expires=soon)
    with client_for(fake) as client:
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
        time.sleep(1.0)
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
    assert fake.tokens == 2


def test_429_honours_retry_after_then_succeeds():
    sleeps: list[float] = []
    fake = FakeCasavi(429, 429, 201, retry_after="7")
    with client_for(fake, sleeps) as client:
        result = client.upsert(ObjectKind.PROPERTY, PAYLOAD)
        assert result.created and client.stats.rate_limited == 2
    assert sleeps == [7.0, 7.0]


def test_5xx_and_transport_errors_are_retried():
    answers = iter(["drop", 503, 201])

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/authenticate":
            return httpx.Response(200, json={"token": "t", "expiresAt": FUTURE})
        answer = next(answers)
        if answer == "drop":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(answer)

    with client_for(flaky) as client:
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).created
        assert (client.stats.retries, client.stats.transport_errors, client.stats.server_errors) == (2, 1, 1)


def test_exhausted_retries_raise_unavailable_naming_call_and_id():
    fake = FakeCasavi(*([500] * 10))
    with client_for(fake, max_attempts=3) as client, pytest.raises(CasaviUnavailableError) as info:
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
    assert len(fake.writes()) == 3
    assert "PUT /v2/properties/{id} [0001-1]" in str(info.value)


@pytest.mark.parametrize("status", [400, 409, 422])
def test_rejections_are_not_retried_and_carry_casavis_answer_without_values(status):
    fake = FakeCasavi(status)
    with client_for(fake) as client:
        result = client.upsert(ObjectKind.PROPERTY, PAYLOAD)
    assert (result.ok, result.status, len(fake.writes())) == (False, status, 1)
    message = str(result.error)
    assert "0001-1" in message and str(status) in message
    assert "Müller" not in message and "the-secret" not in message
    if status == 400:
        assert "name: is required" in message


def test_reference_ids_with_slashes_are_percent_encoded():
    fake = FakeCasavi(201)
    with client_for(fake) as client:
        client.upsert(ObjectKind.PROPERTY, {**PAYLOAD, "id": "0001/7"})
    request_paths = [c[1] for c in fake.writes()]
    assert request_paths == ["/v2/properties/0001/7"]  # httpx decodes .path; the raw path is encoded
    assert client.stats.by_status[201] == 1


def test_list_objects_follows_next_links():
    def pages(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/authenticate":
            return httpx.Response(200, json={"token": "t", "expiresAt": FUTURE})
        page = int(request.url.params.get("page", "1"))
        body = {"list": [{"id": f"p{page}-{i}"} for i in range(2)], "_links": {}}
        if page < 4:
            body["_links"]["next"] = f"https://casavi.test/v2/units?page={page + 1}&pageSize=2"
        return httpx.Response(200, json=body)

    with client_for(pages) as client:
        ids = [o["id"] for o in client.list_objects(ObjectKind.UNIT, page_size=2)]
    assert ids == [f"p{p}-{i}" for p in range(1, 5) for i in range(2)]


def test_execute_bounds_concurrency_and_continues_after_rejections():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/authenticate":
            return httpx.Response(200, json={"token": "t", "expiresAt": FUTURE})
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return httpx.Response(400 if request.url.path.endswith("-13") else 201)

    ops = [Operation(ObjectKind.CONTACT, "upsert", f"0001-{i}", {"id": f"0001-{i}"}) for i in range(40)]
    with client_for(slow, max_concurrency=3) as client:
        results = list(client.execute(iter(ops)))
    assert state["max"] == 3
    assert len(results) == 40
    assert [r.operation.ref_id for r in results if not r.ok] == ["0001-13"]


def test_execute_stops_when_casavi_is_down_after_yielding_what_finished():
    fake = FakeCasavi(201, 201, *([503] * 50))
    ops = [Operation(ObjectKind.CONTACT, "upsert", f"0001-{i}", {"id": f"0001-{i}"}) for i in range(100)]
    seen = []
    with client_for(fake, max_concurrency=1, max_attempts=2) as client, pytest.raises(CasaviUnavailableError):
        for result in client.execute(iter(ops)):
            seen.append(result)
    assert [r.operation.ref_id for r in seen] == ["0001-0", "0001-1"]
    assert len(fake.writes()) == 4  # two confirmed, one op tried twice, nothing after


def test_rate_limiter_spaces_requests():
    clock = {"t": 0.0}
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock["t"] += seconds

    limiter = RateLimiter(120, burst=1, clock=lambda: clock["t"], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert clock["t"] == pytest.approx(2.0)  # 4 waits of 0.5 s at 2 requests per second


# --- the read side of the adapter ------------------------------------------------------------------
SENT_RECORDS = {
    ObjectKind.PROPERTY: {
        "id": "0001-1",
        "name": "WE 1",
        "number": "1",
        "street": "Lindenstraße 12a",
        "postal_code": "04109",
        "city": "Leipzig",
        "country": "DE",
        "note": None,
        "addresses": [  # by id, as the mapping sends them: "…-10" before "…-2"
            {
                "id": "0001-1-1",
                "street": "Lindenstraße 12a",
                "postal_code": "04109",
                "city": "Leipzig",
                "country": "DE",
            },
            {"id": "0001-1-10", "street": "Hof 1", "postal_code": "04109", "city": None, "country": None},
            {
                "id": "0001-1-2",
                "street": "Lindenstraße 14",
                "postal_code": None,
                "city": "Leipzig",
                "country": "DE",
            },
        ],
    },
    ObjectKind.UNIT: {
        "id": "0001-1-1-3",
        "property_id": "0001-1",
        "address_id": "0001-1-1",
        "name": "Wohnung 2. OG links",
        "number": "3",
        "usage": "PRIVATE",
        "area": 72.0,
        "rooms": None,
    },
    ObjectKind.CONTACT: {
        "id": "0001-M-5",
        "salutation": "MS",
        "title": None,
        "first_name": "Erika",
        "last_name": "Musterfrau",
        "company_name": None,
        "email": "erika@example.org",
        "telephone": None,
        "mobile": "0170 1",
        "street": None,
        "postal_code": None,
        "city": None,
        "country": None,
        "preferred_way_of_contact": "ONLINE",
    },
    ObjectKind.CONTRACT: {
        "id": "0001-V-9",
        "contract_type": "RENTER",
        "unit_id": "0001-1-1-3",
        "contact_ids": sorted(["0001-M-5", "0001-M-10", "0001-M-6"]),
        "number": "9",
        "start_date": "2020-01-01",
        "end_date": None,
    },
}


def _as_read(kind: ObjectKind, body: dict, rng: random.Random) -> dict:
    """The sent body as a read returns it: read-only fields added, nulls omitted, lists shuffled."""
    read = {k: v for k, v in body.items() if v is not None}
    read |= {"internalId": 4711, "modified": "2026-03-01T02:03:04.000Z", "createdBy": "someone"}
    if "addresses" in read:
        read["addresses"] = [
            {k: v for k, v in a.items() if v is not None} | {"units": [f"{a['id']}-{i}" for i in range(2)]}
            for a in read["addresses"]
        ]
        rng.shuffle(read["addresses"])
    if "contactIds" in read:
        read["contactIds"] = list(read["contactIds"])
        rng.shuffle(read["contactIds"])
    if isinstance(read.get("area"), float) and read["area"].is_integer():
        read["area"] = int(read["area"])  # JSON has one number type: 72.0 may come back as 72
    items = list(read.items())
    rng.shuffle(items)
    return dict(items)


@pytest.mark.parametrize("kind", list(ObjectKind))
def test_a_read_normalises_to_the_body_that_was_sent(kind):
    sent = api.to_payload(kind, SENT_RECORDS[kind])
    assert api.validate_payload(kind, sent) == []
    rng = random.Random(kind.value)
    for _ in range(20):
        record = api.record_from_read(kind, _as_read(kind, sent, rng))
        assert tuple(record) == api.DOMAIN_COLUMNS[kind]
        assert json.dumps(api.to_payload(kind, record)) == json.dumps(sent)  # same text: same hash


def test_a_read_without_addresses_or_contacts_is_an_empty_list_or_none():
    assert api.record_from_read(ObjectKind.PROPERTY, {"id": "0001-1", "name": "WE"})["addresses"] == []
    assert api.record_from_read(ObjectKind.CONTRACT, {"id": "0001-V-1"})["contact_ids"] is None
