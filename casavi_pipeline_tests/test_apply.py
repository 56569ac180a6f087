"""apply_changeset with the in-memory fake casavi: order, rejections, resume after an outage."""

from __future__ import annotations

import pandas as pd
import pytest

from casavi_harness.fake import FakeCasaviClient
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.errors import CasaviUnavailableError
from casavi_pipeline.state.diff import compute_changeset
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.sync.apply import apply_changeset


def frames(units: int) -> dict[ObjectKind, pd.DataFrame]:
    prop = {
        "id": "0001-1", "name": "Haus", "number": "1", "postal_code": None, "city": None,
        "country": "Germany", "note": None, "addresses": [{"street": "Weg 1"}],
    }  # fmt: skip
    unit_rows = [
        {"id": f"0001-1-01-{i:03d}", "property_id": "0001-1", "address": "Weg 1", "name": f"Wohnung {i}",
         "number": f"{i:03d}", "usage": "PRIVATE", "area": 50.0, "rooms": 2.0}
        for i in range(units)
    ]  # fmt: skip
    return {
        ObjectKind.PROPERTY: pd.DataFrame([prop], columns=api.DOMAIN_COLUMNS[ObjectKind.PROPERTY]),
        ObjectKind.UNIT: pd.DataFrame(unit_rows, columns=api.DOMAIN_COLUMNS[ObjectKind.UNIT]),
    }


def test_upserts_in_dependency_order_and_snapshot_follows(tmp_path):
    fake = FakeCasaviClient()
    with Snapshot(tmp_path / "s.duckdb", "0001") as snap:
        compute_changeset(snap, frames(3))
        report = apply_changeset(snap, fake)
        assert snap.pending_total() == 0
        assert snap.synced_counts() == {"property": 1, "unit": 3}
    assert [kind for _, kind, _ in fake.requests] == [ObjectKind.PROPERTY] + [ObjectKind.UNIT] * 3
    assert report.confirmed == {"property/create": 1, "unit/create": 3}
    assert set(fake.objects[ObjectKind.UNIT]) == {f"0001-1-01-{i:03d}" for i in range(3)}


def test_rejected_record_is_reported_and_the_rest_continue(tmp_path):
    fake = FakeCasaviClient(reject_ids={"0001-1-01-001"})
    with Snapshot(tmp_path / "s.duckdb", "0001") as snap:
        compute_changeset(snap, frames(3))
        report = apply_changeset(snap, fake)
        # The rejected unit stays pending and unsynced: the snapshot claims only what casavi holds.
        assert [op.ref_id for op in snap.pending_ops(ObjectKind.UNIT, "upsert")] == ["0001-1-01-001"]
        assert ("unit", "0001-1-01-001") not in snap.synced_hashes()
    assert [(r.ref_id, r.status) for r in report.rejections] == [("0001-1-01-001", 400)]
    assert report.confirmed["unit/create"] == 2


def test_outage_mid_run_then_rerun_sends_only_what_was_not_confirmed(tmp_path):
    fake = FakeCasaviClient(fail_after_writes=5)
    path = tmp_path / "s.duckdb"
    with Snapshot(path, "0001") as snap:
        compute_changeset(snap, frames(10))
        with pytest.raises(CasaviUnavailableError):
            apply_changeset(snap, fake)
        assert snap.synced_total() == 5
    fake.fail_after_writes = None
    sent_before = len(fake.requests)
    with Snapshot(path, "0001") as snap:  # a retry of the sync step: the pending changeset is resumed
        apply_changeset(snap, fake)
        assert snap.synced_total() == 11 and snap.pending_total() == 0
    resent = [ref for _, _, ref in fake.requests[sent_before:]]
    assert len(resent) == 6 and len(set(resent)) == 6
    assert not set(resent) & {ref for _, _, ref in fake.requests[:sent_before]}


def test_what_an_attempt_confirmed_before_casavi_failed_is_kept_in_its_report(tmp_path):
    """The caller's report survives the outage: a retried step counts the whole run, not the last try."""
    from casavi_pipeline.sync.apply import SyncReport

    fake = FakeCasaviClient(fail_after_writes=5)
    report = SyncReport(mandant="0001")
    with Snapshot(tmp_path / "s.duckdb", "0001") as snap:
        compute_changeset(snap, frames(10))
        with pytest.raises(CasaviUnavailableError):
            apply_changeset(snap, fake, report=report)
    assert report.total_confirmed == 5 and report.confirmed["unit/create"] == 4


def test_a_rejected_first_write_is_not_the_probe_the_next_one_is_read_back(tmp_path):
    fake = FakeCasaviClient(reject_ids={"0001-1-01-000"})
    reads = []
    get_object = fake.get_object
    fake.get_object = lambda kind, ref: reads.append(ref) or get_object(kind, ref)  # type: ignore[method-assign]
    with Snapshot(tmp_path / "s.duckdb", "0001") as snap:
        compute_changeset(snap, frames(3))
        report = apply_changeset(snap, fake)
    assert report.verified == ["properties", "units"]
    assert reads == ["0001-1", "0001-1-01-001"]
    assert [r.ref_id for r in report.rejections] == ["0001-1-01-000"]


def test_a_casavi_storing_something_else_stops_that_kind_and_confirms_nothing_of_it(tmp_path):
    fake = FakeCasaviClient()
    get_object = fake.get_object

    def drops_rooms(kind, ref):
        body = dict(get_object(kind, ref))
        body.pop("rooms", None)
        return body

    fake.get_object = drops_rooms  # type: ignore[method-assign]
    with Snapshot(tmp_path / "s.duckdb", "0001") as snap:
        compute_changeset(snap, frames(3))
        report = apply_changeset(snap, fake)
        assert snap.synced_counts() == {"property": 1}  # the probe unit is not claimed as synced
        assert snap.pending_counts()[("unit", "create")] == 3
    [mismatch] = report.mismatches
    assert (mismatch.kind, mismatch.ref_id, mismatch.fields) == ("units", "0001-1-01-000", ("rooms",))
    assert "rooms" in mismatch.reason and "casavi/api.py" in mismatch.reason
    assert len(fake.objects[ObjectKind.UNIT]) == 1  # one unit write, then the kind stopped
