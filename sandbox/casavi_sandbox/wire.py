"""casavi's wire conventions as the sandbox speaks them: error answers, JSON bodies, list parameters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from casavi_sandbox import contract as c
from casavi_sandbox.chaos import Knobs
from casavi_sandbox.contract import FieldError, utc_timestamp
from casavi_sandbox.model import Problem, unmanaged_values

#: The page size of a first request without `pageSize`. casavi's own default is unknown ([model]);
#: the client always sends one, so only the sandbox's tests see this.
DEFAULT_PAGE_SIZE = 100
#: The sandbox's own next-link parameter: the internal id the previous page ended with (keyset paging).
#: Opaque to clients, which follow `_links.next` as given.
AFTER_PARAM = "after"


def problem_body(problem: Problem) -> dict[str, Any]:
    """casavi's error body: `{"message", "errors": [{"field", "message"}]}`."""
    body: dict[str, Any] = {c.ERROR_MESSAGE_KEY: problem.message}
    if problem.errors is not None:
        body[c.ERROR_DETAILS_KEY] = [
            {c.ERROR_FIELD_KEY: e.field, c.ERROR_MESSAGE_KEY: e.message} for e in problem.errors
        ]
    return body


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(problem_body(problem), status_code=problem.status)


def read_options(request: Request, knobs: Knobs) -> dict[str, Any]:
    """How reads answering this request are shaped (`StoredAccount.shape`): the unmanaged fields the
    knobs add, and the host the objects' `appLink` points to (the one the client called; none with
    `omit_app_link`)."""
    return {
        "unmanaged": unmanaged_values(knobs.unmanaged_names()),
        "app_root": None if knobs.omit_app_link else str(request.base_url),
    }


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Problem(c.STATUS_INVALID, "malformed JSON", []) from None
    if not isinstance(body, dict):
        raise Problem(c.STATUS_INVALID, "the body must be a JSON object", [])
    return body


@dataclass(frozen=True)
class Listing:
    """What a list request asks for. A `page` parameter is not part of casavi's model: ignored."""

    size: int
    modified_after: str | None  # casavi's timestamp format, compared as text
    after_id: int | None  # where the previous page ended (from a next link); None on a first request
    inactive_contracts: bool


def listing(request: Request) -> Listing:
    """The parameters of a list request (400 naming the parameter if one is invalid)."""
    query = request.query_params
    return Listing(
        size=_int_param(query.get(c.PAGE_SIZE_PARAM), c.PAGE_SIZE_PARAM, 1, c.MAX_PAGE_SIZE)
        or DEFAULT_PAGE_SIZE,
        modified_after=_timestamp_param(query.get(c.MODIFIED_AFTER_PARAM)),
        after_id=_int_param(query.get(AFTER_PARAM), AFTER_PARAM, 0, None),
        inactive_contracts=inactive_contracts(request),
    )


def inactive_contracts(request: Request) -> bool:
    """Whether a read asks for ended contracts too (`includeInactiveContracts=true`)."""
    raw = request.query_params.get(c.INCLUDE_INACTIVE_CONTRACTS_PARAM)
    if raw is None or raw.lower() == "false":
        return False
    if raw.lower() == "true":
        return True
    raise _bad_param(c.INCLUDE_INACTIVE_CONTRACTS_PARAM, "must be true or false")


def _timestamp_param(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        after = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise _bad_param(c.MODIFIED_AFTER_PARAM, "must be an ISO 8601 timestamp") from None
    if after.tzinfo is None:  # casavi's timestamps are UTC
        after = after.replace(tzinfo=dt.UTC)
    return utc_timestamp(after.timestamp())


def _int_param(raw: str | None, name: str, minimum: int, maximum: int | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum or (maximum is not None and value > maximum):
        rule = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise _bad_param(name, f"must be an integer {rule}")
    return value


def _bad_param(name: str, message: str) -> Problem:
    return Problem(c.STATUS_INVALID, "invalid query parameter", [FieldError(name, message)])
