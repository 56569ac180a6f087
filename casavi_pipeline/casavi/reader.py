"""Reading casavi for the account's listing: every object of a kind as casavi returns it, page by page,
normalised to the record the mapping would produce for the same data (`api.record_from_read`), with what
the state keeps beside the body (casavi's internal id, its `modified` stamp, its `appLink`). The state
stores what this yields and talks to nobody (`state/listing.py`).

A read is compared as read: a value casavi holds that we would not send (a unit usage its UI sets, an
empty required field) is just a difference. Only a read our model cannot hold at all (a number field
that is text, say: `api.unholdable_fields`) is skipped and counted instead of stopping the read: it then
counts as missing. Objects that are not ours — another Mandant's, or made by hand without a reference id
of ours — are passed over: never normalised, never kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, Protocol

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind

#: Keys of a record beside its domain fields: what casavi says about the object, not its body.
INTERNAL_ID, MODIFIED, APP_LINK = "_internal_id", "_modified", "_app_link"


class Lister(Protocol):
    def list_objects(
        self, kind: ObjectKind, *, page_size: int = ..., modified_after: dt.datetime | None = ...
    ) -> Iterator[dict[str, Any]]: ...


class KindRead:
    """One kind's listing, iterated once: the records that are ours, and what was counted on the way."""

    def __init__(self, lister: Lister, kind: ObjectKind, since: dt.datetime | None, prefixes: tuple[str, ...]) -> None:
        self._lister, self.kind, self._since, self._prefixes = lister, kind, since, prefixes
        self.listed = 0  # objects casavi returned
        self.skipped = 0  # ours, but not holdable by our model
        self.newest: dt.datetime | None = None  # the newest `modified` stamp seen

    def __iter__(self) -> Iterator[dict[str, Any]]:
        kind = self.kind
        for obj in self._lister.list_objects(kind, page_size=api.MAX_PAGE_SIZE, modified_after=self._since):
            self.listed += 1
            stamp = utc(obj.get(api.MODIFIED_FIELD))
            if stamp is not None and (self.newest is None or stamp > self.newest):
                self.newest = stamp
            reference = obj.get(api.ID_FIELD)
            if not isinstance(reference, str) or not reference.startswith(self._prefixes):
                continue
            record = api.record_from_read(kind, obj)
            if api.unholdable_fields(api.FIELD_RULES[kind], api.to_payload(kind, record)):
                self.skipped += 1
                continue
            record[INTERNAL_ID] = obj.get(api.INTERNAL_ID_FIELD)
            record[MODIFIED] = obj.get(api.MODIFIED_FIELD)
            record[APP_LINK] = api.app_link_of(obj)
            yield record


class CasaviReader:
    """What the listing reads from casavi: the objects whose reference id starts with one of `prefixes`
    (the configured Mandanten with any separator)."""

    def __init__(self, lister: Lister, prefixes: tuple[str, ...]) -> None:
        self._lister, self.prefixes = lister, prefixes

    def read(self, kind: ObjectKind, since: dt.datetime | None) -> KindRead:
        """One kind, changed after `since` (None: all of it)."""
        return KindRead(self._lister, kind, since, self.prefixes)


def utc(stamp: object) -> dt.datetime | None:
    """casavi's ISO UTC stamp as an aware datetime; None when absent or not a stamp."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(dt.UTC)
    except ValueError:
        return None
