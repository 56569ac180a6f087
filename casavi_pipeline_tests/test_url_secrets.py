"""Every URL of the settings, in every form it may carry a secret, is shown without it (`urls.shown_url`,
one function for every message, log and terminal line) or refused in one line that does not quote it.
The real runs against a real PostgreSQL with such URLs: `test_e2e_erp_sources.py`, `test_state_store.py`."""

from __future__ import annotations

from urllib.parse import quote_plus

import pytest

from casavi_pipeline.settings import SettingsError, load_settings
from casavi_pipeline.urls import UNPARSABLE, scrubbed, shown_url
from casavi_pipeline_tests.harness import REQUIRED

SECRET = "Geheim-42x"
ODBC = (
    "DRIVER={ODBC Driver 18 for SQL Server};SERVER=erp-sql01,1433;DATABASE=DOMUS;UID=casavi_reader;"
    f"PWD={SECRET};Encrypt=yes"
)

#: (variable, value, how it is shown): each form a secret may take in it.
FORMS = [
    ("ERP_SOURCE_URL", f"postgresql://erp_reader:{SECRET}@erp-db:5432/erp", "postgresql://erp_reader@erp-db:5432/erp"),
    ("ERP_SOURCE_URL", f"postgresql://erp_reader@erp-db/erp?password={SECRET}", "postgresql://erp_reader@erp-db/erp"),
    (
        "ERP_SOURCE_URL",
        f"postgresql+psycopg2://erp_reader@/erp?host=/run/postgresql&sslmode=require&password={SECRET}",
        "postgresql+psycopg2://erp_reader@/erp?host=/run/postgresql",
    ),
    ("ERP_SOURCE_URL", f"postgresql://erp_reader:{quote_plus('a@b:' + SECRET)}@erp-db/erp", "postgresql://erp_reader@erp-db/erp"),
    ("ERP_SOURCE_URL", f"mssql+pyodbc:///?odbc_connect={quote_plus(ODBC)}", "mssql+pyodbc://casavi_reader@erp-sql01,1433/DOMUS"),
    (
        "ERP_SOURCE_URL",
        f"mssql+pyodbc:///?odbc_connect={quote_plus(ODBC.replace(f'PWD={SECRET}', f'PWD={{x;{SECRET}}}'))}",
        "mssql+pyodbc://casavi_reader@erp-sql01,1433/DOMUS",
    ),
    (
        "ERP_SOURCE_URL",
        f"mssql+pyodbc://casavi_reader:{SECRET}@erp-sql01:1433/DOMUS?driver=ODBC+Driver+18+for+SQL+Server&ApplicationIntent=ReadOnly",
        "mssql+pyodbc://casavi_reader@erp-sql01:1433/DOMUS",
    ),
    ("ERP_SOURCE_URL", f"mssql+pyodbc://casavi_reader:{SECRET}@DOMUS_DSN", "mssql+pyodbc://casavi_reader@DOMUS_DSN"),
    (
        "ERP_SOURCE_URL",
        f"oracle+oracledb://casavi_reader:{SECRET}@erp-ora:1521/?service_name=RE_FX",
        "oracle+oracledb://casavi_reader@erp-ora:1521/?service_name=RE_FX",
    ),
    ("CASAVI_STATE_URL", f"postgresql://sync:{SECRET}@db:5432/state", "postgresql://sync@db:5432/state"),
    ("CASAVI_STATE_URL", f"postgresql://sync@db/state?password={SECRET}", "postgresql://sync@db/state"),
    ("CASAVI_STATE_URL", f"postgresql://sync@/state?host=/run/postgresql&password={SECRET}", "postgresql://sync@/state?host=/run/postgresql"),
    ("CASAVI_ALERT_SLACK_WEBHOOK_URL", f"https://hooks.slack.com/services/T0/B0/{SECRET}", "https://hooks.slack.com"),
    (
        "CASAVI_ALERT_TEAMS_WEBHOOK_URL",
        f"https://example.webhook.office.com/webhookb2/x/IncomingWebhook/{SECRET}?sig={SECRET}",
        "https://example.webhook.office.com",
    ),
    ("CASAVI_ALERT_SLACK_WEBHOOK_URL", f"https://hook:{SECRET}@hooks.example.org:8443/x#{SECRET}", "https://hooks.example.org:8443"),
    ("CASAVI_ALERT_TEAMS_WEBHOOK_URL", f"http://127.0.0.1:8080/hook/{SECRET}", "http://127.0.0.1:8080"),
]


@pytest.mark.parametrize(("variable", "value", "shown"), FORMS)
def test_every_url_setting_is_accepted_and_shown_without_its_secret(variable, value, shown):
    assert shown_url(value) == shown
    settings = load_settings(_env_file=None, **REQUIRED, **{variable: value})
    assert SECRET not in repr(settings) and SECRET not in settings.endpoints
    if variable == "ERP_SOURCE_URL":
        assert settings.erp.input == shown
        assert settings.endpoints == f"casavi https://api.mycasavi.com; ERP {shown}"
    # A driver's error that quotes the URL back loses its secrets.
    assert SECRET not in scrubbed(f"connection to {value} failed", value)


