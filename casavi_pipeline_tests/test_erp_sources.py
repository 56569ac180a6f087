"""The ERP sources: the database source (real PostgreSQL) and the mapping file give the same frames as the
CSV export, and break the same way, without a person's value or the database password in a message; the
database is only read (one statement per query, a read-only session) and never waited on without bound."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
from pandas.testing import assert_frame_equal

from casavi_harness.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN
from casavi_pipeline.erp.contract import ENTITIES, ENTITIES_BY_NAME, Entity
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.mapping_file import (
    EntityMapping,
    MappingFile,
    MappingFileError,
    floor,
    load_mapping_file,
    salutation,
    split_postcode_town,
)
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.erp.sources import CsvSource, SqlSource
from casavi_pipeline.settings import SettingsError, load_settings
from casavi_pipeline_tests.erp_database import load_into_database, write_foreign_export
from casavi_pipeline_tests.postgres import _free_port

MANDANTEN = SAMPLE_MANDANTEN.split(",")


def sql_source(url: str, mapping: MappingFile | None = None, timeout_seconds: float = 60) -> SqlSource:
    return SqlSource(url, mapping, timeout_seconds=timeout_seconds)


def _sorted(frame: pd.DataFrame, entity: Entity) -> pd.DataFrame:
    """A database has no file order: its rows come ordered by key."""
    return frame.sort_values(list(entity.key), kind="stable", ignore_index=True)


def _csv_frames() -> dict[tuple[str, str], pd.DataFrame]:
    return {(m, e.name): read_entity(SAMPLE_EXPORT_DIR, m, e).frame for m in MANDANTEN for e in ENTITIES}


@pytest.fixture(scope="module")
def erp_database(postgres_server) -> str:
    """The sample export in the ERP's own tables, with a view named like each export file over them."""
    url = postgres_server.url(postgres_server.create_database("erp"))
    load_into_database(url, SAMPLE_EXPORT_DIR, MANDANTEN)
    return url


def test_the_database_source_reads_the_same_frames_as_the_csv_export(erp_database):
    csv_frames = _csv_frames()
    for mandant in MANDANTEN:
        tables = list(sql_source(erp_database).read(mandant))
        for entity, table in zip(ENTITIES, tables, strict=True):
            assert_frame_equal(table.frame, _sorted(csv_frames[(mandant, entity.name)], entity))
            assert table.origin == f"table/view {entity.name} (ERP_SOURCE_URL)"  # metadata: no URL


def test_the_mapping_file_reads_the_erps_own_tables_and_columns(erp_database, tmp_path):
    """No views: the mapping file names the ERP's tables and renames their columns."""
    lines = []
    for entity in ENTITIES:
        lines += [f"{entity.name}:", f"  source: erp_{entity.name}", "  columns:"]
        lines += [f"    c_{name}: {name}" for name in entity.column_names]
    (tmp_path / "mapping.yaml").write_text("\n".join(lines), encoding="utf-8")
    source = sql_source(erp_database, load_mapping_file(tmp_path / "mapping.yaml"))
    csv_frames = _csv_frames()
    for entity, table in zip(ENTITIES, source.read("0420"), strict=True):
        assert_frame_equal(table.frame, _sorted(csv_frames[("0420", entity.name)], entity))


def test_the_database_source_reads_in_a_read_only_transaction(erp_database, postgres_server, tmp_path):
    database = erp_database.rsplit("/", 1)[1]
    postgres_server.psql(database, "CREATE TABLE IF NOT EXISTS probe (n int)")
    (tmp_path / "mapping.yaml").write_text(
        "wirtschaftseinheiten:\n  source: >-\n    WITH w AS (INSERT INTO probe VALUES (1) RETURNING n)\n"
        "    SELECT * FROM wirtschaftseinheiten WHERE mandant_nr = :mandant\n",
        encoding="utf-8",
    )
    source = sql_source(erp_database, load_mapping_file(tmp_path / "mapping.yaml"))
    with pytest.raises(ErpExportError, match="read-only transaction") as caught:
        list(source.read("0001"))
    assert str(caught.value).startswith(
        "reading wirtschaftseinheiten from the query of wirtschaftseinheiten (ERP_MAPPING_FILE) on postgresql://"
    )
    assert postgres_server.psql(database, "SELECT count(*) FROM probe") == "0"


