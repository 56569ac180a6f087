"""The casavi API v2 as the sandbox serves it: authentication, paged reads, PUT/DELETE by reference ID.

Every casavi path, field name, status code and validation rule comes from `casavi_pipeline.casavi.api`,
so the sandbox and the client implement one model (`docs/casavi-api.md`). Beyond `FIELD_RULES`
(400) it enforces the reference rules: `api.REFERENCES` must resolve (422) and keep their targets from
being deleted (409), and a unit's address must be one of its property's addresses (422). Reads leave
null fields out and add `internalId`, `modified` and the `units` of each property address.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from casavi_pipeline.casavi import api
from casavi_sandbox.admin import admin_routes
from casavi_sandbox.chaos import ASGIApp, Controls, Misbehaviour
from casavi_sandbox.model import (
    ADDRESS_ID,
    ADDRESS_RULES,
    KINDS_BY_COLLECTION,
    Reader,
    reference_targets,
    stored_shape,
    wire_name,
)
from casavi_sandbox.store import SandboxStore
from casavi_sandbox.wire import AFTER_PARAM, Problem, after_param, json_object, paging, utc_timestamp

#: casavi's tokens last about a month when no token TTL knob is set.
DEFAULT_TOKEN_TTL_SECONDS = 30 * 24 * 3600
#: The answers `echo_errors` makes chatty: a body that breaks a rule or references unknown objects.
_ECHOED_STATUSES = frozenset({api.STATUS_INVALID, api.STATUS_UNKNOWN_REFERENCE})


def create_app(
    store: SandboxStore, controls: Controls, api_key: str, api_secret: str, nonce: str = ""
) -> ASGIApp:
    """The sandbox as an ASGI app: the casavi API wrapped in the misbehaviour layer, plus admin routes.

    `nonce` is served by the admin health endpoint, so whoever started this process can tell it from
    another program on the same port.
    """
    handlers = _Handlers(store, controls, api_key, api_secret)
    routes = [
        Route(api.AUTH_PATH, handlers.authenticate, methods=["POST"]),
        Route(api.API_PREFIX + "/{collection}", handlers.list_objects, methods=["GET"]),
        Route(
            api.API_PREFIX + "/{collection}/{ref_id:path}",  # `path`: reference IDs may hold `/`
            handlers.one_object,
            methods=["GET", "PUT", "DELETE"],
        ),
        *admin_routes(store, controls, handlers.reader, nonce),
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
    return exc.response()


class _Handlers:
    def __init__(self, store: SandboxStore, controls: Controls, api_key: str, api_secret: str) -> None:
        self.store = store
        self.controls = controls
        self.reader = Reader(store)
        self._key = api_key.encode()
        self._secret = api_secret.encode()

    # --- authentication ----------------------------------------------------------------------------
    async def authenticate(self, request: Request) -> Response:
        body = await json_object(request)
        if not (
            _same(body.get(api.AUTH_KEY_FIELD), self._key)
            and _same(body.get(api.AUTH_SECRET_FIELD), self._secret)
        ):
            raise Problem(api.STATUS_UNAUTHORIZED, "wrong key or secret")
        expires_at = time.time() + (self.controls.knobs.token_ttl or DEFAULT_TOKEN_TTL_SECONDS)
        token = secrets.token_urlsafe(32)
        self.store.add_token(token, expires_at)
        return JSONResponse({api.AUTH_TOKEN_FIELD: token, api.AUTH_EXPIRES_FIELD: utc_timestamp(expires_at)})

    def _require_token(self, request: Request) -> None:
        token = request.headers.get(api.TOKEN_HEADER)
        if not token:
            raise Problem(api.STATUS_UNAUTHORIZED, f"missing {api.TOKEN_HEADER} header")
        expires_at = self.store.token_expiry(token)
        if expires_at is None:
            raise Problem(api.STATUS_UNAUTHORIZED, "unknown token")
        if expires_at <= time.time():
            raise Problem(api.STATUS_UNAUTHORIZED, "token expired")

    def _kind(self, request: Request) -> api.ObjectKind:
        self._require_token(request)
        kind = KINDS_BY_COLLECTION.get(request.path_params["collection"])
        if kind is None:
            raise Problem(api.STATUS_NOT_FOUND, "unknown collection")
        return kind

    # --- reads -------------------------------------------------------------------------------------
    async def list_objects(self, request: Request) -> Response:
        kind = self._kind(request)
        page, size, modified_after = paging(request)
        after_id = after_param(request)
        rows = self.store.page(
            kind.collection,
            offset=(page - 1) * size,
            limit=size + 1,
            modified_after=modified_after,
            after_id=after_id,
        )
        links = {}
        if len(rows) > size:  # one row more than a page: there is a next page
            # The next link carries where this page ended (keyset paging, as opaque to the client as
            # casavi's own next links): a page costs the same wherever it is in the listing.
            links[api.NEXT_LINK_KEY] = str(
                request.url.include_query_params(
                    **{api.PAGE_PARAM: page + 1, AFTER_PARAM: rows[size - 1].internal_id}
                )
            )
        listed = self.reader.shape(kind, rows[:size])
        return JSONResponse({api.LIST_KEY: listed, api.LINKS_KEY: links})

    async def one_object(self, request: Request) -> Response:
        kind = self._kind(request)
        ref_id = request.path_params["ref_id"]
        if request.method == "PUT":
            return await self._put(request, kind, ref_id)
        if request.method == "DELETE":
            return self._delete(kind, ref_id)
        stored = self.store.get(kind.collection, ref_id)
        if stored is None:
            raise Problem(api.STATUS_NOT_FOUND, f"no {kind.value} with id {ref_id}")
        return JSONResponse(self.reader.shape_one(kind, stored))

    # --- writes ------------------------------------------------------------------------------------
    async def _put(self, request: Request, kind: api.ObjectKind, ref_id: str) -> Response:
        try:
            return await self._store_put(request, kind, ref_id)
        except Problem as problem:
            if self.controls.knobs.echo_errors and problem.status in _ECHOED_STATUSES:
                raise _echoed(problem, await request.body()) from None
            raise

    async def _store_put(self, request: Request, kind: api.ObjectKind, ref_id: str) -> Response:
        body = await json_object(request)
        if ref_id in self.controls.knobs.rejected_ids():
            # the `reject_ids` knob: casavi's validation refuses a value of this object
            raise Problem(
                api.STATUS_INVALID,
                f"invalid {kind.value}",
                [api.FieldError(name, "was rejected by casavi's validation") for name in body],
            )
        id_field = wire_name(kind, "id")
        errors = []
        if isinstance(body.get(id_field), str) and body[id_field] != ref_id:
            errors.append(api.FieldError(id_field, "must equal the id in the path"))
        errors += api.validate_payload(kind, body)
        if errors:
            raise Problem(api.STATUS_INVALID, f"invalid {kind.value}", errors)
        payload = stored_shape(kind, body)
        with self.store.atomic():  # the references checked are the ones in place when it is written
            links = self._resolve_references(kind, payload)
            stored, created = self.store.upsert(
                kind.collection,
                ref_id,
                _break_write_model(payload, self.controls.knobs.field_changes(kind)),
                links,
                utc_timestamp(time.time()),
            )
        status = api.STATUS_CREATED if created else api.STATUS_UPDATED
        return JSONResponse(self.reader.shape_one(kind, stored), status_code=status)

    def _resolve_references(self, kind: api.ObjectKind, payload: dict[str, Any]) -> list[tuple[str, str]]:
        """The (collection, id) pairs the payload references; 422 if any of them does not exist."""
        links, errors = [], []
        for name, target_collection, target in reference_targets(kind, payload):
            if self.store.exists(target_collection, target):
                links.append((target_collection, target))
            else:
                target_kind = KINDS_BY_COLLECTION[target_collection]
                errors.append(api.FieldError(name, f"unknown {target_kind.value} {target}"))
        for source_kind, field, parent_field, parent_kind, list_field in ADDRESS_RULES:
            if source_kind is not kind:
                continue
            parent_id = payload[wire_name(kind, parent_field)]
            parent = self.store.get(parent_kind.collection, parent_id)
            if parent is None:
                continue  # already reported as an unknown parent
            addresses = parent.payload.get(wire_name(parent_kind, list_field)) or []
            name = wire_name(kind, field)
            if payload[name] not in {address.get(ADDRESS_ID) for address in addresses}:
                errors.append(api.FieldError(name, f"not an address of {parent_kind.value} {parent_id}"))
        if errors:
            raise Problem(api.STATUS_UNKNOWN_REFERENCE, f"{kind.value} references unknown objects", errors)
        return links

    def _delete(self, kind: api.ObjectKind, ref_id: str) -> Response:
        with self.store.atomic():
            if not self.store.exists(kind.collection, ref_id):
                raise Problem(api.STATUS_NOT_FOUND, f"no {kind.value} with id {ref_id}")
            referrers = self.store.referrers(kind.collection, ref_id)
            if referrers:
                held_by = ", ".join(
                    f"{count} {collection}" for collection, count in sorted(referrers.items())
                )
                raise Problem(
                    api.STATUS_CONFLICT, f"{kind.value} {ref_id} is still referenced by {held_by}", []
                )
            self.store.delete(kind.collection, ref_id)
        return Response(status_code=api.STATUS_DELETED)


def _same(given: Any, expected: bytes) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected)


def _break_write_model(payload: dict[str, Any], changes: list[tuple[str, str | None]]) -> dict[str, Any]:
    """The payload as a misconfigured casavi stores it (`drop_field` / `rename_field` knobs)."""
    if not changes:
        return payload
    broken = dict(payload)
    for field, new_name in changes:
        if field in broken:
            value = broken.pop(field)
            if new_name is not None:
                broken[new_name] = value
    return broken


def _echoed(problem: Problem, raw_body: bytes) -> Problem:
    """The same answer as a chatty validation layer words it: the submitted values and the whole body
    quoted verbatim (what a client must never copy into its logs)."""
    try:
        submitted = json.loads(raw_body)
    except ValueError:
        submitted = None
    body_text = raw_body.decode("utf-8", errors="replace")
    errors = None
    if problem.errors is not None:
        errors = [
            api.FieldError(error.field, _quoted(error.field, submitted, error.message))
            for error in problem.errors
        ]
    return Problem(problem.status, f"{problem.message}: rejected request body {body_text}", errors)


def _quoted(field: str, submitted: Any, message: str) -> str:
    if not isinstance(submitted, dict) or field not in submitted:
        return f"{field} {message}"
    value = submitted[field]
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"{field} '{shown}' {message}"
