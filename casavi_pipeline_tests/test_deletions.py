"""Deletions that wait for a person (CASAVI_DELETIONS), without Dagster: the changeset, the pending
deletions in the snapshot (a real DuckDB file), approvals and the guard, against the in-memory casavi
that applies the sandbox's model (409 for a referenced delete or a dropped street in use).

The export is the tiny default one (`erp_fixtures`): property 0001-001 with the streets Müllerstraße 12
(units 0001, 0002) and Weißdornweg 3a (unit 0003); contact 00042 rents 0001, 00044 rents 0002, owner
00050 owns 0003; tenant 00043 has no email.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from casavi_harness.fake import FakeCasaviClient
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.mapping import map_mandant
from casavi_pipeline.mapping.scope import SyncRule
from casavi_pipeline.state import deletions
from casavi_pipeline.state.deletions import Deletions, UnknownDeletionError
from casavi_pipeline.state.diff import ChangesetSummary, compute_changeset
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.sync.apply import SyncReport, apply_changeset
from casavi_pipeline.sync.guards import GuardPolicy, GuardResult, evaluate_guards
from casavi_pipeline_tests.erp_fixtures import default_rows, write_export

M = "0001"
UNIT_3 = "0001-001-02-0003"
OWNER = "0001-00050"
BAKERY = "0001-00044"  # the only tenant of contract 100002


@dataclass
class Night:
    summary: ChangesetSummary
    guard: GuardResult
    merged: deletions.Merged | None
    report: SyncReport | None
    pending: list[deletions.PendingDeletion]


class Mandant:
    """One Mandant synced night after night as `casavi_sync` does it: changeset, guards, merge, writes."""

    def __init__(self, tmp_path, policy: Deletions = Deletions.APPROVE, min_count: int = 2) -> None:
        self.tmp_path, self.policy = tmp_path, policy
        self.path = tmp_path / f"snapshot_{M}.duckdb"
        self.casavi = FakeCasaviClient()
        self.guards = GuardPolicy(separator="-", deletions=policy, delete_guard_min_count=min_count)

    def night(self, rows=None, *, rule: SyncRule = SyncRule.EMAIL) -> Night:
        root = write_export(self.tmp_path / "export", {M: rows if rows is not None else {}})
        erp = {e.name: read_entity(root, M, e).frame for e in ENTITIES}
        out = map_mandant(erp, mandant=M, separator="-", rule=rule)
        frames = {ObjectKind.PROPERTY: out["properties"], ObjectKind.UNIT: out["units"],
                  ObjectKind.CONTACT: out["contacts"]}  # fmt: skip
        self.casavi.requests.clear()
        with Snapshot(self.path, M) as snap:
            summary = compute_changeset(snap, frames, deletions=self.policy, left_out=out["left_out"])
            guard = evaluate_guards(self.guards, snap).mass_deletion
            merged = report = None
            if guard.passed:
                merged = deletions.merge(snap, snap.changeset_kinds(), run_id="test")
                report = apply_changeset(snap, self.casavi)
            return Night(summary, guard, merged, report, deletions.pending(snap))

    def approve(self, *ids: str, by: str = "erika") -> list[deletions.PendingDeletion]:
        with Snapshot(self.path, M) as snap:
            return deletions.approve(snap, list(ids) or None, by=by, run_id="test")

    def holds(self, kind: ObjectKind) -> set[str]:
        return set(self.casavi.objects[kind])

    def sent(self) -> list[tuple[str, str, str]]:
        return [(action, kind.value, ref_id) for action, kind, ref_id in self.casavi.requests]


def without_unit_3(rows=None):
    """Unit 0003 and its building Weißdornweg 3a leave the export, with the ownership contract on it and
    its owner (contact 00050: removed from the export too)."""
    rows = rows or default_rows()
    rows["verwaltungseinheiten"] = [r for r in rows["verwaltungseinheiten"] if r["ve_nr"] != "0003"]
    rows["gebaeude"] = [r for r in rows["gebaeude"] if r["geb_nr"] != "02"]
    rows["eigentuemervertraege"], rows["eigentuemer"] = [], []
    return rows


def bakery_without_email(rows=None):
    rows = rows or default_rows()
    rows["mieter"][2]["email"] = "info-at-baeckerei"  # invalid: its contact has no synced contract left
    return rows


def test_under_approve_nothing_is_deleted_nothing_of_it_is_written_and_each_waits_with_why(tmp_path):
    mandant = Mandant(tmp_path)
    mandant.night()
    before = {kind: dict(objects) for kind, objects in mandant.casavi.objects.items()}

    night = mandant.night(bakery_without_email(without_unit_3()))
    assert night.guard.passed
    assert mandant.sent() == []  # no DELETE, and no PUT of the property dropping unit 0003's street
    assert mandant.casavi.objects == before
    assert [(p.kind, p.ref_id, p.why, p.approved_at) for p in night.pending] == [
        ("contact", BAKERY, "out of the sync rule", None),  # still in mieter.csv, without a valid email
        ("contact", OWNER, "removed from the export", None),
        ("unit", UNIT_3, "removed from the export", None),
    ]
    assert len(night.merged.new) == 3
    unit = night.summary.kinds[ObjectKind.UNIT]
    assert (unit.delete, unit.waiting, unit.leaving_new) == (0, 1, 1)
    # The next night changes nothing and counts nothing again for the guard.
    again = mandant.night(bakery_without_email(without_unit_3()))
    assert mandant.sent() == [] and again.merged.new == []
    assert all(changes.guarded == 0 for changes in again.summary.kinds.values())
    assert [p.since for p in again.pending] == [p.since for p in night.pending]


def test_an_approved_deletion_is_sent_by_the_next_run_and_only_that_one(tmp_path):
    mandant = Mandant(tmp_path)
    mandant.night()
    mandant.night(bakery_without_email(without_unit_3()))
    assert [p.ref_id for p in mandant.approve(BAKERY, by="erika")] == [BAKERY]

    night = mandant.night(bakery_without_email(without_unit_3()))
    assert mandant.sent() == [("DELETE", "contact", BAKERY)]
    assert BAKERY not in mandant.holds(ObjectKind.CONTACT)
    assert [p.ref_id for p in night.pending] == [OWNER, UNIT_3]  # the confirmed delete ended its row
    with Snapshot(mandant.path, M) as snap:
        trail = snap.connection.execute(
            "SELECT change, status, actor FROM audit WHERE ref_id = ? ORDER BY answered_at", [BAKERY]
        ).fetchall()
    assert trail == [("create", 201, None), ("approve", None, "erika"), ("delete", 204, None)]


def test_an_approved_unit_a_waiting_contact_still_references_is_kept_waiting_and_says_why(tmp_path):
    mandant = Mandant(tmp_path)
    mandant.night()
    mandant.night(without_unit_3())
    mandant.approve(UNIT_3)

    night = mandant.night(without_unit_3())
    assert mandant.sent() == []  # casavi would answer 409: contact 00050's contract names the unit
    (unit,) = [p for p in night.pending if p.ref_id == UNIT_3]
    assert (unit.approved_by, unit.held_by, unit.waits_for_a_person) == ("erika", f"contact {OWNER}", True)

    mandant.approve(OWNER)  # now both go: the contact first, then the unit, then the property's street
    mandant.night(without_unit_3())
    assert mandant.sent() == [
        ("DELETE", "contact", OWNER),
        ("DELETE", "unit", UNIT_3),
        ("PUT", "property", "0001-001"),  # only the settling PUT dropping Weißdornweg 3a
    ]
    streets = [a["street"] for a in mandant.casavi.objects[ObjectKind.PROPERTY]["0001-001"]["addresses"]]
    assert streets == ["Müllerstraße 12"]
    assert mandant.night(without_unit_3()).pending == [] and mandant.sent() == []


def test_an_approved_object_back_in_scope_is_synced_not_deleted_and_its_approval_dropped(tmp_path):
    mandant = Mandant(tmp_path)
    mandant.night()
    mandant.night(without_unit_3())
    mandant.approve()  # all: the owner, the unit

    rows = default_rows()
    rows["verwaltungseinheiten"][2]["lage"] = "Hof"  # back, and changed
    night = mandant.night(rows)
    assert mandant.sent() == [("PUT", "unit", UNIT_3)]
    assert mandant.casavi.objects[ObjectKind.UNIT][UNIT_3]["name"] == "Stellplatz Hof"
    assert sorted(night.merged.returned) == [("contact", OWNER), ("unit", UNIT_3)]
    assert night.pending == []
    mandant.night(without_unit_3())  # out again: it waits again, unapproved
    assert mandant.sent() == []


@pytest.mark.parametrize("policy", [Deletions.DELETE, Deletions.KEEP])
def test_delete_deletes_at_once_and_keep_never(tmp_path, policy):
    mandant = Mandant(tmp_path, policy)
    mandant.night()
    night = mandant.night(bakery_without_email(without_unit_3()))
    if policy is Deletions.DELETE:
        assert mandant.sent() == [
            ("DELETE", "contact", BAKERY),
            ("DELETE", "contact", OWNER),
            ("DELETE", "unit", UNIT_3),
            ("PUT", "property", "0001-001"),
        ]
        assert night.pending == []
    else:
        assert mandant.sent() == []
        assert {p.ref_id for p in night.pending} == {BAKERY, OWNER, UNIT_3}
        assert sum(changes.kept for changes in night.summary.kinds.values()) == 3
        with Snapshot(mandant.path, M) as snap:
            deletions.approve(snap, [UNIT_3], by="erika", run_id="test")
        mandant.night(bakery_without_email(without_unit_3()))
        assert mandant.sent() == []  # keep never deletes, approved or not


def test_a_contract_leaving_the_scope_is_a_put_whatever_the_setting_and_the_guard_counts_it(tmp_path):
    """Contact 00042 also owns unit 0003: losing the rental contract leaves it one synced contract."""
    rows = default_rows()
    rows["eigentuemer"][0] = {**rows["mieter"][0], "ev_nr": "200001"}
    rows["eigentuemer"][0].pop("vertrag_nr")
    mandant = Mandant(tmp_path, min_count=0)
    mandant.night(rows)
    rows["mietvertraege"] = [r for r in rows["mietvertraege"] if r["vertrag_nr"] != "100001"]
    rows["mieter"] = [r for r in rows["mieter"] if r["vertrag_nr"] != "100001"]

    night = mandant.night(rows)
    assert night.summary.kinds[ObjectKind.CONTACT].losing_contracts == 1
    assert not night.guard.passed  # 1 of 2 contacts (50 %) losing contracts, above 10 %
    assert "1 of 2 contacts (50%; 1 of them losing contracts)" in night.guard.reason
    assert "CASAVI_DELETIONS=approve: they would wait for deletion" in night.guard.reason
    mandant.guards = GuardPolicy(separator="-", allow_mass_delete=True)
    mandant.night(rows)
    assert mandant.sent() == [("PUT", "contact", "0001-00042")]
    assert [c["type"] for c in mandant.casavi.objects[ObjectKind.CONTACT]["0001-00042"]["contracts"]] == ["OWNER"]


def test_a_guard_stop_lists_nothing_so_the_same_objects_count_again_the_next_night(tmp_path):
    mandant = Mandant(tmp_path, min_count=0)
    mandant.night()
    truncated = {"mietvertraege": [], "mieter": []}
    for _ in range(2):
        night = mandant.night(truncated)
        assert not night.guard.passed and night.pending == [] and mandant.sent() == []
        assert "2 of 3 contacts (67%)" in night.guard.reason


def test_approving_an_unknown_id_approves_nothing_and_an_id_of_two_kinds_needs_its_kind(tmp_path):
    mandant = Mandant(tmp_path)
    mandant.night()
    mandant.night(without_unit_3())
    with pytest.raises(UnknownDeletionError) as info:
        mandant.approve(UNIT_3, "0001-nope")
    assert str(info.value) == (
        "Mandant 0001: no pending deletion with reference id 0001-nope (`casavi-pipeline deletions "
        "--mandant 0001` lists them). Nothing was approved."
    )
    with Snapshot(mandant.path, M) as snap:
        assert all(p.approved_at is None for p in deletions.pending(snap))
        assert snap.connection.execute("SELECT count(*) FROM audit WHERE change = 'approve'").fetchone() == (0,)
        # a property and a contact may share an id (we_nr 00050, person_nr 00050)
        snap.connection.execute("INSERT INTO deletions VALUES ('property', ?, 'removed from the export', now(), 'test', NULL, NULL)", [OWNER])  # fmt: skip
        with pytest.raises(UnknownDeletionError, match=f"say which: contact:{OWNER} or property:{OWNER}"):
            deletions.approve(snap, [OWNER], by="erika", run_id="test")
        (approved,) = deletions.approve(snap, [f"property:{OWNER}"], by="erika", run_id="test")
        assert (approved.kind, approved.ref_id) == ("property", OWNER)
