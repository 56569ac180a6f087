"""Alerts against real receivers on 127.0.0.1: an SMTP server (aiosmtpd) and an HTTP server.

The channels (`casavi_pipeline.alerts`) are tested alone: bodies, a failing channel, a slow one. That the
daemon's failure sensor alerts once for every failed run, however it was started, is tested with the real
daemon in test_failure_reason_ways.py. The escalation and freshness sensors are evaluated here with
Dagster's test contexts against the test's real instance (the shipped dagster.yaml in a temporary
DAGSTER_HOME), with the resources its settings give.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, StepMaterializationData
from dagster._core.events.log import EventLogEntry

from casavi_pipeline.alerts import CHANNEL_DEADLINE_SECONDS, RUN_PATH, Alert, AlertChannels, Smtp
from casavi_pipeline.defs.alerts import (
    ALERTED_TAG,
    DELETIONS_ACTION,
    ESCALATION_ACTION,
    build_deletions_alert_sensor,
    build_escalation_alert_sensor,
)
from casavi_pipeline.defs.freshness import FRESHNESS_CHECK, SYNC_ASSET, casavi_freshness
from casavi_pipeline.defs.jobs import SYNC_JOB_NAME
from casavi_pipeline.defs.resources import build_resources
from casavi_pipeline_tests.e2e import export, run_job
from casavi_pipeline_tests.erp_fixtures import default_rows
from casavi_pipeline_tests.harness import definitions_with, settings_from
from casavi_pipeline_tests.receivers import Inbox, Webhooks, smtp_inbox, wait_for, webhooks
from casavi_sandbox.process import free_port

UI_URL = "http://dagster.example.org:3000"
SMTP_PASSWORD = "smtp-password-never-logged"
ALERT = Alert(
    mandant="0001",
    reason="check mass_deletion_guard_check failed: the sync would delete 2 of 3 contacts",
    action="fix what it names",
    path=RUN_PATH.format(run_id="c574ce2c"),
    run_id="c574ce2c",
)


@pytest.fixture
def smtp() -> Iterator[Inbox]:
    with smtp_inbox() as inbox:
        yield inbox


@pytest.fixture
def hooks() -> Iterator[Webhooks]:
    with webhooks() as server:
        yield server


def email_to(inbox: Inbox) -> Smtp:
    return Smtp(
        host="127.0.0.1",
        port=inbox.port,
        sender="casavi-pipeline@example.org",
        recipients=("data-team@example.org", "on-call@example.org"),
        starttls=False,
    )


def test_each_channel_gets_its_body(smtp, hooks):
    channels = AlertChannels(
        smtp=email_to(smtp),
        slack_webhook_url=hooks.url("/services/T000/B000/slack-token"),
        teams_webhook_url=hooks.url("/workflows/teams-token"),
        ui_url=UI_URL,
    )
    sent, warnings = channels.send(ALERT)
    assert sorted(sent) == ["email", "slack", "teams"] and warnings == []

    (message,) = smtp.messages
    lines = message.get_body().get_content().splitlines()
    assert message["Subject"] == lines[0] == ALERT.first_line
    assert lines[1] == f"Run: {UI_URL}/runs/c574ce2c"
    assert message["To"] == "data-team@example.org, on-call@example.org"
    (slack,) = hooks.received("/services/T000/B000/slack-token")
    assert slack["text"].splitlines() == lines
    (teams,) = hooks.received("/workflows/teams-token")
    assert teams["type"] == "message"
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["body"][0]["text"] == ALERT.first_line
    assert card["content"]["actions"][0]["url"] == f"{UI_URL}/runs/c574ce2c"


def test_a_failing_channel_is_one_line_without_its_secret_and_the_others_still_send(hooks):
    closed = free_port()
    channels = AlertChannels(
        smtp=Smtp(
            host="127.0.0.1",
            port=free_port(),  # nobody listens
            sender="casavi-pipeline@example.org",
            recipients=("data-team@example.org",),
            starttls=False,
            user="alerts",
            password=SMTP_PASSWORD,
        ),
        slack_webhook_url=f"http://127.0.0.1:{closed}/services/slack-secret-token",
        teams_webhook_url=hooks.url("/teams"),
    )
    sent, warnings = channels.send(ALERT)
    assert sent == ["teams"] and hooks.paths() == {"/teams"}
    assert sorted(warnings) == [
        "alert for Mandant 0001 not sent by email: SMTP server not reachable",
        "alert for Mandant 0001 not sent by slack: ConnectError",
    ]
    said = "\n".join(warnings)
    assert SMTP_PASSWORD not in said and "slack-secret-token" not in said and str(closed) not in said


def test_a_slow_webhook_is_cut_at_its_deadline_and_delays_no_other_channel(smtp, hooks):
    """A Slack URL answering a byte a second: email and Teams take the alert while Slack's answer is
    still dribbling; Slack is given up at its deadline, its connection closed (no call left waiting)."""
    hooks.slow_paths.add("/slack")
    channels = AlertChannels(
        smtp=email_to(smtp),
        slack_webhook_url=hooks.url("/slack"),
        teams_webhook_url=hooks.url("/teams"),
        deadline_seconds=4,
    )
    taken: list[tuple[str, int]] = []  # (channel, how many bodies Slack had got when it was taken)

    def on_sent(channel: str) -> None:
        taken.append((channel, hooks.abandoned("/slack")))

    sent, warnings = channels.send(ALERT, on_sent=on_sent)

    assert sorted(sent) == ["email", "teams"] and sorted(c for c, _ in taken) == ["email", "teams"]
    assert all(hung_up == 0 for _, hung_up in taken), "a fast channel waited for the slow one"
    assert warnings == ["alert for Mandant 0001 not sent by slack: no answer within 4 s"]
    assert len(hooks.received("/slack")) == 1 and len(smtp.messages) == 1
    wait_for(lambda: hooks.abandoned("/slack") == 1, 30, "the slow webhook to see its client hang up")
    # The default deadline lets a run failure sensor alert for its 5 runs per tick within Dagster's 60 s.
    assert 5 * CHANNEL_DEADLINE_SECONDS < 60


def test_a_long_subject_is_the_first_line_exactly(smtp):
    """Python folds a long subject next to an encoded word (the em dash) with a space too many, for about
    one length in three of a guard's line: the email is not folded below 998 characters."""
    reason = (
        "check mass_deletion_guard_check failed: Mandant 0001 (sync rule email): 2 of 3 contacts (67%) would "
        "leave the sync (CASAVI_DELETIONS=approve: they would wait for deletion), more than the allowed 10%. "
        "Is the export truncated? Check the export; if it is intended, rerun with CASAVI_ALLOW_MASS_DELETE=true "
        "or raise CASAVI_MAX_DELETE_SHARE."
    )
    channels = AlertChannels(smtp=email_to(smtp))
    for pad in range(0, 30, 3):
        alert = Alert(mandant="0001", reason="x" * pad + reason, action="fix it", path="/runs/r", run_id="r")
        assert channels.send(alert) == (["email"], [])
        assert smtp.messages[-1]["Subject"] == alert.first_line


