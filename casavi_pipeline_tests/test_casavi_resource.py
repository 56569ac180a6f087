"""The casavi resource and the client's settings: where the credentials may go, what a run reports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from casavi_pipeline.casavi.errors import CasaviRateLimitedError
from casavi_pipeline.casavi.transport import ClientStats
from casavi_pipeline.defs.resources import CasaviResource, HttpCasaviResource
from casavi_pipeline.defs.sync_reporting import INTERRUPTED, casavi_client, interrupts_stop_the_step, progress
from casavi_pipeline.settings import SettingsError, load_settings
from casavi_pipeline_tests.harness import REQUIRED


def settings_error(**values: str) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, **{**REQUIRED, **values})
    return str(info.value)


def test_a_base_url_with_user_and_password_is_refused_without_quoting_them():
    message = settings_error(CASAVI_BASE_URL="https://erp-sync:Geheim42@api.mycasavi.com")
    assert "CASAVI_BASE_URL carries a user name or password" in message
    assert "Geheim42" not in message and "erp-sync" not in message and "\n" not in message


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_a_ceiling_that_is_no_finite_number_is_refused_for_what_it_is(value):
    message = settings_error(CASAVI_REQUESTS_PER_MINUTE=value)
    assert "CASAVI_REQUESTS_PER_MINUTE: Input should be a finite number" in message


def test_the_ceiling_defaults_to_600_and_0_means_none():
    assert load_settings(_env_file=None, **REQUIRED).casavi.requests_per_minute == 600
    assert load_settings(_env_file=None, **REQUIRED, CASAVI_REQUESTS_PER_MINUTE="0").casavi.requests_per_minute == 0


@dg.asset
def logs_in(casavi: CasaviResource) -> None:
    with casavi.get_client() as client:
        client.authenticate()


def casavi_resource(tmp_path: Path) -> HttpCasaviResource:
    return HttpCasaviResource(
        api_key=dg.EnvVar("CASAVI_API_KEY"),
        api_secret=dg.EnvVar("CASAVI_API_SECRET"),
        state_directory=str(tmp_path),
    )


@pytest.mark.e2e
def test_a_run_cannot_point_the_credentials_anywhere_else(sandbox, impostor, tmp_path, monkeypatch):
    port, received = impostor
    monkeypatch.setenv("CASAVI_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("CASAVI_API_KEY", sandbox.api_key)
    monkeypatch.setenv("CASAVI_API_SECRET", sandbox.api_secret)
    elsewhere = {"resources": {"casavi": {"config": {"base_url": f"http://127.0.0.1:{port}"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="base_url"):
        dg.materialize([logs_in], resources={"casavi": casavi_resource(tmp_path)}, run_config=elsewhere)
    assert dg.materialize([logs_in], resources={"casavi": casavi_resource(tmp_path)}).success
    assert received == []
    assert sandbox.requests()["routes"] == {"POST /v2/authenticate": {"200": 1}}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://casavi.example.org", "plain http to a remote host"),
        ("http://user:pass@127.0.0.1:{port}", "carries a user name or password"),
    ],
)
def test_the_environment_url_is_checked_when_the_run_starts(url, problem, impostor, tmp_path, monkeypatch):
    """The code location loaded with a good URL; someone changed the run's environment since."""
    port, received = impostor
    monkeypatch.setenv("CASAVI_BASE_URL", url.format(port=port))
    monkeypatch.setenv("CASAVI_API_KEY", "the-key")
    monkeypatch.setenv("CASAVI_API_SECRET", "the-secret")
    result = dg.materialize([logs_in], resources={"casavi": casavi_resource(tmp_path)}, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert problem in failure and "pass@" not in failure
    assert received == []


class _Casavi(CasaviResource):
    @contextlib.contextmanager
    def get_client(self, on_wait=None) -> Iterator[None]:  # type: ignore[override]
        yield None

    @property
    def target(self) -> str:
        return "https://api.mycasavi.com"


def test_a_casavi_that_only_answers_429_fails_the_step_saying_so_not_asking_whether_it_is_up():
    error = CasaviRateLimitedError(
        "casavi is rate limiting this account: it answered only 429 (too many requests) for 300s",
        call="PUT /v2/units/{id}",
        ref_id="0001-1",
        status=429,
    )
    with pytest.raises(dg.Failure) as info, casavi_client(_Casavi()):
        raise error
    description = info.value.description or ""
    assert "kept refusing with 429" in description and "rate limiting this account" in description
    assert "Is it up" not in description and "\n" not in description


def test_an_interrupted_write_fails_without_retry_and_an_interrupted_read_stays_an_interrupt():
    with pytest.raises(dg.Failure) as info, casavi_client(_Casavi(), writes=True):
        raise KeyboardInterrupt
    assert info.value.allow_retries is False and (info.value.description or "").startswith(INTERRUPTED)
    with pytest.raises(KeyboardInterrupt), casavi_client(_Casavi()):
        raise KeyboardInterrupt


def test_an_interrupted_duckdb_query_stops_the_step_and_any_other_runtime_error_stays_itself():
    with pytest.raises(dg.Failure) as info, interrupts_stop_the_step():
        raise RuntimeError("Query interrupted")  # DuckDB's words for a signal's handler that raised
    assert info.value.allow_retries is False and (info.value.description or "").startswith(INTERRUPTED)
    with pytest.raises(RuntimeError, match="something else"), interrupts_stop_the_step():
        raise RuntimeError("something else")


def test_an_interrupt_during_a_failure_keeps_its_words_and_counts_but_is_not_retried():
    unavailable = dg.Failure(description="casavi at http://x is unavailable", metadata={"confirmed": 7})
    with pytest.raises(dg.Failure) as info, interrupts_stop_the_step():
        try:
            raise unavailable
        finally:
            raise KeyboardInterrupt  # as a held interrupt is delivered by the state's cleanup
    assert info.value.description == unavailable.description
    assert info.value.metadata == unavailable.metadata and info.value.allow_retries is False


def test_the_progress_line_and_the_metadata_carry_the_rate_found_the_429s_and_the_wait(capsys):
    logged: list[str] = []
    context = SimpleNamespace(partition_key="0001", log=SimpleNamespace(info=logged.append))
    client = SimpleNamespace(stats=ClientStats(rate_per_minute=287.4, rate_limited=3, budget_wait_seconds=41.26))
    lines = progress(context, _Casavi(), client, 100, every=0)  # type: ignore[arg-type]
    lines(SimpleNamespace(total_sent=10))  # type: ignore[arg-type]
    assert logged[0].endswith(
        "; rate 287/min, 3× 429, 41 s waited for the budget (summed over concurrent requests)"
    )
    # Into the run's events only: Dagster's console logger shows it once (`dg launch`), and
    # `casavi-pipeline sync` follows the run's events (`cli.sync.Follower`).
    assert capsys.readouterr().err == ""
    assert client.stats.rate_figures() == {
        "rate_found_per_min": 287.4,
        "rate_limited_429": 3,
        "budget_wait_s": 41.3,
    }
