"""Errors of the casavi client. Messages name the call, the reference id, the status and casavi's answer —
never payload values (personal data) and never the key, secret or token."""

from __future__ import annotations


class CasaviError(Exception):
    """casavi answered something other than success, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        call: str | None = None,
        ref_id: str | None = None,
        status: int | None = None,
        field_errors: list[tuple[str, str]] | None = None,
    ) -> None:
        self.message = message
        self.call = call
        self.ref_id = ref_id
        self.status = status
        self.field_errors = field_errors or []
        super().__init__(str(self))

    def __str__(self) -> str:
        where = " ".join(part for part in (self.call, f"[{self.ref_id}]" if self.ref_id else None) if part)
        status = f" → {self.status}" if self.status is not None else ""
        fields = "; ".join(f"{field}: {msg}" for field, msg in self.field_errors)
        detail = f"{self.message}" + (f" ({fields})" if fields else "")
        return f"{where}{status}: {detail}" if where else detail


class CasaviRejectedError(CasaviError):
    """casavi refused this object (400 invalid, 404 unknown, 409 conflict, 422 unknown reference)."""


class CasaviAuthError(CasaviError):
    """The key/secret were refused, or a fresh token was refused again."""


class CasaviUnavailableError(CasaviError):
    """casavi kept failing (5xx, 429, timeouts, dropped connections) until the retries ran out."""
