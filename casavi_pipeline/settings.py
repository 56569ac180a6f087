"""The user's settings, in one typed and validated place: the only reader of the environment.

Settings flow one way: environment → `Settings` (validated here, when the code location loads) →
Dagster resources (`casavi_pipeline.defs.resources`) → assets. Nothing else reads the environment.
They are read when the code location loads because the Mandanten define the partitions: change
`CASAVI_MANDANTEN`, reload the code location, and the partitions follow. A `.env` file in the working
directory is read too: here a real environment variable wins over `.env` (pydantic-settings), but
`dagster dev` and Dagster's other CLI commands load that `.env` *over* the environment before the code
location (and its runs) start, so under Dagster the value in `.env` is the one this class sees.

Each setting is declared once, with `setting(...)`: its variable, default, bounds and meaning. The
settings come in groups, one per concern and per Dagster resource (`ErpSettings` → `ErpExport`,
`StateSettings` → `SnapshotStore`, `CasaviSettings` → the casavi resource, `SyncPolicySettings` →
`SyncPolicy`, `AlertSettings` → `Alerting`): each resource's config fields are generated from its group,
so a new setting is one line here, one row in the Settings table of docs/settings.md (a test compares both), and
whatever code uses it.

There are no defaults for *what* to sync and *where to*: a deployment that forgot `ERP_EXPORT_DIR`
must fail at load time, not sync the bundled fake sample into a real casavi. The sample and the local
sandbox are defaults of the demo and the tests only (`casavi_harness`). Secrets (`SecretStr`: the casavi
credentials, the SMTP password, webhook URLs, database URLs that may carry a password) are checked here;
their values reach the resources only through `dagster.EnvVar`, so they never land in run config, the UI
or the event log. Where the casavi credentials go is not run config either: the casavi resource takes
`CASAVI_BASE_URL` from the run's environment (`casavi_base_url()`, the same rule as here), so a run
launched with edited config cannot send the key and secret anywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from casavi_pipeline.alerts import SMTPS_PORT
from casavi_pipeline.casavi.ratelimit import DEFAULT_CEILING_PER_MINUTE
from casavi_pipeline.erp.contract import MANDANT_PATTERN
from casavi_pipeline.erp.mapping_file import MappingFileError, load_mapping_file
from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
from casavi_pipeline.mapping.scope import SyncRule
from casavi_pipeline.state.deletions import Deletions
from casavi_pipeline.urls import UNPARSABLE, shown_url

#: Local run state (snapshots) lives here unless configured otherwise (relative to the working directory).
DEFAULT_SNAPSHOT_DIR = Path("data") / "snapshots"

ALLOWED_ENCODINGS = ("utf-8", "cp1252")





#: A host name, IPv4 or IPv6 address (CASAVI_ALERT_SMTP_HOST): letters, digits, `.`, `-`, `:` and nothing else.
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]+|\[?[0-9A-Fa-f:.]+\]?")
#: Schemes of CASAVI_STATE_URL (SQLAlchemy URLs of PostgreSQL).
STATE_URL_SCHEMES = ("postgresql", "postgresql+psycopg2")
#: The key of a setting's field that marks it as no field of its group's resource (see `setting`).
NOT_IN_RESOURCE = "casavi_pipeline_not_in_resource"


class SettingsError(ValueError):
    """The settings cannot be used; the message says which one and what is allowed."""


def setting(variable: str, default: Any = ..., *, description: str, in_resource: bool = True, **bounds: Any) -> Any:
    """The one declaration of a setting: its environment variable, default (none: required), bounds
    (pydantic's ge, gt, le, lt) and meaning (shown in the Dagster UI beside the resource's field).

    A number of days, seconds or a share has sane limits on both sides: a float setting must declare an
    upper bound, and never takes inf or nan (`1e308` requests per minute or `inf` days are a typo, not
    a wish). `in_resource=False`: the setting is used when the code location loads or read from the
    run's environment, never a field of the group's resource (whose config a run could change).
    """
    if isinstance(default, float):
        if not ({"ge", "gt"} & bounds.keys() and {"le", "lt"} & bounds.keys()):
            raise TypeError(f"the float setting {variable} needs a lower and an upper bound")
        bounds["allow_inf_nan"] = False
    extra = {NOT_IN_RESOURCE: True} if not in_resource else None
    return Field(default, validation_alias=variable, description=description, json_schema_extra=extra, **bounds)


def variable_of(field: FieldInfo) -> str:
    """The environment variable a setting's field is read from."""
    return str(field.validation_alias)


