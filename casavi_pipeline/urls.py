"""How a URL of the settings is shown to a person: the one place that decides it.

Any URL the settings hold may carry a secret, and not only as `user:password@`: libpq and SQLAlchemy
take `?password=…`, the SQL Server form `mssql+pyodbc:///?odbc_connect=…` carries `PWD=…` inside its
connection string, a webhook's path is its token. So no URL is ever shown as written: `shown_url` keeps
only what names the place (the dialect or scheme, the user, host and port, and a database's name) and
drops everything else, whatever it is called. Every message, log line and terminal line that names a
URL goes through it; run metadata names no URL at all.

`scrubbed` is for text someone else wrote (a driver's error message), which might quote a URL's secret
back: it blanks every value of the URL that could be one.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: What `shown_url` says for a value that does not parse as a URL: it may hold a secret anywhere.
UNPARSABLE = "<not a URL>"
#: Query parameters that name the place (libpq's socket folder or host list, Oracle's service), not a secret.
_PLACE_PARAMETERS = ("host", "port", "service_name")
#: Keys of an ODBC connection string (`odbc_connect`) that name the place; case-insensitive.
_ODBC_SERVER = ("server", "address", "addr", "dsn")
_ODBC_DATABASE = ("database", "initial catalog")
_ODBC_USER = ("uid", "user id")
#: Parameter names whose values `scrubbed` blanks: every password, token, key or secret by its usual names.
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|cred|sig", re.IGNORECASE)
_SHORTEST_SECRET = 4
#: One `KEY=VALUE` of an ODBC connection string; a value in braces may hold `;` (`PWD={a;b}`).
_ODBC_PAIR = re.compile(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)\s*(?:;|$)")


def shown_url(url: str) -> str:
    """`url` as messages show it: `dialect://user@host:port/database`, or `scheme://host:port` for a
    web URL (its path may be a token); never a password, a query's other parameters or a fragment."""
    text = url.strip()
    if _is_web(text):
        try:
            parts = urlsplit(text)
            host, port = parts.hostname, parts.port
        except ValueError:
            return UNPARSABLE
        return f"{parts.scheme.lower()}://{_host(host)}{f':{port}' if port else ''}" if host else UNPARSABLE
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):
        return UNPARSABLE
    odbc = _odbc_pairs(parsed)
    if odbc:  # mssql+pyodbc:///?odbc_connect=...: the place is inside the connection string
        user = _first(odbc, _ODBC_USER)
        server = _first(odbc, _ODBC_SERVER) or ""
        database = _first(odbc, _ODBC_DATABASE)
        return f"{parsed.drivername}://{f'{user}@' if user else ''}{server}/{database or ''}"
    shown = URL.create(
        parsed.drivername, username=parsed.username, host=parsed.host, port=parsed.port, database=parsed.database
    ).render_as_string(hide_password=False)  # it holds no password
    place = [
        f"{name}={value}"
        for name, values in parsed.query.items()
        if name.lower() in _PLACE_PARAMETERS
        for value in ((values,) if isinstance(values, str) else values)
    ]
    return f"{shown}?{'&'.join(place)}" if place else shown


def scrubbed(text: str, url: str) -> str:
    """`text` with every value of `url` that may be a secret replaced by `***` (as written and encoded).

    Values shorter than `_SHORTEST_SECRET` stay: replacing every `x` of a message would garble it, and
    hides nothing."""
    for secret in sorted((s for s in _secrets(url) if len(s) >= _SHORTEST_SECRET), key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


def _secrets(url: str) -> set[str]:
    """The URL's values that may be secrets: its password, every query value under a secret's name (or
    any query value of a web URL, and its path), an ODBC connection string's, and those strings whole."""
    text = url.strip()
    if _is_web(text):
        try:
            parts = urlsplit(text)
        except ValueError:
            return {text}
        # A webhook's token is one segment of its path (Slack: /services/T…/B…/<token>) or a query value.
        found = {parts.password, parts.path.strip("/"), parts.query, parts.fragment, *parts.path.split("/")}
        found |= {value for _, value in parse_qsl(parts.query)}
        return {s for s in found if s}
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):
        return {text}  # unparsable: the whole value may be the secret
    found = {str(parsed.password or "")}
    for name, values in parsed.query.items():
        for value in (values,) if isinstance(values, str) else values:
            if _SECRET_NAME.search(name) or name.lower() == "odbc_connect":
                found.add(value)
    for name, value in _odbc_pairs(parsed).items():
        if _SECRET_NAME.search(name):
            found |= {value, value.strip("{}")}
    return {s for s in found if s}


def _is_web(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _odbc_pairs(parsed: URL) -> dict[str, str]:
    """The `KEY=VALUE` pairs of an `odbc_connect` query parameter (keys lower-case), else {}."""
    connect = parsed.query.get("odbc_connect")
    if not isinstance(connect, str):
        return {}
    return {key.strip().lower(): value for key, value in _ODBC_PAIR.findall(connect) if key.strip()}


def _first(pairs: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((pairs[k].strip("{}") for k in keys if pairs.get(k)), None)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
