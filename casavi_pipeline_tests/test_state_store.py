"""The state store on both backends: one writer per Mandant, a lock that dies with its process, erasure
of what was moved aside, and a local state moving to PostgreSQL; a real PostgreSQL server on loopback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state.files import StateBusyError, StateCorruptError
from casavi_pipeline.state.postgres import StateUnavailableError
from casavi_pipeline.state.store import StateStore
from casavi_pipeline_tests.e2e import BACKENDS


@pytest.fixture
def url(backend, request):
    if backend == "duckdb":
        return None
    server = request.getfixturevalue("postgres_server")
    return server.url(server.create_database("store"))


def _confirm(store: StateStore, count: int, mandant: str = "0001") -> None:
    with store.open(mandant) as snapshot:
        for i in range(count):
            snapshot.confirm(ObjectKind.CONTACT, "upsert", f"{mandant}-{i:05d}", f"{i:032x}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_writer_per_mandant_in_one_line_and_the_lock_dies_with_its_process(tmp_path, url, processes):
    holder = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from casavi_pipeline.state.store import StateStore
        snapshot = StateStore(Path({str(tmp_path / "a")!r}), {url!r}, account="a1").open("0001")
        print("held", flush=True)
        time.sleep(600)
    """)
    # On one machine the same folder; with PostgreSQL another machine's folder (only the database is shared).
    other = StateStore(tmp_path / ("b" if url else "a"), url, account="a1")
    process = processes.start([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        with pytest.raises(StateBusyError) as busy:
            other.open("0001")
        assert "Mandant 0001" in str(busy.value) or "snapshot_0001" in str(busy.value)
        assert "\n" not in str(busy.value) and "wait for it" in str(busy.value)
    finally:
        process.kill()  # SIGKILL: no chance to release anything
        process.wait()
    with other.open("0001") as snapshot:  # the lock died with its process
        assert snapshot.synced_total() == 0


def test_confirmations_reach_another_machine_and_a_local_state_moves_to_postgresql(tmp_path, postgres_server):
    url = postgres_server.url(postgres_server.create_database("store"))
    _confirm(StateStore(tmp_path / "local", account="a1"), 5)  # a deployment's local state before CASAVI_STATE_URL
    _confirm(StateStore(tmp_path / "local", url, account="a1"), 2, mandant="0002")
    with StateStore(tmp_path / "local", url, account="a1").open("0001") as snapshot:  # the local file is taken over...
        assert snapshot.synced_total() == 5
    with StateStore(tmp_path / "elsewhere", url, account="a1").open("0001") as snapshot:  # ...and saved to PostgreSQL
        assert snapshot.synced_total() == 5
        snapshot.confirm(ObjectKind.CONTACT, "delete", "0001-00000", None)
    with StateStore(tmp_path / "local", url, account="a1").open("0001") as snapshot:  # the stale working copy is replaced
        assert snapshot.synced_total() == 4


def test_erasure_reaches_what_postgresql_moved_aside(tmp_path, postgres_server):
    database = postgres_server.create_database("store")
    url = postgres_server.url(database)
    store = StateStore(tmp_path / "a", url, account="a1")
    _confirm(store, 3)
    postgres_server.psql(database, "UPDATE casavi_state_chunks SET data = 'garbage' WHERE name = 'account-a1/snapshot_0001.duckdb'")
    with pytest.raises(StateCorruptError):  # a fresh machine fetches the damaged file
        StateStore(tmp_path / "b", url, account="a1").open("0001")
    held = postgres_server.psql(database, "SELECT name FROM casavi_state_heads ORDER BY name")
    assert "snapshot_0001.duckdb.corrupt-" in held
    done = StateStore(tmp_path / "b", url, account="a1").erase("0001", ["0001-"])
    assert any(line.startswith("moved-aside snapshot copies") and ": 1 deleted" in line for line in done), done
    for table in ("casavi_state_heads", "casavi_state_chunks", "casavi_state_log"):
        assert postgres_server.psql(database, f"SELECT count(*) FROM {table} WHERE name LIKE '%corrupt%'") == "0"


def test_an_unreachable_state_database_is_one_line_without_its_password(tmp_path):
    store = StateStore(tmp_path, "postgresql://sync:Geheim42@127.0.0.1:9/state", account="a1")
    with pytest.raises(StateUnavailableError) as info:
        store.open("0001")
    message = str(info.value)
    assert "Geheim42" not in message and "\n" not in message and "127.0.0.1:9" in message


@pytest.mark.parametrize("form", ["password in the query", "socket folder in the query"])
def test_the_state_url_takes_its_parameters_in_the_query_too(tmp_path, postgres_server, form):
    """`?password=` beside the URL's user (libpq and SQLAlchemy take it) and `?host=` naming the folder of
    the server's socket: both once crashed every run (psycopg2.connect got the password twice)."""
    database = postgres_server.create_database("store")
    server = postgres_server
    url = {
        "password in the query": f"postgresql://{server.USER}:ignored@{server.host}:{server.port}/{database}?password=Geheim42",
        "socket folder in the query": f"postgresql://{server.USER}@/{database}?host={server.folder}&port={server.port}",
    }[form]
    _confirm(StateStore(tmp_path, url, account="a1"), 3)
    assert postgres_server.psql(database, "SELECT name FROM casavi_state_heads") == "account-a1/snapshot_0001.duckdb"
    with StateStore(tmp_path / "elsewhere", url, account="a1").open("0001") as snapshot:  # another machine
        assert snapshot.synced_total() == 3


def test_an_unreachable_state_database_is_one_line_without_a_password_in_its_query(tmp_path):
    store = StateStore(tmp_path, "postgresql://sync@127.0.0.1:9/state?sslmode=disable&password=Geheim42", account="a1")
    with pytest.raises(StateUnavailableError) as info:
        store.open("0001")
    message = str(info.value)
    assert message.startswith("The state database CASAVI_STATE_URL=postgresql://sync@127.0.0.1:9/state cannot")
    assert "Geheim42" not in message and "\n" not in message
