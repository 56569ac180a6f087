"""An in-memory casavi with the client's interface, for unit tests of the sync without HTTP, and the
Dagster resource that hands it out (the fake beside `casavi_pipeline`'s real `HttpCasaviResource`).

It applies the same model as the sandbox: `api.validate_payload` (400), references that must exist
(422), no deleting of referenced objects (409). End-to-end tests use the sandbox process instead.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import Field

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import ClientStats, Operation, WriteResult
from casavi_pipeline.casavi.errors import CasaviRejectedError, CasaviUnavailableError
from casavi_pipeline.defs.resources import CasaviResource

_CASAVI_NAME = {kind: {r.name: r.casavi for r in rules} for kind, rules in api.FIELD_RULES.items()}


class FakeCasaviClient:
    def __init__(self, *, reject_ids: Iterable[str] = (), fail_after_writes: int | None = None) -> None:
        self.objects: dict[ObjectKind, dict[str, dict[str, Any]]] = {kind: {} for kind in ObjectKind}
        self.requests: list[tuple[str, ObjectKind, str]] = []
        self.reject_ids = set(reject_ids)
        self.fail_after_writes = fail_after_writes
        self.stats = ClientStats()

    def __enter__(self) -> FakeCasaviClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def authenticate(self, *, force: bool = False) -> None:
        self.stats.count("authentications")

    def list_objects(self, kind: ObjectKind, **_: Any) -> Iterator[dict[str, Any]]:
        """Every object of the kind (the fake has no `modified`: every read lists them all)."""
        self.stats.count("pages")
        yield from list(self.objects[kind].values())

    def get_object(self, kind: ObjectKind, ref_id: str) -> dict[str, Any] | None:
        return self.objects[kind].get(ref_id)

    def _rejected(self, op: Operation, status: int, message: str) -> WriteResult:
        call = f"{'PUT' if op.action == 'upsert' else 'DELETE'} {op.kind.collection_path}/{{id}}"
        error = CasaviRejectedError(message, call=call, ref_id=op.ref_id, status=status)
        return WriteResult(op, ok=False, status=status, error=error)

    def _missing_reference(self, kind: ObjectKind, payload: dict[str, Any]) -> str | None:
        for source, field, target in api.REFERENCES:
            if source is not kind:
                continue
            value = payload.get(_CASAVI_NAME[kind][field])
            for ref in value if isinstance(value, list) else [value]:
                if ref not in self.objects[target]:
                    return f"{_CASAVI_NAME[kind][field]} references unknown {target.value} {ref}"
        if kind is ObjectKind.UNIT:
            prop = self.objects[ObjectKind.PROPERTY][payload[_CASAVI_NAME[kind]["property_id"]]]
            address_ids = {
                a.get(api.ID_FIELD) for a in prop.get(_CASAVI_NAME[ObjectKind.PROPERTY]["addresses"]) or []
            }
            if payload.get(_CASAVI_NAME[kind]["address_id"]) not in address_ids:
                return "addressId is not an address of the property"
        return None

    def _referenced_by(self, kind: ObjectKind, ref_id: str) -> bool:
        for source, field, target in api.REFERENCES:
            if target is not kind:
                continue
            for obj in self.objects[source].values():
                value = obj.get(_CASAVI_NAME[source][field])
                if ref_id in (value if isinstance(value, list) else [value]):
                    return True
        return False

    def _write(self, op: Operation) -> WriteResult:
        writes = sum(1 for method, _, _ in self.requests if method in ("PUT", "DELETE"))
        if self.fail_after_writes is not None and writes >= self.fail_after_writes:
            raise CasaviUnavailableError("fake casavi is down", ref_id=op.ref_id, status=503)
        self.requests.append(("PUT" if op.action == "upsert" else "DELETE", op.kind, op.ref_id))
        self.stats.answered(200)
        if op.ref_id in self.reject_ids:
            return self._rejected(op, api.STATUS_INVALID, "rejected by the fake")
        store = self.objects[op.kind]
        if op.action == "delete":
            if op.ref_id not in store:
                return WriteResult(op, ok=True, status=api.STATUS_NOT_FOUND)
            if self._referenced_by(op.kind, op.ref_id):
                return self._rejected(op, api.STATUS_CONFLICT, "still referenced")
            del store[op.ref_id]
            return WriteResult(op, ok=True, status=api.STATUS_DELETED)
        payload = dict(op.payload or {})
        errors = api.validate_payload(op.kind, payload)
        if errors:
            return self._rejected(
                op, api.STATUS_INVALID, "; ".join(f"{e.field}: {e.message}" for e in errors)
            )
        missing = self._missing_reference(op.kind, payload)
        if missing:
            return self._rejected(op, api.STATUS_UNKNOWN_REFERENCE, missing)
        created = op.ref_id not in store
        store[op.ref_id] = payload
        status = api.STATUS_CREATED if created else api.STATUS_UPDATED
        return WriteResult(op, ok=True, status=status, created=created)

    def upsert(self, kind: ObjectKind, payload: dict[str, Any]) -> WriteResult:
        return self._write(Operation(kind, "upsert", str(payload[api.ID_FIELD]), payload))

    def delete(self, kind: ObjectKind, ref_id: str) -> WriteResult:
        return self._write(Operation(kind, "delete", ref_id))

    def execute(self, operations: Iterable[Operation]) -> Iterator[WriteResult]:
        for op in operations:
            yield self._write(op)


#: The fake casavi of each resource: Dagster rebuilds a resource from its config for every run, so the
#: in-memory state is keyed by the resource's `name`, not held by the instance.
_FAKES: dict[str, FakeCasaviClient] = {}


class FakeCasaviResource(CasaviResource):
    """An in-memory casavi for fast tests of the Dagster wiring; keeps its objects across runs."""

    name: str = Field(default_factory=lambda: uuid.uuid4().hex, description="which fake casavi")

    @property
    def client(self) -> FakeCasaviClient:
        return _FAKES.setdefault(self.name, FakeCasaviClient())

    @property
    def target(self) -> str:
        return "fake casavi (in memory)"

    @contextlib.contextmanager
    def get_client(self) -> Iterator[FakeCasaviClient]:  # type: ignore[override]
        yield self.client
