"""Apply the pending changeset to casavi, advancing the snapshot with every confirmed write.

Upserts go kind by kind in dependency order (properties → units → contacts → contracts), deletes in
reverse (contracts → contacts → units → properties): casavi resolves references on write (422) and
refuses to delete referenced objects (409), so one kind must be confirmed before the next starts.
Within a kind the client sends concurrently. A rejected object is reported and skipped; the rest go on.
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
from casavi_pipeline.sync.snapshot import Snapshot


class WriteClient(Protocol):
    def execute(self, operations: Iterator[Operation]) -> Iterator[WriteResult]: ...


@dataclass(frozen=True)
class Rejection:
    kind: str
    action: str
    ref_id: str
    status: int | None
    message: str  # our wording per status and the field names casavi named; never casavi's text or values


@dataclass
class SyncReport:
    mandant: str
    sent: Counter[str] = field(default_factory=Counter)  # "unit/create" → operations sent
    confirmed: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_confirmed(self) -> int:
        return sum(self.confirmed.values())

    def rejected_counts(self) -> Counter[str]:
        return Counter(f"{r.kind}/{r.action}" for r in self.rejections)


def _operations(
    snapshot: Snapshot, kind: ObjectKind, action: str, in_flight: dict[str, tuple[str, str | None]]
) -> Iterator[Operation]:
    for op in snapshot.pending_ops(kind, action):
        in_flight[op.ref_id] = (op.change, op.content_hash)
        payload = json.loads(op.payload) if op.payload is not None else None
        yield Operation(kind=kind, action=action, ref_id=op.ref_id, payload=payload)  # type: ignore[arg-type]


def apply_changeset(
    snapshot: Snapshot,
    client: WriteClient,
    *,
    on_progress: Callable[[SyncReport], None] | None = None,
    progress_every: int = 1_000,
) -> SyncReport:
    """Send the snapshot's pending operations to casavi; return what was sent, confirmed and rejected."""
    report = SyncReport(mandant=snapshot.mandant)
    started = time.monotonic()
    plan = [(kind, "upsert") for kind in api.UPSERT_ORDER] + [(kind, "delete") for kind in api.DELETE_ORDER]
    try:
        for kind, action in plan:
            in_flight: dict[str, tuple[str, str | None]] = {}
            for result in client.execute(_operations(snapshot, kind, action, in_flight)):
                op = result.operation
                change, content_hash = in_flight.pop(op.ref_id)
                label = f"{kind.value}/{change}"
                report.sent[label] += 1
                if result.ok:
                    snapshot.confirm(kind, action, op.ref_id, content_hash)
                    report.confirmed[label] += 1
                else:
                    report.rejections.append(
                        Rejection(kind.value, change, op.ref_id, result.status, str(result.error or ""))
                    )
                if on_progress and sum(report.sent.values()) % progress_every == 0:
                    on_progress(report)
    finally:
        snapshot.fold()
        report.seconds = time.monotonic() - started
    return report
