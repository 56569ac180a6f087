"""The casavi sandbox against `docs/casavi-api.md`, over real HTTP to the real process."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_sandbox import SandboxProcess
from casavi_sandbox import process as process_module
from casavi_sandbox.__main__ import DEFAULT_DB, parse_args
from casavi_sandbox.process import PortTakenError

pytestmark = pytest.mark.e2e

PROPERTY_ID, UNIT_ID, CONTACT_ID, CONTRACT_ID = "0001-100", "0001-100-1", "0001-5000", "0001-100-1-7"


def body(kind: ObjectKind, **record: Any) -> dict[str, Any]:
    """A PUT body built from domain fields the way the sync builds it."""
    return api.to_payload(kind, record)


def wire(kind: ObjectKind, domain_name: str) -> str:
    return next(rule.casavi for rule in api.FIELD_RULES[kind] if rule.name == domain_name)


def authenticate(sandbox: SandboxProcess) -> str:
    response = httpx.post(
        sandbox.base_url + api.AUTH_PATH,
        json={api.AUTH_KEY_FIELD: sandbox.api_key, api.AUTH_SECRET_FIELD: sandbox.api_secret},
        trust_env=False,
    )
    assert response.status_code == 200
    return response.json()[api.AUTH_TOKEN_FIELD]


@pytest.fixture
def client(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    """An authenticated client of the sandbox's API."""
    headers = {api.TOKEN_HEADER: authenticate(sandbox)}
    with httpx.Client(base_url=sandbox.base_url, headers=headers, trust_env=False, timeout=10) as http:
        yield http


def put(http: httpx.Client, kind: ObjectKind, payload: dict[str, Any]) -> httpx.Response:
    return http.put(kind.object_path(payload[wire(kind, "id")]), json=payload)


def put_tree(http: httpx.Client) -> None:
    """A property with two addresses, a unit, a contact and a contract between them."""
    addresses = [{"id": "A", "street": "Lindenstraße 12a"}, {"id": "B", "street": "Lindenstraße 14"}]
    responses = [
        put(
            http,
            ObjectKind.PROPERTY,
            body(ObjectKind.PROPERTY, id=PROPERTY_ID, name="Lindenhof", addresses=addresses),
        ),
        put(
            http,
            ObjectKind.UNIT,
            body(ObjectKind.UNIT, id=UNIT_ID, property_id=PROPERTY_ID, address_id="B", name="W 1"),
        ),
        put(http, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="Muster")),
        put(
            http,
            ObjectKind.CONTRACT,
            body(
                ObjectKind.CONTRACT,
                id=CONTRACT_ID,
                contract_type="RENTER",
                unit_id=UNIT_ID,
                contact_ids=[CONTACT_ID],
                start_date="2024-01-01",
            ),
        ),
    ]
    assert [r.status_code for r in responses] == [api.STATUS_CREATED] * 4


def error_fields(response: httpx.Response) -> list[str]:
    return [error[api.ERROR_FIELD_KEY] for error in response.json()[api.ERROR_DETAILS_KEY]]


# --- authentication --------------------------------------------------------------------------------
def test_authenticate_gives_a_token_that_opens_the_api(sandbox: SandboxProcess) -> None:
    response = httpx.post(
        sandbox.base_url + api.AUTH_PATH,
        json={api.AUTH_KEY_FIELD: sandbox.api_key, api.AUTH_SECRET_FIELD: sandbox.api_secret},
        trust_env=False,
    )
    assert response.status_code == 200
    expires_at = response.json()[api.AUTH_EXPIRES_FIELD]
    assert expires_at.endswith("Z") and expires_at > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    token = response.json()[api.AUTH_TOKEN_FIELD]
    listed = httpx.get(
        sandbox.base_url + ObjectKind.UNIT.collection_path, headers={api.TOKEN_HEADER: token}, trust_env=False
    )
    assert listed.status_code == 200
    assert listed.json() == {api.LIST_KEY: [], api.LINKS_KEY: {}}


@pytest.mark.parametrize(
    ("key", "secret"), [("sandbox-key", "wrong"), ("wrong", "sandbox-secret"), (None, None)]
)
def test_wrong_credentials_are_401(sandbox: SandboxProcess, key: str | None, secret: str | None) -> None:
    sent = {api.AUTH_KEY_FIELD: key, api.AUTH_SECRET_FIELD: secret}
    response = httpx.post(sandbox.base_url + api.AUTH_PATH, json=sent, trust_env=False)
    assert response.status_code == api.STATUS_UNAUTHORIZED
    assert response.json()[api.ERROR_MESSAGE_KEY] == "wrong key or secret"


@pytest.mark.parametrize("headers", [{}, {api.TOKEN_HEADER: "not-a-token"}], ids=["missing", "unknown"])
def test_api_calls_without_a_valid_token_are_401(sandbox: SandboxProcess, headers: dict[str, str]) -> None:
    for call in (
        lambda: httpx.get(
            sandbox.base_url + ObjectKind.PROPERTY.collection_path, headers=headers, trust_env=False
        ),
        lambda: httpx.put(
            sandbox.base_url + ObjectKind.CONTACT.object_path(CONTACT_ID),
            json=body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="Muster"),
            headers=headers,
            trust_env=False,
        ),
    ):
        response = call()
        assert response.status_code == api.STATUS_UNAUTHORIZED
        assert response.json()[api.ERROR_MESSAGE_KEY]
    assert sandbox.state()[ObjectKind.CONTACT.collection] == {}


