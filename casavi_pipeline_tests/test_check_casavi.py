"""`casavi-pipeline check-casavi`: the account compared with the model, read-only, by field names only.

First the comparison against a scripted casavi (httpx.MockTransport), then the command as a real
process against the sandbox (a real process too), then the Dagster job.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import dagster as dg
import httpx
import pytest

from casavi_harness.accounts import mapped_bodies
from casavi_harness.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN
from casavi_pipeline.casavi import api, conformance
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import CasaviClient, Operation
from casavi_pipeline.casavi.errors import CasaviModelMismatchError
from casavi_pipeline_tests.harness import reason_of_run, run_from_environment
from casavi_pipeline_tests.processes import Processes
from casavi_sandbox import SandboxProcess

CLI = Path(sys.executable).with_name("casavi-pipeline")
NAMES_AND_VALUES = ("Lindenstraße", "Erika", "Mustermann", "erika@example.org", "+49 30 123", "Haus am See")


def account() -> dict[str, list[dict[str, Any]]]:
    """A small account as the model says casavi returns it, with the read-only and unmanaged fields."""
    return {
        "properties": [
            {
                "id": "0001-1",
                "internalId": 11,
                "modified": "2026-01-02T03:04:05.000Z",
                "name": "Haus am See",
                "number": "1",
                "postalCode": "10115",
                "city": "Berlin",
                "country": "Germany",
                "note": None,
                "addresses": [{"street": "Lindenstraße 12a", "units": ["0001-1-1"]}],
                "images": [],
                "appLink": "https://app.test/p/11",
            }
        ],
        "units": [
            {
                "id": "0001-1-1",
                "internalId": 21,
                "propertyId": "0001-1",
                "address": "Lindenstraße 12a",
                "name": "Wohnung 1",
                "number": "1",
                "usage": "PRIVATE",
                "area": 61,
                "rooms": 2.5,
                "responsibilities": [],
            }
        ],
        "contacts": [
            {
                "id": "0001-P1",
                "internalId": 31,
                "salutation": "MS",
                "title": None,
                "firstName": "Erika",
                "lastName": "Mustermann",
                "companyName": None,
                "email": "erika@example.org",
                "telephone": "+49 30 123",
                "mobile": None,
                "street": "Lindenstraße 12a",
                "postalCode": "10115",
                "city": "Berlin",
                "country": "Germany",
                "preferredWayOfContact": "ONLINE",
                "contracts": [
                    {
                        "type": "RENTER",
                        "propertyId": "0001-1",
                        "unitId": "0001-1-1",
                        "number": "V1",
                        "startDate": "2020-01-01",
                        "endDate": None,
                    }
                ],
                "customFields": {"Lieblingsfarbe": "blau"},
                "mscSomething": 1,
            }
        ],
    }


class MockCasavi:
    """A scripted casavi over httpx.MockTransport: login, listings, reads by id, PUT and DELETE."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]] | None = None, **behaviour: Any) -> None:
        self.objects = {c: {o["id"]: o for o in objs} for c, objs in (objects or account()).items()}
        self.behaviour = behaviour
        self.calls: list[tuple[str, str]] = []
        self.hosts: set[str] = set()  # every host a request went to

    def __call__(self, request: httpx.Request) -> httpx.Response:
        raw_path = request.url.raw_path.decode().split("?")[0]
        self.calls.append((request.method, raw_path))
        self.hosts.add(request.url.host)
        if raw_path == api.AUTH_PATH:
            if json.loads(request.content)[api.AUTH_SECRET_FIELD] != "s":
                return httpx.Response(401, json={"message": "bad credentials"})
            return httpx.Response(200, json={"token": "t", "expiresAt": "2099-01-01T00:00:00Z"})
        assert request.headers["token"] == "t"
        parts = raw_path.split("/")  # ["", "v2", collection, id?]
        collection = parts[2]
        if collection in self.behaviour.get("missing_collections", ()):
            return httpx.Response(404, json={"message": "no route"})
        stored = self.objects.setdefault(collection, {})
        if len(parts) == 3:
            assert request.method == "GET"
            size = int(request.url.params[api.PAGE_SIZE_PARAM])
            page = list(stored.values())[:size]
            origin = self.behaviour.get("next_origin", "")  # e.g. another host casavi serves the account on
            links = {"next": f"{origin}/v2/{collection}?cursor=2"} if len(stored) > size else {}
            return httpx.Response(200, json={"list": page, "_links": links})
        if request.method in self.behaviour.get("not_allowed", ()):
            return httpx.Response(405)
        if "%2F" in parts[3] and self.behaviour.get("slash_unrouted"):
            return httpx.Response(404, json={"message": "no route"})
        ref_id = unquote(parts[3])
        if request.method == "GET":
            found = stored.get(ref_id)
            return httpx.Response(200, json=found) if found else httpx.Response(404, json={})
        if request.method == "DELETE":
            if "delete_status" in self.behaviour:
                return httpx.Response(self.behaviour["delete_status"], json={"message": "no"})
            if self.behaviour.get("archive_on_delete") and ref_id in stored:  # answered as deleted, kept
                return httpx.Response(204)
            return httpx.Response(204 if stored.pop(ref_id, None) else 404)
        body = json.loads(request.content)
        for dropped in self.behaviour.get("drop_on_write", ()):
            body.pop(dropped, None)
        created = ref_id not in stored
        stored[ref_id] = {**body, "internalId": 99}
        return httpx.Response(201 if created else 200, json=stored[ref_id])


