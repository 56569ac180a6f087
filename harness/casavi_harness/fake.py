"""An in-memory casavi with the client's interface, for unit tests of the sync without HTTP, and the
Dagster resource that hands it out (the fake beside `casavi_pipeline`'s real `HttpCasaviResource`).

It applies the sandbox's model of casavi (`casavi_sandbox.model`: the same functions, not a copy, with
the sandbox's own field rules, not the adapter's): PUT refused with 400, 422 or 409, DELETE with 404 or
409, reads with `internalId`, `modified`, `appLink` (to `APP_ROOT`), the `units` of each property
address and `modifiedAfter`. So an in-process run meets the same independent judge as an end-to-end one. Its reads are those of a client that sends each kind's `read_params`
(contacts: `includeInactiveContracts=true`), so a contact's ended contracts are in them. A refusal is
reported as the HTTP client reports it: our wording for the status, and only field names.
End-to-end tests use the sandbox process instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import Field

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import Operation, WriteResult
from casavi_pipeline.casavi.errors import CasaviRejectedError, CasaviUnavailableError
from casavi_pipeline.casavi.transport import ClientStats
from casavi_pipeline.defs.resources import CasaviResource
from casavi_sandbox.contract import Kind, utc_timestamp
from casavi_sandbox.model import Problem, check_delete, check_put, links, read_shape

_UNIT_PROPERTY = api.rule_of(ObjectKind.UNIT, "property_id").casavi
_UNIT_ADDRESS = api.rule_of(ObjectKind.UNIT, "address").casavi
#: The host the fake's `appLink`s point to (nothing answers there).
APP_ROOT = "https://fake-casavi.invalid"
#: `includeInactiveContracts` as the client's reads of each kind send it.
_INACTIVE_CONTRACTS = {
    kind: kind.read_params.get(api.INCLUDE_INACTIVE_CONTRACTS_PARAM) == "true" for kind in ObjectKind
}


class FakeCasaviClient:
    def __init__(self, *, reject_ids: Iterable[str] = (), fail_after_writes: int | None = None) -> None:
        #: kind → reference id → the body as stored (as the sandbox's `state()` shows it)
        self.objects: dict[ObjectKind, dict[str, dict[str, Any]]] = {kind: {} for kind in ObjectKind}
        self.requests: list[tuple[str, ObjectKind, str]] = []
        self.reject_ids = set(reject_ids)
        self.fail_after_writes = fail_after_writes
        self.stats = ClientStats()
        self._meta: dict[tuple[ObjectKind, str], tuple[int, str]] = {}  # (internalId, modified)
        self._internal_ids = itertools.count(1)

    def __enter__(self) -> FakeCasaviClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def authenticate(self, *, force: bool = False) -> None:
        self.stats.count("authentications")

    def seed(self, kind: ObjectKind, body: dict[str, Any]) -> None:
        """Store an object as if it had been there before (an import, Aareon Connect): no request counted."""
        ref_id = str(body[api.ID_FIELD])
        self.objects[kind][ref_id] = body
        self._meta[kind, ref_id] = (next(self._internal_ids), utc_timestamp(time.time()))

    # --- the model's view of the account (`casavi_sandbox.model.Account`, in the sandbox's kinds) ------
    def payload(self, kind: Kind, ref_id: str) -> Mapping[str, Any] | None:
        return self.objects[ObjectKind(kind.value)].get(ref_id)

    def units_at(self, property_ids: Sequence[str]) -> dict[tuple[str, str], list[str]]:
        wanted = set(property_ids)
        found: dict[tuple[str, str], list[str]] = {}
        for ref_id, unit in self.objects[ObjectKind.UNIT].items():
            if unit.get(_UNIT_PROPERTY) in wanted:
                found.setdefault((unit[_UNIT_PROPERTY], unit.get(_UNIT_ADDRESS)), []).append(ref_id)
        return found

    def referrers(self, kind: Kind, ref_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for source in ObjectKind:
            for obj in self.objects[source].values():
                if (kind.collection, ref_id) in links(Kind(source.value), obj):
                    counts[source.collection] = counts.get(source.collection, 0) + 1
        return counts

    # --- reads ---------------------------------------------------------------------------------------
    def _read(self, kind: ObjectKind, ref_id: str) -> dict[str, Any]:
        payload = self.objects[kind][ref_id]
        internal_id, modified = self._meta[kind, ref_id]
        return read_shape(
            Kind(kind.value),
            payload,
            internal_id=internal_id,
            modified=modified,
            units_at=self.units_at([ref_id]) if kind is ObjectKind.PROPERTY else {},
            inactive_contracts=_INACTIVE_CONTRACTS[kind],
            unmanaged={},
            app_root=APP_ROOT,
        )

    def list_objects(
        self,
        kind: ObjectKind,
        *,
        page_size: int = api.MAX_PAGE_SIZE,
        modified_after: dt.datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every object of the kind (changed after `modified_after` if given), as one page."""
        self.stats.count("pages")
        after = utc_timestamp(modified_after.timestamp()) if modified_after is not None else None
        for ref_id in list(self.objects[kind]):
            if after is None or self._meta[kind, ref_id][1] > after:
                yield self._read(kind, ref_id)

    def get_object(self, kind: ObjectKind, ref_id: str) -> dict[str, Any] | None:
        return self._read(kind, ref_id) if ref_id in self.objects[kind] else None

    # --- writes --------------------------------------------------------------------------------------
    def _rejected(self, op: Operation, problem: Problem) -> WriteResult:
        call = f"{'PUT' if op.action == 'upsert' else 'DELETE'} {op.kind.collection_path}/{{id}}"
        fields = dict.fromkeys(e.field for e in problem.errors or [] if api.is_known_field_path(e.field))
        error = CasaviRejectedError(
            api.error_wording(problem.status),
            call=call,
            ref_id=op.ref_id,
            status=problem.status,
            fields=fields,
        )
        return WriteResult(op, ok=False, status=problem.status, error=error)

    def _write(self, op: Operation) -> WriteResult:
        writes = sum(1 for method, _, _ in self.requests if method in ("PUT", "DELETE"))
        if self.fail_after_writes is not None and writes >= self.fail_after_writes:
            raise CasaviUnavailableError("fake casavi is down", ref_id=op.ref_id, status=503)
        self.requests.append(("PUT" if op.action == "upsert" else "DELETE", op.kind, op.ref_id))
        self.stats.answered(200)
        store = self.objects[op.kind]
        try:
            if op.ref_id in self.reject_ids:
                raise Problem(api.STATUS_INVALID, "rejected by the fake", [])
            if op.action == "delete":
                check_delete(Kind(op.kind.value), op.ref_id, self)
                del store[op.ref_id], self._meta[op.kind, op.ref_id]
                return WriteResult(op, ok=True, status=api.STATUS_DELETED)
            payload = check_put(Kind(op.kind.value), op.ref_id, op.payload or {}, self)
        except Problem as problem:
            if op.action == "delete" and problem.status == api.STATUS_NOT_FOUND:
                return WriteResult(op, ok=True, status=api.STATUS_NOT_FOUND)  # as the client counts it
            return self._rejected(op, problem)
        created = op.ref_id not in store
        if created or store[op.ref_id] != payload:  # an identical body is no change: `modified` stays
            internal_id = next(self._internal_ids) if created else self._meta[op.kind, op.ref_id][0]
            self._meta[op.kind, op.ref_id] = (internal_id, utc_timestamp(time.time()))
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
    def get_client(self, on_wait: Callable[[str], None] | None = None) -> Iterator[FakeCasaviClient]:  # type: ignore[override]
        yield self.client  # never fails, so never waits
