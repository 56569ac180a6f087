"""casavi's wire conventions as the sandbox speaks them: error answers, JSON bodies, paging, timestamps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from casavi_pipeline.casavi import api


class Problem(Exception):
    """An error answer in casavi's shape: `{"message", "errors": [{"field", "message"}]}`."""

    def __init__(self, status: int, message: str, errors: Iterable[api.FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors) if errors is not None else None

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {api.ERROR_MESSAGE_KEY: self.message}
        if self.errors is not None:
            body[api.ERROR_DETAILS_KEY] = [
                {api.ERROR_FIELD_KEY: e.field, api.ERROR_MESSAGE_KEY: e.message} for e in self.errors
            ]
        return JSONResponse(body, status_code=self.status)


def utc_timestamp(unix_time: float) -> str:
    """ISO 8601 UTC with milliseconds, casavi's format (`YYYY-MM-DDThh:mm:ss.sssZ`); sorts as text."""
    moment = dt.datetime.fromtimestamp(unix_time, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Problem(api.STATUS_INVALID, "malformed JSON", []) from None
    if not isinstance(body, dict):
        raise Problem(api.STATUS_INVALID, "the body must be a JSON object", [])
    return body


def paging(request: Request) -> tuple[int, int, str | None]:
    """page, pageSize and modifiedAfter of a list request (400 naming the parameter if invalid)."""
    query = request.query_params
    page = _int_param(query.get(api.PAGE_PARAM), api.PAGE_PARAM, default=1, maximum=None)
    size = _int_param(
        query.get(api.PAGE_SIZE_PARAM),
        api.PAGE_SIZE_PARAM,
        default=api.DEFAULT_PAGE_SIZE,
        maximum=api.MAX_PAGE_SIZE,
    )
    raw_after = query.get(api.MODIFIED_AFTER_PARAM)
    if raw_after is None:
        return page, size, None
    try:
        after = dt.datetime.fromisoformat(raw_after)
    except ValueError:
        raise Problem(
            api.STATUS_INVALID,
            "invalid query parameter",
            [api.FieldError(api.MODIFIED_AFTER_PARAM, "must be an ISO 8601 timestamp")],
        ) from None
    if after.tzinfo is None:  # casavi's timestamps are UTC
        after = after.replace(tzinfo=dt.UTC)
    return page, size, utc_timestamp(after.timestamp())


#: The sandbox's own next-link parameter: the internal id the previous page ended with (keyset paging).
AFTER_PARAM = "after"


def after_param(request: Request) -> int | None:
    """The `after` of a next link (400 naming it if invalid), or None on a first request."""
    raw = request.query_params.get(AFTER_PARAM)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise Problem(
            api.STATUS_INVALID,
            "invalid query parameter",
            [api.FieldError(AFTER_PARAM, "must be an integer >= 0")],
        )
    return value


def _int_param(raw: str | None, name: str, *, default: int, maximum: int | None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or (maximum is not None and value > maximum):
        rule = f"between 1 and {maximum}" if maximum is not None else ">= 1"
        raise Problem(
            api.STATUS_INVALID,
            "invalid query parameter",
            [api.FieldError(name, f"must be an integer {rule}")],
        )
    return value