def make_client(
    handler: Callable[[httpx.Request], httpx.Response] | None = None,
    *,
    base_url: str = "https://casavi.test",
    key: str = "k",
    secret: str = "s",
) -> CasaviClient:
    """The tests' one way to build a client: unpaced (requests are counted here, never timed)."""
    transport = httpx.MockTransport(handler) if handler is not None else None
    return CasaviClient(base_url, key, secret, transport=transport, budget=None)


def check(mock: MockCasavi, *, secret: str = "s", **kwargs: Any) -> conformance.Report:
    kwargs.setdefault("separator", "-")
    with make_client(mock, secret=secret) as client:
        return conformance.check_account(client, **kwargs)


def text(report: conformance.Report) -> str:
    return "\n".join(report.lines())


def contradicted(report: conformance.Report) -> list[str]:
    return [c.constant for c in report.all_contradictions]


def edited(change) -> dict[str, list[dict[str, Any]]]:
    objects = copy.deepcopy(account())
    change(objects)
    return objects


# --- the comparison ------------------------------------------------------------------------------------
def test_a_conforming_account_matches_with_seven_reads_and_no_write():
    mock = MockCasavi()
    report = check(mock)
    assert report.exit_code == conformance.MATCHES, text(report)
    assert contradicted(report) == []
    assert (report.requests, report.writes) == (7, 0)
    assert {method for method, _ in mock.calls} == {"POST", "GET"}
    assert [c for c in mock.calls if c[0] == "POST"] == [("POST", api.AUTH_PATH)]
    out = text(report)
    assert "fields we send, never returned: -" in out
    assert "fields casavi returned that the model does not know: -" in out  # unmanaged ones are not named
    assert "read-only fields: units" in out
    assert "1 of 1 units name a street of their property" in out
    assert out.splitlines()[-1] == report.summary
    assert report.summary.startswith("casavi at https://casavi.test matches casavi_pipeline's model")


def test_it_tells_whether_the_account_returns_links_without_calling_their_absence_a_contradiction():
    line = "links back to the ERP (appLink, CASAVI_LINKS_DIR): "
    assert line + "returned on property 1 of 1, unit 0 of 1, contact 0 of 1" in text(check(MockCasavi()))

    def without_links(objects: dict[str, list[dict[str, Any]]]) -> None:
        objects["properties"][0].pop("appLink")

    report = check(MockCasavi(edited(without_links)))
    assert report.exit_code == conformance.MATCHES, text(report)  # the field is [read]: links stay empty
    assert line + "casavi returned none; the links file's app_link column would stay empty" in text(report)


def test_no_value_of_the_account_reaches_the_report():
    out = text(check(MockCasavi(edited(lambda o: o["units"][0].update(usage="Frau Mustermann's")))))
    for value in (*NAMES_AND_VALUES, "Lieblingsfarbe", "blau", "0001-P1"):
        assert value not in out
    assert "enum values outside ours: usage: 1 values not shaped like a code" in out


def test_a_renamed_field_is_a_contradiction_naming_the_rule_and_the_new_name():
    def rename(objects):
        unit = objects["units"][0]
        unit["roomCount"] = unit.pop("rooms")

    report = check(MockCasavi(edited(rename)))
    assert report.exit_code == conformance.CONTRADICTS
    assert contradicted(report) == ['FIELD_RULES[unit] field "rooms"']
    assert "roomCount (renamed?)" in report.summary
    assert 'CONTRADICTION FIELD_RULES[unit] field "rooms"' in text(report)


