"""The resources: what the assets, checks, schedules and sensors get from the settings.

Settings flow one way: environment → `Settings` (validated once, when the code location loads) → the
resources built here → assets. This module is the one place that loads the settings; everything else
receives what it needs as a resource (or, for the partitions, as `SETTINGS.mandanten` at import,
because Dagster needs static partitions when the code location loads). Tests hand in their own
resources instead of patching the environment.

Each resource takes one group of settings (`casavi_pipeline.settings`): its config fields are generated
from the group's declarations (`_fields_of`: same names, defaults, bounds and meanings, the variable named
in each field's description), and `from_settings` fills them from the loaded group. Secrets (`SecretStr`)
are bound through `dg.EnvVar`, so they are read from the environment when a run starts and never stored
in run config, the UI or the event log.

The casavi resource is an abstract `ConfigurableResource` with a real (httpx) implementation here and a
fake in the test harness (`casavi_harness.fake`). Where its credentials go is no run config at all: the
resource reads `CASAVI_BASE_URL` from the run's environment too (validated by the settings' rule), so a
run launched with edited config cannot redirect them.
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Self

import dagster as dg
from pydantic import BaseModel, Field, SecretStr, create_model
from pydantic.fields import FieldInfo

from casavi_pipeline.account import account_id
from casavi_pipeline.alerts import AlertChannels, Smtp
from casavi_pipeline.casavi.budget_store import learned_rate, open_budget
from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.erp.deliveries import Delivery, scan_delivery
from casavi_pipeline.erp.mapping_file import load_mapping_file
from casavi_pipeline.erp.sources import CsvSource, ErpSource, SqlSource
from casavi_pipeline.runs.values import VALUES_FOLDER, RunValuesIOManager, run_values_executor
from casavi_pipeline.settings import (
    AlertSettings,
    CasaviSettings,
    ErpSettings,
    Settings,
    StateSettings,
    SyncPolicySettings,
    addresses,
    casavi_base_url,
    in_resource,
    load_settings,
    variable_of,
)
from casavi_pipeline.state.listing import RemoteCache
from casavi_pipeline.state.snapshot import Snapshot
from casavi_pipeline.state.store import StateStore
from casavi_pipeline.state.upgrade import old_budget_name
from casavi_pipeline.sync.guards import GuardPolicy
from casavi_pipeline.sync.rejections import RejectionPolicy

#: The settings of this code location, read once when it loads (a bad setting fails the load in one line).
SETTINGS: Settings = load_settings()
#: The variable of the casavi API key: the secret that also names the account the state belongs to.
CASAVI_API_KEY = variable_of(CasaviSettings.model_fields["api_key"])


def _is_secret(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *typing.get_args(field.annotation))


def _config_type(annotation: Any) -> Any:
    """The type of a setting as Dagster config: secrets and paths are strings there."""
    if isinstance(annotation, types.UnionType):
        return _config_type(typing.get_args(annotation)[0]) | None  # settings unions are `X | None`
    return str if annotation in (SecretStr, Path) else annotation


def _fields_of(group: type[BaseModel]) -> dict[str, Any]:
    """The resource's config fields of a settings group: every setting that is `in_resource`."""
    fields: dict[str, Any] = {}
    for name, field in group.model_fields.items():
        if not in_resource(field):
            continue
        variable = variable_of(field)
        source = f"dg.EnvVar('{variable}'), a secret" if _is_secret(field) else variable
        default = str(field.default) if isinstance(field.default, Path) else field.default
        config_type = _config_type(field.annotation)
        if field.metadata:  # the bounds (ge, le, gt, allow_inf_nan)
            config_type = Annotated[(config_type, *field.metadata)]
        fields[name] = (config_type, Field(default, description=f"{field.description} ({source})"))
    return fields