def in_resource(field: FieldInfo) -> bool:
    """Is the setting a config field of its group's Dagster resource?"""
    return not (isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(NOT_IN_RESOURCE))


class _Group(BaseSettings):
    """One concern's settings, read from the environment (and `.env`) by their variables' names only."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")


def _checked_base_url(value: str) -> str:
    """CASAVI_BASE_URL's rule: an https URL (plain http only to this machine) without user or password,
    query or fragment.

    A URL carrying `user:password@` (or a query, which might hold a token) is refused without quoting it:
    the message must not spread the secret; the others are shown as every URL is (`shown_url`).
    """
    parts = urlsplit(value.strip())
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "CASAVI_BASE_URL carries a user name or password (user:password@host); give only the casavi "
            "host root, e.g. https://api.mycasavi.com (the credentials are CASAVI_API_KEY and CASAVI_API_SECRET)"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            "CASAVI_BASE_URL carries a query or fragment (?… or #…); give only the casavi host root, "
            "e.g. https://api.mycasavi.com"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"CASAVI_BASE_URL ({shown_url(value)}) is not an http(s) URL; use the casavi host root, "
            "e.g. https://api.mycasavi.com"
        )
    if parts.scheme == "http" and not is_loopback(value):
        raise ValueError(
            f"CASAVI_BASE_URL ({shown_url(value)}) uses plain http to a remote host; the API key would "
            "travel unencrypted: use https"
        )
    return value.strip().rstrip("/")


def _database_url(value: SecretStr | None, schemes: tuple[str, ...] | None = None) -> SecretStr | None:
    """An optional SQLAlchemy URL; the message never quotes it (it may carry a password)."""
    if value is None or not value.get_secret_value().strip():
        return None
    url = value.get_secret_value().strip()
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url or shown_url(url) == UNPARSABLE:
        raise ValueError("is not an SQLAlchemy URL (dialect://user:password@host/database)")
    if schemes is not None and scheme not in schemes:
        raise ValueError(f"is not a PostgreSQL URL; use {' or '.join(s + '://…' for s in schemes)}")
    return SecretStr(url)


class ErpSettings(_Group):
    """The ERP's side: what to sync (its export) and where the links back to it go (→ the `erp_export`
    resource)."""

    # The ERP is read from its export folder, or from its database when ERP_SOURCE_URL is set
    # (casavi_pipeline.erp.sources). Declared first: ERP_EXPORT_DIR's rule looks at it.
    source_url: SecretStr | None = setting(
        "ERP_SOURCE_URL", None, description="SQLAlchemy URL of an ERP database to read instead of the folder"
    )
    directory: Path | None = setting(
        "ERP_EXPORT_DIR",
        None,
        description="the ERP export folder: one sub-folder per Mandant with the CSV files",
        validate_default=True,
    )
    mandanten_csv: str = setting(
        "CASAVI_MANDANTEN",
        description="comma-separated Mandanten numbers to sync; one Dagster partition each",
        in_resource=False,  # the partitions are fixed when the code location loads
    )
    encoding: str = setting("ERP_EXPORT_ENCODING", "utf-8", description="utf-8 or cp1252")
    mapping_file: Path | None = setting(
        "ERP_MAPPING_FILE", None, description="a YAML file mapping the ERP's columns and codes to the export contract"
    )
    query_timeout_seconds: float = setting(
        "ERP_QUERY_TIMEOUT_SECONDS",
        300.0,
        ge=1,
        le=86_400,
        description="ERP_SOURCE_URL: the longest wait to connect, for a lock, and for one table's query",
    )
    links_directory: Path | None = setting(
        "CASAVI_LINKS_DIR",
        None,
        description="folder the ERP imports casavi's links from (a CSV and a Parquet file per Mandant); unset: off",
    )

    @field_validator("source_url")
    @classmethod
    def _source_url_valid(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never quotes the URL: it may carry the database password.
        if value is None or not value.get_secret_value().strip():
            return None
        if shown_url(value.get_secret_value()) == UNPARSABLE:
            raise ValueError(
                "ERP_SOURCE_URL is not a database URL; write it as dialect+driver://user:password@host:port/database, "
                "e.g. postgresql://erp_reader:secret@erp-db/erp (docs/erp-sources.md)"
            )
        return SecretStr(value.get_secret_value().strip())

    @field_validator("directory")
    @classmethod
    def _erp_input_set(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None and info.data.get("source_url") is None:
            raise ValueError("ERP_EXPORT_DIR is not set (nor ERP_SOURCE_URL, to read the ERP's database instead)")
        return value

    @field_validator("mapping_file")
    @classmethod
    def _mapping_file_valid(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        try:
            load_mapping_file(value)
        except MappingFileError as exc:
            raise ValueError(str(exc)) from None
        return value.resolve()

    @field_validator("links_directory")
    @classmethod
    def _links_directory_usable(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        # Resolved against the directory the code location loads in: runs may start elsewhere.
        folder = value.resolve()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"CASAVI_LINKS_DIR={str(value)!r} is a file, not a folder; name a folder (it is created)")
        return folder

    @property
    def input(self) -> str:
        """Where the ERP is read from, for messages (a database URL as `shown_url` shows it)."""
        if self.source_url is not None:
            return shown_url(self.source_url.get_secret_value())
        return str(self.directory)

    @field_validator("mandanten_csv")
    @classmethod
    def _mandanten_valid(cls, value: str) -> str:
        numbers = [part.strip() for part in value.split(",") if part.strip()]
        if not numbers:
            raise ValueError("CASAVI_MANDANTEN is empty; list the Mandanten numbers to sync, e.g. 0001,0420")
        bad = [n for n in numbers if not MANDANT_PATTERN.fullmatch(n)]
        if bad:
            raise ValueError(
                f"CASAVI_MANDANTEN holds invalid Mandant numbers {bad}; "
                "a Mandant number is 1-16 letters or digits, e.g. 0001"
            )
        duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
        if duplicates:
            raise ValueError(f"CASAVI_MANDANTEN lists {duplicates} more than once")
        return ",".join(numbers)

    @field_validator("encoding")
    @classmethod
    def _encoding_allowed(cls, value: str) -> str:
        normalized = value.strip().lower().replace("_", "-")
        normalized = {"utf8": "utf-8", "windows-1252": "cp1252"}.get(normalized, normalized)
        if normalized not in ALLOWED_ENCODINGS:
            raise ValueError(
                f"ERP_EXPORT_ENCODING={value!r} is not supported; use one of {', '.join(ALLOWED_ENCODINGS)}"
            )
        return normalized

    @property
    def mandanten(self) -> list[str]:
        """The Mandanten numbers to sync, as strings with their leading zeros."""
        return self.mandanten_csv.split(",")


class StateSettings(_Group):
    """Where the run state lives (→ the `snapshots` resource)."""

    directory: Path = setting(
        "CASAVI_SNAPSHOT_DB",
        DEFAULT_SNAPSHOT_DIR,
        description="folder of the Mandanten's snapshots, the casavi listing and the run values",
    )
    url: SecretStr | None = setting(
        "CASAVI_STATE_URL", None, description="SQLAlchemy URL of a PostgreSQL database for the run state"
    )
    audit_retention_days: float = setting(
        "CASAVI_AUDIT_RETENTION_DAYS", 400.0, ge=1, le=36_500, description="audit rows older than this are dropped"
    )

    @field_validator("directory")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Resolved against the directory the code location loads in: runs may start elsewhere.
        return value.resolve()

    @field_validator("url")
    @classmethod
    def _state_url_valid(cls, value: SecretStr | None) -> SecretStr | None:
        return _database_url(value, STATE_URL_SCHEMES)


class CasaviTarget(_Group):
    """Where casavi is: read at load and again when a run starts (`casavi_base_url`)."""

    base_url: str = setting(
        "CASAVI_BASE_URL",
        description="casavi host root, e.g. https://api.mycasavi.com (plain http only to this machine)",
        in_resource=False,  # read from the run's environment, never run config (module docstring)
    )

    _url_valid = field_validator("base_url")(_checked_base_url)


class CasaviSettings(CasaviTarget):
    """The casavi account and its client (→ the `casavi` resource)."""

    api_key: SecretStr = setting("CASAVI_API_KEY", description="casavi API key")
    api_secret: SecretStr = setting("CASAVI_API_SECRET", description="casavi API secret")
    requests_per_minute: float = setting(
        "CASAVI_REQUESTS_PER_MINUTE",
        DEFAULT_CEILING_PER_MINUTE,
        ge=0,
        le=100_000,
        description="ceiling of the client's adaptive rate (casavi_pipeline.casavi.ratelimit), 0 = none",
    )
    max_concurrency: int = setting(
        "CASAVI_MAX_CONCURRENCY", 4, ge=1, le=64, description="requests in flight at once per sync"
    )


class SyncPolicySettings(_Group):
    """How ids are composed and what the sync may do on its own (→ the `sync_policy` resource)."""

    id_separator: str = setting("CASAVI_ID_SEPARATOR", "-", description="separator of composite reference ids")
    sync_rule: SyncRule = setting(
        "CASAVI_SYNC_RULE", SyncRule.EMAIL, description="which tenants and objects are synced: email or last-name"
    )
    deletions: Deletions = setting(
        "CASAVI_DELETIONS",
        Deletions.APPROVE,
        description="what happens to objects that leave the scope: approve, delete or keep",
    )
    # Guards of the sync (casavi_pipeline.sync.guards)
    max_delete_share: float = setting(
        "CASAVI_MAX_DELETE_SHARE", 0.10, ge=0, le=1, description="mass-deletion guard: share of a kind"
    )
    delete_guard_min_count: int = setting(
        "CASAVI_DELETE_GUARD_MIN_COUNT", 0, ge=0, description="deleting at most this many is never mass deletion"
    )
    allow_mass_delete: bool = setting(
        "CASAVI_ALLOW_MASS_DELETE", False, description="let a run pass the mass-deletion guard"
    )
    allow_separator_change: bool = setting(
        "CASAVI_ALLOW_SEPARATOR_CHANGE", False, description="migrate to a new CASAVI_ID_SEPARATOR"
    )
    # Defaults of run config, applied when the step runs (a run's config may override them)
    dry_run: bool = setting(
        "CASAVI_DRY_RUN", False, description="default of casavi_sync's dry_run: write nothing to casavi"
    )
    repair_drift: bool = setting(
        "CASAVI_REPAIR_DRIFT", False, description="default of casavi_changeset's repair_drift"
    )
    # Reading casavi back (casavi_pipeline.state.listing)
    verify_writes: bool = setting(
        "CASAVI_VERIFY_WRITES", True, description="read back the first write per kind"
    )
    read_max_age_minutes: float = setting(
        "CASAVI_READ_MAX_AGE_MINUTES", 10.0, ge=0, le=1440, description="reuse a listing of casavi this fresh"
    )
    full_read_every_days: float = setting(
        "CASAVI_FULL_READ_EVERY_DAYS",
        0.75,
        ge=0.01,
        le=31,
        description="list the whole account at least this often",
    )
    # Data quality: warn when more than this share of a Mandant's tenants has no valid email
    email_drop_warn_share: float = setting(
        "CASAVI_EMAIL_DROP_WARN_SHARE", 0.25, ge=0, le=1, description="email_rule_dropped warns above this share"
    )
    progress_seconds: float = setting(
        "CASAVI_PROGRESS_SECONDS", 30.0, ge=1, le=3600, description="how often a long sync reports its progress"
    )
    # Records casavi rejects (casavi_pipeline.sync.rejections)
    max_rejected_share: float = setting(
        "CASAVI_MAX_REJECTED_SHARE", 0.05, ge=0, le=1, description="a sync refused more often than this fails"
    )
    rejected_min_count: int = setting(
        "CASAVI_REJECTED_MIN_COUNT", 10, ge=0, description="at most this many refused writes never fail a run"
    )
    rejection_escalate_nights: int = setting(
        "CASAVI_REJECTION_ESCALATE_NIGHTS", 3, ge=1, description="nights of refusal before a record escalates"
    )
    # Automation and freshness
    delivery_settle_seconds: float = setting(
        "CASAVI_DELIVERY_SETTLE_SECONDS",
        60.0,
        ge=0,
        le=86_400,
        description="a delivery is unchanged this long before a run",
    )
    freshness_hours: float = setting(
        "CASAVI_FRESHNESS_HOURS",
        26.0,
        ge=1,
        le=8760,
        description="a Mandant not synced for longer fails its freshness check",
    )
    max_runtime_hours: float = setting(
        "CASAVI_MAX_RUNTIME_HOURS",
        20.0,
        ge=0,
        lt=24,
        description="run monitoring ends a sync run after this long (below the nightly schedule's 24 h); 0 = never",
        in_resource=False,  # a tag of the job, set when the code location loads
    )

    @field_validator("id_separator")
    @classmethod
    def _separator_allowed(cls, value: str) -> str:
        if value not in ALLOWED_SEPARATORS:
            raise ValueError(
                f"CASAVI_ID_SEPARATOR={value!r} is not allowed; use one of "
                + " ".join(repr(s) for s in ALLOWED_SEPARATORS)
            )
        return value

    @field_validator("sync_rule", mode="before")
    @classmethod
    def _sync_rule_allowed(cls, value: object) -> object:
        normalized = value.strip().lower() if isinstance(value, str) else value
        if normalized not in tuple(SyncRule):
            raise ValueError(f"CASAVI_SYNC_RULE={value!r} is not allowed; use one of {', '.join(SyncRule)}")
        return normalized

    @field_validator("deletions", mode="before")
    @classmethod
    def _deletions_allowed(cls, value: object) -> object:
        normalized = value.strip().lower() if isinstance(value, str) else value
        if normalized not in tuple(Deletions):
            raise ValueError(f"CASAVI_DELETIONS={value!r} is not allowed; use one of {', '.join(Deletions)}")
        return normalized


def addresses(csv: str | None) -> list[str]:
    """The addresses of a comma-separated list (CASAVI_ALERT_SMTP_TO)."""
    return [part.strip() for part in (csv or "").split(",") if part.strip()]


class AlertSettings(_Group):
    """Who is told when a night fails or a Mandant goes stale (→ the `alerting` resource).

    Every channel is off until configured. Webhook URLs carry their own token and the SMTP password is
    one: secrets, like the casavi credentials."""

    ui_url: str | None = setting("CASAVI_ALERT_UI_URL", None, description="the Dagster UI's base URL")
    smtp_host: str | None = setting("CASAVI_ALERT_SMTP_HOST", None, description="SMTP server for alert emails")
    smtp_port: int = setting("CASAVI_ALERT_SMTP_PORT", 587, ge=1, le=65535, description="its port")
    smtp_starttls: bool = setting("CASAVI_ALERT_SMTP_STARTTLS", True, description="upgrade with STARTTLS")
    smtp_from: str | None = setting("CASAVI_ALERT_SMTP_FROM", None, description="sender address")
    smtp_to: str | None = setting("CASAVI_ALERT_SMTP_TO", None, description="comma-separated recipients")
    smtp_user: str | None = setting("CASAVI_ALERT_SMTP_USER", None, description="SMTP login")
    smtp_password: SecretStr | None = setting("CASAVI_ALERT_SMTP_PASSWORD", None, description="SMTP password")
    slack_webhook_url: SecretStr | None = setting(
        "CASAVI_ALERT_SLACK_WEBHOOK_URL", None, description="a Slack incoming-webhook URL"
    )
    teams_webhook_url: SecretStr | None = setting(
        "CASAVI_ALERT_TEAMS_WEBHOOK_URL", None, description="a Microsoft Teams incoming-webhook URL"
    )

    @field_validator("ui_url")
    @classmethod
    def _ui_url_valid(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if urlsplit(value.strip()).scheme not in ("http", "https"):
            raise ValueError(
                f"CASAVI_ALERT_UI_URL ({shown_url(value)}) is not an http(s) URL; use the Dagster UI's "
                "address, e.g. https://dagster.example.org"
            )
        return value.strip().rstrip("/")

    @field_validator("smtp_host")
    @classmethod
    def _smtp_host_valid(cls, value: str | None) -> str | None:
        # Only a host: a URL here (smtp://user:password@host) would carry the login; never quoted.
        if value is None or not value.strip():
            return None
        if not _HOST_NAME.fullmatch(value.strip()):
            raise ValueError(
                "CASAVI_ALERT_SMTP_HOST is not a host name or address; give only the server, e.g. "
                "smtp.example.org (its port is CASAVI_ALERT_SMTP_PORT, the login CASAVI_ALERT_SMTP_USER "
                "and CASAVI_ALERT_SMTP_PASSWORD)"
            )
        return value.strip()

    @field_validator("slack_webhook_url", "teams_webhook_url")
    @classmethod
    def _webhook_valid(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never names the URL: it carries the webhook's token.
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        if urlsplit(url).scheme != "https" and not (urlsplit(url).scheme == "http" and is_loopback(url)):
            raise ValueError("is not an https URL (plain http only to this machine)")
        return SecretStr(url)

    @model_validator(mode="after")
    def _smtp_complete(self) -> AlertSettings:
        if self.smtp_host and not (self.smtp_from and addresses(self.smtp_to)):
            raise ValueError(
                "CASAVI_ALERT_SMTP_HOST is set but CASAVI_ALERT_SMTP_FROM or CASAVI_ALERT_SMTP_TO is not; "
                "set both (CASAVI_ALERT_SMTP_TO: comma-separated addresses)"
            )
        if self.smtp_password and not self.smtp_user:
            raise ValueError("CASAVI_ALERT_SMTP_PASSWORD is set without CASAVI_ALERT_SMTP_USER")
        # Like a webhook (https unless on this machine): a login travels encrypted or not at all. Port
        # 465 speaks TLS from the first byte (casavi_pipeline.alerts), so STARTTLS does not apply there.
        if (
            self.smtp_host
            and self.smtp_user
            and not self.smtp_starttls
            and self.smtp_port != SMTPS_PORT
            and not is_local_host(self.smtp_host)
        ):
            raise ValueError(
                "CASAVI_ALERT_SMTP_STARTTLS=false with CASAVI_ALERT_SMTP_USER would send the SMTP password "
                "unencrypted to CASAVI_ALERT_SMTP_HOST, which is not this machine; keep STARTTLS on (the "
                f"default) or use CASAVI_ALERT_SMTP_PORT={SMTPS_PORT} (TLS from the start)"
            )
        return self

    @property
    def configured(self) -> bool:
        """Is at least one alert channel set? (Only then do the alert sensors run by default.)"""
        return bool(self.smtp_host or self.slack_webhook_url or self.teams_webhook_url)


@dataclass(frozen=True)
class Settings:
    """All settings, one group per concern (read in this order: the messages list problems in it)."""

    erp: ErpSettings
    casavi: CasaviSettings
    state: StateSettings
    sync: SyncPolicySettings
    alerts: AlertSettings

    @property
    def mandanten(self) -> list[str]:
        """The Mandanten numbers to sync, as strings with their leading zeros."""
        return self.erp.mandanten

    @property
    def endpoints(self) -> str:
        """Where the sync reads and writes, for the terminal: `casavi https://…; ERP postgresql://…` (URLs
        as `shown_url` shows them)."""
        return f"casavi {shown_url(self.casavi.base_url)}; ERP {self.erp.input}"


#: The groups in the order of `Settings`' fields.
GROUPS: dict[str, type[_Group]] = {
    "erp": ErpSettings,
    "casavi": CasaviSettings,
    "state": StateSettings,
    "sync": SyncPolicySettings,
    "alerts": AlertSettings,
}


def declared_variables() -> list[str]:
    """Every environment variable a setting is read from, in declaration order."""
    return [variable_of(field) for group in GROUPS.values() for field in group.model_fields.values()]


def is_loopback(url: str) -> bool:
    """Does the URL point at this machine (127.0.0.0/8, ::1 or localhost)?"""
    return is_local_host(urlsplit(url).hostname or "")


def is_local_host(host: str) -> bool:
    """Is the host name or address this machine (127.0.0.0/8, ::1 or localhost)?"""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problem(error: dict, group: type[_Group] | None = None) -> str:
    """One pydantic error as the user sees it: the variable, and what is wrong with it."""
    variable = ".".join(map(str, error.get("loc", ())))  # fields are read by their variable's name...
    if group is not None and variable in group.model_fields:  # ...but one validated by default by its own
        variable = variable_of(group.model_fields[variable])
    if error["type"] == "missing":
        return f"{variable} is not set"
    message = error["msg"].removeprefix("Value error, ")
    return message if variable in message else f"{variable}: {message}"


def _raise(problems: list[str]) -> NoReturn:
    """One line for every problem. Never raise this inside an `except ValidationError`: the chained
    error quotes the input, which may be a secret."""
    raise SettingsError(
        f"casavi_pipeline settings: {'; '.join(problems)}. Set them in the environment or in .env "
        "(docs/settings.md)."
    )


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise `SettingsError` with one readable line when invalid.

    `overrides` are values by variable name (as the environment holds them), and `_env_file`.
    """
    groups: dict[str, _Group] = {}
    problems: list[str] = []
    for name, group in GROUPS.items():
        try:
            groups[name] = group(**overrides)
        except ValidationError as exc:
            problems += [_problem(err, group) for err in exc.errors()]
    if problems:
        _raise(problems)
    return Settings(**groups)  # type: ignore[arg-type]


def casavi_base_url() -> str:
    """CASAVI_BASE_URL read now and validated: where the casavi resource sends the key and secret.

    Read when a run starts, from the run's environment like the credentials, never from run config.
    """
    try:
        return CasaviTarget().base_url
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
    _raise(problems)  # outside the `except`: the chained pydantic error would quote the URL