def test_an_empty_optional_field_alone_is_no_contradiction():
    # casavi may leave out null fields: a `rooms` nobody filled is not a renamed one
    report = check(MockCasavi(edited(lambda o: o["units"][0].pop("rooms"))))
    assert report.exit_code == conformance.MATCHES, text(report)
    assert "fields we send, never returned: rooms (empty on every object read" in text(report)


def test_an_unknown_field_is_named_but_no_contradiction():
    report = check(MockCasavi(edited(lambda o: o["contacts"][0].update(isRegistered=True))))
    assert report.exit_code == conformance.MATCHES
    assert "fields casavi returned that the model does not know: isRegistered" in text(report)


def test_enum_values_outside_ours_name_the_enum_and_show_only_codes():
    def change(objects):
        objects["units"][0]["usage"] = "MIXED_USE"
        objects["contacts"][0]["contracts"][0]["type"] = "SUBTENANT"
        objects["contacts"][0]["salutation"] = "Herr Dr. Mustermann"

    report = check(MockCasavi(edited(change)))
    # a usage outside ours is one casavi's UI sets (Stellplatz): a note; the others contradict the model
    assert sorted(contradicted(report)) == ["ContractType", "Salutation"]
    out = text(report)
    assert "MIXED_USE (1)" in out and "SUBTENANT (1)" in out and "Mustermann" not in out
    assert 'NOTE Usage: field "usage" has values casavi\'s UI sets beyond ours: MIXED_USE (1)' in out


def test_a_usage_casavi_s_ui_sets_is_a_note_naming_the_value_and_the_check_still_matches():
    def change(objects):
        parking, empty = ({**objects["units"][0], "id": f"0001-1-{n}"} for n in (2, 3))
        objects["units"] += [{**parking, "usage": "PARKING"}, {**empty, "usage": ""}]

    report = check(MockCasavi(edited(change)))
    assert report.exit_code == conformance.MATCHES, text(report)
    notes = [line for line in text(report).splitlines() if line.startswith("NOTE ")]
    assert notes == [
        'NOTE Usage: field "usage" has values casavi\'s UI sets beyond ours: PARKING (1); the sync keeps '
        "them as casavi holds them",
        'NOTE Usage: field "usage" is empty on 1 of 3; the sync fills it with the ERP\'s value',
    ]
    only_parking = check(MockCasavi(edited(lambda o: o["units"][0].update(usage="PARKING"))))
    assert "(none of ours among 1: if casavi names ours otherwise, change Usage)" in text(only_parking)


def test_address_and_contract_shapes():
    def change(objects):
        objects["properties"][0]["addresses"] = [{"street": "Lindenstraße 12a"}]  # no `units`
        objects["units"][0]["address"] = "12345"  # not a street of its property
        del objects["contacts"][0]["contracts"][0]["unitId"]
        objects["contacts"][0]["contracts"][0]["startDate"] = "01.01.2020"

    report = check(MockCasavi(edited(change)))
    assert sorted(contradicted(report)) == [
        "ADDRESS_UNITS_FIELD",
        'CONTRACT_RULES field "startDate"',
        'CONTRACT_RULES field "unitId"',
        'FIELD_RULES[unit] field "address"',
    ]
    assert "1 of 1 units name no street of their property" in report.summary
    assert "12345" not in text(report) and "01.01.2020" not in text(report)


def test_an_empty_account_compared_nothing_and_says_to_run_the_write_test_on_a_test_account():
    report = check(MockCasavi({"properties": [], "units": [], "contacts": []}))
    assert report.exit_code == conformance.CANNOT_CHECK  # not "matches": nothing was compared
    assert report.requests == 4  # the login and three listings; nothing to read by id
    assert report.summary == (
        "cannot check casavi at https://casavi.test: the account holds no property, unit or contact, so "
        "nothing was compared: run `casavi-pipeline check-casavi --write-test` (in Dagster: "
        "casavi_conformance with write_test) against a casavi test account (4 requests, 0 writes)"
    )
    written = check(MockCasavi({"properties": [], "units": [], "contacts": []}), write_test=True)
    assert written.exit_code == conformance.MATCHES, text(written)
    assert "the account holds nothing to compare: only the write test's objects were" in text(written)
    # one kind holding something is a comparison
    assert check(MockCasavi({**account(), "contacts": []})).exit_code == conformance.MATCHES


