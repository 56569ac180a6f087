"""Apply the pending changeset to casavi, advancing the snapshot with every confirmed write.

Upserts go kind by kind in dependency order (properties → units → contacts, each contact with its
contracts), deletes in reverse (contacts → units → properties): casavi resolves references on write (422) and
refuses to delete referenced objects (409), so one kind must be confirmed before the next starts.
Within a kind the client sends concurrently. A rejected object is reported and skipped; the rest go on.
Every answered attempt gets a row in the audit trail (`state/audit.py`) before it is confirmed.
If casavi becomes unavailable, what was confirmed stays recorded and the error propagates: the next
attempt resumes with the pending operations that are left.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import Operation, WriteResult
from casavi_pipeline.state.audit import Attempt
from casavi_pipeline.state.diff import changed_fields
from casavi_pipeline.state.snapshot import Snapshot

#: The pending action of a property's second PUT when it drops a street (`changeset.stage_street_moves`).
SETTLE = "settle"


class WriteClient(Protocol):
    def execute(self, operations: Iterator[Operation]) -> Iterator[WriteResult]: ...

    def get_object(self, kind: ObjectKind, ref_id: str) -> dict | None: ...


@dataclass(frozen=True)
class Rejection:
    kind: str
    action: str
    ref_id: str
    status: int | None
    message: str  # our wording per status and the field names casavi named; never casavi's text or values
    fields: tuple[str, ...] = ()  # the field names casavi named (names only)


@dataclass(frozen=True)
class ModelMismatch:
    """casavi stored something other than what we sent: our model of its write side is wrong here."""

    kind: str
    ref_id: str
    fields: tuple[str, ...]  # casavi field names that differ (never their values: personal data)
    stopped: tuple[str, ...]  # the kinds whose writes were stopped because of it

    @property
    def reason(self) -> str:
        return (
            f"casavi stored {self.kind} {self.ref_id} differently from what was sent (fields: "
            f"{', '.join(self.fields)}): our model of casavi's write API is wrong for this account. "
            f"Writes of {', '.join(self.stopped)} were stopped; align casavi_pipeline/casavi/api.py with "
            "the account's OpenAPI spec (docs/connecting-to-casavi.md), then rerun."
        )


@dataclass
class SyncReport:
    mandant: str
    sent: Counter[str] = field(default_factory=Counter)  # "unit/create" → operations sent
    confirmed: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)
    mismatches: list[ModelMismatch] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)  # kinds whose first write was read back and matched
    deleted: list[tuple[ObjectKind, str]] = field(default_factory=list)  # deletes casavi confirmed
    seconds: float = 0.0

    @property
    def total_confirmed(self) -> int:
        return sum(self.confirmed.values())

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    def rejected_counts(self) -> Counter[str]:
        return Counter(f"{r.kind}/{r.action}" for r in self.rejections)


@dataclass(frozen=True)
class _InFlight:
    change: str  # create, update, delete or settle
    content_hash: str | None
    fields: tuple[str, ...]  # an update's changed field names, for the audit trail


def _operations(
    snapshot: Snapshot, kind: ObjectKind, action: str, in_flight: dict[str, _InFlight]
) -> Iterator[Operation]:
    for op in snapshot.pending_ops(kind, action):
        names = changed_fields(op.payload, op.synced_payload) if op.change in ("update", SETTLE) else ""
        in_flight[op.ref_id] = _InFlight(op.change, op.content_hash, tuple(filter(None, names.split(", "))))
        payload = json.loads(op.payload) if op.payload is not None else None
        sent = "upsert" if action == SETTLE else action  # a settling write is a PUT like any other
        yield Operation(kind=kind, action=sent, ref_id=op.ref_id, payload=payload)  # type: ignore[arg-type]


def differing_fields(kind: ObjectKind, sent: dict, read: dict) -> tuple[str, ...]:
    """casavi field names whose value as read back (normalised) differs from what was sent."""
    stored = api.to_payload(kind, api.record_from_read(kind, read))
    normalised_sent = api.to_payload(kind, api.record_from_read(kind, sent))
    return tuple(name for name in normalised_sent if stored.get(name) != normalised_sent.get(name))


def _dependents(kind: ObjectKind) -> set[ObjectKind]:
    """The kind and every kind whose objects reference it (transitively): they cannot be written safely."""
    stopped = {kind}
    while True:
        more = {ref.kind for ref in api.REFERENCES if ref.target in stopped} - stopped
        if not more:
            return stopped
        stopped |= more


def apply_changeset(
    snapshot: Snapshot,
    client: WriteClient,
    *,
    report: SyncReport | None = None,
    verify: bool = True,
    on_progress: Callable[[SyncReport], None] | None = None,
    progress_every: int = 1_000,
    run_id: str = "-",
) -> SyncReport:
    """Send the snapshot's pending operations to casavi; return what was sent, confirmed and rejected.

    With `verify`, the first upsert of each kind is sent alone and read back (`GET`, ≤ 4 extra requests):
    if casavi stored something else, the model of casavi in `casavi/api.py` is wrong for this account,
    and that kind's writes (and those of kinds referencing it) stop before thousands go wrong.
    Pass `report` to keep what was sent and confirmed when casavi fails half-way (the error propagates).
    `run_id` names the run in the audit trail.
    """
    report = report if report is not None else SyncReport(mandant=snapshot.mandant)
    started = time.monotonic()
    stopped: set[ObjectKind] = set()
    # A property that drops a street is settled after its units moved away or were deleted (see
    # `changeset.stage_street_moves`), and before properties are deleted.
    deletes = [(kind, "delete") for kind in api.DELETE_ORDER]
    settle_at = api.DELETE_ORDER.index(ObjectKind.PROPERTY)
    plan = [
        *((kind, "upsert") for kind in api.UPSERT_ORDER),
        *deletes[:settle_at],
        (ObjectKind.PROPERTY, SETTLE),
        *deletes[settle_at:],
    ]

    def attempt(kind: ObjectKind, result: WriteResult, sent: _InFlight) -> None:
        change = "update" if sent.change == SETTLE else sent.change  # a settling PUT updates the property
        refused = result.error.fields if result.error else ()
        snapshot.record_attempt(
            Attempt(run_id, snapshot.mandant, kind.value, result.operation.ref_id, change,
                    result.status, sent.fields, refused)
        )  # fmt: skip

    def record(kind: ObjectKind, result: WriteResult, in_flight: dict[str, _InFlight]) -> None:
        op = result.operation
        sent = in_flight.pop(op.ref_id)
        label = f"{kind.value}/{sent.change}"
        report.sent[label] += 1
        attempt(kind, result, sent)
        if result.ok:
            snapshot.confirm(kind, op.action, op.ref_id, sent.content_hash)
            report.confirmed[label] += 1
            if op.action == "delete":
                report.deleted.append((kind, op.ref_id))
        else:
            report.rejections.append(
                Rejection(kind.value, sent.change, op.ref_id, result.status, str(result.error or ""),
                          result.error.fields if result.error else ())
            )  # fmt: skip
        if on_progress and report.total_sent % progress_every == 0:
            on_progress(report)

    try:
        for kind, action in plan:
            if kind in stopped:
                continue
            in_flight: dict[str, _InFlight] = {}
            operations = _operations(snapshot, kind, action, in_flight)
            if verify and action == "upsert":  # (a settling PUT was verified as an upsert already)
                # Probe: one write at a time until casavi confirms one, then read that one back.
                while (probe := next(operations, None)) is not None:
                    (result,) = list(client.execute(iter([probe])))
                    mismatch = _verify(client, kind, probe) if result.ok else ()
                    if not mismatch:
                        record(kind, result, in_flight)
                        if result.ok:
                            report.verified.append(kind.collection)
                            break
                        continue  # rejected: the next one is the probe
                    # Not confirmed: the snapshot must not claim casavi holds what was sent.
                    sent = in_flight.pop(probe.ref_id)
                    attempt(kind, result, sent)
                    report.sent[f"{kind.value}/{sent.change}"] += 1
                    stopped |= _dependents(kind)
                    report.mismatches.append(
                        ModelMismatch(
                            kind.collection, probe.ref_id, mismatch,
                            tuple(k.collection for k in api.UPSERT_ORDER if k in stopped),
                        )
                    )  # fmt: skip
                    break
                if kind in stopped:
                    continue
            for result in client.execute(operations):
                record(kind, result, in_flight)
    finally:
        snapshot.fold()
        report.seconds = time.monotonic() - started
    return report


def _verify(client: WriteClient, kind: ObjectKind, sent: Operation) -> tuple[str, ...]:
    read = client.get_object(kind, sent.ref_id)
    if read is None:
        return (api.ID_FIELD,)  # confirmed, yet not there: nothing of it was stored as sent
    return differing_fields(kind, sent.payload or {}, read)
