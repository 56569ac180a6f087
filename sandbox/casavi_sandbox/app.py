"""The casavi API v2 as the sandbox serves it: authentication, paged reads, PUT/DELETE by reference ID.

Every casavi path, field name, status code and validation rule comes from the sandbox's own reading of
`docs/casavi-api.md` (`contract.py`), and the rules of what a write is refused with and what a read
returns are `model.py`'s (shared with the harness's fake client). Nothing comes from casavi_pipeline:
the sandbox judges what the pipeline sends instead of agreeing with it by construction.
The collections are properties, units and contacts; any other path under `/v2/` is a 404.

Listing: the first request takes `pageSize` (default `wire.DEFAULT_PAGE_SIZE`, at most
`contract.MAX_PAGE_SIZE`, else 400) and `modifiedAfter`; `_links.next` is the same absolute URL with the
sandbox's own continuation added (the internal id the page ended with: keyset paging, so the 850th page
costs what the first does and a deletion in between skips nothing). Contacts' ended contracts are
left out of reads without `includeInactiveContracts=true`; a PUT answers with the object as stored.
Every object read carries its `appLink` to `<the host the client called>/app/...` (see `model.py`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from casavi_sandbox import contract as c
from casavi_sandbox.admin import admin_routes
from casavi_sandbox.chaos import ASGIApp, Controls, Misbehaviour
from casavi_sandbox.contract import FieldError, Kind, utc_timestamp
from casavi_sandbox.model import Problem, StoredAccount, check_delete, check_put, links
from casavi_sandbox.store import SandboxStore, StoredObject
from casavi_sandbox.wire import (
    AFTER_PARAM,
    inactive_contracts,
    json_object,
    listing,
    problem_response,
    read_options,
)

#: casavi's tokens last about a month when no token TTL knob is set.
DEFAULT_TOKEN_TTL_SECONDS = 30 * 24 * 3600
#: The answers to PUTs that `echo_errors` makes chatty: a refused body.
_ECHOED_STATUSES = frozenset({c.STATUS_INVALID, c.STATUS_CONFLICT, c.STATUS_UNKNOWN_REFERENCE})
#: Where `echo_errors` puts submitted values as if they were machine codes: a slot casavi's model does
#: not have, which a server or proxy might add (tests prove that the client passes none of it on).
ECHO_CODE_KEY = "code"
_FIELD_PATH_PART = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")


def create_app(
    store: SandboxStore, controls: Controls, api_key: str, api_secret: str, nonce: str = ""
) -> ASGIApp:
    """The sandbox as an ASGI app: the casavi API wrapped in the misbehaviour layer, plus admin routes.

    `nonce` is served by the admin health endpoint, so whoever started this process can tell it from
    another program on the same port.
    """
    handlers = _Handlers(store, controls, api_key, api_secret)
    routes = [
        Route(c.AUTH_PATH, handlers.authenticate, methods=["POST"]),
        Route(c.API_PREFIX + "/{collection}", handlers.list_objects, methods=["GET"]),
        Route(
            c.API_PREFIX + "/{collection}/{ref_id:path}",  # `path`: reference IDs may hold `/`
            handlers.one_object,
            methods=["GET", "PUT", "DELETE"],
        ),
        *admin_routes(store, controls, handlers.account, nonce),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        store.close()  # checkpoints the WAL into the database file

    app = Starlette(routes=routes, exception_handlers={Problem: _problem_response}, lifespan=lifespan)
    return Misbehaviour(app, controls)


async def _problem_response(_request: Request, exc: Exception) -> Response:
    # async on purpose: Starlette runs a sync exception handler in its thread pool
    if not isinstance(exc, Problem):  # pragma: no cover - registered for Problem only
        raise exc
    return problem_response(exc)


class _Handlers:
    def __init__(self, store: SandboxStore, controls: Controls, api_key: str, api_secret: str) -> None:
        self.store = store
        self.controls = controls
        self.account = StoredAccount(store)
        self._key = api_key.encode()
        self._secret = api_secret.encode()

    # --- authentication ----------------------------------------------------------------------------
    async def authenticate(self, request: Request) -> Response:
        body = await json_object(request)
        if not (
            _same(body.get(c.AUTH_KEY_FIELD), self._key)
            and _same(body.get(c.AUTH_SECRET_FIELD), self._secret)
        ):
            raise Problem(c.STATUS_UNAUTHORIZED, "wrong key or secret")
        expires_at = time.time() + (self.controls.knobs.token_ttl or DEFAULT_TOKEN_TTL_SECONDS)
        token = secrets.token_urlsafe(32)
        self.store.add_token(token, expires_at)
        return JSONResponse({c.AUTH_TOKEN_FIELD: token, c.AUTH_EXPIRES_FIELD: utc_timestamp(expires_at)})

    def _require_token(self, request: Request) -> None:
        token = request.headers.get(c.TOKEN_HEADER)
        if not token:
            raise Problem(c.STATUS_UNAUTHORIZED, f"missing {c.TOKEN_HEADER} header")
        expires_at = self.store.token_expiry(token)
        if expires_at is None:
            raise Problem(c.STATUS_UNAUTHORIZED, "unknown token")
        if expires_at <= time.time():
            raise Problem(c.STATUS_UNAUTHORIZED, "token expired")

    def _kind(self, request: Request) -> Kind:
        self._require_token(request)
        kind = c.KINDS_BY_COLLECTION.get(request.path_params["collection"])
        if kind is None:
            raise Problem(c.STATUS_NOT_FOUND, "unknown collection")
        return kind

    def _shape(
        self, request: Request, kind: Kind, stored: list[StoredObject], *, inactive_contracts: bool
    ) -> list[dict[str, Any]]:
        return self.account.shape(
            kind,
            stored,
            inactive_contracts=inactive_contracts,
            **read_options(request, self.controls.knobs),
        )

    # --- reads -------------------------------------------------------------------------------------
    async def list_objects(self, request: Request) -> Response:
        kind = self._kind(request)
        asked = listing(request)
        rows = self.store.page(
            kind.collection,
            limit=asked.size + 1,
            modified_after=asked.modified_after,
            after_id=asked.after_id,
        )
        links_out = {}
        if len(rows) > asked.size:  # one row more than a page: there is a next page
            links_out[c.NEXT_LINK_KEY] = str(
                request.url.include_query_params(**{AFTER_PARAM: rows[asked.size - 1].internal_id})
            )
        listed = self._shape(request, kind, rows[: asked.size], inactive_contracts=asked.inactive_contracts)
        return JSONResponse({c.LIST_KEY: listed, c.LINKS_KEY: links_out})

    async def one_object(self, request: Request) -> Response:
        kind = self._kind(request)
        ref_id = request.path_params["ref_id"]
        if request.method == "PUT":
            return await self._put(request, kind, ref_id)
        if request.method == "DELETE":
            with self.store.atomic():
                check_delete(kind, ref_id, self.account)
                self.store.delete(kind.collection, ref_id)
            return Response(status_code=c.STATUS_DELETED)
        stored = self.store.get(kind.collection, ref_id)
        if stored is None:
            raise Problem(c.STATUS_NOT_FOUND, f"no {kind.value} with id {ref_id}")
        shaped = self._shape(request, kind, [stored], inactive_contracts=inactive_contracts(request))
        return JSONResponse(shaped[0])

    # --- writes ------------------------------------------------------------------------------------
    async def _put(self, request: Request, kind: Kind, ref_id: str) -> Response:
        try:
            return await self._store_put(request, kind, ref_id)
        except Problem as problem:
            if self.controls.knobs.echo_errors and problem.status in _ECHOED_STATUSES:
                return _echoed(problem, await request.body())
            raise

    async def _store_put(self, request: Request, kind: Kind, ref_id: str) -> Response:
        body = await json_object(request)
        if ref_id in self.controls.knobs.rejected_ids():
            # the `reject_ids` knob: casavi's validation refuses a value of this object
            raise Problem(
                c.STATUS_INVALID,
                f"invalid {kind.value}",
                [FieldError(name, "was rejected by casavi's validation") for name in body],
            )
        with self.store.atomic():  # the objects checked are the ones in place when it is written
            payload = check_put(kind, ref_id, body, self.account)
            stored, created = self.store.upsert(
                kind.collection,
                ref_id,
                _break_write_model(payload, self.controls.knobs.field_changes(kind)),
                links(kind, payload),
                utc_timestamp(time.time()),
            )
        status = c.STATUS_CREATED if created else c.STATUS_OK
        return JSONResponse(
            self._shape(request, kind, [stored], inactive_contracts=True)[0], status_code=status
        )


def _same(given: Any, expected: bytes) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected)


def _break_write_model(
    payload: dict[str, Any], changes: list[tuple[tuple[str, ...], str | None]]
) -> dict[str, Any]:
    """The payload as a misconfigured casavi stores it (`drop_field` / `rename_field` knobs)."""
    broken = dict(payload)
    for path, new_name in changes:
        if len(path) == 1:
            _rename(broken, path[0], new_name)
        elif isinstance(broken.get(path[0]), list):
            entries = [dict(entry) for entry in broken[path[0]]]
            for entry in entries:
                _rename(entry, path[1], new_name)
            broken[path[0]] = entries
    return broken


def _rename(obj: dict[str, Any], field: str, new_name: str | None) -> None:
    if field in obj:
        value = obj.pop(field)
        if new_name is not None:
            obj[new_name] = value


# --- echo_errors: a chatty validation layer ------------------------------------------------------------
def _echoed(problem: Problem, raw_body: bytes) -> Response:
    """The same answer as a chatty validation layer words it: the submitted values and the whole body
    quoted verbatim in the messages, and values as `code`s (what a client must never pass on)."""
    try:
        submitted = json.loads(raw_body)
    except ValueError:
        submitted = None
    body_text = raw_body.decode("utf-8", errors="replace")
    answer: dict[str, Any] = {c.ERROR_MESSAGE_KEY: f"{problem.message}: rejected request body {body_text}"}
    codes = []
    if problem.errors is not None:
        details = []
        for error in problem.errors:
            value = _value_at(submitted, error.field)
            detail = {c.ERROR_FIELD_KEY: error.field, c.ERROR_MESSAGE_KEY: f"{error.field} {error.message}"}
            if value is not _ABSENT:
                shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                detail[c.ERROR_MESSAGE_KEY] = f"{error.field} '{shown}' {error.message}"
                if code := _as_code(value):
                    detail[ECHO_CODE_KEY] = code
                    codes.append(code)
            details.append(detail)
        answer[c.ERROR_DETAILS_KEY] = details
    if codes:
        answer[ECHO_CODE_KEY] = codes[0]
    return JSONResponse(answer, status_code=problem.status)


_ABSENT = object()


def _value_at(submitted: Any, path: str) -> Any:
    """The submitted value at an error's field path (`lastName`, `contracts[0].unitId`), or _ABSENT."""
    value = submitted
    for part in path.split("."):
        match = _FIELD_PATH_PART.match(part)
        if match is None or not isinstance(value, Mapping) or match.group(1) not in value:
            return _ABSENT
        value = value[match.group(1)]
        for index in re.findall(r"\d+", match.group(2)):
            if not isinstance(value, list) or int(index) >= len(value):
                return _ABSENT
            value = value[int(index)]
    return value


def _as_code(value: Any) -> str | None:
    """A submitted value dressed as a machine code: an email's local part, anything else upper-cased
    (`erika.muster@example.org` → `erika.muster`, `Geheim` → `GEHEIM`), spaces as `_`."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value)
    text = text.partition("@")[0] if "@" in text else text.upper()
    return re.sub(r"\s+", "_", text.strip()) or None