def test_a_missing_collection_is_a_contradiction_naming_it():
    report = check(MockCasavi(missing_collections={"units"}))
    assert report.exit_code == conformance.CONTRADICTS
    assert contradicted(report) == ["_COLLECTIONS[UNIT]"]
    assert "GET /v2/units → 404: casavi's API differs" in report.summary


def test_the_first_page_only_and_its_envelope():
    objects = account()
    objects["units"] = [{**objects["units"][0], "id": f"0001-1-{i}"} for i in range(api.MAX_PAGE_SIZE + 1)]
    mock = MockCasavi(objects)
    report = check(mock)
    assert report.requests == 7  # the next link is not followed
    assert "unit: 500 objects on the first page (pageSize=500, a next link)" in text(report)
    assert "paging envelope: list, _links; _links: next (next on units: not followed)" in text(report)
    assert "next link: on casavi.test, the configured host" in text(report)


def test_without_a_next_link_a_page_of_one_shows_its_host():
    objects = account()
    objects["units"] = [{**objects["units"][0], "id": f"0001-1-{i}"} for i in range(2)]
    mock = MockCasavi(objects)
    report = check(mock)
    assert report.exit_code == conformance.MATCHES, text(report)
    assert report.requests == 8  # one more: the units' first page of one object
    assert mock.calls[-1] == ("GET", "/v2/units")
    assert "next link: on casavi.test, the configured host" in text(report)
    assert "next link: none seen (no kind holds two objects)" in text(check(MockCasavi()))


def test_a_next_link_on_another_host_names_the_base_url_to_set_and_is_never_followed():
    objects = account()
    objects["units"] = [{**objects["units"][0], "id": f"0001-1-{i}"} for i in range(2)]
    mock = MockCasavi(objects, next_origin="https://api-v2.casavi.test")
    report = check(mock)
    assert report.exit_code == conformance.CONTRADICTS
    assert contradicted(report) == ["CASAVI_BASE_URL"]
    assert report.summary == (
        "casavi at https://casavi.test contradicts casavi_pipeline's model (8 requests, 0 writes): "
        "CASAVI_BASE_URL: casavi's next-page link points at https://api-v2.casavi.test, not at "
        "https://casavi.test: set CASAVI_BASE_URL=https://api-v2.casavi.test (the sync sends its token only "
        "to the configured host, and stops at a link elsewhere)"
    )
    assert mock.hosts == {"casavi.test"}  # the token went nowhere else
    # a first page that already carries such a link: reported the same, no listing error
    objects["units"] = [{**objects["units"][0], "id": f"0001-1-{i}"} for i in range(api.MAX_PAGE_SIZE + 1)]
    full = check(MockCasavi(objects, next_origin="https://api-v2.casavi.test:8443"))
    assert contradicted(full) == ["CASAVI_BASE_URL"] and full.requests == 7
    assert "set CASAVI_BASE_URL=https://api-v2.casavi.test:8443 " in full.summary


def test_a_full_page_without_a_next_link_is_a_contradiction():
    objects = account()
    objects["units"] = [{**objects["units"][0], "id": f"0001-1-{i}"} for i in range(api.MAX_PAGE_SIZE)]
    assert contradicted(check(MockCasavi(objects))) == ["LINKS_KEY / NEXT_LINK_KEY"]


def test_refused_credentials_cannot_check_in_one_line():
    report = check(MockCasavi(), secret="wrong")
    assert report.exit_code == conformance.CANNOT_CHECK
    assert report.requests == 1
    assert report.summary == (
        "cannot check casavi at https://casavi.test: casavi refused the API key/secret (401): set valid "
        "CASAVI_API_KEY and CASAVI_API_SECRET (1 requests, 0 writes)"
    )


