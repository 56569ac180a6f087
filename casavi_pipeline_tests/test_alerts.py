"""Alerts and freshness against real receivers on 127.0.0.1: an SMTP server (aiosmtpd) and an HTTP server.

The sensors are evaluated with Dagster's test contexts against the test's real instance (the shipped
dagster.yaml in a temporary DAGSTER_HOME), with the resources its settings give, as the daemon would.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import time
from collections.abc import Iterator

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from dagster._core.events import DagsterEvent, StepMaterializationData
from dagster._core.events.log import EventLogEntry

from casavi_pipeline.defs.alerts import (
    ALERTED_TAG,
    DELETIONS_ACTION,
    ESCALATION_ACTION,
    FAILURE_ACTION,
    build_deletions_alert_sensor,
    build_escalation_alert_sensor,
    build_failure_alert_sensor,
)
from casavi_pipeline.defs.freshness import FRESHNESS_CHECK, SYNC_ASSET, casavi_freshness
from casavi_pipeline.defs.jobs import SYNC_JOB_NAME
from casavi_pipeline.defs.resources import build_resources
from casavi_pipeline_tests.e2e import MANDANT, export, run_job
from casavi_pipeline_tests.erp_fixtures import default_rows
from casavi_pipeline_tests.harness import definitions_with, settings_from
from casavi_sandbox.process import free_port

pytestmark = pytest.mark.e2e

UI_URL = "http://dagster.example.org:3000"
SMTP_PASSWORD = "smtp-password-never-logged"


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[email.message.EmailMessage]]]:
    """A real SMTP server on 127.0.0.1: (port, the messages it accepted)."""
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox.messages
    finally:
        controller.stop()


def with_email(env, monkeypatch, port: int) -> None:
    values = {
        "CASAVI_ALERT_SMTP_HOST": "127.0.0.1",
        "CASAVI_ALERT_SMTP_PORT": str(port),
        "CASAVI_ALERT_SMTP_STARTTLS": "false",
        "CASAVI_ALERT_SMTP_FROM": "casavi-pipeline@example.org",
        "CASAVI_ALERT_SMTP_TO": "data-team@example.org, on-call@example.org",
        "CASAVI_ALERT_UI_URL": UI_URL + "/",
    }
    for key, value in values.items():
        env[key] = value
        monkeypatch.setenv(key, value)


def set_env(env, monkeypatch, **values: str) -> None:
    for key, value in values.items():
        env[key] = value
        monkeypatch.setenv(key, value)


def evaluate_run_sensor(env, build_sensor, run_id: str, event_type: dg.DagsterEventType):
    """A run status sensor for this run, as the daemon evaluates it once per run and status."""
    settings = settings_from(env)
    sensor = build_sensor(settings)
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        event = instance.get_records_for_run(run_id, of_type=event_type).records[0]
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=event.event_log_entry.dagster_event,
            dagster_instance=instance,
            dagster_run=run,
            resources={"alerting": build_resources(settings)["alerting"]},
        )
        if event_type == dg.DagsterEventType.RUN_FAILURE:
            assert run.status == dg.DagsterRunStatus.FAILURE
            context = context.for_run_failure()
        return sensor(context)


def evaluate_failure_alert(env, run_id: str):
    """The failure alert sensor for this failed run."""
    return evaluate_run_sensor(env, build_failure_alert_sensor, run_id, dg.DagsterEventType.RUN_FAILURE)


def guard_stop(env) -> str:
    """A night the mass-deletion guard stops (a delivery cut short): its run id."""
    export(env)
    assert run_job(env).success
    export(env, {"mietvertraege": [], "mieter": []})
    env["CASAVI_DELETE_GUARD_MIN_COUNT"] = "0"
    result = run_job(env)
    assert not result.success
    return result.run_id


def test_a_guard_stop_sends_exactly_one_email_naming_mandant_reason_and_run_link(
    env, sandbox, smtp, monkeypatch
):
    port, inbox = smtp
    with_email(env, monkeypatch, port)
    set_env(env, monkeypatch, CASAVI_ALERT_SMTP_USER="", CASAVI_ALERT_SMTP_PASSWORD="")
    run_id = guard_stop(env)
    assert inbox == []  # the run itself sends nothing: the sensor does

    evaluate_failure_alert(env, run_id)

    assert len(inbox) == 1
    message = inbox[0]
    first_line = message.get_body().get_content().splitlines()[0]
    assert message["Subject"] == first_line
    assert first_line.startswith("casavi sync of Mandant 0001: check mass_deletion_guard_check failed: ")
    assert first_line.endswith(FAILURE_ACTION)
    assert f"Run: {UI_URL}/runs/{run_id}" in message.get_body().get_content()
    assert message["To"] == "data-team@example.org, on-call@example.org"
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).tags[ALERTED_TAG] == "email"

    # A re-execution of the same night fails again: no second alert.
    job = definitions_with(build_resources(settings_from(env))).resolve_job_def(SYNC_JOB_NAME)
    with dg.DagsterInstance.get() as instance:
        again = job.execute_in_process(
            partition_key=MANDANT,
            instance=instance,
            tags={"dagster/root_run_id": run_id, "dagster/parent_run_id": run_id},
            raise_on_error=False,
        )
    assert isinstance(evaluate_failure_alert(env, again.run_id), dg.SkipReason)
    assert len(inbox) == 1


def test_records_refused_night_after_night_are_escalated_in_one_alert_per_night(
    env, sandbox, smtp, monkeypatch
):
    """The night succeeds (casavi_rejections only warns), but a record refused on
    CASAVI_REJECTION_ESCALATE_NIGHTS nights needs a person: one alert, naming the ids, never values."""
    port, inbox = smtp
    with_email(env, monkeypatch, port)
    set_env(env, monkeypatch, CASAVI_REJECTION_ESCALATE_NIGHTS="1")

    def evaluate(run_id: str):
        return evaluate_run_sensor(
            env, build_escalation_alert_sensor, run_id, dg.DagsterEventType.RUN_SUCCESS
        )

    export(env)
    clean = run_job(env)
    assert clean.success
    assert isinstance(evaluate(clean.run_id), dg.SkipReason) and inbox == []  # nothing refused

    rows = default_rows()
    rows["mieter"][0]["telefon"] = "0351 7654321"  # one update of 0001-00042, which casavi now refuses
    export(env, rows)
    sandbox.configure(reject_ids="0001-00042")
    refused = run_job(env)
    assert refused.success
    evaluate(refused.run_id)
    assert len(inbox) == 1
    first_line = inbox[0].get_body().get_content().splitlines()[0]
    assert first_line.startswith("casavi sync of Mandant 0001: check casavi_rejections: ")
    assert "ESCALATED: 0001-00042" in first_line and first_line.endswith(ESCALATION_ACTION)
    assert "0351" not in inbox[0].as_string()


def test_new_pending_deletions_are_told_once_not_every_night_they_wait(env, sandbox, smtp, monkeypatch):
    """CASAVI_DELETIONS=approve: a contact left without synced contracts waits for a person in casavi; the
    run that lists it alerts once, naming the id; the nights it keeps waiting do not."""
    port, inbox = smtp
    with_email(env, monkeypatch, port)

    def evaluate(run_id: str):
        return evaluate_run_sensor(env, build_deletions_alert_sensor, run_id, dg.DagsterEventType.RUN_SUCCESS)

    export(env)
    first = run_job(env)
    assert first.success and isinstance(evaluate(first.run_id), dg.SkipReason)
    rows = default_rows()
    rows["mieter"][2]["email"] = "info-at-baeckerei"  # the bakery's only contract leaves the scope
    export(env, rows)
    night = run_job(env)
    assert night.success
    evaluate(night.run_id)
    assert len(inbox) == 1
    first_line = inbox[0].get_body().get_content().splitlines()[0]
    assert first_line.startswith("casavi sync of Mandant 0001: check casavi_pending_deletions: Mandant 0001: ")
    assert "contact 0001-00044 (out of the sync rule)" in first_line and first_line.endswith(DELETIONS_ACTION)
    body = inbox[0].get_body().get_content()
    assert "Bäckerei" not in body and "baeckerei" not in body  # ids only, never a person's data
    waiting = run_job(env)  # the next night: still waiting, nothing new
    assert waiting.success and isinstance(evaluate(waiting.run_id), dg.SkipReason)
    assert len(inbox) == 1


@pytest.fixture
def receiver(impostor):
    """A local HTTP server standing in for Slack's and Teams' webhooks: (base URL, JSON bodies by path)."""
    port, received = impostor

    def bodies() -> dict[str, dict]:
        return {path: json.loads(raw.split(b"\n\n", 1)[1]) for method, path, raw in received}

    return f"http://127.0.0.1:{port}", bodies


def test_slack_and_teams_webhooks_get_their_bodies(env, sandbox, receiver, monkeypatch):
    base, bodies = receiver
    set_env(
        env,
        monkeypatch,
        CASAVI_ALERT_SLACK_WEBHOOK_URL=f"{base}/services/T000/B000/slack-token",
        CASAVI_ALERT_TEAMS_WEBHOOK_URL=f"{base}/workflows/teams-token",
        CASAVI_ALERT_UI_URL=UI_URL,
    )
    run_id = guard_stop(env)
    evaluate_failure_alert(env, run_id)

    received = bodies()
    assert set(received) == {"/services/T000/B000/slack-token", "/workflows/teams-token"}
    slack = received["/services/T000/B000/slack-token"]["text"].splitlines()
    assert slack[0].startswith("casavi sync of Mandant 0001: check mass_deletion_guard_check failed")
    assert slack[1] == f"Run: {UI_URL}/runs/{run_id}"
    teams = received["/workflows/teams-token"]
    assert teams["type"] == "message"
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["body"][0]["text"] == slack[0]
    assert card["content"]["actions"][0]["url"] == f"{UI_URL}/runs/{run_id}"


def test_nothing_is_sent_and_the_sensors_are_off_when_no_channel_is_configured(
    env, sandbox, smtp, receiver, monkeypatch
):
    _port, inbox = smtp
    _base, bodies = receiver
    settings = settings_from(env)
    assert build_failure_alert_sensor(settings).default_status == dg.DefaultSensorStatus.STOPPED
    run_id = guard_stop(env)
    result = evaluate_failure_alert(env, run_id)
    assert isinstance(result, dg.SkipReason) and "no alert channel" in result.skip_message
    assert inbox == [] and bodies() == {}

    set_env(env, monkeypatch, CASAVI_ALERT_TEAMS_WEBHOOK_URL="https://example.org/hook")
    assert build_failure_alert_sensor(settings_from(env)).default_status == dg.DefaultSensorStatus.RUNNING


def test_a_failing_channel_never_fails_the_sync_nor_the_others(env, sandbox, receiver, monkeypatch, capfd):
    base, bodies = receiver
    closed = free_port()
    secret_hook = f"http://127.0.0.1:{closed}/services/slack-secret-token"
    set_env(
        env,
        monkeypatch,
        CASAVI_ALERT_SMTP_HOST="127.0.0.1",
        CASAVI_ALERT_SMTP_PORT=str(free_port()),  # nobody listens
        CASAVI_ALERT_SMTP_STARTTLS="false",
        CASAVI_ALERT_SMTP_FROM="casavi-pipeline@example.org",
        CASAVI_ALERT_SMTP_TO="data-team@example.org",
        CASAVI_ALERT_SMTP_USER="alerts",
        CASAVI_ALERT_SMTP_PASSWORD=SMTP_PASSWORD,
        CASAVI_ALERT_SLACK_WEBHOOK_URL=secret_hook,
        CASAVI_ALERT_TEAMS_WEBHOOK_URL=f"{base}/teams",
    )
    export(env)
    assert run_job(env).success  # a configured, broken channel is nothing to the sync

    run_id = guard_stop(env)
    capfd.readouterr()
    evaluate_failure_alert(env, run_id)  # does not raise

    assert set(bodies()) == {"/teams"}  # the working channel still got it
    logged = "\n".join(capfd.readouterr())  # the sensor's log (Dagster's console logger)
    warnings = [line for line in logged.splitlines() if "WARNING" in line]
    assert any("alert for Mandant 0001 not sent by email: ConnectionRefusedError" in w for w in warnings), (
        logged
    )
    assert any("alert for Mandant 0001 not sent by slack: ConnectError" in w for w in warnings), logged
    assert SMTP_PASSWORD not in logged and "slack-secret-token" not in logged and str(closed) not in logged
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).tags[ALERTED_TAG] == "teams"


def store_sync(instance: dg.DagsterInstance, mandant: str, timestamp: float) -> None:
    """Record that `casavi_sync` materialized for `mandant` at `timestamp` (a night in the past)."""
    event = DagsterEvent(
        event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name=SYNC_JOB_NAME,
        event_specific_data=StepMaterializationData(
            dg.AssetMaterialization(asset_key=SYNC_ASSET, partition=mandant)
        ),
    )
    instance.store_event(
        EventLogEntry(
            error_info=None,
            level=logging.INFO,
            user_message="",
            run_id="",
            timestamp=timestamp,
            dagster_event=event,
        )
    )


def evaluate_freshness(env, cursor: str | None = None) -> dg.SensorResult:
    resources = build_resources(settings_from(env))
    with dg.DagsterInstance.get() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={name: resources[name] for name in ("alerting", "sync_policy", "erp_export")},
        )
        return casavi_freshness(context)


def evaluations(result: dg.SensorResult) -> dict[str, dg.AssetCheckEvaluation]:
    found = {e.partition: e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)}
    assert all(e.check_name == FRESHNESS_CHECK for e in found.values())
    return found


def test_freshness_fails_for_a_stale_mandant_once_alerted_and_passes_after_a_sync(
    env, sandbox, smtp, monkeypatch
):
    port, inbox = smtp
    with_email(env, monkeypatch, port)
    export(env)
    assert run_job(env).success  # 0001 synced just now; 0002 and 0420 (partitions too) never
    day = 24 * 3600
    with dg.DagsterInstance.get() as instance:
        store_sync(instance, "0002", time.time() - 27 * 3600)  # one night over the default 26 h
        # 0420 never synced, and a run of it waits (created, not started: a QUEUED one needs the origin
        # of a code location server; the check treats both as waiting)
        instance.add_run(dg.DagsterRun(job_name=SYNC_JOB_NAME, tags={"dagster/partition": "0420"}))
    watched = json.dumps({"since": {"0420": time.time() - 2 * day}})

    first = evaluate_freshness(env, watched)
    checks = evaluations(first)
    assert checks["0001"].passed
    assert not checks["0002"].passed and not checks["0420"].passed
    assert "the export is incomplete (missing" in checks["0002"].description  # never delivered
    assert "waits in the queue" in checks["0420"].description
    assert all(c.asset_key == dg.AssetKey("casavi_sync") for c in checks.values())
    with dg.DagsterInstance.get() as instance:  # what the daemon does with a sensor's asset events
        for evaluation in checks.values():
            instance.report_runless_asset_event(evaluation)
        stored = instance.get_records_for_run("", of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    assert {r.event_log_entry.dagster_event.asset_check_evaluation_data.partition for r in stored} == set(
        checks
    )
    subjects = sorted(m["Subject"] for m in inbox)
    assert len(subjects) == 2
    assert subjects[0].startswith("casavi sync of Mandant 0002: not synced successfully since ")
    assert subjects[1].startswith("casavi sync of Mandant 0420: not synced successfully ever")

    # The next tick: still stale, nothing new to record, no second alert.
    second = evaluate_freshness(env, first.cursor)
    assert evaluations(second) == {} and len(inbox) == 2

    # 0002 syncs again: the check passes; when it goes stale again, that is a new alert.
    with dg.DagsterInstance.get() as instance:
        store_sync(instance, "0002", time.time())
    third = evaluate_freshness(env, second.cursor)
    assert set(evaluations(third)) == {"0002"} and evaluations(third)["0002"].passed
    with dg.DagsterInstance.get() as instance:
        store_sync(instance, "0002", time.time() - 28 * 3600)  # stored last: the latest sync, 28 h ago
    fourth = evaluate_freshness(env, third.cursor)
    assert not evaluations(fourth)["0002"].passed
    assert sum("Mandant 0002" in m["Subject"] for m in inbox) == 2

    # The limit is the setting: 28 h is fresh under 30 h.
    set_env(env, monkeypatch, CASAVI_FRESHNESS_HOURS="30")
    fifth = evaluate_freshness(env, fourth.cursor)
    assert evaluations(fifth)["0002"].passed and "limit 30 h" in evaluations(fifth)["0002"].description


def test_alert_settings_are_checked_without_repeating_a_webhook_url(env):
    from casavi_pipeline.settings import SettingsError

    with pytest.raises(SettingsError) as raised:
        settings_from({**env, "CASAVI_ALERT_SLACK_WEBHOOK_URL": "http://hooks.example.org/T0/B0/token-xyz"})
    assert "CASAVI_ALERT_SLACK_WEBHOOK_URL" in str(raised.value) and "token-xyz" not in str(raised.value)
    with pytest.raises(SettingsError, match="CASAVI_ALERT_SMTP_FROM or CASAVI_ALERT_SMTP_TO is not"):
        settings_from({**env, "CASAVI_ALERT_SMTP_HOST": "smtp.example.org"})
