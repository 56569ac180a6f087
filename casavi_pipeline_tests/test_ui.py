"""The Dagster UI as a user meets it: `dagster dev` (webserver + daemon) on a free loopback port, asked
through its GraphQL API for the asset graph, partitions and checks, then a partitioned run of the whole
graph launched the way the UI launches it, against the casavi sandbox."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dagster_graphql import DagsterGraphQLClient

from casavi_harness.local import SAMPLE_EXPORT_DIR
from casavi_sandbox.process import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    partitionKeysByDimension { partitionKeys }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
}
"""


@pytest.fixture(scope="module")
def dagster_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dagster_home")


@pytest.fixture(scope="module")
def dagster_dev(dagster_home, sandbox_server):
    home = dagster_home
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ERP_EXPORT_DIR": str(SAMPLE_EXPORT_DIR),
        "CASAVI_MANDANTEN": "0001,0002,0420",
        "CASAVI_SNAPSHOT_DB": str(home / "snapshots"),
        "CASAVI_BASE_URL": sandbox_server.base_url,
        "CASAVI_API_KEY": sandbox_server.api_key,
        "CASAVI_API_SECRET": sandbox_server.api_secret,
        "CASAVI_REQUESTS_PER_MINUTE": "60000",
    }
    log = (home / "dagster_dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300  # generous: a loaded machine, the suite's other workers beside it
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited; see {log.name}")
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGTERM)
        pytest.fail(f"dagster dev did not start within 300 s; see {log.name}")
    yield port
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


def graphql(port: int, query: str) -> dict:
    deadline = time.monotonic() + 60  # the code location may still be loading
    while True:
        body = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30).json()
        if body.get("data", {}).get("assetNodes") or time.monotonic() > deadline:
            return body["data"]
        time.sleep(1)


def test_ui_shows_the_graph_partitions_and_checks_and_runs_a_partition(dagster_dev, sandbox_server):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(dagster_dev, ASSETS_QUERY)["assetNodes"]}
    assert {n["groupName"] for n in nodes.values()} == {"erp", "casavi", "sync"}
    assert len(nodes) == 17  # 7 ERP, 6 casavi (casavi_left_out too), casavi_remote, changeset, sync, links
    for name in ("casavi_sync", "casavi_links"):
        assert nodes[name]["partitionKeysByDimension"][0]["partitionKeys"] == ["0001", "0002", "0420"]
    checks = {c["name"]: c["blocking"] for c in nodes["casavi_contracts"]["assetChecksOrError"]["checks"]}
    assert checks["contract_payload_schema"] is True and checks["email_rule_dropped"] is False
    checks = {c["name"]: c["blocking"] for c in nodes["casavi_contacts"]["assetChecksOrError"]["checks"]}
    assert checks["tenants_have_valid_email"] is True
    assert {c["name"] for c in nodes["casavi_changeset"]["assetChecksOrError"]["checks"]} == {
        "mass_deletion_guard_check", "separator_change_guard_check"
    }  # fmt: skip

    sandbox_server.reset()
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev)
    run_id = client.submit_job_execution("casavi_sync_job", tags={"dagster/partition": "0420"})
    deadline, status = time.monotonic() + 300, None
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"
    held = sandbox_server.state()
    assert len(held["units"]) == 100 and all(ref.startswith("0420-") for ref in held["units"])


BACKFILL_MUTATION = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""

RUNS_QUERY = """
query ($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId status startTime endTime tags { key value } } }
  }
}
"""


def graphql_vars(port: int, query: str, variables: dict) -> dict:
    body = httpx.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables}, timeout=30
    ).json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def test_backfill_of_every_mandant_runs_them_side_by_side(dagster_dev, dagster_home, sandbox_server):
    """What "Launch backfill" does in the UI: one run per Mandant, queued and run in parallel by the daemon
    under dagster.yaml's limits. Each Mandant has its own snapshot file, so no DuckDB lock error."""
    # Start from an empty casavi *and* an empty snapshot, so every Mandant has a full first sync to send.
    sandbox_server.reset()
    shutil.rmtree(dagster_home / "snapshots", ignore_errors=True)
    launched = graphql_vars(dagster_dev, BACKFILL_MUTATION, {"params": {
        "selector": {
            "partitionSetName": "casavi_sync_job_partition_set",
            "repositorySelector": {"repositoryLocationName": "casavi_pipeline", "repositoryName": "__repository__"},
        },
        "partitionNames": ["0001", "0002", "0420"],
    }})["launchPartitionBackfill"]  # fmt: skip
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_filter = {"filter": {"tags": [{"key": "dagster/backfill", "value": launched["backfillId"]}]}}

    deadline, runs = time.monotonic() + 300, []
    while time.monotonic() < deadline:
        runs = graphql_vars(dagster_dev, RUNS_QUERY, backfill_filter)["runsOrError"]["results"]
        if len(runs) == 3 and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
            break
        time.sleep(2)
    assert sorted(r["status"] for r in runs) == ["SUCCESS"] * 3, runs
    partitions = {t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"}
    assert partitions == {"0001", "0002", "0420"}
    # side by side, not one after another: some run started before another had ended
    spans = [(r["startTime"], r["endTime"]) for r in runs]
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2)), spans

    held = sandbox_server.state()
    assert len(held["units"]) == 300
    assert {ref.split("-", 1)[0] for ref in held["units"]} == {"0001", "0002", "0420"}
