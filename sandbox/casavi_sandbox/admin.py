"""The sandbox's own endpoints under `/_sandbox/`: inspect, reset and reconfigure a running sandbox.

No authentication, no rate limit, not counted: they sit outside the API prefix, so the misbehaviour
layer lets them through untouched. Not part of casavi: a test harness for a local process.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from casavi_pipeline.casavi import api
from casavi_sandbox.chaos import Controls
from casavi_sandbox.store import SandboxStore

ADMIN_PREFIX = "/_sandbox"


def admin_routes(store: SandboxStore, controls: Controls) -> list[Route]:
    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def state(_request: Request) -> Response:
        stored = store.dump()
        return JSONResponse({kind.collection: stored.get(kind.collection, {}) for kind in api.ObjectKind})

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

    return [
        Route(f"{ADMIN_PREFIX}/health", health, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/state", state, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/requests", requests, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/reset", reset, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/config", config, methods=["GET", "POST"]),
    ]


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
    return JSONResponse({"message": message}, status_code=400)