# --- the write test ------------------------------------------------------------------------------------
def test_the_write_test_writes_reads_back_and_deletes_in_order():
    mock = MockCasavi()
    report = check(mock, write_test=True)
    assert report.exit_code == conformance.MATCHES, text(report)
    writes = [(m, p) for m, p in mock.calls if m in ("PUT", "DELETE")]
    prefix = "casavi-pipeline-check-"
    assert writes == [
        ("PUT", f"/v2/properties/{prefix}property"),
        ("PUT", f"/v2/properties/{prefix}property"),
        ("PUT", f"/v2/units/{prefix}unit"),
        ("PUT", f"/v2/contacts/{prefix}contact"),
        ("DELETE", f"/v2/contacts/{prefix}contact"),
        ("DELETE", f"/v2/units/{prefix}unit"),
        ("DELETE", f"/v2/properties/{prefix}property"),
    ]
    assert [str(s).split(" (")[0] for s in report.steps] == [
        "PUT /v2/properties/{id} → 201",
        "PUT /v2/properties/{id} → 200",
        "GET /v2/properties/{id} → 200",
        "PUT /v2/units/{id} → 201",
        "GET /v2/units/{id} → 200",
        "PUT /v2/contacts/{id} → 201",
        "GET /v2/contacts/{id} → 200",
        "DELETE /v2/contacts/{id} → 204",
        "GET /v2/contacts/{id} → 404",
        "DELETE /v2/units/{id} → 204",
        "GET /v2/units/{id} → 404",
        "DELETE /v2/properties/{id} → 204",
        "GET /v2/properties/{id} → 404",
    ]
    assert not any(ref.startswith(prefix) for objs in mock.objects.values() for ref in objs)
    assert report.writes == 7
    assert "DELETE answers: contact 204, gone when read back; unit 204, gone when read back; property 204, " \
        "gone when read back" in text(report)  # fmt: skip


def test_the_write_test_records_a_delete_casavi_refuses_or_only_archives():
    forbidden = check(MockCasavi(delete_status=403), write_test=True)
    assert forbidden.exit_code == conformance.CONTRADICTS and forbidden.cannot_check is None
    assert "DELETE answers: contact 403 (this API key may not delete); unit 403 (this API key may not " \
        "delete); property 403 (this API key may not delete)" in text(forbidden)  # fmt: skip
    assert len(forbidden.left_behind) == 3
    conflict = check(MockCasavi(delete_status=409), write_test=True)
    assert "DELETE answers: contact 409; unit 409; property 409" in text(conflict)
    archived = check(MockCasavi(archive_on_delete=True), write_test=True)
    assert "STATUS_DELETED" in contradicted(archived)
    assert "contact 204, still read by id" in text(archived)
    assert "GET /v2/contacts/{id} → 200 (expected 404)" in text(archived)


def test_the_write_test_names_a_field_casavi_does_not_keep():
    report = check(MockCasavi(drop_on_write={"rooms"}), write_test=True)
    assert contradicted(report) == ['FIELD_RULES[unit] field "rooms"']
    assert "written, read back without it" in report.summary
    assert report.left_behind == []


def test_a_slash_separator_that_does_not_survive_a_path_is_named():
    mock = MockCasavi(slash_unrouted=True)
    report = check(mock, separator="/", write_test=True)
    assert "CASAVI_ID_SEPARATOR" in contradicted(report)
    assert ("PUT", "/v2/properties/casavi-pipeline-check%2Fproperty") in mock.calls
    survived = check(MockCasavi(), separator="/", write_test=True)
    assert survived.exit_code == conformance.MATCHES, text(survived)
    assert "separator '/': a reference id with '/' (%2F in the path) survives" in text(survived)


def test_write_test_records_follow_the_model():
    for kind, record in conformance.write_test_records("|").items():
        assert api.validate_payload(kind, api.to_payload(kind, record)) == []


# --- the sync meets the model's limits on its own --------------------------------------------------------
@pytest.mark.parametrize("status", [404, 405])
def test_a_put_answered_404_or_405_is_a_model_mismatch_not_an_unknown_id(status):
    mock = MockCasavi()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(status, json={"message": "Müller"})
        return mock(request)

    with make_client(handler) as client:
        ops = [Operation(ObjectKind.UNIT, "upsert", "0001-1", {"id": "0001-1"})]
        with pytest.raises(CasaviModelMismatchError) as info:
            list(client.execute(ops))
    message = str(info.value)
    assert message == (
        f"PUT /v2/units/{{id}} [0001-1] → {status}: casavi's API differs from casavi_pipeline's model at this "
        "call: run `casavi-pipeline check-casavi`"
    )
    assert "unknown reference id" not in message and "Müller" not in message


