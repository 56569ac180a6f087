"""Reading casavi back, end to end against the sandbox as a real process: adopt a filled account, see and
repair drift, rebuild a lost snapshot, verify the write model on first contact.
"""

from __future__ import annotations

import logging
import shutil
import zlib
from pathlib import Path

import dagster as dg
import pytest

from casavi_harness.accounts import mapped_bodies
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline_tests.e2e import BACKENDS, MANDANT, export, run_job, state_folder, writes_by_route
from casavi_pipeline_tests.erp_fixtures import default_rows
from casavi_pipeline_tests.harness import check_results, run_mandant
from casavi_sandbox import SandboxProcess

pytestmark = pytest.mark.e2e


def fill_account(sandbox: SandboxProcess, env, *, separator: str = "-") -> list[tuple[ObjectKind, dict]]:
    """casavi filled with exactly the mapping of the test's export, as Aareon Connect would have."""
    bodies = list(mapped_bodies(Path(env["ERP_EXPORT_DIR"]), MANDANT, separator=separator))
    sandbox.seed(bodies)
    sandbox.reset(objects=False)  # count only what the pipeline sends from here on
    return bodies


def routes(sandbox: SandboxProcess) -> dict[str, int]:
    return {route: sum(by_status.values()) for route, by_status in sandbox.requests()["routes"].items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_account_filled_with_the_same_mapping_is_adopted_with_zero_writes(env, sandbox):
    export(env)
    bodies = fill_account(sandbox, env)
    result = run_job(env)
    assert result.success
    assert sandbox.write_count() == 0
    # Only the login and one page per kind (every kind holds far fewer than 500 objects).
    assert routes(sandbox) == {
        "POST /v2/authenticate": 1,
        "GET /v2/properties": 1,
        "GET /v2/units": 1,
        "GET /v2/contacts": 1,
    }
    remote = result.asset_materializations_for_node("casavi_remote")[0].metadata
    assert remote["adopted"].value == len(bodies) == 7
    # The next night is an ordinary unchanged night.
    sandbox.reset(objects=False)
    assert run_job(env).success
    assert sandbox.write_count() == 0


def test_adoption_sends_exactly_the_differences_and_never_touches_other_prefixes(env, sandbox):
    export(env)
    bodies = fill_account(sandbox, env)
    by_id = {body["id"]: (kind, body) for kind, body in bodies}
    # 3 objects edited in casavi (one contract's end date inside its contact), 1 missing there, 1 unknown
    # with our prefix, 5 of another Mandant.
    edited = ["0001-001-01-0001", "0001-00042", "0001-00044"]
    sandbox.edit(ObjectKind.UNIT, edited[0], {"name": "Wohnung umbenannt"})
    sandbox.edit(ObjectKind.CONTACT, edited[1], {"telephone": "0000"})
    contracts = [{**c, "endDate": "2030-01-01"} for c in by_id[edited[2]][1]["contracts"]]
    sandbox.edit(ObjectKind.CONTACT, edited[2], {"contracts": contracts})
    missing = ["0001-00050"]
    for ref in missing:
        sandbox.delete_as_user(by_id[ref][0], ref)
    unknown = {"id": "0001-99999", "lastName": "Unbekannt", "preferredWayOfContact": "POSTAL"}
    others = [{"id": f"0002-{n}", "lastName": "Fremd", "preferredWayOfContact": "POSTAL"} for n in range(5)]
    sandbox.seed([(ObjectKind.CONTACT, unknown), *[(ObjectKind.CONTACT, o) for o in others]])
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    # The unknown one with our prefix leaves the scope: under the default it waits for a person.
    assert writes_by_route(sandbox) == {"PUT /v2/units/{id}": 1, "PUT /v2/contacts/{id}": 3}
    pending = check_results(result)["casavi_pending_deletions"]
    assert "contact 0001-99999 (removed from the export)" in pending.description
    held = sandbox.state()
    assert "0001-99999" in held["contacts"]
    assert all(f"0002-{n}" in held["contacts"] for n in range(5))
    for ref in [*edited, *missing]:
        kind, body = by_id[ref]
        assert {k: v for k, v in held[kind.collection][ref].items() if v is not None} == {
            k: v for k, v in body.items() if v is not None
        }


def test_an_account_filled_with_another_separator_trips_the_separator_guard(env, sandbox):
    export(env)
    fill_account(sandbox, env, separator="_")
    result = run_job(env)
    guard = check_results(result)["separator_change_guard_check"]
    assert not guard.passed and "CASAVI_ALLOW_SEPARATOR_CHANGE" in guard.description
    assert sandbox.write_count() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_drift_is_reported_repaired_on_request_and_read_incrementally_afterwards(env, sandbox):
    export(env)
    assert run_job(env).success
    sandbox.edit(ObjectKind.UNIT, "0001-001-01-0002", {"name": "von Hand geändert"})
    sandbox.delete_as_user(ObjectKind.CONTACT, "0001-00042")
    sandbox.reset(objects=False)

    full_read = {"ops": {"casavi_remote": {"config": {"full": True}}}}
    seen = run_job(env, run_config=full_read)
    drift = check_results(seen)["casavi_drift"]
    assert not drift.passed and drift.severity.value == "WARN"
    assert drift.metadata["first_changed"].value == ["0001-001-01-0002"]
    assert drift.metadata["first_deleted"].value == ["0001-00042"]
    assert sandbox.write_count() == 0  # reported, left as it is

    repair = {
        **full_read,
        "ops": {**full_read["ops"], "casavi_changeset": {"config": {"repair_drift": True}}},
    }
    repaired = run_job(env, run_config=repair)
    assert repaired.success
    assert writes_by_route(sandbox) == {"PUT /v2/units/{id}": 1, "PUT /v2/contacts/{id}": 1}

    sandbox.reset(objects=False)
    after = run_job(env)
    assert after.success
    read = after.asset_materializations_for_node("casavi_remote")[0].metadata
    assert not read["full_listing"].value and not read["reused_listing"].value
    # modifiedAfter = the last listing's high-water mark (less a second): only the two repaired objects
    # changed; the few unchanged ones at the mark are re-read, not patched.
    assert sum(v.value for k, v in read.items() if k.startswith("changed/")) == 2
    assert check_results(after)["casavi_drift"].passed
    assert sandbox.write_count() == 0


def test_a_lost_snapshot_is_rebuilt_from_casavi_without_writes(env, sandbox):
    export(env)
    assert run_job(env).success
    shutil.rmtree(env["CASAVI_SNAPSHOT_DB"])
    sandbox.reset(objects=False)
    assert run_job(env).success
    assert sandbox.write_count() == 0


def test_a_truncated_snapshot_is_moved_aside_and_rebuilt_without_writes(env, sandbox):
    export(env)
    assert run_job(env).success
    snapshot = state_folder(env) / f"snapshot_{MANDANT}.duckdb"
    data = snapshot.read_bytes()
    snapshot.write_bytes(data[: len(data) // 2])
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert sandbox.write_count() == 0
    moved = [path for path in snapshot.parent.glob(f"{snapshot.name}.corrupt-*") if path.suffix != ".wal"]
    assert len(moved) == 1
    with dg.DagsterInstance.get() as instance:  # the env fixture sets DAGSTER_HOME
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(str(moved[0]) in message for message in messages)  # the file is named in the run's log


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_listing_is_moved_aside_with_a_warning_and_rebuilt_without_writes(env, sandbox):
    """The shared listing opens when truncated and fails only on a later read: found on open, moved
    aside (kept, named in a warning), rebuilt by a full listing; every Mandant's run goes on."""
    export(env)
    assert run_job(env).success
    listing = state_folder(env) / "casavi_remote.duckdb"
    data = listing.read_bytes()
    listing.write_bytes(data[: len(data) // 2])
    if env.get("CASAVI_STATE_URL"):  # PostgreSQL holds the listing: damage its stored copy the same way
        server_url = env["CASAVI_STATE_URL"]
        import psycopg2

        with psycopg2.connect(server_url) as con, con.cursor() as cur:
            cur.execute(
                "UPDATE casavi_state_chunks SET data = %s WHERE name = %s",
                [zlib.compress(data[: len(data) // 2]), f"{state_folder(env).name}/casavi_remote.duckdb"],
            )
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert sandbox.write_count() == 0
    moved = [path for path in listing.parent.glob(f"{listing.name}.corrupt-*") if path.suffix != ".wal"]
    assert len(moved) == 1
    with dg.DagsterInstance.get() as instance:  # the env fixture sets DAGSTER_HOME
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any(str(moved[0]) in message and "rebuilt" in message for message in warnings)
    [read] = result.asset_materializations_for_node("casavi_remote")
    assert read.metadata["full_listing"].value is True


def test_a_casavi_that_drops_a_field_stops_that_kind_after_one_write(env, sandbox):
    export(env)
    sandbox.configure(drop_field="units.rooms")
    result = run_job(env)
    assert not result.success
    reason = next(e for e in result.get_step_failure_events() if e.step_key == "casavi_sync")
    text = reason.step_failure_data.user_failure_data.description
    assert "units 0001-001-01-0001" in text and "rooms" in text and "casavi/api.py" in text
    # the units stop after the first (verified) write; the contacts, whose contracts reference units, too
    assert writes_by_route(sandbox) == {"PUT /v2/properties/{id}": 1, "PUT /v2/units/{id}": 1}
    held = sandbox.state()
    assert len(held["properties"]) == 1 and len(held.get("contacts", {})) == 0


def test_fake_casavi_resource_adopts_too(tmp_path):
    """The in-process layer: the fake casavi filled beforehand is adopted, nothing sent."""
    from casavi_harness.fake import FakeCasaviResource
    from casavi_harness.local import SAMPLE_EXPORT_DIR
    from casavi_pipeline.defs.resources import ErpExport, SnapshotStore, SyncPolicy

    casavi = FakeCasaviResource()
    for kind, body in mapped_bodies(SAMPLE_EXPORT_DIR, "0001"):
        casavi.client.seed(kind, body)
    bound = {
        "erp_export": ErpExport(directory=str(SAMPLE_EXPORT_DIR)),
        "snapshots": SnapshotStore(directory=str(tmp_path), account_key="fake-account"),
        "sync_policy": SyncPolicy(),
        "casavi": casavi,
    }
    result = run_mandant("0001", bound)
    assert result.success
    assert casavi.client.requests == []


def test_our_own_deletes_are_no_drift_on_the_next_incremental_night(env, sandbox):
    env["CASAVI_DELETIONS"] = "delete"
    export(env)
    assert run_job(env).success
    rows = default_rows()
    rows["mieter"][2]["email"] = ""  # the only tenant of contract 100002 leaves the scope: deleted
    export(env, rows)
    deleted = run_job(env)
    assert deleted.success and "0001-00044" not in sandbox.state()["contacts"]
    sandbox.reset(objects=False)
    night = run_job(env)  # an incremental read: it cannot see the deletion, the sync told the listing
    read = night.asset_materializations_for_node("casavi_remote")[0].metadata
    assert not read["full_listing"].value
    assert check_results(night)["casavi_drift"].passed
    assert sandbox.write_count() == 0


def test_a_separator_migration_with_drift_repair_replaces_the_ids_and_duplicates_nothing(env, sandbox):
    export(env)
    assert run_job(env).success
    env["CASAVI_ID_SEPARATOR"] = "_"
    env["CASAVI_ALLOW_SEPARATOR_CHANGE"] = "true"
    env["CASAVI_DELETE_GUARD_MIN_COUNT"] = "100"
    env["CASAVI_DELETIONS"] = "delete"  # the old ids go in the same run (under approve they would wait)
    repair = {"ops": {"casavi_changeset": {"config": {"repair_drift": True}}}}
    assert run_job(env, run_config=repair).success
    held = sandbox.state()
    assert all("_" in ref and "-" not in ref for objects in held.values() for ref in objects), held
    assert {c: len(o) for c, o in held.items()} == {"properties": 1, "units": 3, "contacts": 3}


def test_state_kept_under_casavi_model_revision_1_is_rebuilt_from_casavi_with_a_note_and_no_writes(
    env, sandbox
):
    """An existing deployment upgrades: its snapshot and listing carry revision-1 hashes (and contracts as a
    kind of their own); the first run after the upgrade adopts casavi's state instead of re-sending it."""
    import duckdb

    export(env)
    assert run_job(env).success
    folder = state_folder(env)
    with duckdb.connect(str(folder / f"snapshot_{MANDANT}.duckdb")) as con:
        con.execute("DELETE FROM meta WHERE key = 'model_revision'")
        con.execute("UPDATE synced SET content_hash = md5(content_hash)")  # bodies of another model
        con.execute("INSERT INTO synced VALUES ('contract', '0001-MV-100001', 'abc', NULL, now())")
    with duckdb.connect(str(folder / "casavi_remote.duckdb")) as con:
        con.execute("DELETE FROM meta WHERE key = 'model_revision'")
    sandbox.reset(objects=False)

    result = run_job(env)
    assert result.success
    assert sandbox.write_count() == 0
    with dg.DagsterInstance.get() as instance:
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    notes = [m for m in messages if "casavi model revision 1" in m]
    assert len(notes) == 1 and "rebuilt for revision 2" in notes[0], notes
    read = result.asset_materializations_for_node("casavi_remote")[0].metadata
    assert read["full_listing"].value and read["adopted"].value == 7