def test_tokens_expire_after_the_token_ttl(sandbox: SandboxProcess) -> None:
    sandbox.configure(token_ttl=1)
    headers = {api.TOKEN_HEADER: authenticate(sandbox)}
    path = sandbox.base_url + ObjectKind.UNIT.collection_path
    assert httpx.get(path, headers=headers, trust_env=False).status_code == 200
    time.sleep(1.1)
    expired = httpx.get(path, headers=headers, trust_env=False)
    assert expired.status_code == api.STATUS_UNAUTHORIZED
    assert "expired" in expired.json()[api.ERROR_MESSAGE_KEY]
    fresh = {api.TOKEN_HEADER: authenticate(sandbox)}
    assert httpx.get(path, headers=fresh, trust_env=False).status_code == 200


# --- reading -----------------------------------------------------------------------------------------
def test_paging_follows_absolute_next_links_to_a_last_page_without_next(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    ids = [f"0001-{n}" for n in (7, 3, 9, 1, 5, 2, 8)]  # stored order, not sorted order
    for ref_id in ids:
        assert (
            put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=ref_id, last_name="M")).status_code
            == 201
        )
    url: str | None = f"{ObjectKind.CONTACT.collection_path}?{api.PAGE_SIZE_PARAM}=2"
    pages = []
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200
        pages.append([obj["id"] for obj in response.json()[api.LIST_KEY]])
        url = response.json()[api.LINKS_KEY].get(api.NEXT_LINK_KEY)
        assert url is None or url.startswith(sandbox.base_url + ObjectKind.CONTACT.collection_path)
    assert pages == [ids[0:2], ids[2:4], ids[4:6], ids[6:7]]
    internal_ids = [
        obj[api.INTERNAL_ID_FIELD] for obj in client.get(ObjectKind.CONTACT.collection_path).json()["list"]
    ]
    assert internal_ids == sorted(internal_ids) and len(internal_ids) == 7


def test_next_links_carry_where_the_page_ended_so_a_deletion_skips_nothing(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    """Keyset paging: the next link continues after the last object listed, not at an offset."""
    for n in range(1, 6):
        put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=f"0001-{n}", last_name="M"))
    first = client.get(ObjectKind.CONTACT.collection_path, params={api.PAGE_SIZE_PARAM: 2}).json()
    assert [obj["id"] for obj in first[api.LIST_KEY]] == ["0001-1", "0001-2"]
    assert sandbox.delete_as_user(ObjectKind.CONTACT, "0001-1") is True  # an offset would now skip 0001-3
    second = client.get(first[api.LINKS_KEY][api.NEXT_LINK_KEY]).json()
    assert [obj["id"] for obj in second[api.LIST_KEY]] == ["0001-3", "0001-4"]
    bad = client.get(ObjectKind.CONTACT.collection_path, params={"after": "x"})
    assert bad.status_code == api.STATUS_INVALID and error_fields(bad) == ["after"]


def test_page_size_defaults_to_100_and_is_capped_at_500(client: httpx.Client) -> None:
    for n in range(api.DEFAULT_PAGE_SIZE + 1):
        put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=f"0001-{n}", last_name="M"))
    first = client.get(ObjectKind.CONTACT.collection_path).json()
    assert len(first[api.LIST_KEY]) == api.DEFAULT_PAGE_SIZE
    second = client.get(first[api.LINKS_KEY][api.NEXT_LINK_KEY]).json()
    assert [obj["id"] for obj in second[api.LIST_KEY]] == [f"0001-{api.DEFAULT_PAGE_SIZE}"]
    assert api.NEXT_LINK_KEY not in second[api.LINKS_KEY]
    too_big = client.get(
        ObjectKind.CONTACT.collection_path, params={api.PAGE_SIZE_PARAM: api.MAX_PAGE_SIZE + 1}
    )
    assert too_big.status_code == api.STATUS_INVALID
    assert error_fields(too_big) == [api.PAGE_SIZE_PARAM]
    at_max = client.get(ObjectKind.CONTACT.collection_path, params={api.PAGE_SIZE_PARAM: api.MAX_PAGE_SIZE})
    assert len(at_max.json()[api.LIST_KEY]) == api.DEFAULT_PAGE_SIZE + 1


def test_modified_after_lists_only_later_changes(client: httpx.Client) -> None:
    first = put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-1", last_name="A")).json()
    put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-2", last_name="B"))
    time.sleep(0.01)
    put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-1", last_name="A2"))
    second = client.get(ObjectKind.CONTACT.object_path("0001-2")).json()
    listed = client.get(
        ObjectKind.CONTACT.collection_path, params={api.MODIFIED_AFTER_PARAM: second[api.MODIFIED_FIELD]}
    ).json()[api.LIST_KEY]
    assert [(obj["id"], obj[api.INTERNAL_ID_FIELD]) for obj in listed] == [
        ("0001-1", first[api.INTERNAL_ID_FIELD])
    ]


