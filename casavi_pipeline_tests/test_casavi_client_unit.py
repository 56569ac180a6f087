"""Unit tests of the casavi client's corner cases with httpx.MockTransport (no network)."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.errors import (
    CasaviAuthError,
    CasaviError,
    CasaviRateLimitedError,
    CasaviRejectedError,
    CasaviUnavailableError,
)
from casavi_pipeline.casavi.ratelimit import AccountBudget
from casavi_pipeline.casavi.retry import MAX_RETRY_AFTER_SECONDS, WAIT_LINE_SECONDS
from casavi_pipeline_tests.fake_time import FakeTime

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
    kwargs.setdefault("budget", None)
    kwargs.setdefault("sleep", sleeps.append if sleeps is not None else lambda s: None)
    return CasaviClient(
        "https://casavi.test",
        "the-key",
        "the-secret",
        transport=httpx.MockTransport(fake),
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


def test_token_is_renewed_before_it_expires_on_the_injected_clock():
    wall = FakeTime(start=dt.datetime(2026, 12, 24, tzinfo=dt.UTC).timestamp())
    expires = dt.datetime(2026, 12, 24, 1, tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")  # in one hour
    fake = FakeCasavi(200, 200, 200, expires=expires)
    with client_for(fake, now=wall) as client:
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
        wall.advance(3600 - 300 - 1)  # just over 5 minutes before it expires: still valid
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
        assert fake.tokens == 1
        wall.advance(2)  # within its last 5 minutes: renewed before casavi would refuse it
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


def test_a_failing_casavi_is_told_when_the_wait_starts_while_it_lasts_and_when_it_answers_again():
    """No minutes of silence before "gave up": one line when requests start waiting (and how long they
    try), one every WAIT_LINE_SECONDS while casavi keeps failing, one when it answers again."""
    clock = FakeTime()
    answers = iter(["drop", *[503] * 8, 201, 201])

    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/authenticate":
            return httpx.Response(200, json={"token": "t", "expiresAt": FUTURE})
        clock.advance(5.0)  # each failing answer takes a while
        answer = next(answers)
        if answer == "drop":
            raise httpx.ConnectError("connection refused")
        return httpx.Response(answer)

    said: list[str] = []
    client = CasaviClient(
        "https://casavi.test", "the-key", "the-secret", budget=None, transport=httpx.MockTransport(failing),
        backoff_seconds=0.5, max_attempts=20, clock=clock, sleep=clock.sleep, on_wait=said.append,
    )  # fmt: skip
    with client:
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).created
        assert client.upsert(ObjectKind.PROPERTY, {**PAYLOAD, "id": "0001-2"}).created
    assert said[0] == (
        "casavi at https://casavi.test fails (ConnectError talking to casavi): waiting for it; each request is "
        "tried 20 times within 300 s before the sync gives up"
    )
    still = [line for line in said[1:-1] if line.startswith("still waiting for casavi at https://casavi.test")]
    assert still and len(still) == len(said) - 2  # nothing else in between
    assert "(503 server error) for " in still[-1]
    waited = clock.now - 1_800_000_000.0
    assert len(still) <= waited / WAIT_LINE_SECONDS  # at most one per WAIT_LINE_SECONDS
    assert said[-1].startswith("casavi at https://casavi.test answers again, after ")
    assert sum(line.startswith("casavi at https://casavi.test answers again") for line in said) == 1


def test_an_answer_sent_before_casavi_failed_does_not_count_as_answering_again():
    """Requests in flight when casavi went away still get their answers: those say nothing about now."""
    clock = FakeTime()
    said: list[str] = []
    client = CasaviClient(
        "https://casavi.test", "k", "s", budget=None, transport=httpx.MockTransport(FakeCasavi()),
        clock=clock, sleep=clock.sleep, on_wait=said.append,
    )  # fmt: skip
    with client:
        client.outage.failing("ConnectError talking to casavi")  # another thread's request failed just now
        client._answered_again(sent=clock() - 1.0)  # an answer to a request sent before that
        assert len(said) == 1 and said[0].startswith("casavi at https://casavi.test fails")
        client._answered_again(sent=clock())
        assert said[-1] == "casavi at https://casavi.test answers again, after 0 s"


def test_exhausted_retries_raise_unavailable_naming_call_and_id():
    fake = FakeCasavi(*([500] * 10))
    with client_for(fake, max_attempts=3) as client, pytest.raises(CasaviUnavailableError) as info:
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
    assert len(fake.writes()) == 3
    assert "PUT /v2/properties/{id} [0001-1]" in str(info.value)


@pytest.mark.parametrize(
    ("status", "wording"),
    [
        (400, "casavi refused a field value"),
        (409, "still referenced by other objects"),
        (422, "references an object casavi does not know"),
    ],
)
def test_rejections_are_not_retried_and_carry_our_wording_without_values(status, wording):
    fake = FakeCasavi(status)
    with client_for(fake) as client:
        result = client.upsert(ObjectKind.PROPERTY, PAYLOAD)
    assert (result.ok, result.status, len(fake.writes())) == (False, status, 1)
    message = str(result.error)
    assert message.startswith(f"PUT /v2/properties/{{id}} [0001-1] → {status}: {wording}")
    assert "Müller" not in message and "the-secret" not in message
    assert f"status {status}" not in message and "invalid property" not in message  # casavi's prose
    if status == 400:
        assert result.error.fields == ("name",) and "is required" not in message


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


# --- 429: a request to slow down, not a failure ----------------------------------------------------
def test_429s_spend_no_attempt():
    """A casavi limit below the client's rate used to end as "unavailable" after 6 answers of 429."""
    fake = FakeCasavi(*([429] * 8), 201, retry_after="1")
    with client_for(fake, max_attempts=2) as client:
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).created
        assert (client.stats.rate_limited, client.stats.retries) == (8, 8)
    assert len(fake.writes()) == 9