def test_a_missing_view_says_what_to_create(erp_database):
    source = sql_source(erp_database.replace("casavi@", "casavi:topsecret@"))
    with pytest.raises(ErpExportError) as caught:
        list(source.read("0001", [dataclasses.replace(ENTITIES_BY_NAME["mieter"], name="mieter_x")]))
    message = str(caught.value)
    assert "table/view mieter_x of postgresql://casavi@127.0.0.1:" in message
    assert "create it (with a column mandant_nr) or name the ERP's own in ERP_MAPPING_FILE" in message
    assert "topsecret" not in message and "\n" not in message


def test_a_closed_port_is_one_line_without_the_password():
    port = _free_port()
    source = sql_source(f"postgresql://erp_reader:S3cr3t-Pw@127.0.0.1:{port}/erp")
    with pytest.raises(ErpExportError) as caught:
        next(source.read("0001"))
    message = str(caught.value)
    assert message.startswith(
        f"cannot connect to the ERP database postgresql://erp_reader@127.0.0.1:{port}/erp"
    )
    assert "check ERP_SOURCE_URL" in message
    assert "S3cr3t-Pw" not in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# Only read: one statement per query, and a session that stays read-only whatever the query does.

_CANARY_QUERY = (
    "SELECT * FROM wirtschaftseinheiten WHERE mandant_nr = :mandant; COMMIT; INSERT INTO canary VALUES (1); "
    "SELECT * FROM wirtschaftseinheiten WHERE mandant_nr = :mandant"
)


@pytest.mark.parametrize(
    ("query", "statements"),
    [
        (_CANARY_QUERY, 4),
        ("SELECT * FROM mieter WHERE mandant_nr = :mandant;\nDELETE FROM mieter", 2),
        ("SELECT * FROM mieter WHERE mandant_nr = :mandant; /* ; */ SET default_transaction_read_only = off", 2),
    ],
)
def test_a_query_of_more_than_one_statement_is_refused_when_the_mapping_file_loads(tmp_path, query, statements):
    path = tmp_path / "mapping.yaml"
    path.write_text(f"mieter:\n  source: {json.dumps(query)}\n", encoding="utf-8")
    with pytest.raises(MappingFileError) as caught:
        load_mapping_file(path)
    assert str(caught.value) == (
        f"ERP_MAPPING_FILE {path}: mieter.source holds {statements} SQL statements (a `;` outside quotes and "
        "comments ends one); give one SELECT (or WITH ... SELECT): the ERP is only read"
    )


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 'a;b' AS bezeichnung, * FROM mieter WHERE mandant_nr = :mandant",  # in quotes
        "SELECT * FROM mieter WHERE mandant_nr = :mandant -- the Mandant; and nothing else",  # in a comment
        "SELECT * FROM mieter WHERE mandant_nr = :mandant /* ; */;",  # a closing `;`
        "SELECT $$x;y$$ AS a, * FROM mieter WHERE mandant_nr = :mandant",  # in PostgreSQL's dollar quotes
    ],
)
def test_a_semicolon_that_ends_no_statement_is_no_second_statement(tmp_path, query):
    path = tmp_path / "mapping.yaml"
    path.write_text(f"mieter:\n  source: {json.dumps(query)}\n", encoding="utf-8")
    assert load_mapping_file(path).entities["mieter"].source == query


def test_the_whole_session_is_read_only_so_a_commit_inside_a_query_cannot_write(erp_database, postgres_server):
    """The second line of defence: a query past the load's check (built here without it) that ends the
    read-only transaction with COMMIT finds the next transaction read-only too."""
    database = erp_database.rsplit("/", 1)[1]
    postgres_server.psql(database, "CREATE TABLE IF NOT EXISTS canary (n int)")
    unchecked = MappingFile.model_construct(
        entities={
            "wirtschaftseinheiten": EntityMapping.model_construct(
                source=_CANARY_QUERY, columns={}, normalize={}, values={}
            )
        }
    )
    with pytest.raises(ErpExportError, match="cannot execute INSERT in a read-only transaction") as caught:
        list(sql_source(erp_database, unchecked).read("0001"))
    assert "\n" not in str(caught.value)
    assert postgres_server.psql(database, "SELECT count(*) FROM canary") == "0"


