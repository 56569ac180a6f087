"""Errors of the casavi client, and the one place that reads an error out of casavi's answer.

They end up in Dagster's run log and in the rejections table, so they carry only what cannot hold
personal data or secrets: the call (method + path template), the reference id, the HTTP status, the
names of the fields casavi complained about (only names of our model's fields). The human text is our
own wording (`api.error_wording`); casavi's `message` texts, error codes and the raw body are never
kept, because a server or proxy that echoes the payload ("email 'max@x.de' is invalid", a code slot
holding `SCHULZ`) would leak it: no shape of a free-text slot proves it holds no value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self, TypeVar

import httpx

from casavi_pipeline.casavi import api


class CasaviError(Exception):
    """casavi answered something other than success, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        call: str | None = None,
        ref_id: str | None = None,
        status: int | None = None,
        fields: Iterable[str] = (),
    ) -> None:
        self.message = message  # our wording, never casavi's text
        self.call = call  # e.g. "PUT /v2/units/{id}": the path template, not the path
        self.ref_id = ref_id
        self.status = status
        self.fields = tuple(fields)  # casavi's names of the offending fields, e.g. ("email",)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = " ".join(part for part in (self.call, f"[{self.ref_id}]" if self.ref_id else None) if part)
        status = f" → {self.status}" if self.status is not None else ""
        details = [f"fields: {', '.join(self.fields)}"] if self.fields else []
        detail = self.message + (f" ({'; '.join(details)})" if details else "")
        return f"{where}{status}: {detail}" if where else detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def copy(self) -> Self:
        """A fresh exception with the same content (a latched error is raised anew, not re-raised:
        re-raising one instance from many threads would tangle and grow its traceback)."""
        return type(self)(
            self.message,
            call=self.call,
            ref_id=self.ref_id,
            status=self.status,
            fields=self.fields,
        )


class CasaviRejectedError(CasaviError):
    """casavi refused this object (400 invalid, 409 conflict, 422 unknown reference)."""


class CasaviModelMismatchError(CasaviError):
    """casavi's API differs from our model at a call: a path that answers 404 or 405 to a PUT, a DELETE
    or a listing. Not a rejection of one object: every object of the kind would fail alike."""


class CasaviAuthError(CasaviError):
    """casavi refused the key/secret (latched for the client's life), a fresh token, or a permission (403)."""


class CasaviUnavailableError(CasaviError):
    """casavi kept failing (5xx, timeouts, dropped connections) until the retries ran out."""


class CasaviRateLimitedError(CasaviUnavailableError):
    """casavi answered a request with nothing but 429 for the whole retry time, although the client slowed down."""


#: What a call answered 404/405 where our model expects neither says (every object would fail alike).
MODEL_MISMATCH_WORDING = (
    "casavi's API differs from casavi_pipeline's model at this call: run `casavi-pipeline check-casavi`"
)
_NOT_JSON = object()
_E = TypeVar("_E", bound=CasaviError)


def _json_or_not(response: httpx.Response) -> Any:
    # Returns a sentinel rather than raising: a JSONDecodeError keeps the whole body (`.doc`), and an
    # exception raised while handling it would carry it along as `__context__`.
    try:
        return response.json()
    except ValueError:
        return _NOT_JSON


def error_from(
    response: httpx.Response, cls: type[_E], *, call: str, ref_id: str | None, message: str | None = None
) -> _E:
    """The client's error for an answer: our wording, plus only our model's field names from the body.

    casavi's `message` texts are dropped on purpose: a server or proxy echoing the payload would put
    personal data into the run log and the rejections table.
    """
    fields: list[str] = []
    body = _json_or_not(response)
    if isinstance(body, dict):
        details = body.get(api.ERROR_DETAILS_KEY)
        for detail in details if isinstance(details, list) else []:
            if not isinstance(detail, dict):
                continue
            name = detail.get(api.ERROR_FIELD_KEY)
            if api.is_known_field_path(name) and name not in fields:
                fields.append(name)
    status = response.status_code
    return cls(message or api.error_wording(status), call=call, ref_id=ref_id, status=status, fields=fields)


def json_body(response: httpx.Response, *, call: str, ref_id: str | None = None) -> Any:
    """The answer's JSON; an answer that is not JSON is an error that carries none of the body."""
    body = _json_or_not(response)
    if body is _NOT_JSON:
        raise CasaviError(
            "casavi answered with a body that is not JSON", call=call, ref_id=ref_id, status=response.status_code
        )
    return body
