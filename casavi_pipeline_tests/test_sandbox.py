"""The casavi sandbox (and the fake client) against revision 2 of `docs/casavi-api.md`, over real HTTP to
the real process."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from casavi_harness.fake import FakeCasaviClient
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import Operation
from casavi_sandbox import DEFAULT_KEY, DEFAULT_SECRET, SandboxProcess
from casavi_sandbox import process as process_module
from casavi_sandbox.__main__ import DEFAULT_DB, parse_args
from casavi_sandbox.app import ECHO_CODE_KEY
from casavi_sandbox.chaos import TokenBucket
from casavi_sandbox.process import PortTakenError
from casavi_sandbox.wire import DEFAULT_PAGE_SIZE

pytestmark = pytest.mark.e2e

PROPERTY_ID, UNIT_ID, CONTACT_ID = "0001-100", "0001-100-1", "0001-5000"
STREETS = ("Lindenstraße 12a", "Lindenstraße 14")
ENDED, RUNNING = "2020-12-31", "2999-12-31"  # an end date before and after any day the tests run on
INACTIVE = {api.INCLUDE_INACTIVE_CONTRACTS_PARAM: "true"}
T = TypeVar("T")
APP_LINK = "appLink"  # casavi's link to the object in its app, in every read of the sandbox


def body(kind: ObjectKind, **record: Any) -> dict[str, Any]:
    """A PUT body built from domain fields the way the sync builds it."""
    return api.to_payload(kind, record)


def wire(kind: ObjectKind, domain_name: str) -> str:
    return next(rule.casavi for rule in api.FIELD_RULES[kind] if rule.name == domain_name)


def contract(
    unit_id: str = UNIT_ID, property_id: str = PROPERTY_ID, *, end: str | None = None, number: str = "7"
) -> dict[str, Any]:
    """One entry of a contact's `contracts`, in domain names (as the mapping's frames hold it)."""
    return {
        "contract_type": "RENTER",
        "property_id": property_id,
        "unit_id": unit_id,
        "number": number,
        "start_date": "2014-01-01",
        "end_date": end,
    }


def lindenhof(**record: Any) -> dict[str, Any]:
    """The property of `put_tree`, with both streets unless told otherwise."""
    record.setdefault("addresses", [{"street": street} for street in STREETS])
    record.setdefault("name", "Lindenhof")
    return body(ObjectKind.PROPERTY, id=PROPERTY_ID, **record)


def unit(ref_id: str = UNIT_ID, *, address: str = STREETS[1], **record: Any) -> dict[str, Any]:
    record.setdefault("property_id", PROPERTY_ID)
    return body(ObjectKind.UNIT, id=ref_id, address=address, name="W 1", **record)


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
    """A property with two streets, a unit at the second, a contact with a contract on the unit."""
    responses = [
        put(http, ObjectKind.PROPERTY, lindenhof()),
        put(http, ObjectKind.UNIT, unit()),
        put(
            http,
            ObjectKind.CONTACT,
            body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="Muster", contracts=[contract()]),
        ),
    ]
    assert [r.status_code for r in responses] == [api.STATUS_CREATED] * 3


def until(call: Callable[[], T], done: Callable[[T], bool], seconds: float = 30.0) -> T:
    """`call()` again until `done` says its result is what the test waits for; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = call()
        if done(result):
            return result
        assert time.monotonic() < deadline, f"still not there after {seconds:g}s: {result}"
        time.sleep(0.05)


def error_fields(response: httpx.Response) -> list[str]:
    return [error[api.ERROR_FIELD_KEY] for error in response.json()[api.ERROR_DETAILS_KEY]]


def ids(response: httpx.Response) -> list[str]:
    return [obj["id"] for obj in response.json()[api.LIST_KEY]]


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
    sandbox.configure(token_ttl=0.5)
    issued = time.time()
    headers = {api.TOKEN_HEADER: authenticate(sandbox)}
    path = sandbox.base_url + ObjectKind.UNIT.collection_path
    first = httpx.get(path, headers=headers, trust_env=False)
    assert first.status_code == 200 or time.time() - issued >= 0.5  # a slow first call may meet the end
    expired = until(lambda: httpx.get(path, headers=headers, trust_env=False), lambda r: r.status_code != 200)
    assert expired.status_code == api.STATUS_UNAUTHORIZED
    assert "expired" in expired.json()[api.ERROR_MESSAGE_KEY]
    sandbox.configure(token_ttl=None)  # casavi's month: the fresh token cannot expire under a slow test
    fresh = {api.TOKEN_HEADER: authenticate(sandbox)}
    assert httpx.get(path, headers=fresh, trust_env=False).status_code == 200


# --- reading -----------------------------------------------------------------------------------------
def test_a_page_size_only_first_request_then_the_next_links_as_given_list_everything(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    order = [f"0001-{n}" for n in (7, 3, 9, 1, 5, 2, 8)]  # stored order, not sorted order
    for ref_id in order:
        assert (
            put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=ref_id, last_name="M")).status_code
            == 201
        )
    url: str | None = f"{ObjectKind.CONTACT.collection_path}?{api.PAGE_SIZE_PARAM}=2"
    pages = []
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200
        pages.append(ids(response))
        url = response.json()[api.LINKS_KEY].get(api.NEXT_LINK_KEY)
        # absolute, on the same host and collection, keeping the page size
        assert url is None or url.startswith(sandbox.base_url + ObjectKind.CONTACT.collection_path + "?")
        assert url is None or parse_qs(urlsplit(url).query)[api.PAGE_SIZE_PARAM] == ["2"]
    assert pages == [order[0:2], order[2:4], order[4:6], order[6:7]]
    internal_ids = [
        obj[api.INTERNAL_ID_FIELD] for obj in client.get(ObjectKind.CONTACT.collection_path).json()["list"]
    ]
    assert internal_ids == sorted(internal_ids) and len(internal_ids) == 7


def test_a_page_parameter_is_not_part_of_the_model_and_ignored(client: httpx.Client) -> None:
    for n in range(3):
        put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=f"0001-{n}", last_name="M"))
    for page in ("0", "1", "2", "x"):
        listed = client.get(ObjectKind.CONTACT.collection_path, params={api.PAGE_SIZE_PARAM: 2, "page": page})
        assert listed.status_code == 200 and ids(listed) == ["0001-0", "0001-1"], page


