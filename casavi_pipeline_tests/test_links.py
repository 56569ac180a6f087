"""Links back to the ERP (`casavi_links`), end to end: the export → the job in a real Dagster instance on
disk → the casavi sandbox as a real process → the files in CASAVI_LINKS_DIR, read as an ERP would.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.casavi.client import CasaviClient
from casavi_pipeline.cli.sync import outcome_of_run, print_summary
from casavi_pipeline.links import COLUMNS
from casavi_pipeline_tests.e2e import BACKENDS, MAPPED_ASSETS
from casavi_pipeline_tests.erp_fixtures import Append, default_rows, write_export
from casavi_pipeline_tests.harness import run_from_environment
from casavi_pipeline_tests.test_operator_path import leaks
from casavi_sandbox import SandboxProcess

pytestmark = pytest.mark.e2e

MANDANTEN = ("0001", "0002")
#: The columns of the export's person files that hold a person's name, email or phone.
PERSONAL = ("titel", "vorname", "nachname", "firma", "email", "telefon", "mobil")


@pytest.fixture
def links_env(env, tmp_path, monkeypatch) -> dict[str, str]:
    """The e2e settings with two Mandanten (both sample partitions) and a links folder."""
    values = {"CASAVI_MANDANTEN": ",".join(MANDANTEN), "CASAVI_LINKS_DIR": str(tmp_path / "links")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    env.update(values)
    write_export(Path(env["ERP_EXPORT_DIR"]), {mandant: {} for mandant in MANDANTEN})
    return env


def run(env: dict[str, str], mandant: str) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.get() as instance:
        result = run_from_environment(mandant, env, instance=instance)
    assert result.success, [e.message for e in result.get_step_failure_events()]
    return result


def night(env: dict[str, str]) -> dict[str, dg.ExecuteInProcessResult]:
    """One run per Mandant, one after the other (as the nightly schedule's runs end up)."""
    return {mandant: run(env, mandant) for mandant in MANDANTEN}


def csv_rows(env: dict[str, str], mandant: str) -> list[dict[str, str]]:
    """The CSV as an ERP reads it: the export's dialect, UTF-8."""
    data = (Path(env["CASAVI_LINKS_DIR"]) / f"casavi_links_{mandant}.csv").read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")  # no byte order mark
    reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=";", quotechar='"')
    assert tuple(reader.fieldnames or ()) == COLUMNS
    return list(reader)


def parquet_rows(env: dict[str, str], mandant: str) -> list[dict[str, str]]:
    path = Path(env["CASAVI_LINKS_DIR"]) / f"casavi_links_{mandant}.parquet"
    with duckdb.connect() as con:
        described = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
        rows = con.execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    assert tuple(name for name, *_ in described) == COLUMNS
    assert {kind for _, kind, *_ in described} == {"VARCHAR"}  # ERP numbers stay text: 0001 is not 1
    return [{n: ("" if v is None else v) for n, v in zip(COLUMNS, row, strict=True)} for row in rows]


def casavi_links(sandbox: SandboxProcess) -> dict[tuple[str, str], str | None]:
    """(kind, reference id) → the appLink casavi returns for it, read through the project's client."""
    with CasaviClient(sandbox.base_url, sandbox.api_key, sandbox.api_secret, budget=None) as client:
        return {
            (kind.value, obj[api.ID_FIELD]): obj.get(api.APP_LINK_FIELD)
            for kind in api.UPSERT_ORDER
            for obj in client.list_objects(kind)
        }


def expected_rows(result: dg.ExecuteInProcessResult, mandant: str) -> list[dict[str, str]]:
    """Every mapped object with the ERP numbers the mapping composed its id from (links left out)."""
    numbers = {ObjectKind.PROPERTY: ("we_nr",), ObjectKind.UNIT: ("we_nr", "geb_nr", "ve_nr"),
               ObjectKind.CONTACT: ("person_nr",)}  # fmt: skip
    rows = []
    for kind in api.UPSERT_ORDER:
        frame = result.asset_value(MAPPED_ASSETS[kind])
        for record in frame.sort_values("id").to_dict("records"):
            row = {c: "" for c in COLUMNS} | {"mandant_nr": mandant, "kind": kind.value, "ref_id": record["id"]}
            row |= {c: record[c] for c in numbers[kind]}
            assert record["id"] == "-".join([mandant, *(record[c] for c in numbers[kind])])
            rows.append(row)
    return rows


def links_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [materialization] = result.asset_materializations_for_node("casavi_links")
    return {key: value.value for key, value in materialization.metadata.items()}


def logged(result: dg.ExecuteInProcessResult, level: int) -> list[str]:
    """What the links step said at this level, as the run's event log holds it."""
    with dg.DagsterInstance.get() as instance:
        return [
            e.user_message
            for e in instance.all_logs(result.run_id)
            if e.level == level and e.step_key == "casavi_links"
        ]


def file_stats(env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Each links file's inode and modification time: a replaced file changes both."""
    folder = Path(env["CASAVI_LINKS_DIR"])
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_a_first_sync_and_the_next_run_each_mandants_file_lists_every_synced_object_with_its_link(
    links_env, sandbox, capsys
):
    env = links_env
    first = night(env)
    for mandant, result in first.items():
        rows = csv_rows(env, mandant)
        expected = expected_rows(result, mandant)
        assert [{**row, "app_link": ""} for row in rows] == expected  # every synced object, no link yet
        # Created in this run: casavi has not listed them since; the next read brings their links.
        assert all(row["app_link"] == "" for row in rows)
        metadata = links_metadata(result)
        assert metadata["dagster/row_count"] == len(expected) == 7  # 1 property, 3 units, 3 contacts
        assert (metadata["with_link"], metadata["share_with_link"]) == (0, 0.0)
        assert sum(metadata[f"not_listed_yet/{kind.value}"] for kind in ObjectKind) == 7
        assert any("7 objects written in this run have no link yet" in m for m in logged(result, logging.INFO))
        assert not logged(result, logging.WARNING)

    sandbox.reset(objects=False)
    second = night(env)
    assert sandbox.write_count() == 0  # the links cost no write, and no request of their own
    reads = sandbox.requests()["total"]
    links = casavi_links(sandbox)
    assert all(link and link.startswith(f"{sandbox.base_url}/app/") for link in links.values())
    for mandant, result in second.items():
        rows = csv_rows(env, mandant)
        assert [{**row, "app_link": ""} for row in rows] == expected_rows(result, mandant)
        assert [row["app_link"] for row in rows] == [links[(row["kind"], row["ref_id"])] for row in rows]
        assert parquet_rows(env, mandant) == rows
        metadata = links_metadata(result)
        assert (metadata["with_link"], metadata["share_with_link"], metadata["rewritten"]) == (7, 1.0, True)
        assert not logged(result, logging.WARNING)
    assert reads <= 2 * 4  # per Mandant at most a login and one listing page per kind: nothing for links

    # `casavi-pipeline sync` names the file in one line, from the asset's metadata.
    with dg.DagsterInstance.get() as instance:  # the env fixture's, which the runs used
        print_summary([outcome_of_run(instance, second["0001"].run_id, "0001", dry_run=False)])
    printed = capsys.readouterr().out.splitlines()
    named = [line for line in printed if "casavi_links_0001.csv" in line]
    assert named == [
        f"Mandant 0001: links of 7 objects (7 with a link, 100%) in {env['CASAVI_LINKS_DIR']}/casavi_links_0001.csv "
        "and casavi_links_0001.parquet (rewritten)"
    ]


def test_an_unchanged_night_rewrites_nothing_and_a_change_rewrites_only_its_mandant(links_env, sandbox):
    env = links_env
    night(env)
    night(env)  # every object listed once: every link known
    before = file_stats(env)
    assert sorted(before) == [f"casavi_links_{m}.{s}" for m in MANDANTEN for s in ("csv", "parquet")]

    sandbox.reset(objects=False)
    unchanged = night(env)
    assert sandbox.write_count() == 0
    assert file_stats(env) == before  # not rewritten: same inode, same modification time
    assert all(links_metadata(result)["rewritten"] is False for result in unchanged.values())

    # A new unit with a tenant in Mandant 0001: its file is replaced (atomically: a new inode), 0002's is not.
    unit = {"we_nr": "001", "ve_nr": "0099", "geb_nr": "01", "nutzungsart": "WOHNUNG", "lage": "DG"}
    lease = {"vertrag_nr": "399999", "we_nr": "001", "ve_nr": "0099", "beginn": "2024-01-01"}
    tenant = {"vertrag_nr": "399999", "person_nr": "99999", "nachname": "Neumann", "email": "neu@example.org"}
    rows = {"verwaltungseinheiten": Append([unit]), "mietvertraege": Append([lease]), "mieter": Append([tenant])}
    write_export(Path(env["ERP_EXPORT_DIR"]), {"0001": rows})
    changed = run(env, "0001")
    after = file_stats(env)
    for suffix in ("csv", "parquet"):
        assert after[f"casavi_links_0001.{suffix}"][0] != before[f"casavi_links_0001.{suffix}"][0]
        assert after[f"casavi_links_0002.{suffix}"] == before[f"casavi_links_0002.{suffix}"]
    new = {row["ref_id"]: row for row in csv_rows(env, "0001")}
    assert new["0001-001-01-0099"] | {"app_link": ""} == {
        "mandant_nr": "0001", "kind": "unit", "ref_id": "0001-001-01-0099", "we_nr": "001", "geb_nr": "01",
        "ve_nr": "0099", "person_nr": "", "app_link": "",
    }  # fmt: skip
    assert new["0001-99999"]["person_nr"] == "99999" and new["0001-99999"]["app_link"] == ""
    assert links_metadata(changed)["with_link"] == 7  # the others kept their links
    run(env, "0001")  # the next run's read brings the new objects' links
    assert all(row["app_link"] for row in csv_rows(env, "0001"))
    assert not [name for name in os.listdir(env["CASAVI_LINKS_DIR"]) if name.endswith(".tmp")]


def test_a_casavi_that_returns_no_links_gives_an_empty_column_and_one_line(links_env, sandbox):
    env = links_env
    sandbox.configure(omit_app_link=True)
    night(env)
    second = night(env)
    for mandant, result in second.items():
        rows = csv_rows(env, mandant)
        assert len(rows) == 7 and all(row["app_link"] == "" for row in rows)
        metadata = links_metadata(result)
        assert (metadata["with_link"], metadata["share_with_link"]) == (0, 0.0)
        assert metadata["listed_without_link/unit"] == 3
        warnings = logged(result, logging.WARNING)
        assert warnings == [
            f"Mandant {mandant}: casavi returned 7 of 7 objects it listed without a link (appLink: 1 property, "
            "3 units, 3 contacts); their app_link is empty in the links file. `casavi-pipeline check-casavi` "
            "shows whether the account returns it."
        ]


def test_the_links_files_hold_no_name_email_or_phone_of_the_export(links_env, sandbox):
    env = links_env
    night(env)
    night(env)
    personal = {
        f"{entity}/{row['person_nr']}/{column}": str(row[column])
        for entity in ("mieter", "eigentuemer")
        for row in default_rows()[entity]
        for column in PERSONAL
        if row.get(column)
    }
    assert len(personal) >= 10  # the export's tenants and owners: names, emails, phones
    folder = Path(env["CASAVI_LINKS_DIR"])
    files = sorted(folder.iterdir())
    assert len(files) == 4
    for path in files:
        assert leaks(path.read_bytes(), personal) == [], path.name
    for mandant in MANDANTEN:  # the Parquet files decoded too: compressed bytes could hide a value
        decoded = "\n".join(";".join(row.values()) for row in parquet_rows(env, mandant))
        assert leaks(decoded, personal) == []