def test_channels_that_took_the_alert_are_not_sent_again(smtp, hooks):
    channels = AlertChannels(smtp=email_to(smtp), teams_webhook_url=hooks.url("/teams"))
    assert channels.configured_channels == ("email", "teams")
    sent, warnings = channels.send(ALERT, skip={"email"})
    assert sent == ["teams"] and warnings == [] and smtp.messages == []
    assert channels.send(ALERT, skip={"email", "teams"}) == ([], [])
    assert AlertChannels().send(ALERT) == ([], []) and not AlertChannels().configured


def set_env(env, monkeypatch, **values: str) -> None:
    for key, value in values.items():
        env[key] = value
        monkeypatch.setenv(key, value)


def with_email(env, monkeypatch, port: int) -> None:
    set_env(
        env,
        monkeypatch,
        CASAVI_ALERT_SMTP_HOST="127.0.0.1",
        CASAVI_ALERT_SMTP_PORT=str(port),
        CASAVI_ALERT_SMTP_STARTTLS="false",
        CASAVI_ALERT_SMTP_FROM="casavi-pipeline@example.org",
        CASAVI_ALERT_SMTP_TO="data-team@example.org, on-call@example.org",
        CASAVI_ALERT_UI_URL=UI_URL + "/",
    )


def evaluate_success_sensor(env, build_sensor, run_id: str) -> None:
    """A run status sensor for this successful run, as the daemon evaluates it once per run."""
    settings = settings_from(env)
    sensor = build_sensor(settings)
    resources = build_resources(settings)
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        event = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records[0]
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=event.event_log_entry.dagster_event,
            dagster_instance=instance,
            dagster_run=run,
            resources={"alerting": resources["alerting"]},
            repository_def=definitions_with(resources).get_repository_def(),
        )
        sensor(context)


