"""A mistake in the adapter fails end to end (issue 28): the sandbox process judges what it is sent by its
own reading of `docs/casavi-api.md`, not by the adapter's rules, so an adapter that puts a field on the
wire in the wrong shape meets casavi's 400 instead of agreeing with itself twice."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.defs.failures import FAILURE_REASON_TAG
from casavi_pipeline_tests.e2e import assert_sandbox_holds, export, run_job, writes_by_route
from casavi_pipeline_tests.harness import check_results

pytestmark = pytest.mark.e2e

_ROOMS_AS_NUMBER = """'rooms': "rooms"::DOUBLE"""


def rooms_as_text(right: Callable[[ObjectKind], str]) -> Callable[[ObjectKind], str]:
    """The adapter's body of a kind with a wrong field rule: a unit's `rooms` goes out as a string
    (`"2.5"`). The body is what the changeset builds, hashes and sends (`api.payload_json_sql`); the
    mapped frames and the pipeline's own checks of them stay right, as they would with such a bug."""
    assert _ROOMS_AS_NUMBER in right(ObjectKind.UNIT)  # the patch changes what it means to change

    def wrong(kind: ObjectKind) -> str:
        sql = right(kind)
        return (
            sql.replace(_ROOMS_AS_NUMBER, """'rooms': "rooms"::VARCHAR""") if kind is ObjectKind.UNIT else sql
        )

    return wrong


def test_an_adapter_sending_rooms_as_a_string_fails_end_to_end(env, sandbox, monkeypatch):
    export(env)  # one of its three units has rooms (2.5); its tenant's contract names that unit
    with pytest.MonkeyPatch.context() as adapter:
        adapter.setattr(api, "payload_json_sql", rooms_as_text(api.payload_json_sql))
        first = run_job(env)
        # casavi refused the unit (400, rooms) and with it the contract on it (422, the unit is unknown);
        # below CASAVI_REJECTED_MIN_COUNT the run succeeds and its rejections check warns, naming the field
        assert first.success
        assert sandbox.requests()["routes"]["PUT /v2/units/{id}"] == {"201": 2, "400": 1}
        check = check_results(first)["casavi_rejections"]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        rows = sorted(
            (r.data["kind"], r.data["status"], r.data["fields"])
            for r in check.metadata["rejections"].value.records
        )
        assert rows == [("contact", 422, "contracts[0].unitId"), ("unit", 400, "rooms")]
        with pytest.raises(AssertionError):  # the suite's usual end-to-end assertion fails
            assert_sandbox_holds(sandbox, first)

        # Held to no minimum count, the same refusals fail the run with one line naming the field.
        monkeypatch.setenv("CASAVI_REJECTED_MIN_COUNT", "0")
        sandbox.reset(objects=False)
        with dg.DagsterInstance.get() as instance:
            second = run_job(env)
            reason = instance.get_run_by_id(second.run_id).tags[FAILURE_REASON_TAG]
        assert not second.success
        assert "casavi rejected 2 of 2 writes" in reason and "\n" not in reason
        assert "400 (fields: rooms)" in reason, reason

    # The adapter as shipped: the same export lands, and the pending unit and contact are what is sent.
    sandbox.reset(objects=False)
    third = run_job(env)
    assert third.success and check_results(third)["casavi_rejections"].passed
    assert writes_by_route(sandbox) == {"PUT /v2/units/{id}": 1, "PUT /v2/contacts/{id}": 1}
    assert_sandbox_holds(sandbox, third)
