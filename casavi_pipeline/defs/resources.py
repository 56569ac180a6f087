"""The resources: what the assets, checks, schedules and sensors get from the settings.

Settings flow one way: environment → `Settings` (validated once, when the code location loads) → the
resources built here → assets. This module is the one place that loads the settings; everything else
receives what it needs as a resource (or, for the partitions, as `SETTINGS.mandanten` at import,
because Dagster needs static partitions when the code location loads). Tests hand in their own
resources instead of patching the environment.

The casavi resource is an abstract `ConfigurableResource` with a real (httpx) implementation here and a
fake in the test harness (`casavi_sandbox.fake`). Its credentials are bound through `dg.EnvVar`, so they
are read from the environment when a run starts and never stored in run config, the UI or the event log.
Where they go is no run config at all: the resource reads `CASAVI_BASE_URL` from the run's environment
too (validated by the settings' rule), so a run launched with edited config cannot redirect them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from casavi_pipeline.alerts import AlertChannels, Smtp
from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.casavi.ratelimit import (
    DEFAULT_CEILING_PER_MINUTE,
    AccountBudget,
    budget_path,
    learned_rate,
)
from casavi_pipeline.erase import VALUES_FOLDER
from casavi_pipeline.erp.contract import Entity
from casavi_pipeline.erp.reader import ErpTable, read_entity
from casavi_pipeline.runs.values import RunValuesIOManager, run_values_executor
from casavi_pipeline.settings import Settings, casavi_base_url, load_settings
from casavi_pipeline.sync.deliveries import Delivery, scan_delivery
from casavi_pipeline.sync.guards import GuardPolicy
from casavi_pipeline.sync.rejections import RejectionPolicy
from casavi_pipeline.sync.remote import RemoteCache
from casavi_pipeline.sync.snapshot import Snapshot

#: The settings of this code location, read once when it loads (a bad setting fails the load in one line).
SETTINGS: Settings = load_settings()


class ErpExport(dg.ConfigurableResource):
    """The ERP export folder: one sub-folder per Mandant with the seven CSV files."""

    directory: str = Field(description="the export folder (ERP_EXPORT_DIR)")
    encoding: str = Field(default="utf-8", description="utf-8 or cp1252 (ERP_EXPORT_ENCODING)")

    def read(self, mandant: str, entity: Entity) -> ErpTable:
        return read_entity(Path(self.directory), mandant, entity, self.encoding)

    def delivery(self, mandant: str) -> Delivery:
        return scan_delivery(Path(self.directory), mandant)


class SnapshotStore(dg.ConfigurableResource):
    """Where the snapshots live: one DuckDB file per Mandant, so Mandanten run in parallel."""

    directory: str = Field(description="folder of the snapshot files (CASAVI_SNAPSHOT_DB)")
    audit_retention_days: float = Field(
        default=400.0, gt=0, description="audit rows older than this go (CASAVI_AUDIT_RETENTION_DAYS)"
    )

    def path(self, mandant: str) -> Path:
        return Path(self.directory) / f"snapshot_{mandant}.duckdb"

    def open(self, mandant: str, *, read_only: bool = False) -> Snapshot:
        return Snapshot(self.path(mandant), mandant, read_only=read_only)

    @property
    def values_directory(self) -> Path:
        """Where the run's intermediate values (ERP and casavi frames) are kept: see `build_resources`."""
        return Path(self.directory) / VALUES_FOLDER

    def remote_cache(self) -> RemoteCache:
        """The account-wide listing of casavi that every Mandant takes its slice from."""
        return RemoteCache(Path(self.directory))


class SyncPolicy(dg.ConfigurableResource):
    """How reference ids are composed and what the sync may do on its own."""

    id_separator: str = Field(default="-", description="separator of composite ids (CASAVI_ID_SEPARATOR)")
    max_delete_share: float = Field(default=0.10, ge=0, le=1, description="CASAVI_MAX_DELETE_SHARE")
    delete_guard_min_count: int = Field(default=0, ge=0, description="CASAVI_DELETE_GUARD_MIN_COUNT")
    allow_mass_delete: bool = Field(default=False, description="CASAVI_ALLOW_MASS_DELETE")
    allow_separator_change: bool = Field(default=False, description="CASAVI_ALLOW_SEPARATOR_CHANGE")
    email_drop_warn_share: float = Field(default=0.25, ge=0, le=1, description="CASAVI_EMAIL_DROP_WARN_SHARE")
    delivery_settle_seconds: float = Field(default=60.0, ge=0, description="CASAVI_DELIVERY_SETTLE_SECONDS")
    verify_writes: bool = Field(
        default=True, description="read back the first write per kind (CASAVI_VERIFY_WRITES)"
    )
    read_max_age_minutes: float = Field(default=10.0, ge=0, description="CASAVI_READ_MAX_AGE_MINUTES")
    progress_seconds: float = Field(default=30.0, gt=0, description="CASAVI_PROGRESS_SECONDS")
    full_read_every_days: float = Field(default=0.75, gt=0, description="CASAVI_FULL_READ_EVERY_DAYS")
    max_rejected_share: float = Field(default=0.05, ge=0, le=1, description="CASAVI_MAX_REJECTED_SHARE")
    rejected_min_count: int = Field(default=10, ge=0, description="CASAVI_REJECTED_MIN_COUNT")
    rejection_escalate_nights: int = Field(default=3, ge=1, description="CASAVI_REJECTION_ESCALATE_NIGHTS")
    freshness_hours: float = Field(default=26.0, gt=0, description="CASAVI_FRESHNESS_HOURS")

    @property
    def guards(self) -> GuardPolicy:
        return GuardPolicy(
            separator=self.id_separator,
            max_delete_share=self.max_delete_share,
            delete_guard_min_count=self.delete_guard_min_count,
            allow_mass_delete=self.allow_mass_delete,
            allow_separator_change=self.allow_separator_change,
        )

    @property
    def rejections(self) -> RejectionPolicy:
        return RejectionPolicy(
            max_share=self.max_rejected_share,
            min_count=self.rejected_min_count,
            escalate_nights=self.rejection_escalate_nights,
        )


