"""`casavi-pipeline check-casavi [--write-test]`: does the casavi account of the settings match
casavi_pipeline's model of its API? (`casavi/conformance.py` does the comparing.)"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from casavi_pipeline.casavi import conformance
from casavi_pipeline.casavi.budget_store import open_budget
from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.database import StateUnavailableError
from casavi_pipeline.settings import Settings, SettingsError, load_settings

#: The check tries a request at most this often: a casavi that is down says so in seconds, not minutes.
CHECK_MAX_ATTEMPTS = 3
CHECK_MAX_RETRY_SECONDS = 30.0


@contextlib.contextmanager
def check_casavi_client(settings: Settings) -> Iterator[CasaviClient]:
    """A client for the check, from the sync's own settings, pacing its requests through the account's
    budget like every other process that talks to the account."""
    casavi, state = settings.casavi, settings.state
    key = casavi.api_key.get_secret_value()
    with (
        open_budget(
            state.directory,
            state.url.get_secret_value() if state.url else None,
            key,
            ceiling_per_minute=casavi.requests_per_minute or None,
            warn=lambda line: print(f"check-casavi: {line}", file=sys.stderr),
        ) as budget,
        CasaviClient(
            casavi.base_url,
            key,
            casavi.api_secret.get_secret_value(),
            budget=budget,
            max_attempts=CHECK_MAX_ATTEMPTS,
            max_retry_seconds=CHECK_MAX_RETRY_SECONDS,
        ) as client,
    ):
        yield client


def check_casavi(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"check-casavi: cannot check: {exc}", file=sys.stderr)
        return conformance.CANNOT_CHECK
    try:
        with check_casavi_client(settings) as client:
            report = conformance.check_account(
                client, separator=settings.sync.id_separator, write_test=args.write_test
            )
    except StateUnavailableError as exc:  # the account's request budget lives there
        print(f"check-casavi: cannot check: {exc}", file=sys.stderr)
        return conformance.CANNOT_CHECK
    if report.exit_code == conformance.CANNOT_CHECK:
        print(f"check-casavi: {report.summary}", file=sys.stderr)
    else:
        print("\n".join(report.lines()))
    return report.exit_code


def add(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check-casavi",
        help="compare the casavi account with casavi_pipeline's model (read-only)",
        description=conformance.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--write-test",
        action="store_true",
        help="also create, read back and delete one property, unit and contact under the reserved "
        f"reference-id prefix {conformance.RESERVED_PREFIX!r} (for a casavi TEST account only)",
    )
    check.set_defaults(command=check_casavi)
