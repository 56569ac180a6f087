"""Read casavi back for one Mandant: refresh the account's listing, take the Mandant's slice, adopt.

The changeset is the difference between the ERP and what casavi holds, so every sync starts from a
fresh enough picture of casavi. A snapshot that never met casavi (new, lost, or unreadable and moved
aside) adopts what casavi already holds as synced: otherwise a filled account would get every object
created a second time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from casavi_pipeline import account
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
from casavi_pipeline.state.diff import ForeignValues, foreign_values
from casavi_pipeline.state.files import StateCorruptError
from casavi_pipeline.state.listing import ReadReport, RemoteCache
from casavi_pipeline.state.snapshot import META_ACCOUNT, META_ADOPTED, Snapshot
from casavi_pipeline.state.store import StateStore, known_accounts


class Log(Protocol):
    """Where a step's lines go as they happen (Dagster's `context.log` is one)."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


def open_snapshot(store: StateStore, mandant: str, log: Log) -> Snapshot:
    """The Mandant's snapshot in the account's state; an unreadable one is moved aside (never deleted) and
    rebuilt from casavi. Says so when this is the first run against the account here."""
    for line in store.upgrade():
        log.warning(line)
    if store.is_new() and store.account is not None:
        others = [a for a in known_accounts(store.root, store.url) if a != store.account]
        log.warning(
            f"Mandant {mandant}: first run against {account.label(store.account)} (the API key's account) with "
            f"this state ({store.where}): it reads what the account holds, adopts it and sends only what is "
            "missing there"
            + (f"; the state of {len(others)} other account(s) here is kept untouched" if others else "")
        )
    try:
        snapshot = store.open(mandant)
    except StateCorruptError as exc:
        log.warning(f"{exc} It is rebuilt now from a full listing of casavi.")
        snapshot = store.open(mandant)
    _check_owner(snapshot, store)
    if snapshot.refetched:
        log.warning(
            f"Mandant {mandant}: the local working copy of the snapshot ({snapshot.path}) was unreadable; it "
            "was deleted and fetched again from the state database, where the state is intact. Nothing lost."
        )
    if snapshot.dropped_journal_lines:
        log.warning(
            f"Mandant {mandant}: {snapshot.dropped_journal_lines} torn line(s) of the journal of confirmed "
            "writes dropped (a crash or a full disk); those writes are sent again, which is harmless."
        )
    if snapshot.rebuilt_for_model:
        log.info(
            f"Mandant {mandant}: the state was kept for casavi model revision {snapshot.rebuilt_for_model}; "
            f"it is rebuilt for revision {api.MODEL_REVISION} from a full listing of casavi (adopted, not re-sent)."
        )
    return snapshot


def _check_owner(snapshot: Snapshot, store: StateStore) -> None:
    """A snapshot belongs to the account it was made for: one copied into another account's folder by
    hand would claim objects that account does not hold (and send nothing), so it is refused."""
    if store.account is None:
        return
    owner = snapshot.get_meta(META_ACCOUNT)
    if owner is None:
        snapshot.set_meta(META_ACCOUNT, store.account)
    elif owner != store.account:
        snapshot.close()
        raise StateOwnerError(
            f"The snapshot of Mandant {snapshot.mandant} at {store.where} was made for {account.label(owner)}, "
            f"not for {account.label(store.account)} (the API key's): it was copied or moved by hand. Move it "
            "back to the folder of its account, or delete it (the next run then adopts what casavi holds)."
        )


class StateOwnerError(RuntimeError):
    """A snapshot of another casavi account is where this account's state should be."""


