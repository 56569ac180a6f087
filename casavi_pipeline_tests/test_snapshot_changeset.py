"""Snapshot (DuckDB + journal), changeset SQL and guards, on real DuckDB files."""

from __future__ import annotations

import json
import sys

import duckdb
import pandas as pd
import pytest

from casavi_pipeline import duck_memory
from casavi_pipeline.aside import quarantine
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state.deletions import Deletions
from casavi_pipeline.state.diff import compute_changeset
from casavi_pipeline.state.files import StateCorruptError
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.sync.guards import mass_deletion_guard, separator_guard


def _properties(*rows: tuple[str, str]) -> pd.DataFrame:
    records = [
        {
            "id": ref_id,
            "name": name,
            "number": ref_id.split("-")[-1],
            "postal_code": "04109",
            "city": "Leipzig",
            "country": "Germany",
            "note": None,
            "addresses": [{"street": "Lindenstraße 12a"}],
            "erp_key": f"we_nr={ref_id}",
        }
        for ref_id, name in rows
    ]
    return pd.DataFrame(records, columns=[*api.DOMAIN_COLUMNS[ObjectKind.PROPERTY], "erp_key"])


def _confirm_all(snapshot: Snapshot) -> None:
    """Pretend casavi confirmed every pending operation."""
    for kind in api.UPSERT_ORDER:
        for action in ("upsert", "delete"):
            for op in snapshot.pending_ops(kind, action):
                snapshot.confirm(kind, action, op.ref_id, op.content_hash)
    snapshot.fold()


@pytest.fixture
def snapshot_path(tmp_path):
    return tmp_path / "snapshot_0001.duckdb"


def test_the_snapshot_database_is_bounded_so_a_large_changeset_spills_beside_its_file(snapshot_path):
    bounded = duckdb.connect(config=duck_memory.config())
    expected = bounded.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    bounded.close()
    with Snapshot(snapshot_path, "0001") as snap:
        limit, spill = snap.connection.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchone()
    assert limit == expected  # 512 MB, not DuckDB's 80 % of the RAM
    assert spill == f"{snapshot_path}.tmp"


def test_first_changeset_creates_everything_with_the_exact_payload(snapshot_path):
    frame = _properties(("0001-1", "Haus Ährenfeld"), ("0001-2", "Straße 2"))
    with Snapshot(snapshot_path, "0001") as snap:
        summary = compute_changeset(snap, {ObjectKind.PROPERTY: frame})
        ops = list(snap.pending_ops(ObjectKind.PROPERTY, "upsert"))

    assert summary.kinds[ObjectKind.PROPERTY].create == 2
    assert summary.total_writes == 2
    assert [op.ref_id for op in ops] == ["0001-1", "0001-2"]
    # The payload stored for sending is exactly the adapter's body, umlauts intact.
    assert json.loads(ops[0].payload) == api.to_payload(ObjectKind.PROPERTY, frame.iloc[0].to_dict())
    assert json.loads(ops[0].payload)["name"] == "Haus Ährenfeld"


def test_unchanged_rerun_has_no_writes_and_a_change_is_one_update(snapshot_path):
    frame = _properties(("0001-1", "Haus A"), ("0001-2", "Haus B"))
    with Snapshot(snapshot_path, "0001") as snap:
        compute_changeset(snap, {ObjectKind.PROPERTY: frame})
        _confirm_all(snap)
    with Snapshot(snapshot_path, "0001") as snap:
        assert compute_changeset(snap, {ObjectKind.PROPERTY: frame}).total_writes == 0
        changed = _properties(("0001-1", "Haus A"), ("0001-2", "Haus B renoviert"))
        summary = compute_changeset(snap, {ObjectKind.PROPERTY: changed})
    assert (summary.kinds[ObjectKind.PROPERTY].update, summary.total_writes) == (1, 1)
    # The preview names the fields that change, never their values (personal data).
    assert summary.preview.to_dict("records") == [
        {"kind": "property", "change": "update", "ref_id": "0001-2", "fields": "name"}
    ]