def test_429s_and_failures_together_stop_at_max_attempts_failures():
    fake = FakeCasavi(429, 503, 429, 429, 503, 429, 201)
    with client_for(fake, max_attempts=2) as client, pytest.raises(CasaviUnavailableError) as info:
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
    assert len(fake.writes()) == 5 and "503 server error" in str(info.value)


def test_a_casavi_answering_only_429_ends_in_one_line_that_says_it_is_rate_limiting(tmp_path):
    clock = FakeTime()
    fake = FakeCasavi(*([429] * 10_000), retry_after="7")
    with (
        AccountBudget(tmp_path / "budget.sqlite3", ceiling_per_minute=600, clock=clock, sleep=clock.sleep) as budget,
        client_for(fake, budget=budget, clock=clock, sleep=clock.sleep, max_retry_seconds=300) as client,
        pytest.raises(CasaviRateLimitedError) as info,
    ):
        client.upsert(ObjectKind.PROPERTY, PAYLOAD)
    message = str(info.value)
    assert "\n" not in message and "rate limiting" in message and "429" in message
    assert "slowed down to 6 requests/minute" in message  # the budget's floor, after halving and halving
    assert isinstance(info.value, CasaviUnavailableError)  # the step's retry policy still applies
    # paced by casavi's Retry-After (7 s), then by the floor (one per 10 s); ends after 300 s
    assert 300 / 10 <= len(fake.writes()) <= 300 / 7 + 2
    assert client.stats.budget_wait_seconds >= 300


def test_every_request_passes_the_budget_logins_and_retries_included(tmp_path):
    clock = FakeTime()
    fake = FakeCasavi(503, 201)
    with (
        AccountBudget(tmp_path / "budget.sqlite3", ceiling_per_minute=None, clock=clock, sleep=clock.sleep) as budget,
        client_for(fake, budget=budget, clock=clock, sleep=clock.sleep) as client,
    ):
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).created
        stats = client.stats
    assert [call[1] for call in fake.calls] == ["/v2/authenticate", "/v2/properties/0001-1", "/v2/properties/0001-1"]
    # login, the 503 and its retry go one a second at the cautious start, slower after the 503
    assert stats.budget_wait_seconds >= 2.0 and stats.rate_per_minute == pytest.approx(48)
    assert stats.rate_figures() == {"rate_limited_429": 0, "budget_wait_s": round(stats.budget_wait_seconds, 1),
                                    "rate_found_per_min": 48.0}  # fmt: skip