class Alerting(dg.ConfigurableResource):
    """Who is told when a night fails or a Mandant goes stale (`casavi_pipeline.alerts`).

    The webhook URLs and the SMTP password are bound through `dg.EnvVar` (`build_resources`), like the
    casavi credentials: never in run config, the UI or the event log."""

    ui_url: str | None = Field(default=None, description="the Dagster UI's base URL (CASAVI_ALERT_UI_URL)")
    smtp_host: str | None = Field(default=None, description="CASAVI_ALERT_SMTP_HOST")
    smtp_port: int = Field(default=587, description="CASAVI_ALERT_SMTP_PORT")
    smtp_starttls: bool = Field(default=True, description="CASAVI_ALERT_SMTP_STARTTLS")
    smtp_from: str | None = Field(default=None, description="CASAVI_ALERT_SMTP_FROM")
    smtp_to: list[str] = Field(default=[], description="CASAVI_ALERT_SMTP_TO")
    smtp_user: str | None = Field(default=None, description="CASAVI_ALERT_SMTP_USER")
    smtp_password: str | None = Field(default=None, description="EnvVar('CASAVI_ALERT_SMTP_PASSWORD')")
    slack_webhook_url: str | None = Field(
        default=None, description="EnvVar('CASAVI_ALERT_SLACK_WEBHOOK_URL')"
    )
    teams_webhook_url: str | None = Field(
        default=None, description="EnvVar('CASAVI_ALERT_TEAMS_WEBHOOK_URL')"
    )

    @property
    def channels(self) -> AlertChannels:
        smtp = None
        if self.smtp_host and self.smtp_from:
            smtp = Smtp(
                host=self.smtp_host,
                port=self.smtp_port,
                sender=self.smtp_from,
                recipients=tuple(self.smtp_to),
                starttls=self.smtp_starttls,
                user=self.smtp_user,
                password=self.smtp_password,
            )
        return AlertChannels(
            smtp=smtp,
            slack_webhook_url=self.slack_webhook_url,
            teams_webhook_url=self.teams_webhook_url,
            ui_url=self.ui_url,
        )


class CasaviResource(dg.ConfigurableResource):
    """Hands out a casavi client for the duration of one step."""

    @contextlib.contextmanager
    def get_client(self) -> Iterator[CasaviClient]:
        raise NotImplementedError
        yield  # pragma: no cover

    @property
    def target(self) -> str:
        """Where the writes go, for messages (a URL, never credentials)."""
        raise NotImplementedError

    def expected_seconds(self, requests: int) -> float | None:
        """How long `requests` take at the rate casavi allowed so far (None: not known)."""
        return None


