"""One declaration per setting: the settings, the resources generated from them, README's table, and the
run-config defaults a run takes from its own environment."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pydantic
import pytest

from casavi_harness.fake import FakeCasaviResource
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.defs.resources import (
    Alerting,
    ErpExport,
    HttpCasaviResource,
    SnapshotStore,
    SyncPolicy,
    build_resources,
)
from casavi_pipeline.settings import (
    GROUPS,
    SettingsError,
    declared_variables,
    in_resource,
    load_settings,
    setting,
    variable_of,
)
from casavi_pipeline_tests.erp_fixtures import default_rows, write_export
from casavi_pipeline_tests.harness import REQUIRED, run_mandant, settings_from

SETTINGS_DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
RESOURCES = {
    "erp": ErpExport,
    "state": SnapshotStore,
    "casavi": HttpCasaviResource,
    "sync": SyncPolicy,
    "alerts": Alerting,
}


def settings_rows() -> dict[str, str]:
    """The Settings table of docs/settings.md: variable → its default cell (a row may name several)."""
    section = SETTINGS_DOC.read_text(encoding="utf-8").split("# Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) >= 3:
            for variable in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows[variable] = cells[1]
    return rows


def test_every_declared_setting_has_a_row_in_the_settings_doc_and_every_row_a_declaration():
    rows = settings_rows()
    declared = declared_variables()
    assert len(declared) == len(set(declared)), "a variable is declared twice"
    assert sorted(set(declared) - rows.keys()) == [], "declared but not in the Settings table of docs/settings.md"
    assert sorted(rows.keys() - set(declared)) == [], "in the Settings table of docs/settings.md but not declared"
    required = {variable_of(f) for group in GROUPS.values() for f in group.model_fields.values() if f.is_required()}
    assert {v for v, default in rows.items() if "required" in default} == required


def test_each_resource_takes_exactly_its_groups_settings_with_their_defaults_and_bounds():
    for name, group in GROUPS.items():
        resource = RESOURCES[name].model_fields
        for field_name, field in group.model_fields.items():
            assert (field_name in resource) == in_resource(field), (name, field_name)
            if field_name in resource and not field.is_required():
                default = resource[field_name].default
                assert default == (str(field.default) if isinstance(field.default, Path) else field.default)
                assert resource[field_name].metadata == field.metadata
                assert variable_of(field) in resource[field_name].description
    with pytest.raises(pydantic.ValidationError, match="less than or equal to 1"):
        SyncPolicy(max_delete_share=2)


def test_secrets_reach_the_resources_only_as_env_vars(tmp_path):
    secrets = {
        "CASAVI_STATE_URL": "postgresql://sync:Geheim-state@db/state",
        "ERP_SOURCE_URL": "mssql+pyodbc://erp:Geheim-erp@erp/db",
        "CASAVI_ALERT_SMTP_HOST": "smtp.example.org",
        "CASAVI_ALERT_SMTP_FROM": "sync@example.org",
        "CASAVI_ALERT_SMTP_TO": "ops@example.org",
        "CASAVI_ALERT_SMTP_USER": "sync",
        "CASAVI_ALERT_SMTP_PASSWORD": "Geheim-smtp",
        "CASAVI_ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/Geheim-slack",
        "CASAVI_ALERT_TEAMS_WEBHOOK_URL": "https://example.webhook.office.com/Geheim-teams",
    }
    resources = build_resources(
        settings_from({**REQUIRED, **secrets, "CASAVI_API_SECRET": "Geheim-casavi", "CASAVI_SNAPSHOT_DB": str(tmp_path)})
    )
    bound = {
        (name, field): getattr(resources[key], field)
        for key, name in (("erp_export", "erp"), ("snapshots", "state"), ("casavi", "casavi"), ("alerting", "alerts"))
        for field in RESOURCES[name].model_fields
    }
    assert "Geheim" not in repr(resources) and "Geheim" not in repr(bound)
    secret_fields = {key: value for key, value in bound.items() if isinstance(value, dg.EnvVar)}
    assert secret_fields == {
        ("erp", "source_url"): "ERP_SOURCE_URL",
        ("state", "url"): "CASAVI_STATE_URL",
        ("state", "account_key"): "CASAVI_API_KEY",  # names the account the state belongs to (hashed)
        ("casavi", "api_key"): "CASAVI_API_KEY",
        ("casavi", "api_secret"): "CASAVI_API_SECRET",
        ("casavi", "state_url"): "CASAVI_STATE_URL",  # the account's request budget lives with the state
        ("alerts", "smtp_password"): "CASAVI_ALERT_SMTP_PASSWORD",
        ("alerts", "slack_webhook_url"): "CASAVI_ALERT_SLACK_WEBHOOK_URL",
        ("alerts", "teams_webhook_url"): "CASAVI_ALERT_TEAMS_WEBHOOK_URL",
    }
    # An optional secret that is not set stays None (an unset EnvVar would fail the resource).
    unset = build_resources(settings_from({**REQUIRED, "CASAVI_SNAPSHOT_DB": str(tmp_path)}))
    assert unset["snapshots"].url is None and unset["casavi"].state_url is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CASAVI_STATE_URL", "mysql://sync:Geheim42@db/state", "CASAVI_STATE_URL: is not a PostgreSQL URL"),
        ("CASAVI_STATE_URL", "Geheim42", "CASAVI_STATE_URL: is not an SQLAlchemy URL"),
        ("ERP_SOURCE_URL", "erp-host:Geheim42", "ERP_SOURCE_URL is not a database URL"),
        ("CASAVI_SYNC_RULE", "name", "CASAVI_SYNC_RULE='name' is not allowed; use one of email, last-name"),
    ],
)
def test_the_new_settings_are_checked_without_quoting_a_url(variable, value, message):
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, **REQUIRED, **{variable: value})
    assert message in str(info.value) and "Geheim42" not in str(info.value)


def test_every_float_setting_declares_finite_bounds_on_both_sides():
    floats = {
        variable_of(field): {type(m).__name__: m for m in field.metadata}
        for group in GROUPS.values()
        for field in group.model_fields.values()
        if field.annotation is float
    }
    assert len(floats) >= 11 and "ERP_QUERY_TIMEOUT_SECONDS" in floats
    for variable, bounds in floats.items():
        assert bounds.keys() & {"Ge", "Gt"} and bounds.keys() & {"Le", "Lt"}, variable
        assert bounds["AllowInfNan"].allow_inf_nan is False, variable
    with pytest.raises(TypeError, match="the float setting X_SECONDS needs a lower and an upper bound"):
        setting("X_SECONDS", 1.0, ge=0, description="a number without an upper bound")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CASAVI_REQUESTS_PER_MINUTE", "1e308", "CASAVI_REQUESTS_PER_MINUTE: Input should be less than or equal to 100000"),
        ("CASAVI_AUDIT_RETENTION_DAYS", "1e-9", "CASAVI_AUDIT_RETENTION_DAYS: Input should be greater than or equal to 1"),
        ("CASAVI_FULL_READ_EVERY_DAYS", "inf", "CASAVI_FULL_READ_EVERY_DAYS: Input should be a finite number"),
        ("CASAVI_FRESHNESS_HOURS", "nan", "CASAVI_FRESHNESS_HOURS: Input should be a finite number"),
        ("ERP_QUERY_TIMEOUT_SECONDS", "0", "ERP_QUERY_TIMEOUT_SECONDS: Input should be greater than or equal to 1"),
    ],
)
def test_a_number_outside_its_bounds_is_refused_naming_the_variable(variable, value, message):
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, **{**REQUIRED, variable: value})
    assert message in str(info.value)


def test_the_new_settings_are_optional_and_take_their_values(tmp_path):
    assert load_settings(_env_file=None, **REQUIRED).state.url is None
    mapping = tmp_path / "columns.yaml"
    mapping.write_text("mieter:\n  columns: {NAME: nachname}\n", encoding="utf-8")
    settings = load_settings(
        _env_file=None,
        **REQUIRED,
        CASAVI_STATE_URL="postgresql+psycopg2://sync:pw@db:5432/state",
        ERP_MAPPING_FILE=str(mapping),
        CASAVI_SYNC_RULE="Last-Name",
    )
    assert settings.state.url.get_secret_value() == "postgresql+psycopg2://sync:pw@db:5432/state"
    assert settings.erp.mapping_file == mapping
    assert settings.sync.sync_rule == "last-name"


def test_the_links_folder_is_off_unless_set_and_must_be_a_folder(tmp_path, monkeypatch):
    assert load_settings(_env_file=None, **REQUIRED).erp.links_directory is None  # off
    monkeypatch.chdir(tmp_path)
    settings = load_settings(_env_file=None, **REQUIRED, CASAVI_LINKS_DIR="links")
    assert settings.erp.links_directory == tmp_path / "links"  # absolute: runs may start elsewhere
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SettingsError, match=r"CASAVI_LINKS_DIR='a-file' is a file, not a folder"):
        load_settings(_env_file=None, **REQUIRED, CASAVI_LINKS_DIR="a-file")


def shipped_resources(tmp_path: Path, **values: str) -> dict[str, object]:
    """The code location's resources from these settings (and the environment), with a fake casavi."""
    export = write_export(tmp_path / "export", {"0001": default_rows()})
    settings = settings_from({**REQUIRED, "ERP_EXPORT_DIR": str(export), "CASAVI_SNAPSHOT_DB": str(tmp_path), **values})
    return {**build_resources(settings), "casavi": FakeCasaviResource()}