# --- casavi's error text never leaves the client ---------------------------------------------------
EMAIL, NAME = "max.mustermann@example.org", "Mustermann"
LEAKY_BODY = {
    "message": f"email '{EMAIL}' of Max {NAME} is invalid",
    "code": "VALIDATION_FAILED",
    "errors": [
        {"field": "email", "message": f"'{EMAIL}' is not a valid address", "code": "INVALID_EMAIL"},
        {"field": "lastName", "message": f"{NAME} is too long", "code": f"{NAME} is wrong"},
        {"field": f"Max {NAME} <{EMAIL}>", "message": "?"},  # a proxy's prose in the field slot
        {"field": "addresses[0].street", "code": "TOO_LONG"},
        {"field": "lastName", "code": "Schulze"},  # a surname echoed into the code slot
        {"field": "telephone", "code": "03511234567"},  # a phone number
        {"field": "mobile", "code": "+49 351 1234567"},
        {"field": "firstName", "code": "max"},
    ],
}


def _everything_in(exc: BaseException) -> str:
    """str, repr, args and every attribute of an exception, as one text to search."""
    return "\n".join([str(exc), repr(exc), *map(repr, exc.args), *(repr(v) for v in vars(exc).values())])


def _answering(status: int, **response) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/authenticate":
            return httpx.Response(200, json={"token": "t", "expiresAt": FUTURE})
        return httpx.Response(status, **response)

    return handler


def test_a_rejection_keeps_field_names_but_none_of_casavis_text():
    contact = {"id": "0001-7", "firstName": "Max", "lastName": NAME, "email": EMAIL}
    with client_for(_answering(400, json=LEAKY_BODY)) as client:
        error = client.upsert(ObjectKind.CONTACT, contact).error
    assert isinstance(error, CasaviRejectedError)
    assert (error.status, error.call, error.ref_id) == (400, "PUT /v2/contacts/{id}", "0001-7")
    assert error.message == "casavi refused a field value"
    assert error.fields == ("email", "lastName", "addresses[0].street", "telephone", "mobile", "firstName")
    everything = _everything_in(error)
    assert EMAIL not in everything and NAME not in everything and "Max" not in everything
    assert "Schulze" not in everything and "03511234567" not in everything and "1234567" not in everything
    assert "the-secret" not in everything and "the-key" not in everything
    assert error.__cause__ is None and error.__context__ is None
    assert "fields: email, lastName, addresses[0].street, telephone, mobile, firstName" in str(error)


def test_a_non_json_error_body_goes_nowhere():
    page = f"<html>Bad gateway while sending {EMAIL}</html>"
    with client_for(_answering(409, text=page)) as client:
        error = client.delete(ObjectKind.CONTACT, "0001-7").error
    assert error is not None and error.fields == ()
    assert EMAIL not in _everything_in(error) and error.__context__ is None


def test_a_non_json_success_body_is_an_error_without_the_body():
    with client_for(_answering(200, text=f"oops {EMAIL}")) as client, pytest.raises(CasaviError) as info:
        client.get_object(ObjectKind.CONTACT, "0001-7")
    assert EMAIL not in _everything_in(info.value) and info.value.__context__ is None


# --- values in casavi's `code` slots go nowhere ----------------------------------------------------
SLOT_VALUES = ("SCHULZ", "EVELYNE.SCHULZ99")  # a surname and an email's local part, shaped like codes
CODED_BODY = {
    "message": "rejected",
    "code": "SCHULZ",
    "errors": [
        {"field": "lastName", "code": "SCHULZ"},
        {"field": "email", "code": "EVELYNE.SCHULZ99"},
        {"code": "EVELYNE.SCHULZ99"},
    ],
}


