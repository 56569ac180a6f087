"""Alerts that reach a person: email over SMTP, Slack and Microsoft Teams incoming webhooks.

An alert is two lines: the first says the Mandant, why (the one-line reason the project already computes:
reference ids, field names and counts, never a person's data) and what to do; the second links to the run
in the Dagster UI. Each channel is off until its settings are set. A channel that fails is reported as one
line naming the channel and the kind of error, never its URL (a webhook URL is its own token) or a
password, and never fails what sent the alert: the sync is done either way, and an alert that cannot be
sent must not turn a finished night into a failed one.

Plain webhooks, not `dagster-slack`/`dagster-msteams`: those need a bot token and SDK client, while an
incoming webhook URL is what a data team can create in a minute. The Teams body is an Adaptive Card in
the message envelope, which both the Workflows webhooks and the older connector webhooks accept.
"""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage

import httpx

#: Dagster's UI path of a run, below the UI's base URL.
RUN_PATH = "/runs/{run_id}"


@dataclass(frozen=True)
class Alert:
    """What went wrong for one Mandant. `path` is the page of the Dagster UI to open (below its base
    URL); `run_id` names the run when there is one (the alert still names it without a UI URL)."""

    mandant: str
    reason: str
    action: str
    path: str
    run_id: str | None = None

    @property
    def first_line(self) -> str:
        return f"casavi sync of Mandant {self.mandant}: {self.reason} — {self.action}"

    def link(self, ui_url: str | None) -> str | None:
        return ui_url + self.path if ui_url else None

    def text(self, ui_url: str | None) -> str:
        link = self.link(ui_url)
        if link:
            second = f"Run: {link}" if self.run_id else f"Open: {link}"
        elif self.run_id:
            second = f"Run id: {self.run_id} (set CASAVI_ALERT_UI_URL for a link)"
        else:
            second = "Set CASAVI_ALERT_UI_URL for a link to the Dagster UI"
        return f"{self.first_line}\n{second}"


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool = True
    user: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class AlertChannels:
    """Where alerts go; every channel optional. `send` returns what failed, one line per channel."""

    smtp: Smtp | None = None
    slack_webhook_url: str | None = None
    teams_webhook_url: str | None = None
    ui_url: str | None = None
    timeout_seconds: float = 10.0

    @property
    def configured(self) -> bool:
        return bool(self.smtp or self.slack_webhook_url or self.teams_webhook_url)

    def send(self, alert: Alert) -> tuple[list[str], list[str]]:
        """Send to every configured channel: (the channels that took it, one warning per failed one)."""
        sent, warnings = [], []
        senders = {
            "email": (self.smtp, self._email),
            "slack": (self.slack_webhook_url, self._slack),
            "teams": (self.teams_webhook_url, self._teams),
        }
        for name, (setting, send) in senders.items():
            if not setting:
                continue
            try:
                send(alert)
            except (OSError, smtplib.SMTPException, httpx.HTTPError) as exc:
                warnings.append(f"alert for Mandant {alert.mandant} not sent by {name}: {_describe(exc)}")
            else:
                sent.append(name)
        return sent, warnings

    def _email(self, alert: Alert) -> None:
        smtp = self.smtp
        assert smtp is not None
        # Not folded below RFC 5322's 998: Python folds a long subject next to an encoded word (the "—")
        # with a space too many, so the subject would no longer be the alert's first line.
        message = EmailMessage(policy=email.policy.default.clone(max_line_length=998))
        message["From"] = smtp.sender
        message["To"] = ", ".join(smtp.recipients)
        message["Subject"] = alert.first_line
        message.set_content(alert.text(self.ui_url) + "\n")
        context = ssl.create_default_context()
        # Port 465 speaks TLS from the first byte (SMTPS); other ports upgrade with STARTTLS if asked.
        if smtp.port == 465:
            server: smtplib.SMTP = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=self.timeout_seconds, context=context
            )
        else:
            server = smtplib.SMTP(smtp.host, smtp.port, timeout=self.timeout_seconds)
        with server:
            if smtp.starttls and smtp.port != 465:
                server.starttls(context=context)
            if smtp.user:
                server.login(smtp.user, smtp.password or "")
            server.send_message(message)

    def _slack(self, alert: Alert) -> None:
        assert self.slack_webhook_url is not None
        self._post(self.slack_webhook_url, slack_body(alert, self.ui_url))

    def _teams(self, alert: Alert) -> None:
        assert self.teams_webhook_url is not None
        self._post(self.teams_webhook_url, teams_body(alert, self.ui_url))

    def _post(self, url: str, body: dict) -> None:
        response = httpx.post(url, json=body, timeout=self.timeout_seconds)
        if response.is_error:
            # Not raise_for_status(): its message names the URL, which is the webhook's secret.
            raise _WebhookRefused(f"HTTP {response.status_code}")


class _WebhookRefused(OSError):
    """The webhook answered with an error status."""


def _describe(exc: BaseException) -> str:
    """The kind of failure, without the exception's text: it may carry a URL (with its token)."""
    if isinstance(exc, _WebhookRefused):
        return f"the webhook answered {exc}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the SMTP server answered {exc.smtp_code}"
    return type(exc).__name__


def slack_body(alert: Alert, ui_url: str | None) -> dict:
    """Slack's incoming-webhook body: plain text, first line first."""
    return {"text": alert.text(ui_url)}


def teams_body(alert: Alert, ui_url: str | None) -> dict:
    """A Teams message holding one Adaptive Card: the first line, then a button to the run."""
    link = alert.link(ui_url)
    card: dict = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": line, "wrap": True} for line in alert.text(ui_url).splitlines()
        ],
    }
    card["body"][0]["weight"] = "Bolder"
    if link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in Dagster", "url": link}]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }
