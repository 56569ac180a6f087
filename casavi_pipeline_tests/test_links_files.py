"""The links files of one Mandant (`casavi_pipeline.links`), from a real snapshot: which rows, the dialect,
and that a file is replaced atomically and only when its bytes change."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.links import COLUMNS, write_links
from casavi_pipeline.state.snapshot import Snapshot

ODD_LINK = 'https://app.test/x;y"z\nw'  # a separator, a quote and a line break: quoted in the CSV


def mapped() -> dict[ObjectKind, pd.DataFrame]:
    """The mapped frames as the mapping makes them: `id` and the ERP numbers (other columns omitted)."""
    return {
        ObjectKind.PROPERTY: pd.DataFrame({"id": ["0001-001"], "we_nr": ["001"], "name": ["Haus"]}),
        ObjectKind.UNIT: pd.DataFrame(
            {
                "id": ["0001-001-01-0002", "0001-001-01-0001"],
                "we_nr": ["001", "001"],
                "geb_nr": ["01", "01"],
                "ve_nr": ["0002", "0001"],
            }
        ),
        ObjectKind.CONTACT: pd.DataFrame(
            {"id": ["0001-00042", "0001-00043"], "person_nr": ["00042", "00043"], "last_name": ["A", "B"]}
        ),
    }


@pytest.fixture
def snapshot(tmp_path):
    """Casavi confirmed all but contact 00043 (refused); it listed the property with a link, unit 0001
    without one, and unit 0002 not at all (written after the listing)."""
    with Snapshot(tmp_path / "snapshot_0001.duckdb", "0001") as snap:
        con = snap.connection
        for kind, ref in [("property", "0001-001"), ("unit", "0001-001-01-0001"), ("unit", "0001-001-01-0002"),
                          ("contact", "0001-00042"), ("contact", "0001-99999")]:  # fmt: skip
            con.execute("INSERT INTO synced VALUES (?, ?, 'h', NULL, now())", [kind, ref])
        con.execute(
            "INSERT INTO remote (kind, ref_id, content_hash, app_link) VALUES "
            "('property', '0001-001', 'h', 'https://app.test/p/1'), ('unit', '0001-001-01-0001', 'h', NULL), "
            "('contact', '0001-00042', 'h', ?)",
            [ODD_LINK],
        )
        yield snap


def test_every_confirmed_object_of_the_erp_with_its_numbers_and_link_in_the_exports_dialect(snapshot, tmp_path):
    written = write_links(snapshot, mapped(), tmp_path / "links")
    data = written.paths["csv"].read_bytes()
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=";", quotechar='"'))
    assert tuple(rows[0]) == COLUMNS
    assert rows[1:] == [
        ["0001", "property", "0001-001", "001", "", "", "", "https://app.test/p/1"],
        ["0001", "unit", "0001-001-01-0001", "001", "01", "0001", "", ""],
        ["0001", "unit", "0001-001-01-0002", "001", "01", "0002", "", ""],
        ["0001", "contact", "0001-00042", "", "", "", "00042", ODD_LINK],
    ]  # 00043 was refused (not in casavi), 99999 is not the ERP's any more (not in the mapping)
    assert b'"https://app.test/x;y""z\nw"' in data  # quoted as the export's dialect says
    counts = {kind: (c.rows, c.with_link, c.not_listed, c.listed_without_link) for kind, c in written.kinds.items()}
    assert counts == {"property": (1, 1, 0, 0), "unit": (2, 0, 1, 1), "contact": (1, 1, 0, 0)}
    assert written.share_with_link == 0.5 and written.replaced == ("csv", "parquet")
    assert written.missing_links == (
        "Mandant 0001: casavi returned 1 of 3 objects it listed without a link (appLink: 1 unit); their "
        "app_link is empty in the links file. `casavi-pipeline check-casavi` shows whether the account returns it."
    )
    assert written.not_listed_yet.startswith("Mandant 0001: 1 objects written in this run have no link yet")


def test_a_file_is_replaced_only_when_its_bytes_change_and_never_left_half_written(snapshot, tmp_path):
    folder = tmp_path / "links"
    first = write_links(snapshot, mapped(), folder)
    stats = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.iterdir()}
    (folder / ".casavi_links_0001.csv.dead.tmp").write_text("a killed run's leftover")
    again = write_links(snapshot, mapped(), folder)
    assert again.replaced == ()
    assert {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.iterdir()} == stats
    snapshot.connection.execute("UPDATE remote SET app_link = 'https://app.test/u/1' WHERE ref_id LIKE '%0001'")
    changed = write_links(snapshot, mapped(), folder)
    assert changed.replaced == ("csv", "parquet") and changed.with_link == first.with_link + 1
    assert all(path.stat().st_ino != stats[path.name][0] for path in folder.iterdir())  # moved over, not edited
    assert sorted(path.name for path in folder.iterdir()) == ["casavi_links_0001.csv", "casavi_links_0001.parquet"]


def test_a_read_keeps_only_a_link_shaped_value():
    assert api.app_link_of({"appLink": " https://app.test/p/1 "}) == "https://app.test/p/1"
    for value in (None, "", "   ", 17, {"href": "https://app.test"}, "x" * (api.MAX_APP_LINK_LENGTH + 1)):
        assert api.app_link_of({"appLink": value}) is None
    assert api.app_link_of({}) is None
