"""The account-wide listing cache, with a scripted casavi: scope, skipped reads, high-water marks."""

from __future__ import annotations

import datetime as dt

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.reader import CasaviReader
from casavi_pipeline.settings import SyncPolicySettings
from casavi_pipeline.state.listing import ReadReport, RemoteCache
from casavi_pipeline.sync.read import filled_with


def refresh(
    cache: RemoteCache,
    casavi: object,
    prefixes: tuple[str, ...],
    *,
    now: dt.datetime,
    full: bool = False,
    max_age: dt.timedelta = dt.timedelta(minutes=10),
    full_every: dt.timedelta = dt.timedelta(days=7),
) -> ReadReport:
    """The listing refreshed through the casavi reader, as `sync.read` does (defaults of the tests)."""
    return cache.refresh(
        CasaviReader(casavi, prefixes), full=full, why_full="asked for", max_age=max_age, full_every=full_every, now=now
    )


PREFIXES = ("0001-",)
T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def unit(ref: str, modified: dt.datetime, **changes) -> dict:
    body = {"id": ref, "propertyId": "0001-1", "address": "Weg 1", "name": "Wohnung", "number": "1",
            "usage": "PRIVATE", "area": 50.0, "rooms": 2.0, "internalId": 7,
            "modified": modified.isoformat().replace("+00:00", "Z")}  # fmt: skip
    return {**body, **changes}


class Casavi:
    """Lists what `objects` holds per kind; remembers the `modifiedAfter` of every listing."""

    def __init__(self, units: list[dict]) -> None:
        self.units = units
        self.asked: list[dt.datetime | None] = []

    def list_objects(self, kind, *, page_size=500, modified_after=None):
        if kind is not ObjectKind.UNIT:
            return iter(())
        self.asked.append(modified_after)
        return iter(
            u for u in self.units if modified_after is None or u["modified"] > modified_after.isoformat()
        )


def test_only_configured_mandanten_are_kept_and_unreadable_reads_are_skipped_not_fatal(tmp_path):
    casavi = Casavi([
        unit("0001-1-01-1", T0),
        unit("0001-1-01-2", T0, area="ca. 50"),  # made by hand: our model cannot hold it
        unit("0002-1-01-1", T0),  # another Mandant's, not configured here
        {"name": "ohne Referenz-ID", "internalId": 9},
    ])  # fmt: skip
    report = refresh(RemoteCache(tmp_path), casavi, PREFIXES, now=T0)
    assert report.full and report.listed["unit"] == 4
    assert report.skipped["unit"] == 1 and report.changed["unit"] == 1
    assert report.account_objects == 1


def test_the_next_incremental_read_starts_before_the_last_listing_began(tmp_path):
    """An object changed on an early page while a listing ran has an older stamp than later pages:
    the next read must start before the listing began, not after the newest stamp seen."""
    cache = RemoteCache(tmp_path)
    casavi = Casavi([unit("0001-1-01-1", T0 + dt.timedelta(hours=5))])  # a stamp in the future of the read
    refresh(cache, casavi, PREFIXES, now=T0)
    cache.mark_written(T0 + dt.timedelta(hours=6))  # forces the next read to list again
    refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(hours=7))
    since = casavi.asked[-1]
    assert since is not None and since < dt.datetime.now(dt.UTC)  # not after the newest stamp (T0 + 5 h)


def test_another_set_of_mandanten_needs_a_full_listing(tmp_path):
    cache = RemoteCache(tmp_path)
    casavi = Casavi([unit("0001-1-01-1", T0)])
    refresh(cache, casavi, PREFIXES, now=T0)
    again = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(minutes=1))
    assert again.reused
    wider = refresh(cache, casavi, (*PREFIXES, "0420-"), now=T0 + dt.timedelta(minutes=2))
    assert wider.full and not wider.reused


def test_an_unreadable_cache_is_moved_aside_and_listed_again(tmp_path):
    cache = RemoteCache(tmp_path)
    casavi = Casavi([unit("0001-1-01-1", T0)])
    refresh(cache, casavi, PREFIXES, now=T0)
    cache.path.write_bytes(cache.path.read_bytes()[:5000])
    report = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(minutes=1))
    assert report.full and report.account_objects == 1
    assert list(tmp_path.glob("casavi_remote.duckdb.corrupt-*"))


