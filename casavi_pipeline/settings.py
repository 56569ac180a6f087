"""The user's settings, in one typed and validated place: the only reader of the environment.

Settings flow one way: environment → `Settings` (validated here, when the code location loads) →
Dagster resources (`casavi_pipeline.defs.resources`) → assets. Nothing else reads the environment.
They are read when the code location loads because the Mandanten define the partitions: change
`CASAVI_MANDANTEN`, reload the code location, and the partitions follow. A `.env` file in the working
directory is read too: here a real environment variable wins over `.env` (pydantic-settings), but
`dagster dev` and Dagster's other CLI commands load that `.env` *over* the environment before the code
location (and its runs) start, so under Dagster the value in `.env` is the one this class sees.

There are no defaults for *what* to sync and *where to*: a deployment that forgot `ERP_EXPORT_DIR`
must fail at load time, not sync the bundled fake sample into a real casavi. The sample and the local
sandbox are defaults of the demo and the tests only (`casavi_sandbox`). The casavi credentials are
checked here for presence only; their values reach the casavi resource through `dagster.EnvVar`, so they
never land in run config, the UI or the event log. Where they go is not run config either: the casavi
resource takes `CASAVI_BASE_URL` from the run's environment (`casavi_base_url()`, the same rule as here),
so a run launched with edited config cannot send the key and secret anywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from casavi_pipeline.casavi.ratelimit import DEFAULT_CEILING_PER_MINUTE
from casavi_pipeline.erp.mapping_file import MappingFileError, load_mapping_file

#: Local run state (snapshots) lives here unless configured otherwise (relative to the working directory).
DEFAULT_SNAPSHOT_DIR = Path("data") / "snapshots"

ALLOWED_SEPARATORS = ("-", "_", ".", "/", "|")
ALLOWED_ENCODINGS = ("utf-8", "cp1252")
#: A Mandant number: 1-16 letters or digits (it names files and folders: never a path or a glob). Use fullmatch.
MANDANT_PATTERN = re.compile(r"[0-9A-Za-z]{1,16}")


class SettingsError(ValueError):
    """The settings cannot be used; the message says which one and what is allowed."""


def _env(name: str, **kw: object) -> object:
    return Field(validation_alias=name, **kw)  # type: ignore[arg-type]


_CONFIG = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True)


def _checked_base_url(value: str) -> str:
    """CASAVI_BASE_URL's rule: an https URL (plain http only to this machine) without user or password.

    A URL carrying `user:password@` is refused without quoting it: the message must not spread the password.
    """
    parts = urlsplit(value.strip())
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "CASAVI_BASE_URL carries a user name or password (user:password@host); give only the casavi "
            "host root, e.g. https://api.mycasavi.com (the credentials are CASAVI_API_KEY and CASAVI_API_SECRET)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"CASAVI_BASE_URL={value!r} is not an http(s) URL; use the casavi host root, "
            "e.g. https://api.mycasavi.com"
        )
    if parts.scheme == "http" and not is_loopback(value):
        raise ValueError(
            f"CASAVI_BASE_URL={value!r} uses plain http to a remote host; the API key would travel "
            "unencrypted: use https"
        )
    return value.strip().rstrip("/")


class Settings(BaseSettings):
    model_config = _CONFIG

    # What to sync, and where to: required, no defaults (see the module docstring). The ERP is read
    # from its export folder, or from its database when ERP_SOURCE_URL is set (casavi_pipeline.erp.sources);
    # the URL may carry the database password, so it reaches the resource only through dagster.EnvVar.
    erp_source_url: SecretStr | None = _env("ERP_SOURCE_URL", default=None, repr=False, exclude=True)
    erp_export_dir: Path | None = _env("ERP_EXPORT_DIR", default=None, validate_default=True)
    erp_mapping_file: Path | None = _env("ERP_MAPPING_FILE", default=None)
    mandanten_csv: str = _env("CASAVI_MANDANTEN")
    casavi_base_url: str = _env("CASAVI_BASE_URL")
    casavi_api_key: SecretStr = _env("CASAVI_API_KEY", repr=False, exclude=True)
    casavi_api_secret: SecretStr = _env("CASAVI_API_SECRET", repr=False, exclude=True)
    # The mapping
    id_separator: str = _env("CASAVI_ID_SEPARATOR", default="-")
    erp_export_encoding: str = _env("ERP_EXPORT_ENCODING", default="utf-8")
    snapshot_dir: Path = _env("CASAVI_SNAPSHOT_DB", default=DEFAULT_SNAPSHOT_DIR)
    # The casavi client: the ceiling of its adaptive rate (casavi_pipeline.casavi.ratelimit), 0 = none
    requests_per_minute: float = _env(
        "CASAVI_REQUESTS_PER_MINUTE", default=DEFAULT_CEILING_PER_MINUTE, ge=0, allow_inf_nan=False
    )
    max_concurrency: int = _env("CASAVI_MAX_CONCURRENCY", default=4, ge=1, le=64)
    # Guards of the sync (see casavi_pipeline.sync.guards)
    max_delete_share: float = _env("CASAVI_MAX_DELETE_SHARE", default=0.10, ge=0, le=1)
    delete_guard_min_count: int = _env("CASAVI_DELETE_GUARD_MIN_COUNT", default=0, ge=0)
    allow_mass_delete: bool = _env("CASAVI_ALLOW_MASS_DELETE", default=False)
    allow_separator_change: bool = _env("CASAVI_ALLOW_SEPARATOR_CHANGE", default=False)
    dry_run: bool = _env("CASAVI_DRY_RUN", default=False)
    # Reading casavi back (see casavi_pipeline.sync.remote)
    repair_drift: bool = _env("CASAVI_REPAIR_DRIFT", default=False)
    verify_writes: bool = _env("CASAVI_VERIFY_WRITES", default=True)
    read_max_age_minutes: float = _env("CASAVI_READ_MAX_AGE_MINUTES", default=10.0, ge=0)
    full_read_every_days: float = _env("CASAVI_FULL_READ_EVERY_DAYS", default=0.75, gt=0)
    # Data quality: warn when more than this share of a Mandant's tenants has no valid email
    email_drop_warn_share: float = _env("CASAVI_EMAIL_DROP_WARN_SHARE", default=0.25, ge=0, le=1)
    # How often a long sync reports its progress (run events and terminal)
    progress_seconds: float = _env("CASAVI_PROGRESS_SECONDS", default=30.0, gt=0)
    # The audit trail of writes (casavi_pipeline.sync.audit) and records casavi rejects (sync.rejections)
    audit_retention_days: float = _env("CASAVI_AUDIT_RETENTION_DAYS", default=400.0, gt=0)
    max_rejected_share: float = _env("CASAVI_MAX_REJECTED_SHARE", default=0.05, ge=0, le=1)
    rejected_min_count: int = _env("CASAVI_REJECTED_MIN_COUNT", default=10, ge=0)
    rejection_escalate_nights: int = _env("CASAVI_REJECTION_ESCALATE_NIGHTS", default=3, ge=1)
    # Automation
    delivery_settle_seconds: float = _env("CASAVI_DELIVERY_SETTLE_SECONDS", default=60.0, ge=0)
    # Alerts (casavi_pipeline.alerts): every channel off until configured. Webhook URLs carry their
    # own token and the SMTP password is one: like the casavi credentials they reach the resource only
    # through dagster.EnvVar (checked here, never kept in run config or logs).
    alert_ui_url: str | None = _env("CASAVI_ALERT_UI_URL", default=None)
    alert_smtp_host: str | None = _env("CASAVI_ALERT_SMTP_HOST", default=None)
    alert_smtp_port: int = _env("CASAVI_ALERT_SMTP_PORT", default=587, ge=1, le=65535)
    alert_smtp_starttls: bool = _env("CASAVI_ALERT_SMTP_STARTTLS", default=True)
    alert_smtp_from: str | None = _env("CASAVI_ALERT_SMTP_FROM", default=None)
    alert_smtp_to_csv: str | None = _env("CASAVI_ALERT_SMTP_TO", default=None)
    alert_smtp_user: str | None = _env("CASAVI_ALERT_SMTP_USER", default=None)
    alert_smtp_password: SecretStr | None = _env(
        "CASAVI_ALERT_SMTP_PASSWORD", default=None, repr=False, exclude=True
    )
    alert_slack_webhook_url: SecretStr | None = _env(
        "CASAVI_ALERT_SLACK_WEBHOOK_URL", default=None, repr=False, exclude=True
    )
    alert_teams_webhook_url: SecretStr | None = _env(
        "CASAVI_ALERT_TEAMS_WEBHOOK_URL", default=None, repr=False, exclude=True
    )
    # Freshness: a Mandant not synced successfully for longer than this fails its freshness check
    freshness_hours: float = _env("CASAVI_FRESHNESS_HOURS", default=26.0, gt=0)

    _url_valid = field_validator("casavi_base_url")(_checked_base_url)

    @field_validator("id_separator")
    @classmethod
    def _separator_allowed(cls, value: str) -> str:
        if value not in ALLOWED_SEPARATORS:
            raise ValueError(
                f"CASAVI_ID_SEPARATOR={value!r} is not allowed; use one of "
                + " ".join(repr(s) for s in ALLOWED_SEPARATORS)
            )
        return value

    @field_validator("erp_export_encoding")
    @classmethod
    def _encoding_allowed(cls, value: str) -> str:
        normalized = value.strip().lower().replace("_", "-")
        normalized = {"utf8": "utf-8", "windows-1252": "cp1252"}.get(normalized, normalized)
        if normalized not in ALLOWED_ENCODINGS:
            raise ValueError(
                f"ERP_EXPORT_ENCODING={value!r} is not supported; use one of {', '.join(ALLOWED_ENCODINGS)}"
            )
        return normalized

    @field_validator("erp_source_url")
    @classmethod
    def _source_url_valid(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never quotes the URL: it may carry the database password.
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            make_url(value.get_secret_value().strip())
        except ArgumentError:
            raise ValueError(
                "ERP_SOURCE_URL is not a database URL; write it as dialect+driver://user:password@host:port/database, "
                "e.g. postgresql://erp_reader:secret@erp-db/erp (docs/erp-sources.md)"
            ) from None
        return SecretStr(value.get_secret_value().strip())

    @field_validator("erp_export_dir")
    @classmethod
    def _erp_input_set(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # ERP_SOURCE_URL is declared first, so it is validated (and in `info.data`) by now.
        if value is None and info.data.get("erp_source_url") is None:
            raise ValueError("ERP_EXPORT_DIR is not set (nor ERP_SOURCE_URL, to read the ERP's database instead)")
        return value

    @field_validator("erp_mapping_file")
    @classmethod
    def _mapping_file_valid(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        try:
            load_mapping_file(value)
        except MappingFileError as exc:
            raise ValueError(str(exc)) from None
        return value

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

    @field_validator("alert_ui_url")
    @classmethod
    def _ui_url_valid(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if urlsplit(value.strip()).scheme not in ("http", "https"):
            raise ValueError(
                f"CASAVI_ALERT_UI_URL={value!r} is not an http(s) URL; use the Dagster UI's address, "
                "e.g. https://dagster.example.org"
            )
        return value.strip().rstrip("/")

    @field_validator("alert_slack_webhook_url", "alert_teams_webhook_url")
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
    def _smtp_complete(self) -> Settings:
        if self.alert_smtp_host and not (self.alert_smtp_from and self.alert_smtp_recipients):
            raise ValueError(
                "CASAVI_ALERT_SMTP_HOST is set but CASAVI_ALERT_SMTP_FROM or CASAVI_ALERT_SMTP_TO is not; "
                "set both (CASAVI_ALERT_SMTP_TO: comma-separated addresses)"
            )
        if self.alert_smtp_password and not self.alert_smtp_user:
            raise ValueError("CASAVI_ALERT_SMTP_PASSWORD is set without CASAVI_ALERT_SMTP_USER")
        return self

    @property
    def alert_smtp_recipients(self) -> list[str]:
        return [part.strip() for part in (self.alert_smtp_to_csv or "").split(",") if part.strip()]

    @property
    def alerts_configured(self) -> bool:
        """Is at least one alert channel set? (Only then do the alert sensors run by default.)"""
        return bool(self.alert_smtp_host or self.alert_slack_webhook_url or self.alert_teams_webhook_url)

    @property
    def erp_input(self) -> str:
        """Where the ERP's data is read from, for messages: the database URL without password, or the folder."""
        if self.erp_source_url is not None:
            return make_url(self.erp_source_url.get_secret_value()).render_as_string(hide_password=True)
        return str(self.erp_export_dir)

    @property
    def mandanten(self) -> list[str]:
        """The Mandanten numbers to sync, as strings with their leading zeros."""
        return self.mandanten_csv.split(",")

    @property
    def sandbox_target(self) -> bool:
        """True when casavi is on this machine (the local sandbox), never a customer's account."""
        return is_loopback(self.casavi_base_url)


