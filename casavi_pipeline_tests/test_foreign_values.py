"""Values casavi holds outside our model (casavi's help centre: a unit usage *Stellplatz*, or none), on real
DuckDB files: a read is compared as read, the changeset keeps such a value as casavi holds it, the run
names it only if it looks like a code; then end to end against the sandbox process.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from casavi_harness.accounts import mapped_bodies
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.reader import CasaviReader
from casavi_pipeline.cli import audit
from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
from casavi_pipeline.state.diff import changed_fields, compute_changeset, foreign_values
from casavi_pipeline.state.listing import ReadReport, RemoteCache
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline_tests.e2e import MANDANT, export, run_job, state_store, writes_by_route
from casavi_pipeline_tests.erp_fixtures import default_rows
from casavi_pipeline_tests.harness import check_results
from casavi_sandbox import SandboxProcess


def refresh(
    cache: RemoteCache,
    casavi: object,
    prefixes: tuple[str, ...],
    *,
    now: dt.datetime,
    full: bool = False,
    max_age: dt.timedelta = dt.timedelta(minutes=10),
    full_every: dt.timedelta = dt.timedelta(days=7),
) -> ReadReport:
    """The listing refreshed through the casavi reader, as `sync.read` does (defaults of the tests)."""
    return cache.refresh(
        CasaviReader(casavi, prefixes), full=full, why_full="asked for", max_age=max_age, full_every=full_every, now=now
    )


T0 = dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.UTC)
PARKING, EMPTY, PRIVATE, PERSONAL = "0001-1-01-1", "0001-1-01-2", "0001-1-01-3", "0001-1-01-4"


def unit_body(ref: str, usage: object = "PRIVATE", **changes: object) -> dict:
    """A unit as the ERP maps it (casavi names), `usage` as given."""
    return {"id": ref, "propertyId": "0001-1", "address": "Weg 1", "name": f"Einheit {ref[-1]}",
            "number": ref[-1], "usage": usage, "area": 50.0, "rooms": 2.0, **changes}  # fmt: skip


class Casavi:
    """Lists the given units as casavi's read would (with `internalId` and `modified`)."""

    def __init__(self, units: list[dict], *, modified: dt.datetime = T0) -> None:
        stamp = modified.isoformat().replace("+00:00", "Z")
        self.units = [{**u, "internalId": i, "modified": stamp} for i, u in enumerate(units)]

    def list_objects(self, kind, *, page_size=500, modified_after=None):
        return iter(self.units if kind is ObjectKind.UNIT else ())


def mapped(*bodies: dict) -> pd.DataFrame:
    """The mapping's unit frame (domain columns) for these bodies."""
    records = [api.record_from_read(ObjectKind.UNIT, body) for body in bodies]
    return pd.DataFrame(records, columns=list(api.DOMAIN_COLUMNS[ObjectKind.UNIT]))


def read_into(snapshot: Snapshot, tmp_path, units: list[dict], *, modified: dt.datetime = T0) -> None:
    """List casavi into the account's listing and take the Mandant's slice, as the read step does."""
    cache = RemoteCache(tmp_path)
    refresh(cache, Casavi(units, modified=modified), ("0001-",), full=True, now=modified)
    cache.take_slice(snapshot, ALLOWED_SEPARATORS)


def pending(snapshot: Snapshot) -> dict[str, dict]:
    return {op.ref_id: op for op in snapshot.pending_ops(ObjectKind.UNIT, "upsert")}


def confirm_all(snapshot: Snapshot) -> None:
    for op in snapshot.pending_ops(ObjectKind.UNIT, "upsert"):
        snapshot.confirm(ObjectKind.UNIT, "upsert", op.ref_id, op.content_hash)
    snapshot.fold()


# --- the adapter's rules ----------------------------------------------------------------------------------
def test_casavi_holds_what_its_ui_sets_but_a_put_takes_only_ours():
    usage = api.rule_of(ObjectKind.UNIT, "usage")
    assert usage.keep_foreign and api.KEEP_FOREIGN_RULES[ObjectKind.UNIT] == (usage,)
    assert all(not rule.keep_foreign for kind in (ObjectKind.PROPERTY, ObjectKind.CONTACT)
               for rule in api.FIELD_RULES[kind])  # fmt: skip
    for value in ("PARKING", ""):  # casavi holds them (its UI sets them); a PUT takes only ours [model]
        body = unit_body(PARKING, value)
        assert [e.field for e in api.validate_payload(ObjectKind.UNIT, body)] == ["usage"]
        assert api.unholdable_fields(api.FIELD_RULES[ObjectKind.UNIT], body) == []
    assert [api.is_foreign(usage, v) for v in ("PARKING", "Frau M.", "", None, "PRIVATE")] == [
        True, True, False, False, False,
    ]  # fmt: skip
    assert [api.looks_like_code(v) for v in ("PARKING", "MIXED_USE2", "Parking", "A" * 33, "Frau M.")] == [
        True, True, False, False, False,
    ]  # fmt: skip