def _whole_chain(exc: BaseException | None) -> str:
    seen = []
    while exc is not None:
        seen.append(_everything_in(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(seen)


@pytest.mark.parametrize("where", ["call", "login"])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 418, 422, 429, 500, 503])
def test_values_in_code_slots_reach_no_error_field_or_log(status, where, caplog):
    caplog.set_level(logging.DEBUG)
    clock = FakeTime()

    def answer(request: httpx.Request) -> httpx.Response:
        if where == "call" and request.url.path == "/v2/authenticate":
            return httpx.Response(200, json={"token": "t", "expiresAt": FUTURE})
        return httpx.Response(status, json=CODED_BODY)

    with client_for(answer, max_attempts=2, max_retry_seconds=30, clock=clock, sleep=clock.sleep) as client:
        try:
            result = client.upsert(ObjectKind.CONTACT, {"id": "0001-7"})
            error, seen = result.error, repr(result)
        except CasaviError as exc:
            error, seen = exc, ""
        seen += "\n".join([_whole_chain(error), repr(client.stats), caplog.text])
    assert error is not None
    for value in SLOT_VALUES:
        assert value.lower() not in seen.lower()
    assert set(error.fields) <= {"lastName", "email"}  # names of our model's fields, nothing else
    assert "code" not in vars(error) and "codes" not in vars(error)


# --- credentials are never sprayed -----------------------------------------------------------------
class RefusingCasavi:
    """Counts every request; `/v2/authenticate` answers `auth_status`, other calls `statuses` in turn."""

    def __init__(self, auth_status: int = 401, *statuses: int) -> None:
        self.auth_status = auth_status
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            if request.url.path == "/v2/authenticate":
                if self.auth_status != 200:
                    return httpx.Response(self.auth_status, json={"message": "key the-key is wrong"})
                return httpx.Response(200, json={"token": f"t{len(self.requests)}", "expiresAt": FUTURE})
            status = self.statuses.pop(0) if self.statuses else 200
        time.sleep(0.005)  # let the other threads pile up behind the first
        return httpx.Response(status, json={"message": "no"})

    def count(self, path_prefix: str) -> int:
        return sum(1 for r in self.requests if r.url.path.startswith(path_prefix))


@pytest.mark.parametrize("auth_status", [401, 403])
def test_a_refused_key_is_tried_once_and_latched_for_every_thread_and_call(auth_status):
    fake = RefusingCasavi(auth_status)
    ops = [Operation(ObjectKind.CONTACT, "upsert", f"0001-{i}", {"id": f"0001-{i}"}) for i in range(50)]
    with client_for(fake, max_concurrency=4) as client:
        with pytest.raises(CasaviAuthError) as info:
            list(client.execute(iter(ops)))
        assert (fake.count("/v2/authenticate"), len(fake.requests)) == (1, 1)
        for later in (
            lambda: client.upsert(ObjectKind.CONTACT, {"id": "0001-1"}),
            lambda: list(client.list_objects(ObjectKind.UNIT)),
            client.authenticate,
            lambda: client.authenticate(force=True),
        ):
            with pytest.raises(CasaviAuthError) as again:
                later()
            assert str(again.value) == str(info.value)
        assert len(fake.requests) == 1 and client.stats.retries == 0
    assert (info.value.status, info.value.call) == (auth_status, "POST /v2/authenticate")
    assert "CASAVI_API_SECRET" in str(info.value)
    assert "the-key" not in _everything_in(info.value) and "the-secret" not in _everything_in(info.value)


def test_authenticate_proves_access_without_writing():
    fake = RefusingCasavi(200)
    with client_for(fake) as client:
        client.authenticate()
        client.authenticate()  # a valid token is proof enough
        assert fake.count("/v2/authenticate") == 1
        client.authenticate(force=True)
        assert (fake.count("/v2/authenticate"), len(fake.requests)) == (2, 2)
        assert client.upsert(ObjectKind.CONTACT, {"id": "0001-1"}).ok
    assert fake.requests[-1].headers["token"] == "t2"


def test_authentication_is_retried_when_casavi_is_down_not_when_it_refuses():
    fake = RefusingCasavi(503)
    with client_for(fake, max_attempts=3) as client, pytest.raises(CasaviUnavailableError):
        client.authenticate()
    assert fake.count("/v2/authenticate") == 3
    fake.auth_status = 200  # an outage is not latched: the next call logs in
    with client_for(fake, max_attempts=3) as client:
        assert client.upsert(ObjectKind.CONTACT, {"id": "0001-1"}).ok


