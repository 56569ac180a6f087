"""Records casavi refuses: a warning while they are few, a failed run when they are many.

A record casavi refuses (400, 409, 422) stays out of the snapshot, so the next run's changeset sends it
again: a night is never blocked by a few bad records. Many refusals at once are not bad records but a
systematic error (a wrong model of casavi, a broken export): the run fails then. A record refused night
after night needs a person: it is escalated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from casavi_pipeline.sync.apply import Rejection

#: Reference ids named in the one-line description (all of them are in the metadata table).
IDS_IN_DESCRIPTION = 10


@dataclass(frozen=True)
class RejectionPolicy:
    max_share: float  # CASAVI_MAX_REJECTED_SHARE
    min_count: int  # CASAVI_REJECTED_MIN_COUNT: at most this many refusals never fail the run
    escalate_nights: int  # CASAVI_REJECTION_ESCALATE_NIGHTS


@dataclass(frozen=True)
class RejectionVerdict:
    rejections: list[Rejection]
    sent: int
    nights: dict[tuple[str, str], int]  # (kind, ref_id) → days refused since last accepted
    too_many: bool
    escalated: list[Rejection]
    description: str  # one line: ids, counts and what to do; never values


def _ids(rejections: list[Rejection]) -> str:
    listed = ", ".join(r.ref_id for r in rejections[:IDS_IN_DESCRIPTION])
    return listed + (
        f" and {len(rejections) - IDS_IN_DESCRIPTION} more" if len(rejections) > IDS_IN_DESCRIPTION else ""
    )


def assess(
    rejections: list[Rejection], sent: int, nights: Mapping[tuple[str, str], int], policy: RejectionPolicy
) -> RejectionVerdict:
    """Judge one sync's refusals: `sent` writes were answered, `nights` comes from the audit trail."""
    n = len(rejections)
    too_many = n > policy.min_count and n > policy.max_share * sent
    escalated = [r for r in rejections if nights.get((r.kind, r.ref_id), 0) >= policy.escalate_nights]
    if not n:
        description = f"casavi accepted all {sent} writes"
    elif too_many:
        first = rejections[0]
        named = f" (fields: {', '.join(first.fields)})" if first.fields else ""
        description = (
            f"casavi rejected {n} of {sent} writes, more than CASAVI_MAX_REJECTED_SHARE "
            f"({policy.max_share:.0%}) and CASAVI_REJECTED_MIN_COUNT ({policy.min_count}): a systematic "
            f"error, not single records (first: {first.kind} {first.ref_id} {first.status}{named}). Fix "
            "the cause, then rerun: the rejected writes are sent again"
        )
    else:
        description = (
            f"casavi rejected {n} of {sent} writes: {_ids(rejections)}; the other writes landed and these "
            "are sent again on the next run (fix the fields named in the ERP)"
        )
    if escalated and not too_many:
        description += (
            f". ESCALATED: {_ids(escalated)} rejected on {policy.escalate_nights} or more nights without being accepted, "
            "fix them in the ERP"
        )
    return RejectionVerdict(list(rejections), sent, dict(nights), too_many, escalated, description)
