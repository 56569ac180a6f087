"""The user's settings, in one typed and validated place.

Read from the environment (and a `.env` file in the working directory, the way `dagster dev` honours
it: real environment variables win over `.env`). They are read when the code location loads, because
the Mandanten define the partitions: change `CASAVI_MANDANTEN`, reload the code location, and the
partitions follow. casavi credentials are not settings here: they are resource config read through
`dagster.EnvVar` (see `casavi_pipeline.defs.resources`) so they never land in run config or storage.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
#: The small generated export committed with the project: the embedded default.
SAMPLE_EXPORT_DIR = PACKAGE_DIR / "sample_export"
SAMPLE_MANDANTEN = "0001,0002,0420"
#: Local run state (snapshots, sandbox database) lives here unless configured otherwise.
DEFAULT_DATA_DIR = Path.cwd() / "data"

ALLOWED_SEPARATORS = ("-", "_", ".", "/", "|")
ALLOWED_ENCODINGS = ("utf-8", "cp1252")
_MANDANT_RE = re.compile(r"^[0-9A-Za-z]{1,16}$")


class SettingsError(ValueError):
    """The settings cannot be used; the message says which one and what is allowed."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    erp_export_dir: Path = Field(default=SAMPLE_EXPORT_DIR, validation_alias="ERP_EXPORT_DIR")
    mandanten_csv: str = Field(default=SAMPLE_MANDANTEN, validation_alias="CASAVI_MANDANTEN")
    id_separator: str = Field(default="-", validation_alias="CASAVI_ID_SEPARATOR")
    erp_export_encoding: str = Field(default="utf-8", validation_alias="ERP_EXPORT_ENCODING")
    snapshot_dir: Path = Field(default=DEFAULT_DATA_DIR / "snapshots", validation_alias="CASAVI_SNAPSHOT_DB")
    # Guards of the sync (see casavi_pipeline.sync.guards)
    max_delete_share: float = Field(default=0.10, ge=0, le=1, validation_alias="CASAVI_MAX_DELETE_SHARE")
    delete_guard_min_count: int = Field(default=0, ge=0, validation_alias="CASAVI_DELETE_GUARD_MIN_COUNT")
    allow_mass_delete: bool = Field(default=False, validation_alias="CASAVI_ALLOW_MASS_DELETE")
    allow_separator_change: bool = Field(default=False, validation_alias="CASAVI_ALLOW_SEPARATOR_CHANGE")
    dry_run: bool = Field(default=False, validation_alias="CASAVI_DRY_RUN")

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

    @field_validator("mandanten_csv")
    @classmethod
    def _mandanten_valid(cls, value: str) -> str:
        numbers = [part.strip() for part in value.split(",") if part.strip()]
        if not numbers:
            raise ValueError("CASAVI_MANDANTEN is empty; list the Mandanten numbers to sync, e.g. 0001,0420")
        bad = [n for n in numbers if not _MANDANT_RE.match(n)]
        if bad:
            raise ValueError(
                f"CASAVI_MANDANTEN holds invalid Mandant numbers {bad}; "
                "a Mandant number is 1-16 letters or digits, e.g. 0001"
            )
        duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
        if duplicates:
            raise ValueError(f"CASAVI_MANDANTEN lists {duplicates} more than once")
        return ",".join(numbers)

    @property
    def mandanten(self) -> list[str]:
        """The Mandanten numbers to sync, as strings with their leading zeros."""
        return self.mandanten_csv.split(",")

    def snapshot_path(self, mandant: str) -> Path:
        """One DuckDB file per Mandant, so partitions run in parallel without DuckDB's writer lock."""
        return self.snapshot_dir / f"snapshot_{mandant}.duckdb"


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise `SettingsError` with a readable message when invalid."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
        raise SettingsError(f"Invalid casavi_pipeline settings: {problems}") from None


@cache
def get_settings() -> Settings:
    """The settings of this process (cached: the code location reads them once when it loads)."""
    return load_settings()
