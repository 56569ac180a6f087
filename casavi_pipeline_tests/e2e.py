"""Shared by the end-to-end tests: one Mandant's settings, export and runs against the sandbox process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from casavi_pipeline import account
from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state.store import StateStore
from casavi_pipeline_tests.erp_fixtures import big_rows, write_export
from casavi_pipeline_tests.harness import run_from_environment
from casavi_sandbox import SandboxProcess

REPO = Path(__file__).resolve().parents[1]

MANDANT = "0001"
MAPPED_ASSETS = {
    ObjectKind.PROPERTY: "casavi_properties",
    ObjectKind.UNIT: "casavi_units",
    ObjectKind.CONTACT: "casavi_contacts",
}


#: The state backends (`casavi_pipeline.state`): a test parametrized over `backend` runs on both.
BACKENDS = ("duckdb", "postgresql")


@pytest.fixture
def backend() -> str:
    """The state backend of a test: the embedded default, unless the test is parametrized over BACKENDS."""
    return "duckdb"


@pytest.fixture
def env(tmp_path, sandbox: SandboxProcess, monkeypatch, backend: str, request: pytest.FixtureRequest):
    """Settings for one test: its own export, snapshot folder, Dagster instance, and the sandbox.

    They are set in the environment too, for the subprocesses (Dagster's CLI, the demo) that read them
    there; the instance uses the shipped dagster.yaml (launcher and run limits as users run them). With
    `backend` "postgresql" the state lives in a fresh database of the session's PostgreSQL server.
    """
    values = {
        "ERP_EXPORT_DIR": str(tmp_path / "export"),
        "CASAVI_MANDANTEN": MANDANT,
        "CASAVI_SNAPSHOT_DB": str(tmp_path / "snapshots"),
        "CASAVI_BASE_URL": sandbox.base_url,
        "CASAVI_API_KEY": sandbox.api_key,
        "CASAVI_API_SECRET": sandbox.api_secret,
        "CASAVI_REQUESTS_PER_MINUTE": "60000",
        # The tiny export has 2-4 objects per kind: one deletion is already 25-50 % of a kind.
        "CASAVI_DELETE_GUARD_MIN_COUNT": "2",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    if backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        values["CASAVI_STATE_URL"] = server.url(server.create_database("state"))
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    Path(values["DAGSTER_HOME"]).mkdir()
    shutil.copy(REPO / "dagster.yaml", Path(values["DAGSTER_HOME"]) / "dagster.yaml")
    return values


def state_folder(env) -> Path:
    """Where the test's casavi account keeps its state: `CASAVI_SNAPSHOT_DB/account-<id of its API key>`."""
    return account.folder(Path(env["CASAVI_SNAPSHOT_DB"]), account.account_id(env["CASAVI_API_KEY"]))


def state_store(env) -> StateStore:
    """The test's casavi account's state, on the test's backend."""
    return StateStore(
        Path(env["CASAVI_SNAPSHOT_DB"]), env.get("CASAVI_STATE_URL"), account=account.account_id(env["CASAVI_API_KEY"])
    )


def export(env, rows=None) -> Path:
    return write_export(Path(env["ERP_EXPORT_DIR"]), {MANDANT: rows if rows is not None else {}})


def run_job(env, run_config=None) -> dg.ExecuteInProcessResult:
    """The main job for the test's Mandant, with the resources the test's settings give."""
    with dg.DagsterInstance.get() as instance:
        return run_from_environment(MANDANT, env, instance=instance, run_config=run_config)


def expected_state(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, dict]]:
    """What casavi must hold: every mapped row as the adapter's payload."""
    state = {}
    for kind, asset in MAPPED_ASSETS.items():
        frame = result.asset_value(asset)
        state[kind.collection] = {row["id"]: api.to_payload(kind, row) for row in frame.to_dict("records")}
    return state


def writes_by_route(sandbox: SandboxProcess) -> dict[str, int]:
    return {
        route: sum(by_status.values())
        for route, by_status in sandbox.requests()["routes"].items()
        if route.split(" ", 1)[0] in ("PUT", "DELETE")
    }


def big_export(env, contracts: int) -> None:
    """The test's Mandant with `big_rows(contracts)`."""
    export(env, big_rows(contracts))


def assert_sandbox_holds(sandbox: SandboxProcess, result: dg.ExecuteInProcessResult) -> None:
    """casavi holds exactly what the run mapped."""
    held = sandbox.state()
    for collection, objects in expected_state(result).items():
        assert held.get(collection, {}) == objects, collection


def assert_created_once(sandbox: SandboxProcess) -> None:
    """Every object casavi holds was created exactly once (201s since the last reset = objects)."""
    routes = sandbox.requests()["routes"]
    created = sum(by_status.get("201", 0) for by_status in routes.values())
    assert created == sum(len(objects) for objects in sandbox.state().values())


def contents_under(root: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file's bytes. A SQLite database's -wal/-shm sidecar goes away when its last connection closes
    (a run's processes end while we read) and its pages move into the database: read that one again."""
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        try:
            yield path, path.read_bytes()
        except FileNotFoundError:
            database = path.with_name(path.name.rsplit("-", 1)[0])
            if not path.name.endswith(("-wal", "-shm")) or not database.is_file():
                raise
            yield database, database.read_bytes()