def test_next_links_carry_where_the_page_ended_so_a_deletion_skips_nothing(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    """Keyset paging: the next link continues after the last object listed, not at an offset."""
    for n in range(1, 6):
        put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=f"0001-{n}", last_name="M"))
    first = client.get(ObjectKind.CONTACT.collection_path, params={api.PAGE_SIZE_PARAM: 2}).json()
    assert [obj["id"] for obj in first[api.LIST_KEY]] == ["0001-1", "0001-2"]
    assert sandbox.delete_as_user(ObjectKind.CONTACT, "0001-1") is True  # an offset would now skip 0001-3
    second = client.get(first[api.LINKS_KEY][api.NEXT_LINK_KEY])
    assert ids(second) == ["0001-3", "0001-4"]
    bad = client.get(ObjectKind.CONTACT.collection_path, params={"after": "x"})
    assert bad.status_code == api.STATUS_INVALID and error_fields(bad) == ["after"]


def test_page_size_has_a_default_a_maximum_and_a_bad_one_is_400(client: httpx.Client) -> None:
    for n in range(DEFAULT_PAGE_SIZE + 1):
        put(client, ObjectKind.CONTACT, body(ObjectKind.CONTACT, id=f"0001-{n}", last_name="M"))
    first = client.get(ObjectKind.CONTACT.collection_path).json()
    assert len(first[api.LIST_KEY]) == DEFAULT_PAGE_SIZE
    second = client.get(first[api.LINKS_KEY][api.NEXT_LINK_KEY]).json()
    assert [obj["id"] for obj in second[api.LIST_KEY]] == [f"0001-{DEFAULT_PAGE_SIZE}"]
    assert api.NEXT_LINK_KEY not in second[api.LINKS_KEY]
    for bad in (api.MAX_PAGE_SIZE + 1, 0, -3, "x", "1.5"):
        refused = client.get(ObjectKind.CONTACT.collection_path, params={api.PAGE_SIZE_PARAM: bad})
        assert refused.status_code == api.STATUS_INVALID, bad
        assert error_fields(refused) == [api.PAGE_SIZE_PARAM]
    at_max = client.get(ObjectKind.CONTACT.collection_path, params={api.PAGE_SIZE_PARAM: api.MAX_PAGE_SIZE})
    assert len(at_max.json()[api.LIST_KEY]) == DEFAULT_PAGE_SIZE + 1


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
    read = client.get(ObjectKind.UNIT.object_path(UNIT_ID))
    assert read.status_code == 200
    assert (read.json()["id"], read.json()[wire(ObjectKind.UNIT, "address")]) == (UNIT_ID, STREETS[1])
    assert client.get(ObjectKind.UNIT.object_path("0001-404")).status_code == api.STATUS_NOT_FOUND
    assert client.get(f"{api.API_PREFIX}/buildings").status_code == api.STATUS_NOT_FOUND


def test_there_is_no_contracts_collection(sandbox: SandboxProcess, client: httpx.Client) -> None:
    """Revision 2: contracts live inside contacts; /v2/contracts is an unknown path like any other."""
    put_tree(client)
    path = f"{api.API_PREFIX}/contracts"
    legacy = {
        "id": "0001-1",
        "type": "RENTER",
        "unitId": UNIT_ID,
        "contactIds": [CONTACT_ID],
        "startDate": "2024-01-01",
    }
    answers = [
        client.get(path),
        client.get(f"{path}/0001-1"),
        client.put(f"{path}/0001-1", json=legacy),
        client.delete(f"{path}/0001-1"),
    ]
    assert [a.status_code for a in answers] == [api.STATUS_NOT_FOUND] * 4
    assert (
        set(sandbox.state())
        == {kind.collection for kind in ObjectKind}
        == {"properties", "units", "contacts"}
    )
    assert sandbox.requests()["routes"][f"PUT {api.API_PREFIX}/*"] == {"404": 1}


# --- writing -----------------------------------------------------------------------------------------
def test_put_creates_then_updates_the_same_object(sandbox: SandboxProcess, client: httpx.Client) -> None:
    payload = body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="Muster", email="a@example.org")
    created = put(client, ObjectKind.CONTACT, payload)
    repeated = put(client, ObjectKind.CONTACT, payload)
    assert (created.status_code, repeated.status_code) == (api.STATUS_CREATED, api.STATUS_UPDATED)
    assert created.json()[api.INTERNAL_ID_FIELD] == repeated.json()[api.INTERNAL_ID_FIELD]
    assert created.json()[api.MODIFIED_FIELD] == repeated.json()[api.MODIFIED_FIELD]  # nothing changed
    assert created.json()[wire(ObjectKind.CONTACT, "email")] == "a@example.org"  # the stored object
    changed = put(client, ObjectKind.CONTACT, {**payload, wire(ObjectKind.CONTACT, "email"): None})
    assert changed.status_code == api.STATUS_UPDATED
    assert sandbox.state()[ObjectKind.CONTACT.collection] == {
        CONTACT_ID: {**payload, wire(ObjectKind.CONTACT, "email"): None}
    }


def test_put_stores_every_field_of_the_kind_and_nothing_else(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    """PUT replaces: absent fields stored as null, fields outside the model (read-only `units` on an
    address, a `floor`) dropped, in embedded entries too."""
    sent = {"id": PROPERTY_ID, "name": "L", "floor": 3, "addresses": [{"street": STREETS[0], "units": ["x"]}]}
    assert put(client, ObjectKind.PROPERTY, sent).status_code == api.STATUS_CREATED
    assert sandbox.state()["properties"][PROPERTY_ID] == body(
        ObjectKind.PROPERTY, id=PROPERTY_ID, name="L", addresses=[{"street": STREETS[0]}]
    )


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
        ObjectKind.UNIT, id=UNIT_ID, property_id=PROPERTY_ID, address=STREETS[0], usage="HOTEL", area=-1
    )
    response = put(client, ObjectKind.UNIT, invalid)
    assert response.status_code == api.STATUS_INVALID
    assert sorted(error_fields(response)) == sorted(
        wire(ObjectKind.UNIT, f) for f in ("name", "usage", "area")
    )
    twice = lindenhof(addresses=[{"street": STREETS[0]}, {"street": STREETS[0]}])
    assert error_fields(put(client, ObjectKind.PROPERTY, twice)) == ["addresses"]  # streets are unique
    backwards = body(
        ObjectKind.CONTACT, id=CONTACT_ID, last_name="M", contracts=[{**contract(), "end_date": "2013-12-31"}]
    )
    assert error_fields(put(client, ObjectKind.CONTACT, backwards)) == ["contracts[0].endDate"]
    assert (
        client.put(ObjectKind.UNIT.object_path(UNIT_ID), content=b"{not json").status_code
        == api.STATUS_INVALID
    )
    assert (
        client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()[wire(ObjectKind.UNIT, "address")]
        == STREETS[1]
    )