def test_only_a_read_our_model_cannot_hold_is_unholdable():
    rules = api.FIELD_RULES[ObjectKind.UNIT]
    assert api.unholdable_fields(rules, unit_body(PARKING, "PARKING", name="", number="9" * 300)) == []
    assert api.unholdable_fields(rules, unit_body(PARKING, area="ca. 50", name=7)) == ["name", "area"]
    contact = {"id": "0001-1", "lastName": "M", "contracts": [{"type": "SUBTENANT", "startDate": "gestern"}]}
    assert api.unholdable_fields(api.FIELD_RULES[ObjectKind.CONTACT], contact) == []
    contact["contracts"] = [{"type": "RENTER", "startDate": 20200101}]
    assert api.unholdable_fields(api.FIELD_RULES[ObjectKind.CONTACT], contact) == ["contracts"]


# --- the listing ------------------------------------------------------------------------------------------
def test_a_read_is_compared_as_read_and_only_an_unholdable_one_is_skipped(tmp_path):
    units = [
        unit_body(PARKING, "PARKING"),
        unit_body(EMPTY, ""),
        unit_body(PRIVATE, name=""),  # breaks a rule of a PUT: still casavi's, compared as read
        unit_body(PERSONAL, "Frau Müllers Garage"),
        unit_body("0001-1-01-5", area="ca. 50"),  # made by hand: our model cannot hold it
    ]
    report = refresh(RemoteCache(tmp_path), Casavi(units), ("0001-",), now=T0)
    assert report.listed["unit"] == 5 and report.skipped["unit"] == 1 and report.account_objects == 4
    with Snapshot(tmp_path / "snapshot_0001.duckdb", "0001") as snap:
        RemoteCache(tmp_path).take_slice(snap, ALLOWED_SEPARATORS)
        held = dict(snap.connection.execute("SELECT ref_id, payload FROM remote").fetchall())
    assert {ref: json.loads(body)["usage"] for ref, body in held.items()} == {
        PARKING: "PARKING", EMPTY: "", PRIVATE: "PRIVATE", PERSONAL: "Frau Müllers Garage",
    }  # fmt: skip


# --- the changeset ----------------------------------------------------------------------------------------
def test_an_adopted_foreign_usage_is_kept_and_an_empty_one_filled_with_the_erp_s(tmp_path):
    erp = [unit_body(PARKING), unit_body(EMPTY), unit_body(PRIVATE), unit_body(PERSONAL, "COMMERCIAL")]
    held = [unit_body(PARKING, "PARKING"), unit_body(EMPTY, ""), unit_body(PRIVATE), unit_body(PERSONAL, "Frau M.")]
    with Snapshot(tmp_path / "snapshot_0001.duckdb", "0001") as snap:
        read_into(snap, tmp_path, held)
        snap.adopt_remote("-")
        summary = compute_changeset(snap, {ObjectKind.UNIT: mapped(*erp)})
        ops = pending(snap)
        found = foreign_values(snap)
        drift = snap.drift()
    assert summary.total_writes == 1 and list(ops) == [EMPTY]  # only the empty usage is filled
    assert json.loads(ops[EMPTY].payload)["usage"] == "PRIVATE"
    assert drift.count() == 0
    assert found.count == 2
    assert found.lines() == [
        f"unit {PARKING}: usage 'PARKING' is outside casavi_pipeline's model; kept as casavi holds it",
        f"unit {PERSONAL}: usage holds a value outside casavi_pipeline's model; kept as casavi holds it",
    ]
    assert "Frau" not in " ".join(found.lines())
    with Snapshot(tmp_path / "snapshot_0002.duckdb", "0002") as nothing_read:
        assert foreign_values(nothing_read).count == 0


def test_a_later_put_of_a_kept_unit_carries_casavi_s_value_and_changes_only_what_the_erp_changed(tmp_path):
    with Snapshot(tmp_path / "snapshot_0001.duckdb", "0001") as snap:
        read_into(snap, tmp_path, [unit_body(PARKING, "PARKING")])
        snap.adopt_remote("-")
        compute_changeset(snap, {ObjectKind.UNIT: mapped(unit_body(PARKING, name="Stellplatz 1"))})
        (op,) = pending(snap).values()
    body = json.loads(op.payload)
    assert (body["usage"], body["name"]) == ("PARKING", "Stellplatz 1")
    assert changed_fields(op.payload, op.synced_payload) == "name"  # the audit trail's field names