@dataclass(frozen=True)
class RemoteRead:
    """What one read of casavi did for a Mandant (ids and counts only)."""

    mandant: str
    listing: ReadReport
    in_slice: int  # the Mandant's objects in casavi (ids with its prefix, any separator)
    requests: int  # the client's requests so far, the login included
    pages: int  # pages listed by this read
    remote_counts: dict[str, int]  # kind → the Mandant's objects in casavi
    adopted: dict[str, int]  # kind → objects adopted as synced (first contact only)
    #: values casavi holds outside our model (a unit's usage Stellplatz), kept as casavi holds them
    foreign: ForeignValues

    @property
    def how(self) -> str:
        """Which kind of listing the read used and why, e.g. "full listing (CASAVI_REPAIR_DRIFT: …)"."""
        listing = self.listing
        kind = "full" if listing.full else "reused" if listing.reused else "incremental"
        return f"{kind} listing ({listing.why})" if listing.why else f"{kind} listing"

    @property
    def summary(self) -> str:
        """The step's closing line: how casavi was read and how much of it is this Mandant's."""
        return (
            f"Mandant {self.mandant}: read casavi: {self.how}, {self.requests} requests; "
            f"{self.in_slice} objects with its prefix"
        )


def filled_with(counts: dict[str, int], configured: str) -> str:
    """The separator an account was filled with (separator → objects with the Mandant's prefix).

    An account filled with another separator is adopted under that one, so the separator guard stops the
    run (or migrates, when allowed) instead of creating every object a second time.
    """
    if not counts.get(configured) and any(counts.values()):
        return max(counts, key=lambda s: counts[s])
    return configured


def read_remote(
    snapshot: Snapshot,
    cache: RemoteCache,
    client: CasaviClient,
    *,
    mandanten: Sequence[str],
    separator: str,
    full: bool,
    repair_drift: bool,
    max_age: dt.timedelta,
    full_every: dt.timedelta,
    log: Log,
) -> RemoteRead:
    """Refresh the listing and take the snapshot's slice of it.

    `full` asks for a listing that sees deletions in casavi; `repair_drift` for a fresh one, whatever the
    last listing was (a person who deleted a unit by hand an hour ago, and turned repair on to undo it
    now, must not wait for tomorrow's full listing). `mandanten` are all configured Mandanten: the listing
    is shared, so it keeps the ids of each of them.
    """
    mandant = snapshot.mandant
    first_contact = snapshot.get_meta(META_ADOPTED) is None and snapshot.synced_total() == 0
    pages_before = client.stats.pages
    client.authenticate()  # every run proves the credentials, also on a night with nothing to write
    if repair_drift:
        why_full = "CASAVI_REPAIR_DRIFT: what was changed or deleted in casavi by hand is repaired now"
    elif first_contact:  # adopting needs a listing that also shows what casavi deleted
        why_full = "this Mandant's first contact with casavi: what casavi holds is adopted"
    else:
        why_full = "asked for by the run's config (full)"
    listing = cache.refresh(
        client,
        prefixes=tuple(f"{m}{s}" for m in mandanten for s in ALLOWED_SEPARATORS),
        full=full or first_contact or repair_drift,
        why_full=why_full,
        max_age=dt.timedelta(0) if repair_drift else max_age,
        full_every=full_every,
    )
    in_slice = cache.take_slice(snapshot, ALLOWED_SEPARATORS)
    for moved in listing.moved_aside:
        log.warning(
            f"The casavi listing was unreadable; it was moved to {moved} (kept for diagnosis) and "
            "rebuilt by a full listing. Nothing needs repair."
        )
    adopted: dict[str, int] = {}
    if first_contact:
        counts = cache.prefix_counts({s: f"{mandant}{s}" for s in ALLOWED_SEPARATORS})
        separator = filled_with(counts, separator)
        adopted = snapshot.adopt_remote(separator if in_slice else None)
        if in_slice:
            log.info(
                f"Mandant {mandant}: casavi already holds {in_slice} objects of this Mandant (ids "
                f"'{mandant}{separator}…'); adopted as synced, so only real differences are sent ({adopted})"
            )
    foreign = foreign_values(snapshot)
    for line in foreign.lines():
        log.info(line)
    return RemoteRead(
        mandant=mandant,
        listing=listing,
        in_slice=in_slice,
        requests=client.stats.requests,
        pages=client.stats.pages - pages_before,
        remote_counts=snapshot.remote_counts(),
        adopted=adopted,
        foreign=foreign,
    )
