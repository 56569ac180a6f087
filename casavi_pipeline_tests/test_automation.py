"""Schedule and delivery sensor, with Dagster's test helpers; the one-line failure reason."""

from __future__ import annotations

import datetime
import json
import os
import time

import dagster as dg
import pytest

from casavi_pipeline.defs.automation import casavi_export_delivery_sensor, casavi_nightly_sync
from casavi_pipeline.defs.failures import failure_reason
from casavi_pipeline.defs.resources import ErpExport, SyncPolicy
from casavi_pipeline.erp.deliveries import scan_delivery
from casavi_pipeline_tests.erp_fixtures import write_export
from casavi_pipeline_tests.harness import reason_of_run

MANDANTEN = ["0001", "0002", "0420"]  # the partitions the tests' code location loads with (conftest)


@pytest.fixture
def export(tmp_path):
    return write_export(tmp_path / "export", {m: {} for m in MANDANTEN})


def sensor_context(export, cursor=None) -> dg.SensorEvaluationContext:
    resources = {
        "erp_export": ErpExport(directory=str(export)),
        "sync_policy": SyncPolicy(delivery_settle_seconds=60),
    }
    return dg.build_sensor_context(cursor=cursor, resources=resources)


def age(folder, seconds: float) -> None:
    """Make every file of a delivery look `seconds` old."""
    stamp = time.time() - seconds
    for path in folder.iterdir():
        os.utime(path, (stamp, stamp))


def test_nightly_schedule_requests_one_run_per_mandant(export):
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2026, 11, 25, 2, tzinfo=datetime.UTC)
    )
    requests = casavi_nightly_sync.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == MANDANTEN
    assert {r.tags["casavi/trigger"] for r in requests} == {"schedule"}
    assert len({r.run_key for r in requests}) == 3
    assert casavi_nightly_sync.cron_schedule == "0 2 * * *"
    assert casavi_nightly_sync.execution_timezone == "Europe/Berlin"
    assert casavi_nightly_sync.default_status == dg.DefaultScheduleStatus.STOPPED


def test_incomplete_delivery_is_skipped_naming_the_missing_files(export):
    (export / "0001" / "mieter.csv").unlink()
    age(export / "0001", 120)
    age(export / "0002", 120)
    age(export / "0420", 5)  # still settling
    delivery = scan_delivery(export, "0001")
    assert delivery.missing_files == ("mieter.csv",) and not delivery.complete
    (export / "0002" / "gebaeude.csv").unlink()
    result = casavi_export_delivery_sensor(sensor_context(export))
    assert isinstance(result, dg.SkipReason)
    assert "0001: missing mieter.csv" in result.skip_message
    assert "0420: delivery still settling" in result.skip_message


def test_a_settled_delivery_runs_once_and_again_only_when_newer(export):
    for mandant in MANDANTEN:
        age(export / mandant, 120)
    first = casavi_export_delivery_sensor(sensor_context(export))
    assert [r.partition_key for r in first.run_requests] == MANDANTEN
    assert {r.tags["casavi/trigger"] for r in first.run_requests} == {"sensor"}

    again = casavi_export_delivery_sensor(sensor_context(export, first.cursor))
    assert isinstance(again, dg.SkipReason)  # the same delivery never runs twice

    age(export / "0420", 70)  # a new delivery for 0420, written after the last one, settled
    newer = casavi_export_delivery_sensor(sensor_context(export, first.cursor))
    assert [r.partition_key for r in newer.run_requests] == ["0420"]
    assert json.loads(newer.cursor)["0001"] == json.loads(first.cursor)["0001"]


def test_failure_reason_prefers_the_failing_blocking_check(tmp_path):
    @dg.asset
    def numbers():
        return 1

    @dg.asset_check(asset=numbers, blocking=True)
    def numbers_are_fine():
        return dg.AssetCheckResult(
            passed=False, description="3 units reference a missing building (first: 0001-9)"
        )

    @dg.asset(deps=[numbers])
    def downstream():
        return 2

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [numbers, downstream, numbers_are_fine], instance=instance, raise_on_error=False
        )
        assert not result.success
        # The same line from the stored run (sensor, hook) and from the in-process result (demo).
        assert failure_reason(result.get_asset_check_evaluations(), result.get_step_failure_events()) == (
            "check numbers_are_fine failed: 3 units reference a missing building (first: 0001-9)"
        )
        assert reason_of_run(instance, result.run_id) == (
            "check numbers_are_fine failed: 3 units reference a missing building (first: 0001-9)"
        )
