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

Each channel has a total deadline (:data:`CHANNEL_DEADLINE_SECONDS`) and the channels are sent at once, so
one slow channel delays none of the others. A client's own timeouts bound each read, not the request: a
webhook answering a byte every few seconds would hold a blocking call for minutes (and, in a sensor, past
Dagster's tick timeout, so the tick's work was repeated a minute later). Here every channel is a
coroutine (httpx's async client, aiosmtplib) cancelled at its deadline: its connection is closed, and no
thread is left waiting on it.
"""

from __future__ import annotations

import asyncio
import email.policy
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx

#: Dagster's UI path of a run, below the UI's base URL.
RUN_PATH = "/runs/{run_id}"
#: SMTP over TLS from the first byte (SMTPS); other ports upgrade with STARTTLS.
SMTPS_PORT = 465
#: How long one channel may take, all of it (connect, TLS, login, send, answer). Dagster gives a sensor
#: tick 60 s and a run failure sensor handles up to 5 runs per tick: with the channels sent at once, a
#: tick of 5 failed runs takes at most 40 s. Slack, Teams and an SMTP relay answer in about a second.
CHANNEL_DEADLINE_SECONDS = 8.0
#: The channels, in the order `AlertChannels.configured_channels` names them.
CHANNELS = ("email", "slack", "teams")


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
    """Where alerts go; every channel optional. `send` sends to them and says which took the alert."""

    smtp: Smtp | None = None
    slack_webhook_url: str | None = None
    teams_webhook_url: str | None = None
    ui_url: str | None = None
    deadline_seconds: float = CHANNEL_DEADLINE_SECONDS

    @property
    def configured_channels(self) -> tuple[str, ...]:
        settings = {"email": self.smtp, "slack": self.slack_webhook_url, "teams": self.teams_webhook_url}
        return tuple(name for name in CHANNELS if settings[name])

    @property
    def configured(self) -> bool:
        return bool(self.configured_channels)

    def send(
        self,
        alert: Alert,
        *,
        skip: Collection[str] = (),
        on_sent: Callable[[str], None] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Send to every configured channel not in `skip`, all at once, each within `deadline_seconds`.

        `on_sent(channel)` is called as each channel takes the alert, so that a caller cut off later
        (a sensor tick timed out) has recorded the channels that are done. Returns (the channels that
        took it, in the order they did; one warning line per channel that did not)."""
        channels = [name for name in self.configured_channels if name not in skip]
        return asyncio.run(self._send_all(alert, channels, on_sent or (lambda _name: None)))

    async def _send_all(
        self, alert: Alert, channels: Sequence[str], on_sent: Callable[[str], None]
    ) -> tuple[list[str], list[str]]:
        senders: dict[str, Callable[[Alert], Awaitable[None]]] = {
            "email": self._email,
            "slack": self._slack,
            "teams": self._teams,
        }

        async def one(name: str) -> tuple[str, str | None]:
            try:
                async with asyncio.timeout(self.deadline_seconds):
                    await senders[name](alert)
            except TimeoutError:
                return name, f"no answer within {self.deadline_seconds:g} s"
            except (OSError, aiosmtplib.SMTPException, httpx.HTTPError) as exc:
                return name, _describe(exc)
            return name, None

        sent, warnings = [], []
        for finished in asyncio.as_completed([one(name) for name in channels]):
            name, error = await finished
            if error is None:
                sent.append(name)
                on_sent(name)
            else:
                warnings.append(f"alert for Mandant {alert.mandant} not sent by {name}: {error}")
        return sent, warnings

    async def _email(self, alert: Alert) -> None:
        smtp = self.smtp
        assert smtp is not None
        message = EmailMessage()
        message["From"] = smtp.sender
        message["To"] = ", ".join(smtp.recipients)
        message["Subject"] = alert.first_line
        message.set_content(alert.text(self.ui_url) + "\n")
        # Port 465 speaks TLS from the first byte (SMTPS); other ports upgrade with STARTTLS if asked
        # (and not at all otherwise: aiosmtplib's default would upgrade whenever the server offers it).
        smtps = smtp.port == SMTPS_PORT
        await aiosmtplib.send(
            # Flattened here, not by aiosmtplib: its policy folds a long subject next to an encoded word
            # (the "—") with a space too many, and the subject is then no longer the alert's first line.
            # Unfolded below RFC 5322's 998 characters a line, it is.
            message.as_bytes(policy=email.policy.SMTP.clone(max_line_length=998)),
            sender=smtp.sender,
            recipients=list(smtp.recipients),
            hostname=smtp.host,
            port=smtp.port,
            use_tls=smtps,
            start_tls=smtp.starttls and not smtps,
            tls_context=ssl.create_default_context(),
            username=smtp.user or None,
            password=(smtp.password or "") if smtp.user else None,
            timeout=self.deadline_seconds,
        )

    async def _slack(self, alert: Alert) -> None:
        assert self.slack_webhook_url is not None
        await self._post(self.slack_webhook_url, slack_body(alert, self.ui_url))

    async def _teams(self, alert: Alert) -> None:
        assert self.teams_webhook_url is not None
        await self._post(self.teams_webhook_url, teams_body(alert, self.ui_url))

    async def _post(self, url: str, body: dict) -> None:
        async with httpx.AsyncClient(timeout=self.deadline_seconds) as client:
            response = await client.post(url, json=body)
        if response.is_error:
            # Not raise_for_status(): its message names the URL, which is the webhook's secret.
            raise _WebhookRefused(f"HTTP {response.status_code}")


class _WebhookRefused(OSError):
    """The webhook answered with an error status."""


def _describe(exc: BaseException) -> str:
    """The kind of failure, without the exception's text: it may carry a URL (with its token)."""
    if isinstance(exc, _WebhookRefused):
        return f"the webhook answered {exc}"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"the SMTP server answered {exc.code}"
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return "SMTP server not reachable"
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
