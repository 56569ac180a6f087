"""Guards that stop a sync before it writes: mass deletions and a changed ID separator.

Both protect casavi from a mistake upstream. A truncated export looks exactly like "all those objects
were removed", and a new separator turns every reference id into a new one; either would delete what
residents and managers rely on. They run as blocking asset checks on the changeset and again inside the
sync itself, so materializing the sync alone cannot bypass them.

Switching `CASAVI_SYNC_RULE` changes the scope (under `last-name` vacant units, their owners and
properties with nothing rented leave casavi): it passes the mass-deletion guard like any other change,
and the guard's message names the rule in force and, when it changed since the last sync, the switch.

The mass-deletion guard judges what leaves the scope, whatever CASAVI_DELETIONS does with it (deleted,
left waiting for a person, kept): a truncated export is a mistake even when nothing is deleted yet, for
the pending deletions it would list are one careless `--approve-all` away from casavi, and contacts
would still lose their contracts (`mass_deletion_guard` says what it counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from casavi_pipeline.mapping.scope import SyncRule
from casavi_pipeline.state.deletions import Deletions
from casavi_pipeline.state.diff import ChangesetSummary, summarize
from casavi_pipeline.state.snapshot import Snapshot

#: Snapshot meta: the sync rule of the last sync that passed the guards (`record_sync_rule`).
META_SYNC_RULE = "sync_rule"


@dataclass(frozen=True)
class GuardPolicy:
    """What the guards allow: the user's settings, as the sync sees them."""

    separator: str
    sync_rule: SyncRule = SyncRule.EMAIL
    deletions: Deletions = Deletions.APPROVE
    max_delete_share: float = 0.10
    delete_guard_min_count: int = 0
    allow_mass_delete: bool = False
    allow_separator_change: bool = False


@dataclass(frozen=True)
class GuardResult:
    passed: bool
    reason: str  # one line, for the check description and the run's failure message
    metadata: dict[str, Any] = field(default_factory=dict)


def separator_guard(
    snapshot_separator: str | None, separator: str, *, synced_total: int, allow_change: bool
) -> GuardResult:
    """Stop when the snapshot was built with another separator, unless a migration is allowed."""
    meta = {"snapshot_separator": snapshot_separator or "", "separator": separator}
    if synced_total == 0 or snapshot_separator in (None, separator):
        return GuardResult(True, f"ID separator {separator!r} matches the snapshot", meta)
    if allow_change:
        return GuardResult(
            True,
            f"ID separator changes from {snapshot_separator!r} to {separator!r} "
            "(allowed by CASAVI_ALLOW_SEPARATOR_CHANGE): every object is re-created under its new id",
            meta,
        )
    return GuardResult(
        False,
        f"CASAVI_ID_SEPARATOR is {separator!r} but casavi holds {synced_total} objects created with "
        f"{snapshot_separator!r}; changing it re-creates every object under a new id. Set it back, or set "
        "CASAVI_ALLOW_SEPARATOR_CHANGE=true to migrate.",
        meta,
    )


#: What becomes of what the guard counts, per CASAVI_DELETIONS (for its message).
_FATE = {
    Deletions.DELETE: "CASAVI_DELETIONS=delete: the sync would delete them",
    Deletions.APPROVE: "CASAVI_DELETIONS=approve: they would wait for deletion",
    Deletions.KEEP: "CASAVI_DELETIONS=keep: they would stay in casavi, no longer synced",
}