# Never waited on without bound: a lock, a slow query, a user without the right to read.


@contextlib.contextmanager
def _locked(url: str, table: str) -> Iterator[None]:
    """Another session holding an exclusive lock on `table` (an ERP batch job), until the block ends."""
    holder = psycopg2.connect(url)
    try:
        with holder.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # held until the rollback
        yield
    finally:
        holder.rollback()
        holder.close()


def test_a_table_locked_by_another_session_fails_in_one_line_naming_it_and_the_setting(erp_database):
    with _locked(erp_database, "erp_mieter"), pytest.raises(ErpExportError) as caught:
        list(sql_source(erp_database, timeout_seconds=1).read("0001"))
    message = str(caught.value)
    assert message.startswith("reading mieter from table/view mieter of postgresql://casavi@127.0.0.1:")
    assert "waited longer than ERP_QUERY_TIMEOUT_SECONDS (1 s) for a lock another session holds" in message
    assert "\n" not in message


def test_the_urls_own_libpq_options_stay_and_the_bounds_come_last():
    source = sql_source("postgresql://erp@erp-db/erp?options=-c%20search_path%3Derp", timeout_seconds=2.5)
    assert source._connect_args() == {
        "connect_timeout": 3,
        "options": "-c search_path=erp -c default_transaction_read_only=on -c lock_timeout=2500 "
        "-c statement_timeout=3500",
    }
    assert sql_source("mssql+pyodbc://erp@DOMUS_DSN")._connect_args() == {}  # libpq's only


def test_a_query_slower_than_the_bound_is_cancelled_in_one_line(erp_database, tmp_path):
    (tmp_path / "mapping.yaml").write_text(
        "gebaeude:\n  source: SELECT *, pg_sleep(30) FROM gebaeude WHERE mandant_nr = :mandant\n",
        encoding="utf-8",
    )
    source = sql_source(erp_database, load_mapping_file(tmp_path / "mapping.yaml"), timeout_seconds=1)
    with pytest.raises(ErpExportError) as caught:
        list(source.read("0001"))
    message = str(caught.value)
    assert message.startswith("reading gebaeude from the query of gebaeude (ERP_MAPPING_FILE) on postgresql://")
    assert "took longer than ERP_QUERY_TIMEOUT_SECONDS (1 s) and was cancelled" in message
    assert "\n" not in message


def test_a_table_the_user_may_not_read_says_to_grant_select(erp_database, postgres_server):
    database = erp_database.rsplit("/", 1)[1]
    readable = ", ".join(e.name for e in ENTITIES if e.name != "mieter")
    postgres_server.psql(database, f"CREATE ROLE erp_reader LOGIN; GRANT SELECT ON {readable} TO erp_reader")
    reader = erp_database.replace("casavi@", "erp_reader:Geheim42@")
    with pytest.raises(ErpExportError) as caught:
        list(sql_source(reader).read("0001"))
    assert str(caught.value) == (
        f"reading mieter from table/view mieter of {reader.replace(':Geheim42', '')} was refused "
        "(InsufficientPrivilege: permission denied for view mieter); let the pipeline's database user read "
        "it: GRANT SELECT ON mieter TO erp_reader"
    )


# Bad rows: the same problems, located by key, from the database as from the CSV file.

_BAD_CONTRACTS = [  # vertrag_nr, we_nr, ve_nr, beginn, ende
    ("1000", "0001", "0001", "2020-01-01", ""),
    ("1000", "0001", "0002", "2020-02-01", ""),  # duplicate key
    ("1001", "0001", "0003", "", ""),  # beginn missing
    ("1002", "0001", "0004", "2024-02-30", ""),  # not a real date
]
_BAD_TENANTS = [  # vertrag_nr, person_nr, anrede, vorname, nachname
    ("1000", "P1", "Herr", "Max", "Muster"),
    ("1001", "P2", "Hr.", "Erika", ""),  # anrede not allowed; neither nachname nor firma
]


def _write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(header)
        writer.writerows(rows)


def _problem_without_row(problem: str) -> str:
    """`row 2 (line 3), vertrag_nr=1000: ...` → `vertrag_nr=1000: ...` (a database row has no line)."""
    return problem.split(", ", 1)[1] if problem.startswith("row ") else problem