def test_a_listing_or_delete_answered_405_is_a_model_mismatch():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == api.AUTH_PATH:
            return httpx.Response(200, json={"token": "t", "expiresAt": "2099-01-01T00:00:00Z"})
        return httpx.Response(405)

    with make_client(handler) as client:
        with pytest.raises(CasaviModelMismatchError, match=r"^GET /v2/contacts → 405: casavi's API differs"):
            list(client.list_objects(ObjectKind.CONTACT))
        with pytest.raises(CasaviModelMismatchError, match=r"^DELETE /v2/units/\{id\} \[gone\] → 405"):
            client.delete(ObjectKind.UNIT, "gone")


# --- the command, as an operator runs it -------------------------------------------------------------------
def run_cli(processes: Processes, env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return processes.run(
        [CLI, "check-casavi", *args],
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), **env},
        cwd=cwd,
        timeout=120,
    )


def settings_for(base_url: str, key: str = "k", secret: str = "s") -> dict[str, str]:
    return {
        "ERP_EXPORT_DIR": "/nonexistent",
        "CASAVI_MANDANTEN": "0001",
        "CASAVI_BASE_URL": base_url,
        "CASAVI_API_KEY": key,
        "CASAVI_API_SECRET": secret,
        "CASAVI_REQUESTS_PER_MINUTE": "0",
    }