def test_a_fresh_token_refused_again_is_latched():
    fake = RefusingCasavi(200, 401, 401)
    with client_for(fake) as client:
        with pytest.raises(CasaviAuthError) as info:
            client.upsert(ObjectKind.CONTACT, {"id": "0001-1"})
        sent = len(fake.requests)
        with pytest.raises(CasaviAuthError):
            client.delete(ObjectKind.CONTACT, "0001-2")
    assert (fake.count("/v2/authenticate"), fake.count("/v2/contacts"), sent) == (2, 2, 4)
    assert len(fake.requests) == sent
    assert (info.value.status, info.value.ref_id) == (401, "0001-1")


def test_a_403_on_a_call_is_a_permission_error_not_retried_not_latched():
    fake = RefusingCasavi(200, 403)
    with client_for(fake) as client:
        with pytest.raises(CasaviAuthError) as info:
            client.upsert(ObjectKind.UNIT, {"id": "0001-1"})
        assert (fake.count("/v2/units"), client.stats.retries) == (1, 0)
        assert client.upsert(ObjectKind.CONTACT, {"id": "0001-2"}).ok  # other calls still go out
    assert info.value.message == "casavi refused the credentials for this call (missing permission)"
    assert fake.count("/v2/authenticate") == 1


# --- Retry-After -----------------------------------------------------------------------------------
def _http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(
        dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now), usegmt=True
    )


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        ("7", 7.0, 7.0),
        ("0", 0.0, 0.0),
        ("100000", MAX_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS),
        (30, 28.0, 30.0),  # an HTTP date 30 s from now: the seconds until then
        (10_000, MAX_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS),  # far ahead: clamped
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.0),  # a date in the past: no wait
        ("soon", 0.001, 1.0),  # garbage: our own backoff (0.01 s base here)
        ("nan", 0.001, 1.0),
        ("-5", 0.0, 0.0),
    ],
)
def test_retry_after_as_seconds_or_http_date(retry_after, low, high):
    if isinstance(retry_after, int):  # built here, not at collection, so no time passes in between
        retry_after = _http_date(retry_after)
    sleeps: list[float] = []
    fake = FakeCasavi(429, 201, retry_after=retry_after)
    with client_for(fake, sleeps) as client:
        assert client.upsert(ObjectKind.PROPERTY, PAYLOAD).created
    assert len(sleeps) == 1 and low <= sleeps[0] <= high


# --- the read side of the adapter ------------------------------------------------------------------
SENT_RECORDS = {
    ObjectKind.PROPERTY: {
        "id": "0001-1",
        "name": "WE 1",
        "number": "1",
        "postal_code": "04109",
        "city": "Leipzig",
        "country": "Germany",
        "note": None,
        "addresses": [{"street": "Hof 1"}, {"street": "Lindenstraße 12a"}, {"street": "Lindenstraße 14"}],
    },
    ObjectKind.UNIT: {
        "id": "0001-1-1-3",
        "property_id": "0001-1",
        "address": "Lindenstraße 12a",
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
        "contracts": [  # as the mapping orders them: unit, type, start, number
            {
                "contract_type": "OWNER",
                "property_id": "0001-1",
                "unit_id": "0001-1-1-3",
                "number": "7",
                "start_date": "2019-05-01",
                "end_date": "2019-12-31",
            },
            {
                "contract_type": "RENTER",
                "property_id": "0001-1",
                "unit_id": "0001-1-1-3",
                "number": "9",
                "start_date": "2020-01-01",
                "end_date": None,
            },
            {
                "contract_type": "RENTER",
                "property_id": "0001-1",
                "unit_id": "0001-1-1-4",
                "number": None,
                "start_date": "2021-02-01",
                "end_date": None,
            },
        ],
    },
}


