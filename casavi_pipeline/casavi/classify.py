"""One classifier from casavi's answer to what it means for the call that asked (singer-sdk's idea of one
response validator): every status the client meets is judged here, once, per kind of call.

| outcome    | statuses                                      | what the client does                          |
|------------|-----------------------------------------------|-----------------------------------------------|
| DONE       | the call's success codes (table below)        | return it                                     |
| RETRY      | 429, 5xx                                      | ask again once the budget allows (`retry.py`) |
| ABSENT     | 404 to a GET of one object                    | None: casavi does not know the reference id   |
| REJECTED   | 400, 409, 422 to a write                      | a rejection of that object; the rest go on    |
| REFUSED    | 401 (after the one fresh token), 403          | `CasaviAuthError`                             |
| MISMATCH   | 404, 405 where our model expects neither      | `CasaviModelMismatchError`: stop the kind     |
| UNEXPECTED | anything else                                 | `CasaviError`                                 |

A PUT creates, so its 404 is no unknown id but a path our model has wrong; a DELETE's 404 means the
object is gone either way (done).
"""

from __future__ import annotations

from enum import StrEnum

from casavi_pipeline.casavi import api


class Call(StrEnum):
    """The kinds of call the client makes."""

    LOGIN = "login"
    LIST = "list"
    GET = "get"
    PUT = "put"
    DELETE = "delete"


class Outcome(StrEnum):
    DONE = "done"
    RETRY = "retry"
    ABSENT = "absent"
    REJECTED = "rejected"
    REFUSED = "refused"
    MISMATCH = "mismatch"
    UNEXPECTED = "unexpected"


#: [model] What each call answers when it did what was asked ([confirmed]: the login's 200).
_DONE: dict[Call, frozenset[int]] = {
    Call.LOGIN: frozenset({200}),
    Call.LIST: frozenset({200}),
    Call.GET: frozenset({200}),
    Call.PUT: frozenset({api.STATUS_UPDATED, api.STATUS_CREATED}),
    Call.DELETE: frozenset({api.STATUS_DELETED, api.STATUS_NOT_FOUND, 200}),
}
_REJECTED = frozenset({api.STATUS_INVALID, api.STATUS_CONFLICT, api.STATUS_UNKNOWN_REFERENCE})
_WRITES = frozenset({Call.PUT, Call.DELETE})


def classify(call: Call, status: int) -> Outcome:
    """What `status` means as the answer to `call`."""
    if status in _DONE[call]:
        return Outcome.DONE
    if status == api.STATUS_RATE_LIMITED or status >= 500:
        return Outcome.RETRY
    if call is Call.GET and status == api.STATUS_NOT_FOUND:
        return Outcome.ABSENT
    if status in (api.STATUS_UNAUTHORIZED, api.STATUS_FORBIDDEN):
        return Outcome.REFUSED
    if status in (api.STATUS_NOT_FOUND, api.STATUS_METHOD_NOT_ALLOWED):
        return Outcome.MISMATCH
    if call in _WRITES and status in _REJECTED:
        return Outcome.REJECTED
    return Outcome.UNEXPECTED