class _SettingsResource(dg.ConfigurableResource):
    @classmethod
    def from_settings(cls, group: BaseModel, **more: Any) -> Self:
        """The resource for the loaded group; secrets only as `dg.EnvVar` (and only when set)."""
        values: dict[str, Any] = {}
        for name, field in type(group).model_fields.items():
            if not in_resource(field):
                continue
            value = getattr(group, name)
            if _is_secret(field):
                # An unset EnvVar would fail the resource: an optional secret that is not set stays None.
                value = dg.EnvVar(variable_of(field)) if value is not None else None
            elif isinstance(value, Path):
                value = str(value)
            values[name] = value
        return cls(**values, **more)


def _resource_of(group: type[BaseModel]) -> type[_SettingsResource]:
    """A resource base class whose config fields are the group's settings."""
    return create_model(f"{group.__name__}Fields", __base__=_SettingsResource, **_fields_of(group))


class ErpExport(_resource_of(ErpSettings)):
    """Where the ERP's data comes from: the export folder (one sub-folder per Mandant with the seven CSV
    files) or, when `source_url` is set, the ERP's database (`casavi_pipeline.erp.sources`)."""

    def source(self) -> ErpSource:
        mapping = load_mapping_file(Path(self.mapping_file)) if self.mapping_file else None
        if self.source_url:
            return SqlSource(self.source_url, mapping, timeout_seconds=self.query_timeout_seconds)
        return CsvSource(Path(self.directory or "."), self.encoding, mapping)

    def delivery(self, mandant: str) -> Delivery | None:
        """The Mandant's files in the export folder; None when the ERP is read from its database."""
        return None if self.source_url else scan_delivery(Path(self.directory or "."), mandant)


class SnapshotStore(_resource_of(StateSettings)):
    """Where the sync's state lives (`casavi_pipeline.state.store`): one snapshot per Mandant, so
    Mandanten run in parallel, and one listing of casavi shared by all of them; local files, or
    PostgreSQL when CASAVI_STATE_URL is set. All of it belongs to the casavi account of `account_key`
    (hashed: `casavi_pipeline.account`); another account's state is never opened."""

    account_key: str = Field(
        description="CASAVI_API_KEY (dg.EnvVar, a secret): names the casavi account the state belongs to; "
        "only its hash is kept"
    )

    @property
    def store(self) -> StateStore:
        return StateStore(
            Path(self.directory),
            self.url,
            account=account_id(self.account_key),
            old_budget=old_budget_name(casavi_base_url(), self.account_key),
        )

    def open(self, mandant: str, *, read_only: bool = False) -> Snapshot:
        return self.store.open(mandant, read_only=read_only)

    @property
    def values_directory(self) -> Path:
        """Where the run's intermediate values (ERP and casavi frames) are kept: see `build_resources`."""
        return Path(self.directory) / VALUES_FOLDER

    def remote_cache(self) -> RemoteCache:
        """The account-wide listing of casavi that every Mandant takes its slice from."""
        return self.store.listing()