@pytest.mark.parametrize("deletions", list(Deletions))
def test_removed_object_leaves_as_the_setting_says_and_unmapped_kinds_are_untouched(snapshot_path, deletions):
    with Snapshot(snapshot_path, "0001") as snap:
        compute_changeset(snap, {ObjectKind.PROPERTY: _properties(("0001-1", "A"), ("0001-2", "B"))})
        _confirm_all(snap)
        summary = compute_changeset(
            snap, {ObjectKind.PROPERTY: _properties(("0001-1", "A"))}, deletions=deletions
        )
        deleted = [op.ref_id for op in snap.pending_ops(ObjectKind.PROPERTY, "delete")]
        changes = summary.kinds[ObjectKind.PROPERTY]
        # delete: sent now; approve: waits for a person; keep: stays for good. Counted by the guard alike.
        assert (deleted, changes.delete, changes.waiting, changes.kept) == {
            Deletions.DELETE: (["0001-2"], 1, 0, 0),
            Deletions.APPROVE: ([], 0, 1, 0),
            Deletions.KEEP: ([], 0, 0, 1),
        }[deletions]
        assert changes.guarded == 1
        # No unit frame given: the synced units (none here) are not read as "delete all units".
        assert ObjectKind.UNIT not in summary.kinds


def test_journal_left_by_a_killed_run_is_replayed_on_open(snapshot_path):
    frame = _properties(("0001-1", "A"), ("0001-2", "B"))
    snap = Snapshot(snapshot_path, "0001")
    compute_changeset(snap, {ObjectKind.PROPERTY: frame})
    first = next(snap.pending_ops(ObjectKind.PROPERTY, "upsert"))
    snap.confirm(ObjectKind.PROPERTY, "upsert", first.ref_id, first.content_hash)
    # Simulate a kill: the journal line is on disk, the DuckDB fold never happened.
    snap._journal.close()
    snap._journal = None
    snap._con.close()
    assert snapshot_path.with_suffix(".journal").read_text().count("\n") == 1

    with Snapshot(snapshot_path, "0001") as reopened:
        assert reopened.synced_hashes() == {("property", "0001-1"): first.content_hash}
        assert [op.ref_id for op in reopened.pending_ops(ObjectKind.PROPERTY, "upsert")] == ["0001-2"]
        # Recomputing sends only what was not confirmed.
        assert compute_changeset(reopened, {ObjectKind.PROPERTY: frame}).total_writes == 1
    assert not snapshot_path.with_suffix(".journal").exists()


def test_second_writer_gets_a_clear_busy_error(snapshot_path, processes):
    second = (
        "from casavi_pipeline.state.files import StateBusyError\n"
        "from casavi_pipeline.state.snapshot import Snapshot\n"
        f"try:\n    Snapshot({str(snapshot_path)!r}, '0001').close()\n    print('opened')\n"
        "except StateBusyError as exc:\n    print(exc)\n"
    )
    with Snapshot(snapshot_path, "0001"):
        message = processes.run([sys.executable, "-c", second]).stdout
    assert "in use by another process" in message and "0001" in message


def test_duplicate_reference_ids_are_refused(snapshot_path):
    frame = _properties(("0001-1", "A"), ("0001-1", "B"))
    with Snapshot(snapshot_path, "0001") as snap, pytest.raises(ValueError, match="duplicate reference ids"):
        compute_changeset(snap, {ObjectKind.PROPERTY: frame})


@pytest.mark.parametrize(
    ("synced", "deleted", "share", "min_count", "passed"),
    [
        (100, 10, 0.10, 0, True),  # exactly the share is allowed
        (100, 11, 0.10, 0, False),
        (5, 5, 0.90, 0, False),  # all of them always trips
        (20, 3, 0.10, 5, True),  # under the absolute floor
        (20, 6, 0.10, 5, False),
    ],
)
def test_mass_deletion_guard(snapshot_path, synced, deleted, share, min_count, passed):
    kept = [(f"0001-{i}", "x") for i in range(synced - deleted)]
    with Snapshot(snapshot_path, "0001") as snap:
        compute_changeset(
            snap, {ObjectKind.PROPERTY: _properties(*[(f"0001-{i}", "x") for i in range(synced)])}
        )
        _confirm_all(snap)
        summary = compute_changeset(snap, {ObjectKind.PROPERTY: _properties(*kept)})
    result = mass_deletion_guard(summary, max_share=share, min_count=min_count)
    assert result.passed is passed
    assert result.metadata["property/leaving"] == deleted
    if not passed:
        assert f"{deleted} of {synced} properties" in result.reason
        assert "truncated" in result.reason and "CASAVI_ALLOW_MASS_DELETE" in result.reason
        assert mass_deletion_guard(summary, max_share=share, min_count=min_count, allow=True).passed


def test_separator_guard():
    assert separator_guard(None, "-", synced_total=0, allow_change=False).passed
    assert separator_guard("-", "-", synced_total=10, allow_change=False).passed
    blocked = separator_guard("-", "_", synced_total=10, allow_change=False)
    assert not blocked.passed and "CASAVI_ALLOW_SEPARATOR_CHANGE" in blocked.reason
    assert separator_guard("-", "_", synced_total=10, allow_change=True).passed


