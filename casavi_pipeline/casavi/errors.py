"""Errors of the casavi client.

They end up in Dagster's run log and in the rejections table, so they carry only what cannot hold
personal data or secrets: the call (method + path template), the reference id, the HTTP status, the
names of the fields casavi complained about (only names of our model's fields). The human text is our
own wording (`api.error_wording`); casavi's `message` texts, error codes and the raw body are never
kept, because a server or proxy that echoes the payload ("email 'max@x.de' is invalid", a code slot
holding `SCHULZ`) would leak it: no shape of a free-text slot proves it holds no value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self


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