def is_loopback(url: str) -> bool:
    """Does the URL point at this machine (127.0.0.0/8, ::1 or localhost)?"""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problem(error: dict) -> str:
    """One pydantic error as the user sees it: the variable, and what is wrong with it."""
    variable = ".".join(map(str, error.get("loc", ())))  # the variable's name: fields are read by alias
    if error["type"] == "missing":
        return f"{variable} is not set"
    message = error["msg"].removeprefix("Value error, ")
    # A field validated by default (not given at all) is located by its field name: `erp_export_dir`.
    return message if variable in message or variable.upper() in message else f"{variable}: {message}"


def _loaded(cls: type[BaseSettings], overrides: dict[str, object]) -> BaseSettings:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise SettingsError(
            f"casavi_pipeline settings: {problems}. Set them in the environment or in .env "
            "(README, section Settings)."
        ) from None


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise `SettingsError` with one readable line when invalid."""
    return _loaded(Settings, overrides)  # type: ignore[return-value]


class _CasaviTarget(BaseSettings):
    model_config = _CONFIG
    casavi_base_url: str = _env("CASAVI_BASE_URL")
    _url_valid = field_validator("casavi_base_url")(_checked_base_url)


def casavi_base_url() -> str:
    """CASAVI_BASE_URL read now and validated: where the casavi resource sends the key and secret.

    Read when a run starts, from the run's environment like the credentials, never from run config.
    """
    return _loaded(_CasaviTarget, {}).casavi_base_url  # type: ignore[attr-defined]