def test_casavi_dry_run_in_the_environment_makes_a_run_a_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CASAVI_DRY_RUN", "true")
    resources = shipped_resources(tmp_path)
    result = run_mandant("0001", resources)
    assert result.success
    assert resources["casavi"].client.requests == []
    observed = {e.asset_key.to_user_string() for e in result.get_asset_observation_events()}
    assert "casavi_sync" in observed
    # The run's config still wins over the setting.
    written = run_mandant("0001", resources, run_config={"ops": {"casavi_sync": {"config": {"dry_run": False}}}})
    assert written.success and resources["casavi"].client.requests


def test_casavi_repair_drift_in_the_environment_repairs_drift(tmp_path, monkeypatch):
    resources = shipped_resources(tmp_path, CASAVI_READ_MAX_AGE_MINUTES="0")  # every run reads casavi anew
    fake = resources["casavi"].client
    assert run_mandant("0001", resources).success
    unit = next(iter(fake.objects[ObjectKind.UNIT]))
    fake.seed(ObjectKind.UNIT, {**fake.objects[ObjectKind.UNIT][unit], "name": "von Hand geändert"})
    fake.requests.clear()

    assert run_mandant("0001", resources).success
    assert fake.requests == []  # drift is reported, not repaired, by default

    monkeypatch.setenv("CASAVI_REPAIR_DRIFT", "true")
    repairing = shipped_resources(tmp_path, CASAVI_READ_MAX_AGE_MINUTES="0")
    assert run_mandant("0001", {**repairing, "casavi": resources["casavi"]}).success
    assert fake.requests == [("PUT", ObjectKind.UNIT, unit)]