def _as_read(kind: ObjectKind, body: dict, rng: random.Random) -> dict:
    """The sent body as a read returns it: read-only fields added, nulls omitted, lists shuffled."""
    read = {k: v for k, v in body.items() if v is not None}
    read |= {"internalId": 4711, "modified": "2026-03-01T02:03:04.000Z", "createdBy": "someone"}
    if "addresses" in read:
        read["addresses"] = [a | {"units": [f"0001-1-{i}" for i in range(2)]} for a in read["addresses"]]
        rng.shuffle(read["addresses"])
    if "contracts" in read:
        read["contracts"] = [{k: v for k, v in c.items() if v is not None} for c in read["contracts"]]
        rng.shuffle(read["contracts"])
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


def test_a_read_without_addresses_or_contracts_is_an_empty_list():
    assert api.record_from_read(ObjectKind.PROPERTY, {"id": "0001-1", "name": "WE"})["addresses"] == []
    assert api.record_from_read(ObjectKind.CONTACT, {"id": "0001-M-1"})["contracts"] == []


# --- listing for read-back -------------------------------------------------------------------------
class Pages:
    """A paged listing; `next_link(page)` gives the `_links.next` of each page (None on the last)."""

    def __init__(self, next_link: Callable[[int], str | None]) -> None:
        self.next_link = next_link
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v2/authenticate":
            return httpx.Response(200, json={"token": "the-token", "expiresAt": FUTURE})
        page = int(request.url.params.get("page", "1"))
        body: dict = {"list": [{"id": f"p{page}-{i}"} for i in range(2)], "_links": {}}
        if (link := self.next_link(page)) is not None:
            body["_links"]["next"] = link
        return httpx.Response(200, json=body)

    def reads(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path != "/v2/authenticate"]


def test_list_objects_follows_three_pages_with_the_largest_page_size_and_counts_them():
    pages = Pages(lambda p: f"https://casavi.test/v2/units?page={p + 1}&pageSize=500" if p < 3 else None)
    since = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    with client_for(pages) as client:
        ids = [o["id"] for o in client.list_objects(ObjectKind.UNIT, modified_after=since)]
        assert (client.stats.pages, client.stats.requests) == (3, 4)
    assert ids == [f"p{p}-{i}" for p in range(1, 4) for i in range(2)]
    first = pages.reads()[0].url.params
    assert dict(first) == {"pageSize": "500", "modifiedAfter": "2026-03-01T11:00:00.000Z"}
    assert all(r.headers["token"] == "the-token" for r in pages.reads())


def test_list_objects_refuses_a_naive_time_and_an_oversized_page():
    with client_for(Pages(lambda p: None)) as client:
        with pytest.raises(ValueError):
            list(client.list_objects(ObjectKind.UNIT, modified_after=dt.datetime(2026, 3, 1)))
        with pytest.raises(ValueError):
            list(client.list_objects(ObjectKind.UNIT, page_size=501))


@pytest.mark.parametrize(
    "foreign",
    [
        "https://evil.test/v2/units?page=2",
        "http://casavi.test/v2/units?page=2",
        "https://casavi.test:8443/v2/units",
    ],
)
def test_a_next_link_off_the_configured_host_is_refused_without_sending_the_token(foreign):
    pages = Pages(lambda p: foreign if p == 1 else None)
    with client_for(pages) as client, pytest.raises(CasaviError) as info:
        list(client.list_objects(ObjectKind.UNIT))
    assert [str(r.url) for r in pages.reads()] == ["https://casavi.test/v2/units?pageSize=500"]
    assert "refusing to send the token" in str(info.value) and "the-token" not in _everything_in(info.value)


def test_a_relative_next_link_stays_on_the_configured_host():
    pages = Pages(lambda p: "/v2/units?page=2" if p == 1 else None)
    with client_for(pages) as client:
        assert len(list(client.list_objects(ObjectKind.UNIT))) == 4
    assert [r.url.host for r in pages.reads()] == ["casavi.test"] * 2


def test_get_object_is_none_for_an_unknown_id():
    with client_for(_answering(404, json={"message": "0001-9 not found"})) as client:
        assert client.get_object(ObjectKind.UNIT, "0001-9") is None
    with client_for(_answering(200, json={"id": "0001-9", "internalId": 3})) as client:
        assert client.get_object(ObjectKind.UNIT, "0001-9") == {"id": "0001-9", "internalId": 3}