def test_get_one_object_or_404(client: httpx.Client) -> None:
    put_tree(client)
    unit = client.get(ObjectKind.UNIT.object_path(UNIT_ID))
    assert unit.status_code == 200
    assert (unit.json()["id"], unit.json()[wire(ObjectKind.UNIT, "address_id")]) == (UNIT_ID, "B")
    assert client.get(ObjectKind.UNIT.object_path("0001-404")).status_code == api.STATUS_NOT_FOUND
    assert client.get(f"{api.API_PREFIX}/buildings").status_code == api.STATUS_NOT_FOUND


# --- writing -----------------------------------------------------------------------------------------
def test_put_creates_then_updates_the_same_object(sandbox: SandboxProcess, client: httpx.Client) -> None:
    payload = body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="Muster", email="a@example.org")
    created = put(client, ObjectKind.CONTACT, payload)
    repeated = put(client, ObjectKind.CONTACT, payload)
    assert (created.status_code, repeated.status_code) == (api.STATUS_CREATED, api.STATUS_UPDATED)
    assert created.json()[api.INTERNAL_ID_FIELD] == repeated.json()[api.INTERNAL_ID_FIELD]
    assert created.json()[api.MODIFIED_FIELD] == repeated.json()[api.MODIFIED_FIELD]  # nothing changed
    changed = put(client, ObjectKind.CONTACT, {**payload, wire(ObjectKind.CONTACT, "email"): None})
    assert changed.status_code == api.STATUS_UPDATED
    assert sandbox.state()[ObjectKind.CONTACT.collection] == {
        CONTACT_ID: {**payload, wire(ObjectKind.CONTACT, "email"): None}
    }


def test_put_with_another_id_in_the_body_is_400(sandbox: SandboxProcess, client: httpx.Client) -> None:
    response = client.put(
        ObjectKind.CONTACT.object_path(CONTACT_ID), json=body(ObjectKind.CONTACT, id="0001-9", last_name="M")
    )
    assert response.status_code == api.STATUS_INVALID
    assert error_fields(response) == [wire(ObjectKind.CONTACT, "id")]
    assert sandbox.state()[ObjectKind.CONTACT.collection] == {}


def test_put_breaking_field_rules_is_400_naming_the_fields(client: httpx.Client) -> None:
    put_tree(client)
    invalid = body(
        ObjectKind.UNIT, id=UNIT_ID, property_id=PROPERTY_ID, address_id="A", usage="HOTEL", area=-1
    )
    response = put(client, ObjectKind.UNIT, invalid)
    assert response.status_code == api.STATUS_INVALID
    assert sorted(error_fields(response)) == sorted(
        wire(ObjectKind.UNIT, f) for f in ("name", "usage", "area")
    )
    assert (
        client.put(ObjectKind.UNIT.object_path(UNIT_ID), content=b"{not json").status_code
        == api.STATUS_INVALID
    )
    assert client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()[wire(ObjectKind.UNIT, "address_id")] == "B"


def test_dangling_references_are_422(sandbox: SandboxProcess, client: httpx.Client) -> None:
    put_tree(client)
    unknown_property = body(ObjectKind.UNIT, id="0001-9-1", property_id="0001-9", address_id="A", name="W")
    foreign_address = body(
        ObjectKind.UNIT, id="0001-100-2", property_id=PROPERTY_ID, address_id="C", name="W"
    )
    contract = body(
        ObjectKind.CONTRACT,
        id="0001-x",
        contract_type="OWNER",
        unit_id="0001-100-9",
        contact_ids=[CONTACT_ID, "0001-6000"],
        start_date="2024-01-01",
    )
    for kind, payload, fields in (
        (ObjectKind.UNIT, unknown_property, ["property_id"]),
        (ObjectKind.UNIT, foreign_address, ["address_id"]),
        (ObjectKind.CONTRACT, contract, ["unit_id", "contact_ids"]),
    ):
        response = put(client, kind, payload)
        assert response.status_code == api.STATUS_UNKNOWN_REFERENCE
        assert error_fields(response) == [wire(kind, field) for field in fields]
    state = sandbox.state()
    assert list(state[ObjectKind.UNIT.collection]) == [UNIT_ID]
    assert list(state[ObjectKind.CONTRACT.collection]) == [CONTRACT_ID]