class SyncPolicy(_resource_of(SyncPolicySettings)):
    """How reference ids are composed and what the sync may do on its own."""

    @property
    def guards(self) -> GuardPolicy:
        return GuardPolicy(
            separator=self.id_separator,
            sync_rule=self.sync_rule,
            deletions=self.deletions,
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


class Alerting(_resource_of(AlertSettings)):
    """Who is told when a night fails or a Mandant goes stale (`casavi_pipeline.alerts`).

    The webhook URLs and the SMTP password are bound through `dg.EnvVar` (`from_settings`), like the
    casavi credentials: never in run config, the UI or the event log."""

    @property
    def channels(self) -> AlertChannels:
        smtp = None
        if self.smtp_host and self.smtp_from:
            smtp = Smtp(
                host=self.smtp_host,
                port=self.smtp_port,
                sender=self.smtp_from,
                recipients=tuple(addresses(self.smtp_to)),
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
    def get_client(self, on_wait: Callable[[str], None] | None = None) -> Iterator[CasaviClient]:
        """A client for one step; `on_wait` hears when it waits for a failing casavi (`CasaviClient`)."""
        raise NotImplementedError
        yield  # pragma: no cover

    @property
    def target(self) -> str:
        """Where the writes go, for messages (a URL, never credentials)."""
        raise NotImplementedError

    def expected_seconds(self, requests: int) -> float | None:
        """How long `requests` take at the rate casavi allowed so far (None: not known)."""
        return None


class HttpCasaviResource(CasaviResource, _resource_of(CasaviSettings)):
    """casavi's manager API v2 over HTTP (or the local sandbox, which speaks the same API).

    Every client it hands out paces its requests through the account's budget, shared by every process
    and machine talking to the account (`casavi_pipeline.casavi.ratelimit`): in the state database when
    `state_url` is set, else a file in the account's folder of `state_directory`.
    """

    state_directory: str = Field(description="folder of the account's request budget (CASAVI_SNAPSHOT_DB)")
    state_url: str | None = Field(
        default=None,
        description="the state database, which holds the account's request budget when set "
        "(dg.EnvVar('CASAVI_STATE_URL'), a secret)",
    )
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, description="tries per request on 5xx/timeouts")
    max_retry_seconds: float = Field(default=300.0, gt=0, description="retry time per request, 429s included")

    @property
    def target(self) -> str:
        return casavi_base_url()

    def expected_seconds(self, requests: int) -> float | None:
        # requests/s the account's budget learned; else the ceiling: the fastest it may go
        rate = learned_rate(Path(self.state_directory), self.state_url, self.api_key)
        per_minute = rate * 60.0 if rate else self.requests_per_minute
        return requests * 60.0 / per_minute if per_minute else None

    @contextlib.contextmanager
    def get_client(self, on_wait: Callable[[str], None] | None = None) -> Iterator[CasaviClient]:
        base_url = self.target
        with (
            open_budget(
                Path(self.state_directory),
                self.state_url,
                self.api_key,
                ceiling_per_minute=self.requests_per_minute or None,
                warn=dg.get_dagster_logger().warning,  # a damaged budget moved aside: the run's log says so
            ) as budget,
            CasaviClient(
                base_url,
                self.api_key,
                self.api_secret,
                budget=budget,
                timeout=self.timeout_seconds,
                max_concurrency=self.max_concurrency,
                max_attempts=self.max_attempts,
                max_retry_seconds=self.max_retry_seconds,
                on_wait=on_wait,
            ) as client,
        ):
            yield client


def snapshot_store(settings: Settings) -> SnapshotStore:
    """Where the sync's state (and the run values) live."""
    return SnapshotStore.from_settings(settings.state, account_key=dg.EnvVar(CASAVI_API_KEY))


def build_resources(settings: Settings) -> dict[str, object]:
    """The resources of the code location, from validated settings; secrets only through EnvVar."""
    snapshots = snapshot_store(settings)
    return {
        # The frames between steps hold names, emails and phones: they are kept beside the Mandant's
        # snapshot, per run and only while a run may need them (casavi_pipeline/runs/values.py), not in
        # Dagster's storage under $DAGSTER_HOME, which grows with every instance and is not the
        # Mandant's to erase.
        "io_manager": RunValuesIOManager(base_dir=str(snapshots.values_directory)),
        "erp_export": ErpExport.from_settings(settings.erp),
        "snapshots": snapshots,
        "sync_policy": SyncPolicy.from_settings(settings.sync),
        "alerting": Alerting.from_settings(settings.alerts),
        "casavi": HttpCasaviResource.from_settings(
            settings.casavi,
            state_directory=snapshots.directory,
            # the budget lives where the state lives; the URL may hold a password: read when a run starts
            state_url=dg.EnvVar(variable_of(StateSettings.model_fields["url"])) if settings.state.url else None,
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    # One run = one Mandant, and its steps form a chain: parallelism comes from Mandant runs side by
    # side (queued under dagster.yaml's limits), not from steps. A process per step would re-import
    # dagster and pandas ~30 times per run for nothing. The executor also keeps the run values.
    values = snapshot_store(SETTINGS).values_directory
    return dg.Definitions(resources=build_resources(SETTINGS), executor=run_values_executor(values))