def test_missing_settings_cannot_check_in_one_line(processes, tmp_path):
    done = run_cli(processes, {}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("check-casavi: cannot check: casavi_pipeline settings: ")
    assert "CASAVI_API_KEY is not set" in done.stderr


def test_an_unreachable_casavi_cannot_check_in_one_line(processes, tmp_path):
    done = run_cli(processes, settings_for("http://127.0.0.1:9"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert "cannot check casavi at http://127.0.0.1:9: casavi cannot be reached" in done.stderr
    assert "is CASAVI_BASE_URL right" in done.stderr


def test_the_command_line_knows_its_commands(processes):
    done = processes.run([CLI, "--help"])
    assert done.returncode == 0 and "check-casavi" in done.stdout
    assert processes.run([CLI]).returncode == 2


# --- the command against the sandbox, a real casavi process -----------------------------------------------
def sample_bodies() -> list[tuple[ObjectKind, dict[str, Any]]]:
    return list(mapped_bodies(SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN.split(",")[0]))


def personal_values(bodies: list[tuple[ObjectKind, dict[str, Any]]]) -> set[str]:
    """The sample's names, emails, phones and streets (and the properties' names)."""
    personal = {"firstName", "lastName", "companyName", "email", "telephone", "mobile", "street", "name"}
    values = {
        value
        for _, body in bodies
        for name, value in body.items()
        if name in personal and isinstance(value, str) and len(value) >= 4
    }
    values |= {a["street"] for kind, body in bodies if kind is ObjectKind.PROPERTY for a in body["addresses"]}
    return values


def assert_read_only(sandbox: SandboxProcess) -> int:
    """No write reached the sandbox, and at most 12 requests; returns how many."""
    counted = sandbox.requests()
    assert sandbox.write_count() == 0, counted
    assert counted["total"] <= 12, counted
    return counted["total"]


def test_the_sample_account_matches_read_only_and_no_personal_value_is_printed(processes, sandbox, tmp_path):
    bodies = sample_bodies()
    sandbox.seed(bodies)
    # every read carries appLink already; these are the other fields the sync does not manage
    sandbox.configure(unmanaged_fields="images,responsibilities,customFields,mscObjectNumber")
    done = run_cli(
        processes, settings_for(sandbox.base_url, sandbox.api_key, sandbox.api_secret), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert assert_read_only(sandbox) == 8  # 7, and a page of one object: no first page had a next link
    out = done.stdout + done.stderr
    assert "next link: on 127.0.0.1, the configured host" in out
    assert "fields casavi returned that the model does not know: -" in out
    assert out.count("one read by id: 200, the same fields as listed") == 3  # property, unit, contact
    leaked = sorted(value for value in personal_values(bodies) if value in out)
    assert not leaked, f"{len(leaked)} personal values in the output"
    assert done.stdout.splitlines()[-1].startswith(f"casavi at {sandbox.base_url} matches")


def test_a_field_renamed_by_casavi_exits_1_naming_the_rule(processes, sandbox, tmp_path):
    sandbox.configure(rename_field="units.rooms=roomCount")
    with make_client(base_url=sandbox.base_url, key=sandbox.api_key, secret=sandbox.api_secret) as client:
        for kind, body in sample_bodies():
            assert client.upsert(kind, body).ok
    sandbox.reset(objects=False, knobs=False)  # count only the check's requests
    done = run_cli(
        processes, settings_for(sandbox.base_url, sandbox.api_key, sandbox.api_secret), cwd=tmp_path
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert_read_only(sandbox)
    lines = [line for line in done.stdout.splitlines() if line.startswith("CONTRADICTION")]
    assert lines == [
        'CONTRADICTION FIELD_RULES[unit] field "rooms": casavi never returned it; it returned fields the model '
        "does not know: roomCount (renamed?)"
    ]


def test_the_write_test_leaves_nothing_behind(processes, sandbox, tmp_path):
    sandbox.seed(sample_bodies())
    before = sandbox.state()
    for separator in ("-", "/"):
        env = {
            **settings_for(sandbox.base_url, sandbox.api_key, sandbox.api_secret),
            "CASAVI_ID_SEPARATOR": separator,
        }
        done = run_cli(processes, env, "--write-test", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "write test:" in done.stdout and "(expected" not in done.stdout
        assert sandbox.state() == before
    assert "separator '/': a reference id with '/' (%2F in the path) survives" in done.stdout


def test_the_write_test_names_a_field_casavi_loses(processes, sandbox, tmp_path):
    sandbox.configure(drop_field="contacts.contracts.number")
    done = run_cli(
        processes,
        settings_for(sandbox.base_url, sandbox.api_key, sandbox.api_secret),
        "--write-test",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'CONTRACT_RULES field "number": written, read back without it' in done.stdout
    assert not any(sandbox.state().values())


def test_an_empty_account_exits_2_in_one_line_and_its_write_test_compares(processes, sandbox, tmp_path):
    env = settings_for(sandbox.base_url, sandbox.api_key, sandbox.api_secret)
    done = run_cli(processes, env, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert "nothing was compared: run `casavi-pipeline check-casavi --write-test`" in done.stderr
    assert assert_read_only(sandbox) == 4
    written = run_cli(processes, env, "--write-test", cwd=tmp_path)
    assert written.returncode == 0, written.stdout + written.stderr
    assert "the account holds nothing to compare: only the write test's objects were" in written.stdout
    deletes = [line for line in written.stdout.splitlines() if line.startswith("DELETE answers: ")]
    assert deletes == [
        "DELETE answers: contact 204, gone when read back; unit 204, gone when read back; property 204, "
        "gone when read back"
    ]
    assert not any(sandbox.state().values())


def test_a_wrong_secret_exits_2_in_one_line_after_one_login(processes, sandbox, tmp_path):
    done = run_cli(processes, settings_for(sandbox.base_url, sandbox.api_key, "wrong"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert (
        "casavi refused the API key/secret (401): set valid CASAVI_API_KEY and CASAVI_API_SECRET"
        in done.stderr
    )
    assert "wrong" not in done.stderr
    assert sandbox.requests()["total"] == 1 and sandbox.write_count() == 0


class _Scripted(http.server.BaseHTTPRequestHandler):
    """A casavi on a real socket answering as a `MockCasavi`: for what the sandbox refuses to store."""

    mock: ClassVar[MockCasavi]

    def _any(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = httpx.Request(
            self.command, f"http://casavi.test{self.path}", headers=dict(self.headers),
            content=self.rfile.read(length) if length else b"",
        )  # fmt: skip
        answer = self.mock(request)
        answer.read()
        self.send_response(answer.status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, MockCasavi]]:
    """A scripted casavi on a free port on 127.0.0.1: (base URL, its script)."""
    mock = MockCasavi()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Scripted,), {"mock": mock}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", mock
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_enum_values_outside_ours_exit_1_naming_each_enum_but_a_usage_is_a_note(
    processes, scripted, tmp_path
):
    # the sandbox validates every write and seed with the adapter's enums: a scripted casavi serves them
    base_url, mock = scripted
    mock.objects["units"]["0001-1-1"]["usage"] = "MIXED_USE"
    mock.objects["contacts"]["0001-P1"]["contracts"][0]["type"] = "Untermieter Erika"
    done = run_cli(processes, settings_for(base_url), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("CONTRADICTION")] == [
        "CONTRADICTION ContractType",
    ]
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("NOTE")] == [
        "NOTE Usage"
    ]
    assert "MIXED_USE (1)" in done.stdout and "Erika" not in done.stdout
    assert {method for method, _ in mock.calls} == {"POST", "GET"} and len(mock.calls) == 7


def test_a_next_link_on_another_host_is_one_line_naming_the_base_url_to_set(processes, scripted, tmp_path):
    base_url, mock = scripted
    mock.objects["units"]["0001-1-2"] = {**mock.objects["units"]["0001-1-1"], "id": "0001-1-2"}
    mock.behaviour["next_origin"] = "https://api-v2.mycasavi.test"
    done = run_cli(processes, settings_for(base_url), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("CONTRADICTION")] == [
        "CONTRADICTION CASAVI_BASE_URL: casavi's next-page link points at https://api-v2.mycasavi.test, not "
        f"at {base_url}: set CASAVI_BASE_URL=https://api-v2.mycasavi.test (the sync sends its token only to "
        "the configured host, and stops at a link elsewhere)"
    ]
    assert done.stderr == "" and len(mock.calls) == 8


def test_a_sync_meeting_a_405_says_in_one_line_to_run_check_casavi(scripted, tmp_path, monkeypatch):
    base_url, mock = scripted
    mock.objects.clear()  # an empty account, whose PUTs casavi does not allow
    mock.behaviour["not_allowed"] = {"PUT"}
    values = {
        **settings_for(base_url),
        "ERP_EXPORT_DIR": str(SAMPLE_EXPORT_DIR),
        "CASAVI_SNAPSHOT_DB": str(tmp_path / "snapshots"),
    }
    for name in ("CASAVI_BASE_URL", "CASAVI_API_KEY", "CASAVI_API_SECRET"):  # read when the run starts
        monkeypatch.setenv(name, values[name])
    with dg.instance_for_test() as instance:
        result = run_from_environment("0001", values, instance=instance)
        reason = reason_of_run(instance, result.run_id)
    assert not result.success
    assert re.fullmatch(
        rf"casavi_sync: casavi at {re.escape(base_url)}: PUT /v2/properties/\{{id\}} \[0001-[^\]]+\] → 405: "
        r"casavi's API differs from casavi_pipeline's model at this call: run `casavi-pipeline check-casavi`",
        reason,
    ), reason
    assert "unknown reference id" not in reason
    assert 0 < sum(method == "PUT" for method, _ in mock.calls) <= 4  # the writes in flight, no more


# --- the Dagster job --------------------------------------------------------------------------------------
def test_the_job_passes_on_a_conforming_account(sandbox, tmp_path, monkeypatch):
    from casavi_pipeline.defs.conformance import casavi_conformance
    from casavi_pipeline.defs.resources import HttpCasaviResource, SyncPolicy

    sandbox.seed(sample_bodies())
    monkeypatch.setenv(
        "CASAVI_BASE_URL", sandbox.base_url
    )  # the resource takes it from the run's environment
    casavi = HttpCasaviResource(
        api_key=sandbox.api_key, api_secret=sandbox.api_secret, state_directory=str(tmp_path)
    )
    result = casavi_conformance.execute_in_process(resources={"casavi": casavi, "sync_policy": SyncPolicy()})
    assert result.success
    (materialization,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialization.event_specific_data.metadata
    assert metadata["contradictions"].value == 0 and metadata["writes"].value == 0
    assert_read_only(sandbox)


def test_the_job_fails_with_the_same_one_line_report(tmp_path, monkeypatch):
    from casavi_pipeline.defs.conformance import casavi_conformance
    from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
    from casavi_pipeline.defs.resources import HttpCasaviResource, SyncPolicy

    monkeypatch.setenv("CASAVI_BASE_URL", "http://127.0.0.1:9")
    casavi = HttpCasaviResource(api_key="k", api_secret="s", state_directory=str(tmp_path), max_attempts=1)
    with dg.instance_for_test() as instance:
        result = casavi_conformance.execute_in_process(
            resources={"casavi": casavi, "sync_policy": SyncPolicy()}, instance=instance, raise_on_error=False
        )
        assert not result.success
        reason = reason_of_run(instance, result.run_id)
        tag = instance.get_run_by_id(result.run_id).tags[FAILURE_REASON_TAG]
    assert casavi_conformance.partitions_def is None
    expected = "cannot check casavi at http://127.0.0.1:9: casavi cannot be reached"
    assert reason.startswith(f"check_casavi: {expected}") and "\n" not in reason
    assert expected in tag