def test_delete_is_204_then_404_and_409_while_referenced(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    assert client.delete(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).status_code == api.STATUS_CONFLICT
    assert client.delete(ObjectKind.UNIT.object_path(UNIT_ID)).status_code == api.STATUS_CONFLICT
    # every api.REFERENCES target is protected, so a contract's contact too
    assert client.delete(ObjectKind.CONTACT.object_path(CONTACT_ID)).status_code == api.STATUS_CONFLICT
    assert client.delete(ObjectKind.CONTRACT.object_path(CONTRACT_ID)).status_code == api.STATUS_DELETED
    assert client.delete(ObjectKind.CONTRACT.object_path(CONTRACT_ID)).status_code == api.STATUS_NOT_FOUND
    assert client.delete(ObjectKind.UNIT.object_path(UNIT_ID)).status_code == api.STATUS_DELETED
    assert client.delete(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).status_code == api.STATUS_DELETED
    state = sandbox.state()
    assert {collection: list(objects) for collection, objects in state.items()} == {
        "properties": [],
        "units": [],
        "contacts": [CONTACT_ID],
        "contracts": [],
    }


@pytest.mark.parametrize("ref_id", ["0001/100/1", "0001|100|1", "0001/1|2 x%"])
def test_reference_ids_with_slash_and_pipe(
    sandbox: SandboxProcess, client: httpx.Client, ref_id: str
) -> None:
    path = ObjectKind.CONTACT.object_path(ref_id)
    assert "%2F" in path or "%7C" in path
    assert client.put(path, json=body(ObjectKind.CONTACT, id=ref_id, last_name="M")).status_code == 201
    assert client.get(path).json()["id"] == ref_id
    assert list(sandbox.state()[ObjectKind.CONTACT.collection]) == [ref_id]
    assert client.delete(path).status_code == api.STATUS_DELETED
    assert client.get(path).status_code == api.STATUS_NOT_FOUND


def test_objects_and_tokens_survive_a_restart(sandbox: SandboxProcess, client: httpx.Client) -> None:
    put_tree(client)
    before_state = sandbox.state()
    before_unit = client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()
    highest = max(
        client.get(kind.collection_path).json()[api.LIST_KEY][-1][api.INTERNAL_ID_FIELD]
        for kind in ObjectKind
    )
    sandbox.restart()
    assert sandbox.state() == before_state
    assert (
        client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json() == before_unit
    )  # same token, same internalId
    later = put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-9", last_name="M")).json()
    assert later[api.INTERNAL_ID_FIELD] > highest


# --- misbehaviour knobs ------------------------------------------------------------------------------
def test_rate_limit_answers_429_with_retry_after(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.configure(rate_limit=60)  # one a second, a burst of one
    statuses = [client.get(ObjectKind.UNIT.collection_path) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, api.STATUS_RATE_LIMITED, api.STATUS_RATE_LIMITED]
    assert statuses[1].headers[api.RETRY_AFTER_HEADER] == "1"
    assert sandbox.state()[ObjectKind.UNIT.collection] == {}  # admin endpoints are not limited
    time.sleep(1.05)
    assert client.get(ObjectKind.UNIT.collection_path).status_code == 200


def test_error_rate_answers_500_before_processing(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.configure(error_rate=1.0)
    failed = put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="M"))
    assert failed.status_code == 500
    assert sandbox.state()[ObjectKind.CONTACT.collection] == {}
    sandbox.configure(error_rate=0.5, seed=7)
    sandbox.reset(objects=False, knobs=False)
    statuses = [client.get(ObjectKind.CONTACT.collection_path).status_code for _ in range(40)]
    assert set(statuses) == {200, 500}
    assert sandbox.requests()["routes"] == {
        f"GET {ObjectKind.CONTACT.collection_path}": {"200": statuses.count(200), "500": statuses.count(500)}
    }


def test_latency_delays_api_answers_only(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.configure(latency_ms=300)
    started = time.monotonic()
    assert client.get(ObjectKind.UNIT.collection_path).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    sandbox.state()
    assert time.monotonic() - started < 0.3


def test_dropped_connections_are_connection_errors_after_the_write(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    sandbox.configure(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="M"))
    assert list(sandbox.state()[ObjectKind.CONTACT.collection]) == [CONTACT_ID]  # only the answer was lost
    assert sandbox.requests()["routes"]["PUT /v2/contacts/{id}"] == {"dropped": 1}
    sandbox.configure(drop_rate=0.0)
    assert client.get(ObjectKind.CONTACT.object_path(CONTACT_ID)).status_code == 200


def test_request_counts_per_route_and_status(sandbox: SandboxProcess, client: httpx.Client) -> None:
    put_tree(client)
    client.put(ObjectKind.CONTACT.object_path(CONTACT_ID), json=body(ObjectKind.CONTACT, id=CONTACT_ID))
    client.get(ObjectKind.UNIT.collection_path)
    client.delete(ObjectKind.UNIT.object_path("0001-nope"))
    counts = sandbox.requests()
    assert counts["routes"] == {
        f"POST {api.AUTH_PATH}": {"200": 1},
        "PUT /v2/properties/{id}": {"201": 1},
        "PUT /v2/units/{id}": {"201": 1},
        "PUT /v2/contacts/{id}": {"201": 1, "400": 1},
        "PUT /v2/contracts/{id}": {"201": 1},
        "GET /v2/units": {"200": 1},
        "DELETE /v2/units/{id}": {"404": 1},
    }
    assert counts["statuses"] == {"200": 2, "201": 4, "400": 1, "404": 1}
    assert counts["total"] == 8
    assert (sandbox.write_count(), sandbox.write_count(ok_only=True)) == (6, 4)
    sandbox.reset(objects=False)
    assert sandbox.requests() == {"total": 0, "routes": {}, "statuses": {}}
    assert list(sandbox.state()[ObjectKind.CONTRACT.collection]) == [CONTRACT_ID]


def test_config_rejects_unknown_knobs_and_bad_values(sandbox: SandboxProcess) -> None:
    for knobs in ({"speed": 1}, {"error_rate": 2}, {"latency_ms": -1}):
        response = httpx.post(f"{sandbox.base_url}/_sandbox/config", json=knobs, trust_env=False)
        assert response.status_code == 400
    assert httpx.get(f"{sandbox.base_url}/_sandbox/config", trust_env=False).json()["error_rate"] == 0.0


def test_cli_defaults_to_a_database_file_under_data() -> None:
    args = parse_args([])
    assert (args.db, args.port, args.rate_limit, args.error_rate) == (DEFAULT_DB, 8765, None, 0.0)
    assert Path("data") / "sandbox.sqlite3" == DEFAULT_DB


# --- reads as the contract says ----------------------------------------------------------------------
def test_reads_leave_out_nulls_and_list_the_units_at_each_property_address(client: httpx.Client) -> None:
    put_tree(client)
    second = body(ObjectKind.UNIT, id="0001-100-2", property_id=PROPERTY_ID, address_id="B", name="W 2")
    assert put(client, ObjectKind.UNIT, second).status_code == api.STATUS_CREATED
    read = client.get(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).json()
    addresses = read[wire(ObjectKind.PROPERTY, "addresses")]
    assert addresses == [
        {"id": "A", "street": "Lindenstraße 12a", "units": []},
        {"id": "B", "street": "Lindenstraße 14", "units": [UNIT_ID, "0001-100-2"]},
    ]
    assert set(read) == {"id", "name", "addresses", api.INTERNAL_ID_FIELD, api.MODIFIED_FIELD}
    listed = client.get(ObjectKind.PROPERTY.collection_path).json()[api.LIST_KEY]
    assert listed == [read]
    contact = client.get(ObjectKind.CONTACT.object_path(CONTACT_ID)).json()
    assert set(contact) == {"id", "lastName", api.INTERNAL_ID_FIELD, api.MODIFIED_FIELD}
    assert isinstance(contact[api.INTERNAL_ID_FIELD], int)
    assert None not in client.get(ObjectKind.CONTRACT.collection_path).json()[api.LIST_KEY][0].values()
    # the write's answer is a read too
    again = put(
        client,
        ObjectKind.PROPERTY,
        body(
            ObjectKind.PROPERTY,
            id=PROPERTY_ID,
            name="L",
            addresses=[{"id": "A", "street": "Lindenstraße 12a"}, {"id": "B", "street": "Lindenstraße 14"}],
        ),
    )
    assert again.json()[wire(ObjectKind.PROPERTY, "addresses")][1]["units"] == [UNIT_ID, "0001-100-2"]


def test_modified_after_takes_casavis_timestamp_format(client: httpx.Client) -> None:
    put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-1", last_name="A"))
    modified = client.get(ObjectKind.CONTACT.object_path("0001-1")).json()[api.MODIFIED_FIELD]
    assert len(modified) == len("2026-01-01T00:00:00.000Z") and modified.endswith("Z")
    moment = dt.datetime.fromisoformat(modified)
    just_before = (moment - dt.timedelta(milliseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    as_offset = moment.isoformat(timespec="milliseconds")  # ...+00:00
    for after, expected in ((modified, []), (just_before, ["0001-1"]), (as_offset, [])):
        listed = client.get(ObjectKind.CONTACT.collection_path, params={api.MODIFIED_AFTER_PARAM: after})
        assert listed.status_code == 200
        assert [obj["id"] for obj in listed.json()[api.LIST_KEY]] == expected, after


# --- someone else changes casavi ---------------------------------------------------------------------
def seeded_account() -> list[tuple[ObjectKind, dict[str, Any]]]:
    """What an import leaves: a property with two addresses, units at them, a contact, a contract."""
    return [
        (ObjectKind.PROPERTY, {"id": "0002-1", "name": "Import", "addresses": [{"id": "A"}, {"id": "B"}]}),
        (ObjectKind.UNIT, {"id": "0002-1-1", "propertyId": "0002-1", "addressId": "A", "name": "W 1"}),
        (
            ObjectKind.UNIT,
            {"id": "0002-1-2", "propertyId": "0002-1", "addressId": "A", "name": "W 2", "floor": 3},
        ),
        # imports can be messy: a unit of a property that does not exist
        (ObjectKind.UNIT, {"id": "0002-9-1", "propertyId": "0002-9", "addressId": "A", "name": "W 9"}),
        (ObjectKind.CONTACT, {"id": "0002-50", "lastName": "Import", "email": None}),
        (
            ObjectKind.CONTRACT,
            {
                "id": "0002-1-1-1",
                "type": "RENTER",
                "unitId": "0002-1-1",
                "contactIds": ["0002-50"],
                "startDate": "2020-01-01",
            },
        ),
    ]


def test_seed_stores_an_import_as_given_without_counting_requests(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    sandbox.reset(objects=False)  # forget the authentication of the client fixture
    assert sandbox.seed(seeded_account()) == {"seeded": 6, "created": 6, "updated": 0}
    assert sandbox.requests()["total"] == 0 and sandbox.write_count() == 0
    state = sandbox.state()
    assert state["units"]["0002-1-2"] == seeded_account()[2][1]  # as given, fields outside the model kept
    assert state["contacts"]["0002-50"] == {"id": "0002-50", "lastName": "Import", "email": None}
    read = client.get(ObjectKind.PROPERTY.object_path("0002-1")).json()
    assert read["addresses"] == [{"id": "A", "units": ["0002-1-1", "0002-1-2"]}, {"id": "B", "units": []}]
    assert isinstance(read[api.INTERNAL_ID_FIELD], int) and read[api.MODIFIED_FIELD].endswith("Z")
    # the references are recorded: the API protects seeded objects as it protects its own
    assert client.delete(ObjectKind.UNIT.object_path("0002-1-1")).status_code == api.STATUS_CONFLICT
    # seeding an existing id replaces it (same internalId); dicts and collection names work too
    again = sandbox.seed([{"kind": "contacts", "body": {"id": "0002-50", "lastName": "Neu"}}])
    assert again == {"seeded": 1, "created": 0, "updated": 1}
    contact = client.get(ObjectKind.CONTACT.object_path("0002-50")).json()
    assert (contact["lastName"], contact[api.INTERNAL_ID_FIELD]) == ("Neu", read[api.INTERNAL_ID_FIELD] + 4)


def test_seed_rejects_a_batch_breaking_field_rules_and_stores_none_of_it(sandbox: SandboxProcess) -> None:
    bad = [
        (ObjectKind.CONTACT, {"id": "0002-1", "lastName": "Ok"}),
        (ObjectKind.UNIT, {"id": "0002-2"}),
        ("buildings", {"id": "x"}),
    ]
    with pytest.raises(httpx.HTTPStatusError) as raised:
        sandbox.seed(bad)
    answer = raised.value.response.json()
    assert raised.value.response.status_code == 400
    assert {(e["index"], e["field"]) for e in answer["errors"]} >= {
        (1, "propertyId"),
        (1, "name"),
        (2, "kind"),
    }
    assert sandbox.state()["contacts"] == {}


def test_seed_batches_large_imports(sandbox: SandboxProcess) -> None:
    contacts = ((ObjectKind.CONTACT, {"id": f"0003-{n}", "lastName": "M"}) for n in range(2500))
    assert sandbox.seed(contacts, batch_size=1000) == {"seeded": 2500, "created": 2500, "updated": 0}
    assert len(sandbox.state()["contacts"]) == 2500


def test_edit_as_a_person_changes_fields_and_bumps_modified(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    before = client.get(ObjectKind.CONTACT.object_path(CONTACT_ID)).json()
    sandbox.reset(objects=False)
    time.sleep(0.005)
    edited = sandbox.edit(ObjectKind.CONTACT, CONTACT_ID, {"firstName": "Erika", "lastName": "Muster-Neu"})
    assert (edited["firstName"], edited["lastName"]) == ("Erika", "Muster-Neu")
    assert edited[api.INTERNAL_ID_FIELD] == before[api.INTERNAL_ID_FIELD]
    assert edited[api.MODIFIED_FIELD] > before[api.MODIFIED_FIELD]
    assert client.get(ObjectKind.CONTACT.object_path(CONTACT_ID)).json() == edited
    changed = client.get(
        ObjectKind.CONTACT.collection_path, params={api.MODIFIED_AFTER_PARAM: before[api.MODIFIED_FIELD]}
    ).json()[api.LIST_KEY]
    assert [obj["id"] for obj in changed] == [CONTACT_ID]
    # moving a unit to the other address shows on the property's addresses
    sandbox.edit("units", UNIT_ID, {"addressId": "A"})
    addresses = client.get(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).json()["addresses"]
    assert [a["units"] for a in addresses] == [[UNIT_ID], []]
    assert sandbox.write_count() == 0
    with pytest.raises(httpx.HTTPStatusError) as invalid:
        sandbox.edit(ObjectKind.CONTACT, CONTACT_ID, {"salutation": "HERR"})
    assert invalid.value.response.status_code == 400
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        sandbox.edit(ObjectKind.CONTACT, "0001-404", {"lastName": "X"})
    assert unknown.value.response.status_code == 404


def test_delete_as_a_person_leaves_references_dangling(sandbox: SandboxProcess, client: httpx.Client) -> None:
    put_tree(client)
    sandbox.reset(objects=False)
    assert sandbox.delete_as_user(ObjectKind.PROPERTY, PROPERTY_ID) is True
    assert sandbox.delete_as_user(ObjectKind.PROPERTY, PROPERTY_ID) is False
    assert client.get(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).status_code == api.STATUS_NOT_FOUND
    unit = client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()
    assert unit[wire(ObjectKind.UNIT, "property_id")] == PROPERTY_ID  # dangling, as in casavi
    assert sandbox.write_count() == 0 and sandbox.requests()["total"] == 2


# --- knobs that break the write model or leak bodies -------------------------------------------------
def test_drop_field_silently_loses_a_field_on_api_writes(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    sandbox.configure(drop_field="units.rooms")
    unit = body(
        ObjectKind.UNIT, id=UNIT_ID, property_id=PROPERTY_ID, address_id="B", name="W 1", rooms=3, area=71.5
    )
    answer = put(client, ObjectKind.UNIT, unit)
    assert answer.status_code == api.STATUS_UPDATED
    read = client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()
    assert "rooms" not in read and read["area"] == 71.5 and "rooms" not in answer.json()
    assert "rooms" not in sandbox.state()["units"][UNIT_ID]
    sandbox.configure(drop_field=None)
    put(client, ObjectKind.UNIT, unit)
    assert client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()["rooms"] == 3


def test_rename_field_stores_a_field_under_another_name(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    sandbox.configure(rename_field="units.rooms=roomCount")
    unit = body(ObjectKind.UNIT, id=UNIT_ID, property_id=PROPERTY_ID, address_id="B", name="W 1", rooms=3)
    put(client, ObjectKind.UNIT, unit)
    read = client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()
    assert read["roomCount"] == 3 and "rooms" not in read
    # other kinds are untouched
    contact = client.get(ObjectKind.CONTACT.object_path(CONTACT_ID)).json()
    assert contact["lastName"] == "Muster"


@pytest.mark.parametrize(
    "knobs",
    [
        {"drop_field": "units"},
        {"drop_field": "units.floor"},
        {"drop_field": "buildings.rooms"},
        {"rename_field": "units.rooms"},
        {"rename_field": "units.rooms="},
        {"echo_errors": "yes"},
    ],
)
def test_field_knobs_reject_what_names_no_casavi_field(
    sandbox: SandboxProcess, knobs: dict[str, Any]
) -> None:
    response = httpx.post(f"{sandbox.base_url}/_sandbox/config", json=knobs, trust_env=False)
    assert response.status_code == 400, response.text


def test_echo_errors_quotes_the_submitted_values_and_body(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    invalid = body(
        ObjectKind.CONTACT,
        id="0001-7",
        last_name="Geheim",
        salutation="HERR",
        email="erika@example.org",
        country="Deutschland",
    )
    quiet = put(client, ObjectKind.CONTACT, invalid).json()
    assert "HERR" not in str(quiet) and "erika@example.org" not in str(quiet)
    sandbox.configure(echo_errors=True)
    raw = json.dumps(invalid)
    answer = client.put(ObjectKind.CONTACT.object_path("0001-7"), content=raw.encode())
    assert answer.status_code == api.STATUS_INVALID
    assert raw in answer.json()[api.ERROR_MESSAGE_KEY]  # the whole body, verbatim
    messages = {
        e[api.ERROR_FIELD_KEY]: e[api.ERROR_MESSAGE_KEY] for e in answer.json()[api.ERROR_DETAILS_KEY]
    }
    assert messages["salutation"].startswith("salutation 'HERR' ")
    assert messages["country"].startswith("country 'Deutschland' ")
    dangling = body(ObjectKind.UNIT, id="0001-9-1", property_id="0001-9", address_id="A", name="W")
    unknown = client.put(ObjectKind.UNIT.object_path("0001-9-1"), content=json.dumps(dangling).encode())
    assert unknown.status_code == api.STATUS_UNKNOWN_REFERENCE
    assert json.dumps(dangling) in unknown.json()[api.ERROR_MESSAGE_KEY]
    assert unknown.json()[api.ERROR_DETAILS_KEY][0][api.ERROR_MESSAGE_KEY].startswith("propertyId '0001-9' ")
    malformed = client.put(ObjectKind.CONTACT.object_path("0001-7"), content=b'{"email": "x@y"')
    assert '{"email": "x@y"' in malformed.json()[api.ERROR_MESSAGE_KEY]


def test_reject_ids_answers_400_for_those_ids_and_echoes_the_body_when_told(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    sandbox.configure(reject_ids=" 0001-7 , 0001-8")
    assert sandbox.configure()["reject_ids"] == "0001-7,0001-8"  # blanks dropped
    valid = body(
        ObjectKind.CONTACT, id="0001-7", last_name="Geheim", first_name="Erika", email="erika@example.org"
    )
    quiet = put(client, ObjectKind.CONTACT, valid)
    assert quiet.status_code == api.STATUS_INVALID
    assert "Geheim" not in quiet.text and "erika@example.org" not in quiet.text
    assert wire(ObjectKind.CONTACT, "email") in {e[api.ERROR_FIELD_KEY] for e in quiet.json()["errors"]}
    assert "0001-7" not in sandbox.state().get("contacts", {})  # nothing stored
    # another id is stored as usual, and the rejected one is too once the knob is off
    assert put(client, ObjectKind.CONTACT, {**valid, "id": "0001-9"}).status_code == api.STATUS_CREATED

    sandbox.configure(echo_errors=True)
    raw = json.dumps(valid)
    echoed = client.put(ObjectKind.CONTACT.object_path("0001-7"), content=raw.encode())
    assert echoed.status_code == api.STATUS_INVALID
    assert raw in echoed.json()[api.ERROR_MESSAGE_KEY]  # the whole body, verbatim
    messages = {e[api.ERROR_FIELD_KEY]: e[api.ERROR_MESSAGE_KEY] for e in echoed.json()["errors"]}
    assert messages[wire(ObjectKind.CONTACT, "email")].startswith("email 'erika@example.org' ")
    assert messages[wire(ObjectKind.CONTACT, "last_name")].startswith("lastName 'Geheim' ")
    assert sandbox.requests()["routes"]["PUT /v2/contacts/{id}"]["400"] == 2

    sandbox.configure(reject_ids="")
    assert sandbox.configure()["reject_ids"] is None
    assert put(client, ObjectKind.CONTACT, valid).status_code == api.STATUS_CREATED


def test_reject_ids_must_be_a_string(sandbox: SandboxProcess) -> None:
    response = httpx.post(f"{sandbox.base_url}/_sandbox/config", json={"reject_ids": 42}, trust_env=False)
    assert response.status_code == 400, response.text


def test_cli_sets_the_reject_ids_knob(tmp_path: Path) -> None:
    assert parse_args(["--reject-ids", "0001-1,0001-2"]).reject_ids == "0001-1,0001-2"
    assert parse_args([]).reject_ids is None
    with SandboxProcess(tmp_path / "s.sqlite3", reject_ids="0001-00042") as box:
        config = httpx.get(f"{box.base_url}/_sandbox/config", trust_env=False).json()
        assert config["reject_ids"] == "0001-00042"


def test_cli_sets_the_field_and_echo_knobs() -> None:
    args = parse_args(
        ["--drop-field", "units.rooms", "--rename-field", "contacts.email=mail", "--echo-errors"]
    )
    assert (args.drop_field, args.rename_field, args.echo_errors) == (
        "units.rooms",
        "contacts.email=mail",
        True,
    )
    assert parse_args([]).echo_errors is False


def test_knobs_given_at_start_reach_the_process(tmp_path: Path) -> None:
    with SandboxProcess(
        tmp_path / "s.sqlite3", rename_field="units.rooms=roomCount", echo_errors=True
    ) as box:
        config = httpx.get(f"{box.base_url}/_sandbox/config", trust_env=False).json()
        assert (config["rename_field"], config["echo_errors"]) == ("units.rooms=roomCount", True)


# --- the helper only talks to the sandbox it started ---------------------------------------------------
def assert_no_credentials_sent(received: list[tuple[str, str, bytes]], box: SandboxProcess) -> None:
    assert not [path for _, path, _ in received if path.startswith(api.AUTH_PATH)]
    assert not [raw for *_, raw in received if box.api_key.encode() in raw or box.api_secret.encode() in raw]


def test_a_requested_port_taken_by_another_program_fails_fast(
    tmp_path: Path, impostor: tuple[int, list[tuple[str, str, bytes]]]
) -> None:
    port, received = impostor
    box = SandboxProcess(tmp_path / "s.sqlite3", port=port, api_key="k-123", api_secret="s-456")
    started = time.monotonic()
    with pytest.raises(PortTakenError) as raised:
        box.start()
    assert (
        str(raised.value) == f"port {port} on 127.0.0.1 is taken by another program; free it or pass --port"
    )
    assert time.monotonic() - started < 5
    assert received == []  # found out by binding, without a word to the other program
    box.close()


def test_an_answer_without_the_nonce_is_not_the_sandbox(
    tmp_path: Path, impostor: tuple[int, list[tuple[str, str, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = impostor
    monkeypatch.setattr(process_module, "port_taken", lambda _host, _port: False)  # a racing program
    box = SandboxProcess(tmp_path / "s.sqlite3", port=port, api_key="k-123", api_secret="s-456")
    with pytest.raises(RuntimeError, match=f"port {port} on 127.0.0.1 is taken by another program"):
        box.start()
    assert {path for _, path, _ in received} <= {"/_sandbox/health"}
    assert_no_credentials_sent(received, box)
    assert not box.health()
    box.close()


def test_without_a_requested_port_a_taken_one_is_swapped_for_a_free_one(
    tmp_path: Path, impostor: tuple[int, list[tuple[str, str, bytes]]]
) -> None:
    port, received = impostor
    box = SandboxProcess(tmp_path / "s.sqlite3")
    box.port = port  # as if another program took the picked port before the sandbox bound it
    with box:
        assert box.port != port and box.health()
        assert httpx.get(f"{box.base_url}/_sandbox/health", trust_env=False).json()["nonce"] == box.nonce
    assert received == []


def test_health_checks_the_nonce(sandbox: SandboxProcess) -> None:
    answer = httpx.get(f"{sandbox.base_url}/_sandbox/health", trust_env=False).json()
    assert answer == {"status": "ok", "nonce": sandbox.nonce} and len(sandbox.nonce) >= 16
    assert sandbox.health()