def test_references_to_unknown_objects_are_422(sandbox: SandboxProcess, client: httpx.Client) -> None:
    put_tree(client)
    unknown_property = unit("0001-9-1", property_id="0001-9")
    contact = body(
        ObjectKind.CONTACT,
        id="0001-6000",
        last_name="M",
        contracts=[contract(), contract("0001-100-9"), contract("0001-9-1", "0001-9")],
    )
    for kind, payload, fields in (
        (ObjectKind.UNIT, unknown_property, ["propertyId"]),
        (
            ObjectKind.CONTACT,
            contact,
            ["contracts[2].propertyId", "contracts[1].unitId", "contracts[2].unitId"],
        ),
    ):
        response = put(client, kind, payload)
        assert response.status_code == api.STATUS_UNKNOWN_REFERENCE
        assert error_fields(response) == fields
    state = sandbox.state()
    assert (list(state["units"]), list(state["contacts"])) == ([UNIT_ID], [CONTACT_ID])


def test_a_units_address_must_be_a_street_of_its_property_else_422(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    put(
        client,
        ObjectKind.PROPERTY,
        body(ObjectKind.PROPERTY, id="0001-200", name="Nachbar", addresses=[{"street": "Ahornweg 1"}]),
    )
    for address in ("Lindenstraße 16", "Ahornweg 1", "lindenstraße 14", "Lindenstraße 14 "):
        response = put(client, ObjectKind.UNIT, unit("0001-100-2", address=address))
        assert response.status_code == api.STATUS_UNKNOWN_REFERENCE, address
        assert error_fields(response) == [wire(ObjectKind.UNIT, "address")]
    assert list(sandbox.state()["units"]) == [UNIT_ID]
    assert (
        put(client, ObjectKind.UNIT, unit("0001-100-2", address=STREETS[0])).status_code == api.STATUS_CREATED
    )


def test_a_contracts_unit_must_belong_to_its_property_else_422(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    other = body(ObjectKind.PROPERTY, id="0001-200", name="Nachbar", addresses=[{"street": "Ahornweg 1"}])
    put(client, ObjectKind.PROPERTY, other)
    put(client, ObjectKind.UNIT, unit("0001-200-1", property_id="0001-200", address="Ahornweg 1"))
    crossed = body(
        ObjectKind.CONTACT,
        id=CONTACT_ID,
        last_name="M",
        contracts=[contract(), contract("0001-200-1", PROPERTY_ID)],
    )
    response = put(client, ObjectKind.CONTACT, crossed)
    assert response.status_code == api.STATUS_UNKNOWN_REFERENCE
    assert error_fields(response) == ["contracts[1].unitId"]
    stored = sandbox.state()["contacts"][CONTACT_ID][wire(ObjectKind.CONTACT, "contracts")]
    assert [entry["unitId"] for entry in stored] == [UNIT_ID]  # unchanged
    straight = {
        **crossed,
        "contracts": [*crossed["contracts"][:1], {**crossed["contracts"][1], "propertyId": "0001-200"}],
    }
    assert put(client, ObjectKind.CONTACT, straight).status_code == api.STATUS_UPDATED


def test_a_property_put_leaving_out_a_street_units_use_is_409(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)  # the unit is at STREETS[1]
    for addresses in (
        [{"street": STREETS[0]}],
        [],
        None,
        [{"street": STREETS[0]}, {"street": "Lindenstraße 14b"}],
    ):
        response = put(client, ObjectKind.PROPERTY, lindenhof(addresses=addresses))
        assert response.status_code == api.STATUS_CONFLICT, addresses
        assert error_fields(response) == ["addresses"]
    assert sandbox.state()["properties"][PROPERTY_ID] == lindenhof()
    # renaming a street: add the new one, move the units, then drop the old one
    renamed = "Lindenstraße 14b"
    assert (
        put(
            client, ObjectKind.PROPERTY, lindenhof(addresses=[*lindenhof()["addresses"], {"street": renamed}])
        ).status_code
        == 200
    )
    assert put(client, ObjectKind.UNIT, unit(address=renamed)).status_code == api.STATUS_UPDATED
    assert put(client, ObjectKind.PROPERTY, lindenhof(addresses=[{"street": renamed}])).status_code == 200


def test_delete_is_204_then_404_and_409_while_referenced(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    # a unit a contract references, a property with units
    assert client.delete(ObjectKind.UNIT.object_path(UNIT_ID)).status_code == api.STATUS_CONFLICT
    assert client.delete(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).status_code == api.STATUS_CONFLICT
    # an ended contract holds its unit as well
    ended = body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="Muster", contracts=[contract(end=ENDED)])
    assert put(client, ObjectKind.CONTACT, ended).status_code == api.STATUS_UPDATED
    assert client.delete(ObjectKind.UNIT.object_path(UNIT_ID)).status_code == api.STATUS_CONFLICT
    # a PUT of the contact without the contract lets the unit go
    assert put(client, ObjectKind.CONTACT, {**ended, "contracts": []}).status_code == api.STATUS_UPDATED
    assert client.delete(ObjectKind.UNIT.object_path(UNIT_ID)).status_code == api.STATUS_DELETED
    assert client.delete(ObjectKind.UNIT.object_path(UNIT_ID)).status_code == api.STATUS_NOT_FOUND
    assert client.delete(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).status_code == api.STATUS_DELETED
    assert client.delete(ObjectKind.CONTACT.object_path(CONTACT_ID)).status_code == api.STATUS_DELETED
    assert {collection: list(objects) for collection, objects in sandbox.state().items()} == {
        "properties": [], "units": [], "contacts": [],
    }  # fmt: skip


def test_a_contact_can_always_be_deleted_and_frees_what_its_contracts_held(client: httpx.Client) -> None:
    put_tree(client)
    assert client.delete(ObjectKind.CONTACT.object_path(CONTACT_ID)).status_code == api.STATUS_DELETED
    assert client.delete(ObjectKind.UNIT.object_path(UNIT_ID)).status_code == api.STATUS_DELETED


def test_a_property_a_contract_still_names_is_409_without_units(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    assert sandbox.delete_as_user(ObjectKind.UNIT, UNIT_ID)  # the contract's unit is gone, its property not
    assert client.delete(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).status_code == api.STATUS_CONFLICT
    client.delete(ObjectKind.CONTACT.object_path(CONTACT_ID))
    assert client.delete(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).status_code == api.STATUS_DELETED


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
    sandbox.configure(rate_limit=1)  # one a minute, a burst of one: the next token is a minute away
    statuses = [client.get(ObjectKind.UNIT.collection_path) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, api.STATUS_RATE_LIMITED, api.STATUS_RATE_LIMITED]
    assert 55 <= int(statuses[1].headers[api.RETRY_AFTER_HEADER]) <= 60
    assert sandbox.state()[ObjectKind.UNIT.collection] == {}  # admin endpoints are not limited
    sandbox.reset(objects=False, knobs=False)  # a fresh start: a full bucket
    assert client.get(ObjectKind.UNIT.collection_path).status_code == 200


def test_the_rate_limits_bucket_refills_with_time() -> None:
    now = [100.0]
    bucket = TokenBucket(60, clock=lambda: now[0])  # one a second, a burst of one
    assert (bucket.take(), bucket.take()) == (0.0, 1.0)
    now[0] += 0.25
    assert bucket.take() == pytest.approx(0.75)
    now[0] += 0.75
    assert (bucket.take(), bucket.take()) == (0.0, 1.0)
    burst = TokenBucket(600, clock=lambda: now[0])  # ten a second: a burst of ten
    assert [burst.take() for _ in range(11)][-2:] == [0.0, pytest.approx(0.1)]


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
    assert time.monotonic() - started >= 0.3  # a lower bound: load only adds to it
    # An hour per API answer, and the admin endpoints still answer (within the admin client's timeout):
    # they bypass the misbehaviour layer. No API call is made meanwhile.
    sandbox.configure(latency_ms=3_600_000)
    assert sandbox.state()[ObjectKind.UNIT.collection] == {}
    assert sandbox.requests()["total"] == 2  # the login and the one slowed GET


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
        "GET /v2/units": {"200": 1},
        "DELETE /v2/units/{id}": {"404": 1},
    }
    assert counts["statuses"] == {"200": 2, "201": 3, "400": 1, "404": 1}
    assert counts["total"] == 7
    assert (sandbox.write_count(), sandbox.write_count(ok_only=True)) == (5, 3)
    sandbox.reset(objects=False)
    assert sandbox.requests() == {"total": 0, "routes": {}, "statuses": {}}
    assert list(sandbox.state()[ObjectKind.CONTACT.collection]) == [CONTACT_ID]


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
def test_reads_leave_out_nulls_and_list_the_units_at_each_street(client: httpx.Client) -> None:
    put_tree(client)
    assert put(client, ObjectKind.UNIT, unit("0001-100-2")).status_code == api.STATUS_CREATED
    read = client.get(ObjectKind.PROPERTY.object_path(PROPERTY_ID)).json()
    assert read[wire(ObjectKind.PROPERTY, "addresses")] == [
        {"street": STREETS[0], api.ADDRESS_UNITS_FIELD: []},
        {"street": STREETS[1], api.ADDRESS_UNITS_FIELD: [UNIT_ID, "0001-100-2"]},
    ]
    assert set(read) == {"id", "name", "addresses", api.INTERNAL_ID_FIELD, api.MODIFIED_FIELD, APP_LINK}
    assert client.get(ObjectKind.PROPERTY.collection_path).json()[api.LIST_KEY] == [read]
    contact = client.get(ObjectKind.CONTACT.object_path(CONTACT_ID)).json()
    assert set(contact) == {
        "id",
        "lastName",
        "contracts",
        api.INTERNAL_ID_FIELD,
        api.MODIFIED_FIELD,
        APP_LINK,
    }
    assert contact["contracts"] == [  # no endDate: null fields are left out of entries too
        {
            "type": "RENTER",
            "propertyId": PROPERTY_ID,
            "unitId": UNIT_ID,
            "number": "7",
            "startDate": "2014-01-01",
        }
    ]
    assert isinstance(contact[api.INTERNAL_ID_FIELD], int)
    # the units follow a unit's move, and a property's PUT answer is a read too
    put(client, ObjectKind.UNIT, unit("0001-100-2", address=STREETS[0]))
    again = put(client, ObjectKind.PROPERTY, lindenhof(name="L")).json()
    assert [a[api.ADDRESS_UNITS_FIELD] for a in again["addresses"]] == [["0001-100-2"], [UNIT_ID]]
    # the read of a property's units is what the client takes back to a record
    assert api.record_from_read(ObjectKind.PROPERTY, again)["addresses"] == [{"street": s} for s in STREETS]


def test_ended_contracts_are_left_out_unless_inactive_ones_are_asked_for(client: httpx.Client) -> None:
    put_tree(client)
    put(client, ObjectKind.UNIT, unit("0001-100-2"))
    contracts = [
        contract(end=ENDED, number="1"),
        contract("0001-100-2", end=RUNNING, number="2"),
        contract(number="3"),
    ]
    put(
        client,
        ObjectKind.CONTACT,
        body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="M", contracts=contracts),
    )
    path = ObjectKind.CONTACT.object_path(CONTACT_ID)

    def numbers(read: dict[str, Any]) -> list[str]:
        return [entry["number"] for entry in read["contracts"]]

    assert numbers(client.get(path).json()) == ["2", "3"]
    assert numbers(client.get(path, params={api.INCLUDE_INACTIVE_CONTRACTS_PARAM: "false"}).json()) == [
        "2",
        "3",
    ]
    assert numbers(client.get(path, params=INACTIVE).json()) == ["1", "2", "3"]
    listed = client.get(ObjectKind.CONTACT.collection_path).json()[api.LIST_KEY]
    assert numbers(listed[0]) == ["2", "3"]
    listed = client.get(ObjectKind.CONTACT.collection_path, params=ObjectKind.CONTACT.read_params).json()
    assert numbers(listed[api.LIST_KEY][0]) == ["1", "2", "3"]  # what the client asks for
    # the next link keeps asking for them
    put(
        client,
        ObjectKind.CONTACT,
        body(ObjectKind.CONTACT, id="0001-5001", last_name="M", contracts=contracts),
    )
    first = client.get(ObjectKind.CONTACT.collection_path, params={**INACTIVE, api.PAGE_SIZE_PARAM: 1}).json()
    second = client.get(first[api.LINKS_KEY][api.NEXT_LINK_KEY]).json()[api.LIST_KEY]
    assert [obj["id"] for obj in second] == ["0001-5001"] and numbers(second[0]) == ["1", "2", "3"]
    # the PUT's answer is the object as stored
    assert numbers(
        put(
            client,
            ObjectKind.CONTACT,
            body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="M", contracts=contracts),
        ).json()
    ) == ["1", "2", "3"]
    bad = client.get(path, params={api.INCLUDE_INACTIVE_CONTRACTS_PARAM: "yes"})
    assert bad.status_code == api.STATUS_INVALID and error_fields(bad) == [
        api.INCLUDE_INACTIVE_CONTRACTS_PARAM
    ]


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