class HttpCasaviResource(CasaviResource):
    """casavi's manager API v2 over HTTP (or the local sandbox, which speaks the same API).

    Every client it hands out paces its requests through the account's budget, a file in
    `state_directory` shared by all processes (see `casavi_pipeline.casavi.ratelimit`).
    """

    api_key: str = Field(description="casavi API key (bound to EnvVar('CASAVI_API_KEY'))")
    api_secret: str = Field(description="casavi API secret (bound to EnvVar('CASAVI_API_SECRET'))")
    state_directory: str = Field(description="folder of the account's request budget (CASAVI_SNAPSHOT_DB)")
    requests_per_minute: float = Field(
        default=DEFAULT_CEILING_PER_MINUTE,
        ge=0,
        allow_inf_nan=False,
        description="ceiling of the adaptive rate, 0 = none (CASAVI_REQUESTS_PER_MINUTE)",
    )
    max_concurrency: int = Field(
        default=4, ge=1, le=64, description="writes in flight (CASAVI_MAX_CONCURRENCY)"
    )
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, description="tries per request on 5xx/timeouts")
    max_retry_seconds: float = Field(default=300.0, gt=0, description="retry time per request, 429s included")

    @property
    def target(self) -> str:
        return casavi_base_url()

    def _budget_path(self) -> Path:
        return budget_path(Path(self.state_directory), self.target, self.api_key)

    def expected_seconds(self, requests: int) -> float | None:
        rate = learned_rate(self._budget_path())  # requests/s; else the ceiling: the fastest it may go
        per_minute = rate * 60.0 if rate else self.requests_per_minute
        return requests * 60.0 / per_minute if per_minute else None

    @contextlib.contextmanager
    def get_client(self) -> Iterator[CasaviClient]:
        base_url = self.target
        with (
            AccountBudget(self._budget_path(), ceiling_per_minute=self.requests_per_minute or None) as budget,
            CasaviClient(
                base_url,
                self.api_key,
                self.api_secret,
                budget=budget,
                timeout=self.timeout_seconds,
                max_concurrency=self.max_concurrency,
                max_attempts=self.max_attempts,
                max_retry_seconds=self.max_retry_seconds,
            ) as client,
        ):
            yield client


def snapshot_store(settings: Settings) -> SnapshotStore:
    """Where the snapshots (and the run values) live."""
    return SnapshotStore(
        directory=str(settings.snapshot_dir.resolve()), audit_retention_days=settings.audit_retention_days
    )


def build_resources(settings: Settings) -> dict[str, object]:
    """The resources of the code location, from validated settings; secrets only through EnvVar."""
    snapshots = snapshot_store(settings)
    return {
        # The frames between steps hold names, emails and phones: they are kept beside the Mandant's
        # snapshot, per run and only while a run may need them (casavi_pipeline/runs/values.py), not in
        # Dagster's storage under $DAGSTER_HOME, which grows with every instance and is not the
        # Mandant's to erase.
        "io_manager": RunValuesIOManager(base_dir=str(snapshots.values_directory)),
        "erp_export": ErpExport(
            directory=str(settings.erp_export_dir), encoding=settings.erp_export_encoding
        ),
        "snapshots": snapshots,
        "sync_policy": SyncPolicy(
            id_separator=settings.id_separator,
            max_delete_share=settings.max_delete_share,
            delete_guard_min_count=settings.delete_guard_min_count,
            allow_mass_delete=settings.allow_mass_delete,
            allow_separator_change=settings.allow_separator_change,
            email_drop_warn_share=settings.email_drop_warn_share,
            delivery_settle_seconds=settings.delivery_settle_seconds,
            verify_writes=settings.verify_writes,
            read_max_age_minutes=settings.read_max_age_minutes,
            progress_seconds=settings.progress_seconds,
            full_read_every_days=settings.full_read_every_days,
            max_rejected_share=settings.max_rejected_share,
            rejected_min_count=settings.rejected_min_count,
            rejection_escalate_nights=settings.rejection_escalate_nights,
            freshness_hours=settings.freshness_hours,
        ),
        "alerting": Alerting(
            ui_url=settings.alert_ui_url,
            smtp_host=settings.alert_smtp_host,
            smtp_port=settings.alert_smtp_port,
            smtp_starttls=settings.alert_smtp_starttls,
            smtp_from=settings.alert_smtp_from,
            smtp_to=settings.alert_smtp_recipients,
            smtp_user=settings.alert_smtp_user,
            smtp_password=_secret("CASAVI_ALERT_SMTP_PASSWORD", settings.alert_smtp_password),
            slack_webhook_url=_secret("CASAVI_ALERT_SLACK_WEBHOOK_URL", settings.alert_slack_webhook_url),
            teams_webhook_url=_secret("CASAVI_ALERT_TEAMS_WEBHOOK_URL", settings.alert_teams_webhook_url),
        ),
        "casavi": HttpCasaviResource(
            api_key=dg.EnvVar("CASAVI_API_KEY"),
            api_secret=dg.EnvVar("CASAVI_API_SECRET"),
            state_directory=snapshots.directory,
            requests_per_minute=settings.requests_per_minute,
            max_concurrency=settings.max_concurrency,
        ),
    }


def _secret(variable: str, value: object | None) -> dg.EnvVar | None:
    """Bind an optional secret through EnvVar only when it is set (an unset EnvVar fails the resource)."""
    return dg.EnvVar(variable) if value is not None else None


@dg.definitions
def resources() -> dg.Definitions:
    # One run = one Mandant, and its steps form a chain: parallelism comes from Mandant runs side by
    # side (queued under dagster.yaml's limits), not from steps. A process per step would re-import
    # dagster and pandas ~30 times per run for nothing. The executor also keeps the run values.
    values = snapshot_store(SETTINGS).values_directory
    return dg.Definitions(resources=build_resources(SETTINGS), executor=run_values_executor(values))