@pytest.mark.e2e
def test_records_refused_night_after_night_are_escalated_in_one_alert_per_night(
    env, sandbox, smtp, monkeypatch
):
    """The night succeeds (casavi_rejections only warns), but a record refused on
    CASAVI_REJECTION_ESCALATE_NIGHTS nights needs a person: one alert, naming the ids, never values."""
    inbox = smtp.messages
    with_email(env, monkeypatch, smtp.port)
    set_env(env, monkeypatch, CASAVI_REJECTION_ESCALATE_NIGHTS="1")

    def evaluate(run_id: str) -> None:
        evaluate_success_sensor(env, build_escalation_alert_sensor, run_id)

    export(env)
    clean = run_job(env)
    assert clean.success
    evaluate(clean.run_id)
    assert inbox == []  # nothing refused

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
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(refused.run_id).tags[ALERTED_TAG] == "email"


@pytest.mark.e2e
def test_new_pending_deletions_are_told_once_not_every_night_they_wait(env, sandbox, smtp, monkeypatch):
    """CASAVI_DELETIONS=approve: a contact left without synced contracts waits for a person in casavi; the
    run that lists it alerts once, naming the id; the nights it keeps waiting do not."""
    inbox = smtp.messages
    with_email(env, monkeypatch, smtp.port)

    def evaluate(run_id: str) -> None:
        evaluate_success_sensor(env, build_deletions_alert_sensor, run_id)

    export(env)
    first = run_job(env)
    assert first.success
    evaluate(first.run_id)
    assert inbox == []  # nothing waits
    rows = default_rows()
    rows["mieter"][2]["email"] = "info-at-baeckerei"  # the bakery's only contract leaves the scope
    export(env, rows)
    night = run_job(env)
    assert night.success
    evaluate(night.run_id)
    assert len(inbox) == 1
    body = inbox[0].get_body().get_content()
    first_line = body.splitlines()[0]
    assert first_line.startswith("casavi sync of Mandant 0001: check casavi_pending_deletions: Mandant 0001: ")
    assert "contact 0001-00044 (out of the sync rule)" in first_line and first_line.endswith(DELETIONS_ACTION)
    assert "Bäckerei" not in body and "baeckerei" not in body  # ids only, never a person's data
    waiting = run_job(env)  # the next night: still waiting, nothing new
    assert waiting.success
    evaluate(waiting.run_id)
    assert len(inbox) == 1


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


@pytest.mark.e2e
def test_freshness_fails_for_a_stale_mandant_once_alerted_and_passes_after_a_sync(
    env, sandbox, smtp, monkeypatch
):
    inbox = smtp.messages
    with_email(env, monkeypatch, smtp.port)
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