def test_a_unit_we_wrote_that_a_person_made_a_stellplatz_is_not_written_again(tmp_path):
    with Snapshot(tmp_path / "snapshot_0001.duckdb", "0001") as snap:
        frames = {ObjectKind.UNIT: mapped(unit_body(PARKING), unit_body(EMPTY))}
        assert compute_changeset(snap, frames).total_writes == 2
        confirm_all(snap)
        # a read from before our writes (a changeset recomputed without a new read) is not trusted
        before = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        read_into(snap, tmp_path, [unit_body(PARKING, "PARKING"), unit_body(EMPTY)], modified=before)
        assert compute_changeset(snap, frames).total_writes == 1
        # a person sets Stellplatz on one of them in casavi's UI after we wrote it; the ERP says PRIVATE
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        read_into(snap, tmp_path, [unit_body(PARKING, "PARKING"), unit_body(EMPTY)], modified=later)
        assert [ids for ids in snap.drift().found.values()] == [(1, [PARKING])]  # seen as changed
        summary = compute_changeset(snap, frames)
        assert summary.total_writes == 0  # casavi holds what is desired: taken as synced, not sent
        assert snap.drift().count() == 0
        # the ERP changes the unit: the PUT keeps the Stellplatz
        compute_changeset(snap, {ObjectKind.UNIT: mapped(unit_body(PARKING, name="neu"), unit_body(EMPTY))})
        assert json.loads(pending(snap)[PARKING].payload)["usage"] == "PARKING"


# --- end to end: an account filled by Aareon Connect, then touched in casavi's UI ---------------------------
#: The sample export's units: a flat, a shop and a parking space (nutzungsart STELLPLATZ, mapped PRIVATE).
FLAT, STELLPLATZ = "0001-001-01-0001", "0001-001-02-0003"


def audit_rows(env) -> pd.DataFrame:
    rows, _ = audit.query([state_store(env)], audit.Filters(mandant=MANDANT))
    return rows


@pytest.mark.e2e
def test_a_stellplatz_set_in_casavi_is_adopted_kept_and_named_and_an_empty_usage_filled(env, sandbox):
    sandbox: SandboxProcess
    rows = default_rows()
    export(env, rows)
    bodies = list(mapped_bodies(Path(env["ERP_EXPORT_DIR"]), MANDANT))
    units = {body["id"]: body for kind, body in bodies if kind is ObjectKind.UNIT}
    units[STELLPLATZ]["usage"] = "PARKING"  # a person chose Stellplatz in casavi's UI
    units[FLAT]["usage"] = ""  # ... and emptied the flat's usage
    sandbox.seed(bodies)
    sandbox.reset(objects=False)

    first = run_job(env)
    assert first.success
    # adopted; exactly one write: the empty usage filled with the ERP's
    assert writes_by_route(sandbox) == {"PUT /v2/units/{id}": 1}
    held = sandbox.state()["units"]
    assert (held[FLAT]["usage"], held[STELLPLATZ]["usage"]) == ("PRIVATE", "PARKING")
    read = first.asset_materializations_for_node("casavi_remote")[0].metadata
    assert read["adopted"].value == len(bodies) and read["outside_model"].value == 1
    assert read["first_outside_model"].value == [
        f"unit {STELLPLATZ}: usage 'PARKING' is outside casavi_pipeline's model; kept as casavi holds it"
    ]
    assert check_results(first)["casavi_drift"].passed

    # a full listing the next night: nothing deleted in casavi, nothing to write
    sandbox.reset(objects=False)
    again = run_job(env, run_config={"ops": {"casavi_remote": {"config": {"full": True}}}})
    assert check_results(again)["casavi_drift"].passed and sandbox.write_count() == 0

    # the ERP renames the parking space: its PUT carries casavi's usage, not the ERP's PRIVATE
    rows["verwaltungseinheiten"][2]["lage"] = "TG-Stellplatz 3"
    export(env, rows)
    renamed = run_job(env)
    assert writes_by_route(sandbox) == {"PUT /v2/units/{id}": 1}
    trail = audit_rows(env)
    (attempt,) = trail[(trail["ref_id"] == STELLPLATZ) & (trail["run_id"] == renamed.run_id)].itertuples()
    assert list(attempt.fields) == ["name"]  # the body differs from casavi's only by the name
    # casavi takes its own value back on a PUT of the unit that holds it ([model]; the sandbox refuses a
    # usage outside ours on any other unit): the new name lands, the Stellplatz stays.
    assert attempt.status == 200 and not list(attempt.refused)
    assert renamed.success and check_results(renamed)["casavi_rejections"].passed
    held = sandbox.state()["units"][STELLPLATZ]
    assert (held["usage"], held["name"]) == ("PARKING", "Stellplatz TG-Stellplatz 3")