@pytest.mark.parametrize(
    "value",
    [
        f"postgresql://erp_reader:{SECRET}@erp-db/erp",
        f"postgresql://erp_reader@erp-db/erp?sslpassword=x&password={SECRET}",
        f"mssql+pyodbc:///?odbc_connect={quote_plus(ODBC)}",
        f"https://hooks.slack.com/services/T0/B0/{SECRET}",
    ],
)
def test_a_drivers_error_quoting_a_secret_alone_loses_it(value):
    echoed = scrubbed(f"password authentication failed: {SECRET} / {quote_plus(SECRET)} rejected", value)
    assert SECRET not in echoed and quote_plus(SECRET) not in echoed and "password authentication failed" in echoed


#: (variable, value, the one line's part): forms refused when the settings load, never quoted.
REFUSED = [
    ("ERP_SOURCE_URL", f"erp-db:{SECRET}", "ERP_SOURCE_URL is not a database URL"),
    ("ERP_SOURCE_URL", f"postgresql://erp:{SECRET}@erp-db:54x2/erp", "ERP_SOURCE_URL is not a database URL"),
    ("CASAVI_STATE_URL", f"mysql://sync:{SECRET}@db/state", "CASAVI_STATE_URL: is not a PostgreSQL URL"),
    ("CASAVI_STATE_URL", f"sync:{SECRET}@db", "CASAVI_STATE_URL: is not an SQLAlchemy URL"),
    ("CASAVI_ALERT_SLACK_WEBHOOK_URL", f"http://hooks.example.org/{SECRET}", "is not an https URL"),
    ("CASAVI_ALERT_TEAMS_WEBHOOK_URL", f"example.webhook.office.com/{SECRET}", "is not an https URL"),
    ("CASAVI_BASE_URL", f"https://api.mycasavi.com/?token={SECRET}", "CASAVI_BASE_URL carries a query or fragment"),
    ("CASAVI_BASE_URL", f"https://erp-sync:{SECRET}@api.mycasavi.com", "CASAVI_BASE_URL carries a user name or password"),
    ("CASAVI_ALERT_UI_URL", f"ftp://ui:{SECRET}@dagster.example.org", "CASAVI_ALERT_UI_URL (ftp://ui@dagster.example.org) is not an"),
    ("CASAVI_ALERT_SMTP_HOST", f"smtp://sync:{SECRET}@mail.example.org", "CASAVI_ALERT_SMTP_HOST is not a host name"),
    ("CASAVI_ALERT_SMTP_HOST", f"sync:{SECRET}@mail.example.org", "CASAVI_ALERT_SMTP_HOST is not a host name"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), REFUSED)
def test_a_url_setting_in_a_form_that_cannot_be_used_is_refused_without_quoting_its_secret(variable, value, expected):
    smtp = {"CASAVI_ALERT_SMTP_FROM": "sync@example.org", "CASAVI_ALERT_SMTP_TO": "ops@example.org"}
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, **{**REQUIRED, **smtp, variable: value})
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert SECRET not in message and quote_plus(SECRET) not in message
    assert caught.value.__context__ is None  # no chained error that quotes the input


SMTP = {
    "CASAVI_ALERT_SMTP_HOST": "smtp.example.org",
    "CASAVI_ALERT_SMTP_FROM": "sync@example.org",
    "CASAVI_ALERT_SMTP_TO": "ops@example.org",
    "CASAVI_ALERT_SMTP_USER": "sync",
    "CASAVI_ALERT_SMTP_PASSWORD": SECRET,
}


def test_an_smtp_login_never_travels_unencrypted_to_another_machine():
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, **REQUIRED, **SMTP, CASAVI_ALERT_SMTP_STARTTLS="false")
    message = str(caught.value)
    assert (
        "CASAVI_ALERT_SMTP_STARTTLS=false with CASAVI_ALERT_SMTP_USER would send the SMTP password unencrypted "
        "to CASAVI_ALERT_SMTP_HOST, which is not this machine; keep STARTTLS on (the default) or use "
        "CASAVI_ALERT_SMTP_PORT=465 (TLS from the start)"
    ) in message
    assert SECRET not in message and "\n" not in message
    # TLS from the first byte, a server on this machine, or no login at all: nothing to protect in transit.
    for allowed in (
        {**SMTP, "CASAVI_ALERT_SMTP_STARTTLS": "false", "CASAVI_ALERT_SMTP_PORT": "465"},
        {**SMTP, "CASAVI_ALERT_SMTP_STARTTLS": "false", "CASAVI_ALERT_SMTP_HOST": "127.0.0.1"},
        {**SMTP, "CASAVI_ALERT_SMTP_STARTTLS": "false", "CASAVI_ALERT_SMTP_HOST": "localhost"},
        {**{k: v for k, v in SMTP.items() if "USER" not in k and "PASSWORD" not in k}, "CASAVI_ALERT_SMTP_STARTTLS": "false"},
        SMTP,
    ):
        assert load_settings(_env_file=None, **REQUIRED, **allowed).alerts.smtp_host == allowed["CASAVI_ALERT_SMTP_HOST"]


def test_what_is_no_url_is_shown_as_none():
    for value in (f"erp-db:{SECRET}", f"postgresql://erp:{SECRET}@erp-db:54x2/erp", f"http://[{SECRET}"):
        assert shown_url(value) == UNPARSABLE
        assert scrubbed(f"bad: {value}", value) == "bad: ***"