def _kill(snap: Snapshot) -> None:
    """Simulate a killed process: journal lines are on disk, the DuckDB fold never happened."""
    if snap._journal is not None:
        snap._journal.close()
        snap._journal = None
    snap._con.close()


@pytest.mark.parametrize("killed", [False, True], ids=["folded", "replayed after a kill"])
def test_control_characters_in_reference_ids_round_trip_through_the_journal(snapshot_path, killed):
    ref_ids = ["0001-a\tb", "0001-c\nd", "0001-e\x00f", "0001-g\r\x1f\x7fh", '0001-"q";\\', "0001-Ä\u2028ß"]
    snap = Snapshot(snapshot_path, "0001")
    for i, ref_id in enumerate(ref_ids):
        snap.confirm(ObjectKind.PROPERTY, "upsert", ref_id, f"hash{i}")
    snap.confirm(ObjectKind.UNIT, "delete", "0001-u\t1", None)
    assert snapshot_path.with_suffix(".journal").read_bytes().count(b"\n") == len(ref_ids) + 1
    if killed:
        _kill(snap)
        snap = Snapshot(snapshot_path, "0001")
    else:
        snap.fold()
    with snap:
        assert snap.synced_hashes() == {("property", r): f"hash{i}" for i, r in enumerate(ref_ids)}
        assert snap.dropped_journal_lines == 0
    assert not snapshot_path.with_suffix(".journal").exists()


@pytest.mark.parametrize(
    "torn",
    [
        b'["upsert", "property", "0001-3", "ha',  # a write cut short by a power loss or a full disk
        b"\xff\xfe\x00\x00garbage",  # not even UTF-8
        b"\x00" * 4096 + b"\n",  # a block the file system allocated but never wrote
        b'["upsert", "property", "0001-3", null]\n',  # whole JSON, wrong shape: an upsert needs a hash
        b'{"upsert": 1}\n',
    ],
    ids=["torn line", "garbage bytes", "zeroed block", "upsert without hash", "not a list"],
)
def test_a_broken_journal_line_is_dropped_and_counted_never_fatal(snapshot_path, torn):
    snap = Snapshot(snapshot_path, "0001")
    snap.confirm(ObjectKind.PROPERTY, "upsert", "0001-1", "h1")
    snap.confirm(ObjectKind.PROPERTY, "upsert", "0001-2", "h2")
    _kill(snap)
    with snapshot_path.with_suffix(".journal").open("ab") as journal:
        journal.write(torn)

    with Snapshot(snapshot_path, "0001") as reopened:
        assert reopened.synced_hashes() == {("property", "0001-1"): "h1", ("property", "0001-2"): "h2"}
        assert reopened.dropped_journal_lines == 1
    assert not snapshot_path.with_suffix(".journal").exists()


def test_a_confirmation_after_a_torn_line_starts_a_line_of_its_own(snapshot_path):
    with Snapshot(snapshot_path, "0001") as snap:
        snapshot_path.with_suffix(".journal").write_bytes(b'["upsert", "property", "0001-1", "h')
        snap.confirm(ObjectKind.PROPERTY, "upsert", "0001-2", "h2")
        snap.fold()
        assert snap.synced_hashes() == {("property", "0001-2"): "h2"}
        assert snap.dropped_journal_lines == 1


def test_the_last_journal_entry_of_an_object_decides(snapshot_path):
    with Snapshot(snapshot_path, "0001") as snap:
        snap.confirm(ObjectKind.PROPERTY, "upsert", "0001-1", "old")
        snap.confirm(ObjectKind.PROPERTY, "delete", "0001-1", None)
        snap.confirm(ObjectKind.PROPERTY, "upsert", "0001-1", "new")
        snap.confirm(ObjectKind.PROPERTY, "upsert", "0001-2", "h2")
        snap.confirm(ObjectKind.PROPERTY, "delete", "0001-2", None)
        snap.fold()
        assert snap.synced_hashes() == {("property", "0001-1"): "new"}


def _filled_snapshot(path, count: int = 30_000) -> None:
    with Snapshot(path, "0001") as snap:
        for i in range(count):
            snap.confirm(ObjectKind.CONTACT, "upsert", f"0001-{i:06d}", f"{i:032x}")


def _truncate_to_half(path):
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _garble_header(path):
    with path.open("r+b") as handle:
        handle.write(b"\xde\xad\xbe\xef" * 2048)


def _garble_all(path):
    path.write_bytes(b"not a database\n" * 1000)