@pytest.mark.parametrize(
    ("entity_name", "header", "rows"),
    [
        ("mietvertraege", ["vertrag_nr", "we_nr", "ve_nr", "beginn", "ende"], _BAD_CONTRACTS),
        ("mieter", ["vertrag_nr", "person_nr", "anrede", "vorname", "nachname"], _BAD_TENANTS),
    ],
)
def test_a_bad_row_is_located_by_key_like_in_the_csv_export(
    postgres_server, tmp_path, entity_name, header, rows
):
    entity = ENTITIES_BY_NAME[entity_name]
    _write_csv(tmp_path / "0001" / entity.file_name, header, rows)
    with pytest.raises(ErpExportError) as from_csv:
        read_entity(tmp_path, "0001", entity)
    database = postgres_server.create_database("bad")
    columns = ", ".join(f"{name} text" for name in ["mandant_nr", *header])
    values = ", ".join(
        "(" + ", ".join(f"'{v}'" if v else "NULL" for v in ("0001", *row)) + ")" for row in rows
    )
    postgres_server.psql(
        database, f"CREATE TABLE {entity.name} ({columns}); INSERT INTO {entity.name} VALUES {values}"
    )
    with pytest.raises(ErpExportError) as from_sql:
        list(sql_source(postgres_server.url(database)).read("0001", [entity]))

    sql_problems = from_sql.value.problems
    csv_problems = [_problem_without_row(p) for p in from_csv.value.problems]
    assert len(sql_problems) == len(csv_problems) > 1
    for sql_problem, csv_problem in zip(sql_problems, csv_problems, strict=True):
        if "appears more than once" in csv_problem:
            assert sql_problem.startswith(csv_problem.split(" appears")[0] + " appears 2 times")
        else:
            assert sql_problem == csv_problem
    assert str(from_sql.value).startswith(f"table/view {entity.name} of postgresql://casavi@")
    for person_value in ("Erika", "Hr.", "Max", "Muster"):
        assert person_value not in str(from_sql.value)


# The mapping file: a foreign export (the ERP's own column names, codes and free text) → the contract.


def test_a_foreign_export_with_a_mapping_file_reads_as_the_contract_export(tmp_path):
    mapping = load_mapping_file(write_foreign_export(SAMPLE_EXPORT_DIR, tmp_path / "foreign", MANDANTEN))
    for mandant in MANDANTEN:
        contract = list(CsvSource(SAMPLE_EXPORT_DIR).read(mandant))
        mapped = list(CsvSource(tmp_path / "foreign", mapping=mapping).read(mandant))
        for entity, expected, table in zip(ENTITIES, contract, mapped, strict=True):
            assert_frame_equal(table.frame, expected.frame, obj=f"{mandant}/{entity.name}")


