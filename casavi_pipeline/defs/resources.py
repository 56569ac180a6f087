"""The casavi resource: an abstract `ConfigurableResource` with a real (httpx) and a fake implementation.

Credentials are bound through `dg.EnvVar`, so they are read from the environment when a run starts and
never stored in run config, the UI or the event log.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dagster as dg
from pydantic import Field, PrivateAttr

from casavi_pipeline.casavi.client import CasaviClient
from casavi_sandbox.fake import FakeCasaviClient

SANDBOX_URL = "http://127.0.0.1:8765"


class CasaviResource(dg.ConfigurableResource):
    """Hands out a casavi client for the duration of one sync."""

    @contextlib.contextmanager
    def get_client(self) -> Iterator[CasaviClient | FakeCasaviClient]:
        raise NotImplementedError
        yield  # pragma: no cover


class HttpCasaviResource(CasaviResource):
    """casavi's manager API v2 over HTTP (or the local sandbox, which speaks the same API).

    Unset fields fall back to the environment when a run starts (`CASAVI_BASE_URL`,
    `CASAVI_REQUESTS_PER_MINUTE`, `CASAVI_MAX_CONCURRENCY`), then to the defaults, so changing the
    environment needs no code change and config set in the launchpad still wins.
    """

    api_key: str = Field(description="casavi API key (bound to EnvVar('CASAVI_API_KEY'))")
    api_secret: str = Field(description="casavi API secret (bound to EnvVar('CASAVI_API_SECRET'))")
    base_url: str | None = Field(
        default=None, description=f"casavi host root (default $CASAVI_BASE_URL or {SANDBOX_URL})"
    )
    requests_per_minute: float | None = Field(
        default=None,
        ge=0,
        description="client-side rate limit, 0 = none (default $CASAVI_REQUESTS_PER_MINUTE or 80)",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="writes in flight at once (default $CASAVI_MAX_CONCURRENCY or 4)",
    )
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, description="tries per request on 429/5xx/timeouts")
    max_retry_seconds: float = Field(default=300.0, gt=0, description="retry budget per request")

    @contextlib.contextmanager
    def get_client(self) -> Iterator[CasaviClient]:
        rate = self.requests_per_minute
        if rate is None:
            rate = float(os.environ.get("CASAVI_REQUESTS_PER_MINUTE") or 80.0)
        client = CasaviClient(
            self.base_url or os.environ.get("CASAVI_BASE_URL") or SANDBOX_URL,
            self.api_key,
            self.api_secret,
            timeout=self.timeout_seconds,
            max_concurrency=self.max_concurrency or int(os.environ.get("CASAVI_MAX_CONCURRENCY") or 4),
            requests_per_minute=rate or None,
            max_attempts=self.max_attempts,
            max_retry_seconds=self.max_retry_seconds,
        )
        with client:
            yield client


class FakeCasaviResource(CasaviResource):
    """An in-memory casavi for unit tests of the Dagster wiring; keeps its objects across runs."""

    _client: FakeCasaviClient = PrivateAttr(default_factory=FakeCasaviClient)

    @property
    def client(self) -> FakeCasaviClient:
        return self._client

    @contextlib.contextmanager
    def get_client(self) -> Iterator[FakeCasaviClient]:
        yield self._client


def casavi_resource_from_env() -> HttpCasaviResource:
    """The resource as the code location binds it: secrets through EnvVar, the rest at run time."""
    return HttpCasaviResource(api_key=dg.EnvVar("CASAVI_API_KEY"), api_secret=dg.EnvVar("CASAVI_API_SECRET"))