def test_with_the_shipped_default_every_nightly_run_lists_in_full_and_sees_deletions(tmp_path):
    """A unit deleted by hand in casavi's UI is seen the next night, not up to a week later."""
    nightly_full = dt.timedelta(days=SyncPolicySettings.model_fields["full_read_every_days"].default)
    cache = RemoteCache(tmp_path)
    casavi = Casavi([unit("0001-1-01-1", T0), unit("0001-1-01-2", T0)])
    refresh(cache, casavi, PREFIXES, now=T0, full_every=nightly_full)
    later = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(hours=1), full_every=nightly_full)
    assert not later.full  # the other Mandanten of the same night: no second full listing
    casavi.units.pop()  # deleted by hand during the day
    night = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(days=1), full_every=nightly_full)
    assert night.full and night.removed["unit"] == 1 and night.account_objects == 1


def test_a_listing_of_an_earlier_casavi_model_is_dropped_and_listed_anew(tmp_path):
    import duckdb

    cache = RemoteCache(tmp_path)
    casavi = Casavi([unit("0001-1-01-1", T0)])
    refresh(cache, casavi, PREFIXES, now=T0)
    with duckdb.connect(str(cache.path)) as con:  # as revision 1 left it: no revision recorded
        con.execute("DELETE FROM meta WHERE key = 'model_revision'")
    report = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(minutes=1))
    assert report.full and not report.reused and report.changed["unit"] == 1


def test_a_first_contact_adopts_under_the_separator_the_account_was_filled_with():
    assert filled_with({"-": 0, "_": 12, ".": 3}, "-") == "_"  # filled by another tool: its separator
    assert filled_with({"-": 2, "_": 12}, "-") == "-"  # ours are there: the configured one stays
    assert filled_with({"-": 0, "_": 0}, "-") == "-"  # nothing of the Mandant yet


def test_casavi_links_are_kept_beside_the_body_and_never_make_an_object_look_changed(tmp_path):
    cache = RemoteCache(tmp_path)
    casavi = Casavi([unit("0001-1-01-1", T0, appLink=" https://app.test/units/7 "), unit("0001-1-01-2", T0)])
    refresh(cache, casavi, PREFIXES, now=T0)
    import duckdb

    def stored() -> dict:
        with duckdb.connect(str(cache.path), read_only=True) as con:
            return dict(con.execute("SELECT ref_id, [content_hash, app_link] FROM objects").fetchall())

    first = stored()
    assert first["0001-1-01-1"][1] == "https://app.test/units/7" and first["0001-1-01-2"][1] is None
    casavi.units[1]["appLink"] = "https://app.test/units/8"  # casavi starts to return it
    cache.mark_written(T0 + dt.timedelta(minutes=1))
    again = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(minutes=2), full=True)
    assert again.changed["unit"] == 0  # a link is no change of the body
    assert stored()["0001-1-01-2"] == [first["0001-1-01-2"][0], "https://app.test/units/8"]  # same hash


def test_a_listing_kept_before_links_is_listed_in_full_once_so_every_object_gets_its_link(tmp_path):
    import duckdb

    cache = RemoteCache(tmp_path)
    casavi = Casavi([unit("0001-1-01-1", T0 - dt.timedelta(days=3), appLink="https://app.test/units/7")])
    refresh(cache, casavi, PREFIXES, now=T0)
    with duckdb.connect(str(cache.path)) as con:  # as the listing was before links were kept
        con.execute("ALTER TABLE objects DROP COLUMN app_link")
        con.execute("DELETE FROM meta WHERE key = 'app_links'")
    cache.mark_written(T0 + dt.timedelta(minutes=1))
    report = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(minutes=2))
    assert report.full and casavi.asked[-1] is None  # not only what changed since the last listing
    assert "without casavi's links (appLink)" in report.why
    with duckdb.connect(str(cache.path), read_only=True) as con:
        assert con.execute("SELECT app_link FROM objects").fetchall() == [("https://app.test/units/7",)]
    cache.mark_written(T0 + dt.timedelta(minutes=3))
    later = refresh(cache, casavi, PREFIXES, now=T0 + dt.timedelta(minutes=4))
    assert not later.full  # once