def mass_deletion_guard(
    summary: ChangesetSummary,
    *,
    max_share: float,
    min_count: int = 0,
    allow: bool = False,
    sync_rule: SyncRule = SyncRule.EMAIL,
    deletions: Deletions = Deletions.APPROVE,
    previous_rule: str | None = None,
) -> GuardResult:
    """Stop when a kind would lose more than `max_share` of its synced objects, or all of them.

    Counted per kind, whatever CASAVI_DELETIONS says (`KindChanges.guarded`):
    - objects that leave the scope in this changeset and were not already waiting for deletion from an
      earlier run. A pending deletion is counted on the night it first appears, not on every night after:
      it changes nothing in casavi while it waits, and a guard that trips every night until someone
      approves would be switched off. A run the guard stops lists nothing as pending, so the same objects
      count again the next night, until the export is fixed or the run allowed;
    - deletions no person approved (under `delete`, every deletion; approved ones were decided by id);
    - for contacts, those a PUT would strip of a contract (a truncated contract file does that first).

    Deleting at most `min_count` objects of a kind never counts as mass deletion by share. The reason
    names the sync rule in force, and the switch when `previous_rule` (the last sync's) differs.
    """
    tripped = []
    meta: dict[str, Any] = {
        "max_delete_share": max_share,
        "sync_rule": sync_rule.value,
        "deletions": deletions.value,
    }
    for kind, changes in summary.kinds.items():
        meta[f"{kind.value}/leaving"] = changes.leaving_new
        if changes.losing_contracts:
            meta[f"{kind.value}/losing_contracts"] = changes.losing_contracts
        meta[f"{kind.value}/synced"] = changes.synced
        counted = changes.guarded
        if counted == 0:
            continue
        share = counted / changes.synced if changes.synced else 1.0
        if counted >= changes.synced or (share > max_share and counted > min_count):
            losing = (
                f"; {changes.losing_contracts} of them losing contracts" if changes.losing_contracts else ""
            )
            tripped.append(f"{counted} of {changes.synced} {kind.collection} ({share:.0%}{losing})")
    rule = f"sync rule {sync_rule.value}"
    if not tripped:
        return GuardResult(True, f"no mass deletion ({rule})", meta)
    what = "; ".join(tripped)
    if allow:
        return GuardResult(True, f"mass deletion allowed by CASAVI_ALLOW_MASS_DELETE ({rule}): {what}", meta)
    if previous_rule not in (None, sync_rule.value):
        cause = (
            f"CASAVI_SYNC_RULE changed from {previous_rule} to {sync_rule.value} since the last sync, which "
            "changes what is in scope. If that is intended"
        )
    else:
        cause = "Is the export truncated? Check the export; if it is intended"
    return GuardResult(
        False,
        f"Mandant {summary.mandant} ({rule}): {what} would leave the sync ({_FATE[deletions]}), more than "
        f"the allowed {max_share:.0%}. {cause}, rerun with CASAVI_ALLOW_MASS_DELETE=true or raise "
        "CASAVI_MAX_DELETE_SHARE.",
        meta,
    )


@dataclass(frozen=True)
class GuardResults:
    """Both guards' verdicts on a Mandant's pending changeset."""

    separator: GuardResult
    mass_deletion: GuardResult

    @property
    def failures(self) -> list[GuardResult]:
        return [result for result in (self.separator, self.mass_deletion) if not result.passed]


def evaluate_guards(policy: GuardPolicy, snapshot: Snapshot) -> GuardResults:
    """Judge the snapshot's pending changeset: the one place the guard policy is applied."""
    separator = separator_guard(
        snapshot.separator,
        policy.separator,
        synced_total=snapshot.synced_total(),
        allow_change=policy.allow_separator_change,
    )
    migrating = separator.passed and snapshot.separator not in (None, policy.separator)
    deletion = mass_deletion_guard(
        summarize(snapshot),
        max_share=policy.max_delete_share,
        min_count=policy.delete_guard_min_count,
        # A separator migration deletes every old id by design; the explicit setting covers it.
        allow=policy.allow_mass_delete or migrating,
        sync_rule=policy.sync_rule,
        deletions=policy.deletions,
        previous_rule=snapshot.get_meta(META_SYNC_RULE),
    )
    return GuardResults(separator=separator, mass_deletion=deletion)


def record_sync_rule(policy: GuardPolicy, snapshot: Snapshot) -> None:
    """Remember the rule of a sync that passed the guards, so a later switch is named as the cause."""
    snapshot.set_meta(META_SYNC_RULE, policy.sync_rule.value)
