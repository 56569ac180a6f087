"""The sandbox's own endpoints under `/_sandbox/`: inspect, reset and reconfigure a running sandbox, and
play "someone else changed casavi" (an import filled the account, a person edited or deleted an object).

No authentication, no rate limit, not counted: they sit outside the API prefix, so the misbehaviour
layer lets them through untouched and the request counts stay those of the API client under test.
Not part of casavi: a test harness for a local process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from casavi_sandbox import contract as c
from casavi_sandbox.chaos import Controls
from casavi_sandbox.contract import FieldError, Kind, kind_named, utc_timestamp
from casavi_sandbox.model import StoredAccount, links
from casavi_sandbox.store import SandboxStore
from casavi_sandbox.wire import read_options

ADMIN_PREFIX = "/_sandbox"
#: Field errors reported for a rejected seed batch at most (the rest are counted, not listed).
_MAX_SEED_ERRORS = 50


def admin_routes(
    store: SandboxStore, controls: Controls, account: StoredAccount, nonce: str = ""
) -> list[Route]:
    async def health(_request: Request) -> Response:
        # the nonce its starter gave it: proves to SandboxProcess that this answer is from its own process
        return JSONResponse({"status": "ok", "nonce": nonce})

    async def state(_request: Request) -> Response:
        stored = store.dump()
        return JSONResponse({kind.collection: stored.get(kind.collection, {}) for kind in Kind})

    async def requests(_request: Request) -> Response:
        return JSONResponse(controls.counter.snapshot())

    async def reset(request: Request) -> Response:
        try:
            wipe_objects = (await _optional_json(request)).get("objects", True)
        except ValueError as exc:
            return _bad_request(str(exc))
        if not isinstance(wipe_objects, bool):
            return _bad_request("objects must be true or false")
        if wipe_objects:
            store.wipe()
        controls.reset_counters()
        return JSONResponse({"objects": wipe_objects, "counters": True})

    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                controls.configure(await _optional_json(request))
            except (ValueError, TypeError) as exc:
                return _bad_request(str(exc))
        return JSONResponse(dataclasses.asdict(controls.knobs))

    async def seed(request: Request) -> Response:
        """Objects as an import (Aareon Connect, Excel) or casavi's UI leaves them: `[{"kind", "body"}, ...]`
        or `{"objects": [...]}`. Each body must pass the rules of what casavi holds (`contract.problems`
        with `held`: a unit's usage may be one the API does not take, e.g. the UI's Stellplatz; else 400,
        nothing stored); references are recorded but not required to resolve. Stored as given, one
        transaction."""
        started = time.perf_counter()
        try:
            raw = json.loads(await request.body())
        except ValueError as exc:
            return _bad_request(f"malformed JSON: {exc}")
        items = raw.get("objects") if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            return _bad_request('the body must be a list of {"kind", "body"} objects, or {"objects": [...]}')
        objects: dict[tuple[str, str], dict[str, Any]] = {}  # a repeated id: the last one wins
        kinds: dict[tuple[str, str], Kind] = {}
        errors: list[dict[str, Any]] = []
        invalid = 0
        for index, item in enumerate(items):
            problems, kind, body = _seed_item(item)
            if problems:
                invalid += 1
                errors += [{"index": index, **problem} for problem in problems][
                    : _MAX_SEED_ERRORS - len(errors)
                ]
                continue
            assert kind is not None and body is not None
            key = (kind.collection, body[c.ID_FIELD])
            objects[key], kinds[key] = body, kind
        if invalid:
            return JSONResponse(
                {
                    c.ERROR_MESSAGE_KEY: f"{invalid} of {len(items)} objects are invalid; nothing stored",
                    c.ERROR_DETAILS_KEY: errors,
                },
                status_code=c.STATUS_INVALID,
            )
        references = [
            (collection, ref_id, target_collection, target)
            for (collection, ref_id), body in objects.items()
            for target_collection, target in links(kinds[collection, ref_id], body)
        ]
        modified = utc_timestamp(time.time())
        created = store.seed([(c, r, body) for (c, r), body in objects.items()], references, modified)
        return JSONResponse(
            {
                "seeded": len(objects),
                "created": created,
                "updated": len(objects) - created,
                "modified": modified,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )

    async def one_object(request: Request) -> Response:
        """PATCH: a person edits fields of one object in casavi's UI (answered with the object as a read
        with inactive contracts shows it); DELETE: a person deletes it."""
        try:
            kind = kind_named(request.path_params["collection"])
        except ValueError as exc:
            return _bad_request(str(exc))
        ref_id = request.path_params["ref_id"]
        if request.method == "DELETE":
            # no 409 check: what references the object now dangles, as after a deletion in the UI
            if not store.delete(kind.collection, ref_id):
                return _not_found(kind, ref_id)
            return Response(status_code=c.STATUS_DELETED)
        try:
            changes = await _optional_json(request)
        except ValueError as exc:
            return _bad_request(str(exc))
        if changes.get(c.ID_FIELD, ref_id) != ref_id:
            return _bad_request("changing an object's reference id is not supported")
        with store.atomic():
            stored = store.get(kind.collection, ref_id)
            if stored is None:
                return _not_found(kind, ref_id)
            payload = {**stored.payload, **changes}
            problems = c.problems(kind, payload, held=True)
            if problems:
                return JSONResponse(
                    {
                        c.ERROR_MESSAGE_KEY: f"the edit makes an invalid {kind.value}",
                        c.ERROR_DETAILS_KEY: [_field_error(problem) for problem in problems],
                    },
                    status_code=c.STATUS_INVALID,
                )
            edited = store.replace(
                kind.collection, ref_id, payload, links(kind, payload), utc_timestamp(time.time())
            )
        assert edited is not None
        return JSONResponse(account.shape(kind, [edited], **read_options(request, controls.knobs))[0])

    return [
        Route(f"{ADMIN_PREFIX}/health", health, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/state", state, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/requests", requests, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/reset", reset, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/config", config, methods=["GET", "POST"]),
        Route(f"{ADMIN_PREFIX}/seed", seed, methods=["POST"]),
        Route(
            f"{ADMIN_PREFIX}/objects/{{collection}}/{{ref_id:path}}", one_object, methods=["PATCH", "DELETE"]
        ),
    ]


def _seed_item(item: Any) -> tuple[list[dict[str, str]], Kind | None, dict[str, Any] | None]:
    """(problems, kind, body) of one seed entry; problems are `{"field", "message"}` dicts."""
    if not isinstance(item, dict):
        return [{"field": "", "message": 'must be an object {"kind", "body"}'}], None, None
    try:
        kind = kind_named(str(item.get("kind", item.get("collection", ""))))
    except ValueError as exc:
        return [{"field": "kind", "message": str(exc)}], None, None
    body = item.get("body")
    if not isinstance(body, dict):
        return [{"field": "body", "message": "must be an object"}], kind, None
    problems = [_field_error(problem) for problem in c.problems(kind, body, held=True)]
    return problems, kind, body


def _field_error(error: FieldError) -> dict[str, str]:
    return {c.ERROR_FIELD_KEY: error.field, c.ERROR_MESSAGE_KEY: error.message}


async def _optional_json(request: Request) -> dict[str, Any]:
    """The JSON object in the body, {} for an empty body; ValueError for anything else."""
    raw = await request.body()
    if not raw.strip():
        return {}
    body = json.loads(raw)  # json.JSONDecodeError is a ValueError
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _bad_request(message: str) -> Response:
    return JSONResponse({c.ERROR_MESSAGE_KEY: message}, status_code=c.STATUS_INVALID)


def _not_found(kind: Kind, ref_id: str) -> Response:
    return JSONResponse(
        {c.ERROR_MESSAGE_KEY: f"no {kind.value} with id {ref_id}"}, status_code=c.STATUS_NOT_FOUND
    )