def test_unmanaged_fields_knob_adds_fields_the_sync_does_not_manage_to_every_read(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    plain = {kind: client.get(kind.object_path(ref)).json() for kind, ref in (
        (ObjectKind.PROPERTY, PROPERTY_ID), (ObjectKind.UNIT, UNIT_ID), (ObjectKind.CONTACT, CONTACT_ID)
    )}  # fmt: skip
    extra = ["images", "customFields", "responsibilities", "mscPropertyNumber"]
    assert sandbox.configure(
        unmanaged_fields=" images, customFields,responsibilities,mscPropertyNumber,images"
    )["unmanaged_fields"] == ",".join(extra)
    for kind, before in plain.items():
        read = client.get(kind.object_path(before["id"])).json()
        assert set(read) == set(before) | set(extra)
        assert {key: value for key, value in read.items() if key not in extra} == before
        assert isinstance(read["images"], list) and isinstance(read["responsibilities"], list)
        # the client's reading of it is unchanged: the sync neither sends nor compares these
        assert api.record_from_read(kind, read) == api.record_from_read(kind, before)
        listed = client.get(kind.collection_path, params=kind.read_params).json()[api.LIST_KEY]
        assert set(extra) <= set(listed[0])
    assert set(extra) <= set(put(client, ObjectKind.UNIT, unit()).json())  # a PUT's answer is a read
    assert set(extra) <= set(sandbox.edit(ObjectKind.UNIT, UNIT_ID, {"name": "W 2"}))
    assert "images" not in sandbox.state()["units"][UNIT_ID]  # nothing stored
    sandbox.configure(unmanaged_fields=None)
    assert client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json().keys() == plain[ObjectKind.UNIT].keys()


def test_every_read_carries_an_app_link_from_the_host_and_the_internal_id(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    for kind, ref_id in (
        (ObjectKind.PROPERTY, PROPERTY_ID),
        (ObjectKind.UNIT, UNIT_ID),
        (ObjectKind.CONTACT, CONTACT_ID),
    ):
        read = client.get(kind.object_path(ref_id)).json()
        assert read[APP_LINK] == f"{sandbox.base_url}/app/{kind.collection}/{read[api.INTERNAL_ID_FIELD]}"
        assert client.get(kind.collection_path).json()[api.LIST_KEY][0][APP_LINK] == read[APP_LINK]
        # casavi links the object, not a version of it; the sync neither sends nor compares it
        assert api.record_from_read(kind, read) == api.record_from_read(kind, {**read, APP_LINK: None})
    again = put(client, ObjectKind.UNIT, unit(rooms=3)).json()  # a PUT's answer is a read
    assert again[APP_LINK] == client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()[APP_LINK]
    assert sandbox.edit(ObjectKind.UNIT, UNIT_ID, {"name": "W 3"})[APP_LINK] == again[APP_LINK]
    assert APP_LINK not in sandbox.state()["units"][UNIT_ID]  # never stored

    sandbox.configure(omit_app_link=True)  # a casavi whose reads carry none
    reads = [
        client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json(),
        client.get(ObjectKind.UNIT.collection_path).json()[api.LIST_KEY][0],
        put(client, ObjectKind.UNIT, unit()).json(),
        sandbox.edit(ObjectKind.UNIT, UNIT_ID, {"name": "W 4"}),
    ]
    assert [APP_LINK in read for read in reads] == [False] * 4
    assert reads[0][api.INTERNAL_ID_FIELD] == again[api.INTERNAL_ID_FIELD]


def test_the_sandbox_judges_bodies_by_the_contract(sandbox: SandboxProcess, client: httpx.Client) -> None:
    """The contract's rules, not the adapter's: a number sent as a string, an invalid email address are
    400; a limit the contract does not set is not enforced."""
    put_tree(client)
    as_strings = {**unit(), "rooms": "2.5", "area": "64"}
    refused = put(client, ObjectKind.UNIT, as_strings)
    assert refused.status_code == api.STATUS_INVALID and error_fields(refused) == ["area", "rooms"]
    assert put(client, ObjectKind.UNIT, unit(rooms=2.5, area=64)).status_code == api.STATUS_UPDATED
    no_email = body(ObjectKind.CONTACT, id=CONTACT_ID, last_name="M", email="erika(at)example.org")
    assert error_fields(put(client, ObjectKind.CONTACT, no_email)) == ["email"]
    far = lindenhof(country="Vereinigtes Königreich Großbritannien und Nordirland " * 6)  # > 255 chars
    assert put(client, ObjectKind.PROPERTY, far).status_code == api.STATUS_UPDATED
    assert sandbox.state()["units"][UNIT_ID]["rooms"] == 2.5


def test_the_cli_help_names_the_credentials_the_sandbox_accepts() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "casavi_sandbox", "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())  # argparse wraps lines
    assert "CASAVI_API_KEY and CASAVI_API_SECRET" in text
    assert f"{DEFAULT_KEY} / {DEFAULT_SECRET}" in text and "--omit-app-link" in text


# --- someone else changes casavi ---------------------------------------------------------------------
def seeded_account() -> list[tuple[ObjectKind, dict[str, Any]]]:
    """What an import leaves: a property with two streets, units at one of them, a contact with a
    contract."""
    import_contract = {
        "type": "RENTER",
        "propertyId": "0002-1",
        "unitId": "0002-1-1",
        "startDate": "2020-01-01",
    }
    return [
        (
            ObjectKind.PROPERTY,
            {"id": "0002-1", "name": "Import", "addresses": [{"street": "A-Weg 1"}, {"street": "B-Weg 2"}]},
        ),
        (ObjectKind.UNIT, {"id": "0002-1-1", "propertyId": "0002-1", "address": "A-Weg 1", "name": "W 1"}),
        (
            ObjectKind.UNIT,
            {"id": "0002-1-2", "propertyId": "0002-1", "address": "A-Weg 1", "name": "W 2", "floor": 3},
        ),
        # imports can be messy: a unit of a property that does not exist
        (ObjectKind.UNIT, {"id": "0002-9-1", "propertyId": "0002-9", "address": "A-Weg 1", "name": "W 9"}),
        (
            ObjectKind.CONTACT,
            {"id": "0002-50", "lastName": "Import", "email": None, "contracts": [import_contract]},
        ),
    ]


def test_seed_stores_an_import_as_given_without_counting_requests(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    sandbox.reset(objects=False)  # forget the authentication of the client fixture
    assert sandbox.seed(seeded_account()) == {"seeded": 5, "created": 5, "updated": 0}
    assert sandbox.requests()["total"] == 0 and sandbox.write_count() == 0
    state = sandbox.state()
    assert state["units"]["0002-1-2"] == seeded_account()[2][1]  # as given, fields outside the model kept
    assert state["contacts"]["0002-50"] == seeded_account()[4][1]
    read = client.get(ObjectKind.PROPERTY.object_path("0002-1")).json()
    assert read["addresses"] == [
        {"street": "A-Weg 1", "units": ["0002-1-1", "0002-1-2"]},
        {"street": "B-Weg 2", "units": []},
    ]
    assert isinstance(read[api.INTERNAL_ID_FIELD], int) and read[api.MODIFIED_FIELD].endswith("Z")
    # the references are recorded: the API protects seeded objects as it protects its own
    assert client.delete(ObjectKind.UNIT.object_path("0002-1-1")).status_code == api.STATUS_CONFLICT
    assert client.delete(ObjectKind.PROPERTY.object_path("0002-1")).status_code == api.STATUS_CONFLICT
    # seeding an existing id replaces it (same internalId); dicts and collection names work too
    again = sandbox.seed([{"kind": "contacts", "body": {"id": "0002-50", "lastName": "Neu"}}])
    assert again == {"seeded": 1, "created": 0, "updated": 1}
    contact = client.get(ObjectKind.CONTACT.object_path("0002-50")).json()
    assert (contact["lastName"], contact[api.INTERNAL_ID_FIELD]) == ("Neu", read[api.INTERNAL_ID_FIELD] + 4)
    # without its contract the unit is free
    assert client.delete(ObjectKind.UNIT.object_path("0002-1-1")).status_code == api.STATUS_DELETED


def test_seed_rejects_a_batch_breaking_field_rules_and_stores_none_of_it(sandbox: SandboxProcess) -> None:
    bad = [
        (ObjectKind.CONTACT, {"id": "0002-1", "lastName": "Ok"}),
        (ObjectKind.UNIT, {"id": "0002-2"}),
        ("contracts", {"id": "x"}),
        (ObjectKind.CONTACT, {"id": "0002-3", "lastName": "M", "contracts": [{"type": "TENANT"}]}),
    ]
    with pytest.raises(httpx.HTTPStatusError) as raised:
        sandbox.seed(bad)
    answer = raised.value.response.json()
    assert raised.value.response.status_code == 400
    assert {(e["index"], e["field"]) for e in answer["errors"]} >= {
        (1, "propertyId"),
        (1, "address"),
        (1, "name"),
        (2, "kind"),
        (3, "contracts[0].type"),
        (3, "contracts[0].unitId"),
    }
    assert sandbox.state()["contacts"] == {}


def test_seed_and_edit_store_a_usage_casavis_ui_sets_and_the_api_refuses(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    """casavi's UI knows a third usage, Stellplatz (parking), and an empty one: an import or a person
    leaves them in the account, and reads return them; a PUT through the API may not set them."""
    put_tree(client)
    parking = unit("0001-100-7", usage="PARKING")
    sandbox.seed([(ObjectKind.UNIT, parking), (ObjectKind.UNIT, unit("0001-100-8", usage=""))])
    read = {
        ref: client.get(ObjectKind.UNIT.object_path(ref)).json()["usage"]
        for ref in ("0001-100-7", "0001-100-8")
    }
    assert read == {"0001-100-7": "PARKING", "0001-100-8": ""}
    assert sandbox.edit(ObjectKind.UNIT, UNIT_ID, {"usage": "PARKING"})["usage"] == "PARKING"
    refused = put(client, ObjectKind.UNIT, parking)
    assert refused.status_code == api.STATUS_INVALID and error_fields(refused) == ["usage"]
    with pytest.raises(httpx.HTTPStatusError):  # the other rules hold for what casavi holds too
        sandbox.seed([(ObjectKind.UNIT, {**parking, "rooms": "2"})])
    assert client.get(ObjectKind.UNIT.object_path("0001-100-7")).json()["usage"] == "PARKING"


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
    # a person ends the contract: the edit's answer shows it, a read without inactive contracts not
    ended = [{**before["contracts"][0], "endDate": ENDED}]
    assert sandbox.edit(ObjectKind.CONTACT, CONTACT_ID, {"contracts": ended})["contracts"] == ended
    assert client.get(ObjectKind.CONTACT.object_path(CONTACT_ID)).json()["contracts"] == []
    # moving a unit to the other street shows on the property's addresses
    sandbox.edit("units", UNIT_ID, {"address": STREETS[0]})
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
    read = client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()
    assert read[wire(ObjectKind.UNIT, "property_id")] == PROPERTY_ID  # dangling, as in casavi
    assert sandbox.write_count() == 0 and sandbox.requests()["total"] == 2


# --- knobs that break the write model or leak bodies -------------------------------------------------
def test_drop_field_silently_loses_a_field_on_api_writes(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    sandbox.configure(drop_field="units.rooms")
    answer = put(client, ObjectKind.UNIT, unit(rooms=3, area=71.5))
    assert answer.status_code == api.STATUS_UPDATED
    read = client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()
    assert "rooms" not in read and read["area"] == 71.5 and "rooms" not in answer.json()
    assert "rooms" not in sandbox.state()["units"][UNIT_ID]
    sandbox.configure(drop_field=None)
    put(client, ObjectKind.UNIT, unit(rooms=3, area=71.5))
    assert client.get(ObjectKind.UNIT.object_path(UNIT_ID)).json()["rooms"] == 3


def test_field_knobs_reach_into_a_contacts_contracts(sandbox: SandboxProcess, client: httpx.Client) -> None:
    put_tree(client)
    two = body(
        ObjectKind.CONTACT,
        id=CONTACT_ID,
        last_name="M",
        contracts=[contract(), contract(end=RUNNING, number="8")],
    )
    sandbox.configure(drop_field="contacts.contracts.number")
    put(client, ObjectKind.CONTACT, two)
    read = client.get(ObjectKind.CONTACT.object_path(CONTACT_ID), params=INACTIVE).json()
    assert [set(entry) & {"number", "unitId"} for entry in read["contracts"]] == [{"unitId"}, {"unitId"}]
    sandbox.configure(drop_field=None, rename_field="contacts.contracts.number=contractNumber")
    put(client, ObjectKind.CONTACT, two)
    read = client.get(ObjectKind.CONTACT.object_path(CONTACT_ID), params=INACTIVE).json()
    assert [entry.get("contractNumber") for entry in read["contracts"]] == ["7", "8"]
    assert not any("number" in entry for entry in read["contracts"])


def test_rename_field_stores_a_field_under_another_name(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    sandbox.configure(rename_field="units.rooms=roomCount")
    put(client, ObjectKind.UNIT, unit(rooms=3))
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
        {"drop_field": "contracts.unitId"},  # no contracts collection any more
        {"drop_field": "contacts.contracts.floor"},
        {"drop_field": "units.rooms.value"},
        {"drop_field": "contacts.contracts.number.x"},
        {"rename_field": "units.rooms"},
        {"rename_field": "units.rooms="},
        {"rename_field": "contacts.contracts.number=number"},
        {"echo_errors": "yes"},
        {"unmanaged_fields": "email"},  # a field the sync manages
        {"unmanaged_fields": "internalId"},  # in every read anyway
        {"unmanaged_fields": "images,appLink"},  # in every read too (omit_app_link leaves it out)
        {"omit_app_link": "yes"},
        {"unmanaged_fields": "floor"},
        {"unmanaged_fields": 3},
    ],
)
def test_field_knobs_reject_what_names_no_casavi_field(
    sandbox: SandboxProcess, knobs: dict[str, Any]
) -> None:
    response = httpx.post(f"{sandbox.base_url}/_sandbox/config", json=knobs, trust_env=False)
    assert response.status_code == 400, response.text


def test_echo_errors_quotes_the_submitted_values_and_body_and_puts_values_in_codes(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    put_tree(client)
    invalid = body(
        ObjectKind.CONTACT,
        id="0001-7",
        last_name="Geheim",
        salutation="HERR",
        email="erika.muster@example.org",
        contracts=[{**contract(), "contract_type": "MIETER"}],
    )
    quiet = put(client, ObjectKind.CONTACT, invalid).json()
    assert "HERR" not in str(quiet) and "MIETER" not in str(quiet) and ECHO_CODE_KEY not in str(quiet)
    sandbox.configure(echo_errors=True)
    raw = json.dumps(invalid)
    answer = client.put(ObjectKind.CONTACT.object_path("0001-7"), content=raw.encode())
    assert answer.status_code == api.STATUS_INVALID
    assert raw in answer.json()[api.ERROR_MESSAGE_KEY]  # the whole body, verbatim
    details = {e[api.ERROR_FIELD_KEY]: e for e in answer.json()[api.ERROR_DETAILS_KEY]}
    assert details["salutation"][api.ERROR_MESSAGE_KEY].startswith("salutation 'HERR' ")
    assert details["contracts[0].type"][api.ERROR_MESSAGE_KEY].startswith("contracts[0].type 'MIETER' ")
    assert (details["salutation"][ECHO_CODE_KEY], details["contracts[0].type"][ECHO_CODE_KEY]) == (
        "HERR",
        "MIETER",
    )
    assert answer.json()[ECHO_CODE_KEY] == "HERR"  # the body's code: the first error's
    # a 422 quotes the reference; a rejected id's 400 names every field, values as codes
    dangling = unit("0001-9-1", property_id="0001-9")
    unknown = client.put(ObjectKind.UNIT.object_path("0001-9-1"), content=json.dumps(dangling).encode())
    assert unknown.status_code == api.STATUS_UNKNOWN_REFERENCE
    assert json.dumps(dangling) in unknown.json()[api.ERROR_MESSAGE_KEY]
    [detail] = unknown.json()[api.ERROR_DETAILS_KEY]
    assert (
        detail[api.ERROR_MESSAGE_KEY].startswith("propertyId '0001-9' ") and detail[ECHO_CODE_KEY] == "0001-9"
    )
    sandbox.configure(reject_ids="0001-7")
    valid = body(ObjectKind.CONTACT, id="0001-7", last_name="Schulz", email="erika.muster@example.org")
    rejected = put(client, ObjectKind.CONTACT, valid).json()
    codes = {e[api.ERROR_FIELD_KEY]: e.get(ECHO_CODE_KEY) for e in rejected[api.ERROR_DETAILS_KEY]}
    assert (codes["lastName"], codes["email"], codes["firstName"]) == ("SCHULZ", "erika.muster", None)
    # a 409 of a property PUT too
    conflict = client.put(ObjectKind.PROPERTY.object_path(PROPERTY_ID), json=lindenhof(addresses=[]))
    assert (
        conflict.status_code == api.STATUS_CONFLICT and "Lindenhof" in conflict.json()[api.ERROR_MESSAGE_KEY]
    )
    malformed = client.put(ObjectKind.CONTACT.object_path("0001-8"), content=b'{"email": "x@y"')
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
    codes = {e[api.ERROR_FIELD_KEY]: e.get(ECHO_CODE_KEY) for e in echoed.json()["errors"]}
    assert (codes["lastName"], codes["email"], codes["firstName"]) == ("GEHEIM", "erika", "ERIKA")
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


def test_cli_sets_the_field_echo_and_unmanaged_knobs() -> None:
    args = parse_args(
        ["--drop-field", "units.rooms", "--rename-field", "contacts.email=mail", "--echo-errors",
         "--unmanaged-fields", "images,customFields", "--omit-app-link"]
    )  # fmt: skip
    assert (args.drop_field, args.rename_field, args.echo_errors, args.unmanaged_fields) == (
        "units.rooms",
        "contacts.email=mail",
        True,
        "images,customFields",
    )
    assert args.omit_app_link is True
    defaults = parse_args([])
    assert (defaults.echo_errors, defaults.unmanaged_fields, defaults.omit_app_link) == (False, None, False)


def test_knobs_given_at_start_reach_the_process(tmp_path: Path) -> None:
    with SandboxProcess(
        tmp_path / "s.sqlite3",
        rename_field="units.rooms=roomCount",
        echo_errors=True,
        unmanaged_fields="images",
    ) as box:
        config = httpx.get(f"{box.base_url}/_sandbox/config", trust_env=False).json()
        assert (config["rename_field"], config["echo_errors"], config["unmanaged_fields"]) == (
            "units.rooms=roomCount",
            True,
            "images",
        )


# --- the fake client applies the same model --------------------------------------------------------------
def scenario() -> list[Operation]:
    """Writes that meet every rule of the model once: created, updated, 400, 422 (unknown, not a street,
    not of the property), 409 (a street in use, a referenced unit and property), 404 and 204."""
    other = body(ObjectKind.PROPERTY, id="0001-200", name="Nachbar", addresses=[{"street": "Ahornweg 1"}])
    two = body(
        ObjectKind.CONTACT,
        id=CONTACT_ID,
        last_name="M",
        contracts=[contract(end=ENDED), contract("0001-100-2")],
    )
    ops = [
        (ObjectKind.PROPERTY, lindenhof()),
        (ObjectKind.PROPERTY, other),
        (ObjectKind.UNIT, unit()),
        (ObjectKind.UNIT, unit("0001-100-2", address=STREETS[0])),
        (ObjectKind.UNIT, unit("0001-200-1", property_id="0001-200", address="Ahornweg 1")),
        (ObjectKind.UNIT, unit("0001-100-3", address="Ahornweg 1")),  # 422 not a street of the property
        (ObjectKind.UNIT, unit("0001-9-1", property_id="0001-9")),  # 422 unknown property
        (ObjectKind.UNIT, unit("0001-100-4", usage="HOTEL")),  # 400
        (ObjectKind.CONTACT, two),
        (
            ObjectKind.CONTACT,
            {**two, "contracts": [*two["contracts"], {**two["contracts"][0], "unitId": "0001-200-1"}]},
        ),
        (ObjectKind.CONTACT, two),  # unchanged: 200
        (ObjectKind.PROPERTY, lindenhof(addresses=[{"street": STREETS[0]}])),  # 409 street in use
    ]
    deletes = [
        (ObjectKind.UNIT, UNIT_ID),  # 409: held by the ended contract
        (ObjectKind.PROPERTY, PROPERTY_ID),  # 409: units
        (ObjectKind.UNIT, "0001-200-1"),
        (ObjectKind.PROPERTY, "0001-200"),
        (ObjectKind.PROPERTY, "0001-404"),
    ]
    return [Operation(kind, "upsert", payload["id"], payload) for kind, payload in ops] + [
        Operation(kind, "delete", ref_id) for kind, ref_id in deletes
    ]


def test_the_fake_client_answers_as_the_sandbox_does(client: httpx.Client) -> None:
    fake = FakeCasaviClient()
    for op in scenario():
        path = op.kind.object_path(op.ref_id)
        answer = client.put(path, json=op.payload) if op.action == "upsert" else client.delete(path)
        faked = fake.upsert(op.kind, op.payload) if op.action == "upsert" else fake.delete(op.kind, op.ref_id)
        fields = error_fields(answer) if answer.status_code >= 400 and answer.json().get("errors") else []
        assert (faked.status, list(faked.error.fields) if faked.error else []) == (
            answer.status_code,
            fields,
        ), op
        assert faked.ok == (answer.status_code < 400 or (op.action == "delete" and answer.status_code == 404))
    for kind in ObjectKind:
        listed = client.get(kind.collection_path, params=kind.read_params).json()[api.LIST_KEY]
        assert [_without_meta(kind, obj) for obj in fake.list_objects(kind)] == [
            _without_meta(kind, obj) for obj in listed
        ]
        for obj in listed:
            assert _without_meta(kind, fake.get_object(kind, obj["id"]) or {}) == _without_meta(kind, obj)
    assert fake.get_object(ObjectKind.UNIT, "0001-200-1") is None
    contracts = fake.get_object(ObjectKind.CONTACT, CONTACT_ID)["contracts"]
    assert len(contracts) == 2  # the ended one too: the client's contacts reads ask for it


def _without_meta(kind: ObjectKind, obj: dict[str, Any]) -> dict[str, Any]:
    """Without the fields that differ between two accounts holding the same objects: casavi's ids and
    times, and the app links built from them (on another host too)."""
    assert obj[APP_LINK].endswith(f"/app/{kind.collection}/{obj[api.INTERNAL_ID_FIELD]}"), obj
    meta = (api.INTERNAL_ID_FIELD, api.MODIFIED_FIELD, APP_LINK)
    return {key: value for key, value in obj.items() if key not in meta}


def test_the_fake_lists_what_changed_after_a_time() -> None:
    fake = FakeCasaviClient()
    fake.upsert(ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-1", last_name="A"))
    first = fake.get_object(ObjectKind.CONTACT, "0001-1")
    stamp = dt.datetime.fromisoformat(first[api.MODIFIED_FIELD])
    time.sleep(0.002)
    fake.upsert(ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-2", last_name="B"))
    assert [obj["id"] for obj in fake.list_objects(ObjectKind.CONTACT, modified_after=stamp)] == ["0001-2"]
    fake.upsert(ObjectKind.CONTACT, body(ObjectKind.CONTACT, id="0001-1", last_name="A"))  # no change
    assert fake.get_object(ObjectKind.CONTACT, "0001-1") == first


# --- the helper only talks to the sandbox it started ---------------------------------------------------
def assert_no_credentials_sent(received: list[tuple[str, str, bytes]], box: SandboxProcess) -> None:
    assert not [path for _, path, _ in received if path.startswith(api.AUTH_PATH)]
    assert not [raw for *_, raw in received if box.api_key.encode() in raw or box.api_secret.encode() in raw]


def test_a_requested_port_taken_by_another_program_fails_fast(
    tmp_path: Path, impostor: tuple[int, list[tuple[str, str, bytes]]]
) -> None:
    port, received = impostor
    box = SandboxProcess(tmp_path / "s.sqlite3", port=port, api_key="k-123", api_secret="s-456")
    with pytest.raises(PortTakenError) as raised:
        box.start()
    assert (
        str(raised.value) == f"port {port} on 127.0.0.1 is taken by another program; free it or pass --port"
    )
    assert not box.log_path.exists()  # fast: found out before a process was started (it logs there)
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