def _garble_data_block(path):
    # Overwrite the middle of the data blocks (the block checksum finds it when the probe reads it).
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(size // 8)
        handle.write(b"\x55" * (size // 8))


@pytest.mark.parametrize(
    ("damage", "objects"),
    [
        (_truncate_to_half, 30_000),
        (_garble_header, 30_000),
        (_garble_all, 30_000),
        (_garble_data_block, 30_000),  # found by the read of every table on open
        (_garble_data_block, 20_000),  # found by the first write on open (an index or meta block)
    ],
)
def test_an_unreadable_snapshot_is_moved_aside_with_a_clear_error_and_rebuilt_fresh(
    snapshot_path, damage, objects
):
    _filled_snapshot(snapshot_path, objects)
    damage(snapshot_path)

    with pytest.raises(StateCorruptError) as info:
        Snapshot(snapshot_path, "0001")
    message = str(info.value)
    moved_to = info.value.moved_to
    assert "\n" not in message and str(snapshot_path) in message and str(moved_to) in message
    assert "0001" in message and "next run" in message
    assert moved_to.name.startswith(f"{snapshot_path.name}.corrupt-") and moved_to.stat().st_size > 0
    assert not snapshot_path.exists()

    with Snapshot(snapshot_path, "0001") as fresh:
        assert fresh.synced_total() == 0 and fresh.dropped_journal_lines == 0
    assert moved_to.exists()


def test_quarantine_moves_file_wal_and_journal_aside_and_never_overwrites(snapshot_path):
    snapshot_path.write_bytes(b"db")
    wal = snapshot_path.with_name(f"{snapshot_path.name}.wal")
    wal.write_bytes(b"wal")
    journal = snapshot_path.with_suffix(".journal")
    journal.write_bytes(b"journal")
    first = quarantine(snapshot_path, journal)
    assert not journal.exists()
    assert [p.read_bytes() for p in snapshot_path.parent.glob("*.journal.corrupt-*")] == [b"journal"]
    snapshot_path.write_bytes(b"db2")
    second = quarantine(snapshot_path, journal)
    assert first != second and (first.read_bytes(), second.read_bytes()) == (b"db", b"db2")
    assert first.with_name(f"{first.name}.wal").read_bytes() == b"wal"
    assert not snapshot_path.exists() and not wal.exists()


def test_a_damaged_snapshot_opened_read_only_is_also_reported(snapshot_path):
    _filled_snapshot(snapshot_path, 10)
    _garble_all(snapshot_path)
    with pytest.raises(StateCorruptError):
        Snapshot(snapshot_path, "0001", read_only=True)
    with Snapshot(snapshot_path, "0001", read_only=True) as empty:
        assert empty.synced_total() == 0


def test_a_snapshot_of_an_earlier_casavi_model_is_emptied_to_be_rebuilt_and_keeps_its_separator(
    snapshot_path,
):
    """Revision 1 kept contracts as their own kind and other bodies: none of its hashes can be compared."""
    with Snapshot(snapshot_path, "0001") as snapshot:
        compute_changeset(snapshot, {ObjectKind.PROPERTY: _properties(("0001-1", "Lindenhof"))})
        _confirm_all(snapshot)
        snapshot.set_separator("-")
        snapshot.set_meta("adopted_at", "2026-11-01T00:00:00+00:00")
        # what revision 1 left: no revision recorded, a contract row, a journal line of a contract
        snapshot.connection.execute("DELETE FROM meta WHERE key = 'model_revision'")
        snapshot.connection.execute("INSERT INTO synced VALUES ('contract', '0001-MV-1', 'abc', NULL, now())")
    snapshot_path.with_suffix(".journal").write_text('["upsert", "contract", "0001-MV-2", "def"]\n')

    with Snapshot(snapshot_path, "0001") as snapshot:
        assert snapshot.rebuilt_for_model == "1"
        assert snapshot.synced_total() == 0 and snapshot.dropped_journal_lines == 0
        assert snapshot.get_meta("adopted_at") is None  # the next read adopts what casavi holds
        assert snapshot.separator == "-"  # the separator guard keeps guarding
        assert snapshot.get_meta("model_revision") == api.MODEL_REVISION
    assert not snapshot_path.with_suffix(".journal").exists()
    with Snapshot(snapshot_path, "0001") as snapshot:
        assert snapshot.rebuilt_for_model is None  # once


def test_a_new_snapshot_is_not_reported_as_rebuilt(snapshot_path):
    with Snapshot(snapshot_path, "0001") as snapshot:
        assert snapshot.rebuilt_for_model is None
        assert snapshot.get_meta("model_revision") == api.MODEL_REVISION