def test_errors_after_mapping_name_the_source_column(tmp_path):
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "verwaltungseinheiten:\n  columns: {NUTZUNG: nutzungsart, WE: we_nr, VE: ve_nr, GEB: geb_nr}\n"
        "  values:\n    nutzungsart: {Wohnraum: WOHNUNG}\n",
        encoding="utf-8",
    )
    _write_csv(
        tmp_path / "0001" / "verwaltungseinheiten.csv",
        ["WE", "VE", "GEB", "NUTZUNG"],
        [("01", "1", "1", "Wohnraum"), ("01", "2", "1", "Laden")],
    )
    entity = ENTITIES_BY_NAME["verwaltungseinheiten"]
    with pytest.raises(ErpExportError) as caught:
        read_entity(tmp_path, "0001", entity, mapping=load_mapping_file(mapping).for_entity(entity))
    assert caught.value.problems == [
        "row 2 (line 3), we_nr=01, ve_nr=2: column nutzungsart (source column NUTZUNG) ('Laden') is not an "
        "allowed value; use one of WOHNUNG, GEWERBE, STELLPLATZ, GARAGE, SONSTIGE"
    ]
    _write_csv(tmp_path / "0001" / "verwaltungseinheiten.csv", ["WE", "VE", "GEB"], [("01", "1", "1")])
    with pytest.raises(
        ErpExportError, match="required column nutzungsart \\(source column NUTZUNG\\) is missing"
    ):
        read_entity(tmp_path, "0001", entity, mapping=load_mapping_file(mapping).for_entity(entity))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mietr:\n  columns: {}\n", "mietr is not an entity; use one of wirtschaftseinheiten, "),
        (
            "mieter:\n  colums: {}\n",
            "mieter.colums is not a known key; allowed: source, columns, normalize, values",
        ),
        (
            "mieter:\n  columns: {NAME1: nachnmae}\n",
            "mieter.columns.NAME1 maps to 'nachnmae', which is not a column",
        ),
        (
            "mieter:\n  normalize: {anrede: guess}\n",
            "mieter.normalize.anrede is not a normalisation; use salutation",
        ),
        (
            "mieter:\n  normalize: {PO: {split_postcode_town: [plz, town]}}\n",
            "writes 'town', which is not a column",
        ),
        ("mieter:\n  values: {nachnam: {a: b}}\n", "mieter.values.nachnam is not a column of mieter"),
        ("mieter:\n  source: DELETE FROM mieter\n", "mieter.source is neither a table/view name"),
        ("mieter:\n  source: SELECT * FROM x\n", "mieter.source is a query without the parameter :mandant"),
        ("mieter: [\n", "is not valid YAML at line 2"),
        ("- mieter\n", "the top level must be a mapping of entity names"),
    ],
)
def test_a_bad_mapping_file_is_one_line_naming_the_key(tmp_path, text, expected):
    path = tmp_path / "mapping.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingFileError) as caught:
        load_mapping_file(path)
    assert str(caught.value).startswith(f"ERP_MAPPING_FILE {path}")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_settings_check_the_mapping_file_and_the_source_url_at_load(tmp_path):
    required = {
        "CASAVI_MANDANTEN": "0001",
        "CASAVI_BASE_URL": "http://127.0.0.1:9",
        "CASAVI_API_KEY": "k",
        "CASAVI_API_SECRET": "s",
    }
    (tmp_path / "mapping.yaml").write_text("mieter:\n  colums: {}\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"mieter\.colums is not a known key"):
        load_settings(**required, ERP_EXPORT_DIR=tmp_path, ERP_MAPPING_FILE=tmp_path / "mapping.yaml")
    with pytest.raises(SettingsError, match="ERP_EXPORT_DIR is not set") as caught:
        load_settings(**required, ERP_EXPORT_DIR=None, ERP_SOURCE_URL=None)
    assert "ERP_SOURCE_URL" in str(caught.value)
    with pytest.raises(SettingsError, match="ERP_SOURCE_URL is not a database URL") as caught:
        load_settings(**required, ERP_SOURCE_URL="erp:secret@db")
    assert "secret@db" not in str(caught.value)
    settings = load_settings(**required, ERP_SOURCE_URL="postgresql://erp:secret@db/erp")
    assert settings.erp.input == "postgresql://erp@db/erp" and "secret@db" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sehr geehrter Herr Müller", "Herr"),
        ("Herrn", "Herr"),
        ("Hr.", "Herr"),
        ("Frau Dr.", "Frau"),
        ("Sehr geehrte Frau", "Frau"),
        ("Firma", "Firma"),
        ("Divers", "Divers"),
        ("Herr und Frau", None),
        ("Sehr geehrte Damen und Herren", None),
        ("Eheleute", None),
        (None, None),
    ],
)
def test_salutation(text, expected):
    assert salutation(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Erdgeschoss", "0"),
        ("EG links", "0"),
        ("Keller", "-1"),
        ("UG", "-1"),
        ("Untergeschoss", "-1"),
        ("2. UG", "-2"),
        ("3. Etage, links", "3"),
        ("3. OG", "3"),
        ("12. OG rechts", "12"),
        ("Dachgeschoss", None),
        ("links", None),
        (None, None),
    ],
)
def test_floor(text, expected):
    assert floor(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12345 Berlin", ("12345", "Berlin")),
        ("D-01067 Dresden", ("01067", "Dresden")),
        ("1010 Wien", ("1010", "Wien")),
        ("60311 Frankfurt am Main", ("60311", "Frankfurt am Main")),
        ("12345", ("12345", None)),
        ("Berlin", (None, "Berlin")),
        (None, (None, None)),
    ],
)
def test_split_postcode_town(text, expected):
    assert split_postcode_town(text) == expected
