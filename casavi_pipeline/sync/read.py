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

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.settings import ALLOWED_SEPARATORS
from casavi_pipeline.state.files import StateCorruptError
from casavi_pipeline.state.listing import ReadReport, RemoteCache
from casavi_pipeline.state.snapshot import META_ADOPTED, Snapshot
from casavi_pipeline.state.store import StateStore


class Log(Protocol):
    """Where a step's lines go as they happen (Dagster's `context.log` is one)."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


def open_snapshot(store: StateStore, mandant: str, log: Log) -> Snapshot:
    """The Mandant's snapshot; an unreadable one is moved aside (never deleted) and rebuilt from casavi."""
    try:
        snapshot = store.open(mandant)
    except StateCorruptError as exc:
        log.warning(f"{exc} It is rebuilt now from a full listing of casavi.")
        snapshot = store.open(mandant)
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

    @property
    def summary(self) -> str:
        """The step's closing line: how casavi was read and how much of it is this Mandant's."""
        listing = self.listing
        how = "full" if listing.full else "reused" if listing.reused else "incremental"
        return (
            f"Mandant {self.mandant}: read casavi ({how} listing, {self.requests} requests), "
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
    max_age: dt.timedelta,
    full_every: dt.timedelta,
    log: Log,
) -> RemoteRead:
    """Refresh the listing (`full` asks for one that sees deletions) and take the snapshot's slice of it.

    `mandanten` are all configured Mandanten: the listing is shared, so it keeps the ids of each of them.
    """
    mandant = snapshot.mandant
    first_contact = snapshot.get_meta(META_ADOPTED) is None and snapshot.synced_total() == 0
    pages_before = client.stats.pages
    client.authenticate()  # every run proves the credentials, also on a night with nothing to write
    listing = cache.refresh(
        client,
        prefixes=tuple(f"{m}{s}" for m in mandanten for s in ALLOWED_SEPARATORS),
        full=full or first_contact,  # adopting needs a listing that also shows what casavi deleted
        max_age=max_age,
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
    return RemoteRead(
        mandant=mandant,
        listing=listing,
        in_slice=in_slice,
        requests=client.stats.requests,
        pages=client.stats.pages - pages_before,
        remote_counts=snapshot.remote_counts(),
        adopted=adopted,
    )
