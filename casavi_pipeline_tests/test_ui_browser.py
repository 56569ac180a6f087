"""The Dagster UI in a real browser, as a new data engineer meets it after the quick start.

`./run dev`'s program (`python -m casavi_harness.dev`: the casavi sandbox beside `dagster dev`) runs on
free loopback ports with the shipped dagster.yaml and a copy of the bundled sample export. Headless
Chromium from Debian's packages (/usr/bin/chromium), driven by Playwright, then:

1. opens the job casavi_sync_job, presses *Materialize all…*, picks Mandant 0001, launches, follows the
   toast to the run page and waits for **Success** (cross-checked through GraphQL and the sandbox);
2. takes the asset graph picture (docs/asset_graph_screenshot.py's recipe) from that instance;
3. truncates 0001's tenant files to their header lines, launches 0001 again the same way, waits for
   **Failure** and finds the mass-deletion guard's one-line reason on the run page: in the run's tags
   (`casavi/failure_reason`) when the run has that tag, and in the failed step's event, opened with
   *View full message*.

Every stage leaves a screenshot in the test's tmp dir; assertion messages name them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from casavi_harness.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN
from casavi_sandbox.process import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _screenshot_module():
    """docs/asset_graph_screenshot.py: the browser setup and the README picture's recipe, shared."""
    spec = importlib.util.spec_from_file_location(
        "asset_graph_screenshot", ROOT / "docs" / "asset_graph_screenshot.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shots_module = _screenshot_module()
CHROMIUM = shots_module.find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "Chromium is not installed: the browser test drives Debian's /usr/bin/chromium; run `./run setup-system`",
        allow_module_level=True,
    )

MANDANT = "0001"
RUN_TIMEOUT_MS = 180_000
GUARD_PHRASES = ("would leave the sync", "Is the export truncated?")
FAILURE_REASON_TAG = "casavi/failure_reason"

RUN_QUERY = """
query ($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { status tags { key value } } }
}
"""


@dataclass
class DevUI:
    url: str
    sandbox_url: str
    export: Path
    log: Path
    shots: Path

    def graphql(self, query: str, variables: dict) -> dict:
        body = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30
        ).json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def sandbox_state(self) -> dict:
        return httpx.get(f"{self.sandbox_url}/_sandbox/state", timeout=30).json()


@pytest.fixture(scope="module")
def dev_ui(tmp_path_factory) -> Iterator[DevUI]:
    """`./run dev` on free ports: its own DAGSTER_HOME (the shipped dagster.yaml), data dir and export copy."""
    tmp = tmp_path_factory.mktemp("ui_browser")
    home, data, export, shots = tmp / "dagster_home", tmp / "data", tmp / "export", tmp / "screenshots"
    for folder in (home, data, shots):
        folder.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    shutil.copytree(SAMPLE_EXPORT_DIR, export)
    port = free_port()
    sandbox_port = free_port()
    while sandbox_port == port:
        sandbox_port = free_port()
    # A new engineer's shell: no casavi settings (conftest's stand-ins would make dev skip the sandbox),
    # the export copy with the sample's Mandanten (dev keeps both).
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASAVI_")}
    env |= {"DAGSTER_HOME": str(home), "ERP_EXPORT_DIR": str(export), "CASAVI_MANDANTEN": SAMPLE_MANDANTEN}
    # As ./run does: create the instance's storage once before webserver and daemon start side by side.
    subprocess.run(
        [sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().get_runs(limit=1)"],
        env=env, cwd=ROOT, check=True, timeout=120,
    )  # fmt: skip
    log_path = tmp / "dev.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "casavi_harness.dev", "--port", str(port), "--sandbox-port", str(sandbox_port),
         "--data-dir", str(data)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    ui = DevUI(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}", export, log_path, shots)
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine, the suite's other workers beside it
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{ui.url}/server_info", timeout=2).status_code == 200:
                    break
            if process.poll() is not None:
                pytest.fail(f"./run dev exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                pytest.fail(f"./run dev did not answer on /server_info within 300 s; see {log_path}")
            time.sleep(0.5)
        yield ui
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def page(dev_ui):
    with sync_playwright() as playwright, shots_module.browser(playwright, CHROMIUM) as context:
        page = context.new_page()
        # Every wait is on a condition; on a machine at load 7+ the UI's first render of a page can take
        # longer than Playwright's 30 s default, so the deadline is generous (a pass stays as fast).
        page.set_default_timeout(120_000)
        shots_module.skip_community_notice(page)
        try:
            yield page
        finally:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(dev_ui.shots / "last.png"))


def shot(page, ui: DevUI, name: str) -> Path:
    path = ui.shots / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def launch_from_job_page(page, ui: DevUI, mandant: str, stage: str) -> str:
    """Materialize all… → Mandant → Launch 1 run → the toast's View link; returns the run's id."""
    page.get_by_role("heading", name="casavi_sync_job").wait_for()
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    dialog.get_by_text("Select a partition or create one").click()
    partition = page.get_by_role("menuitem", name=re.compile(f"^{mandant}"))
    partition.click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the partition list
    partition.wait_for(state="hidden")
    shot(page, ui, f"{stage}-launch-dialog")
    dialog.get_by_role("button", name="Launch 1 run").click()
    view = page.get_by_role("region", name=re.compile("Notifications")).get_by_role("link", name="View").last
    href = view.get_attribute("href")
    view.click()
    run_id = href.rsplit("/", 1)[-1]
    page.wait_for_url(f"**/runs/{run_id}*")
    return run_id


def wait_for_run_end(page) -> str:
    """The run page's status, once it is final (bounded by RUN_TIMEOUT_MS)."""
    status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    status.wait_for(timeout=RUN_TIMEOUT_MS)
    return status.inner_text()


def errored_steps(page):
    """The rows of the run page's "Errored (n)" list, once it has some."""
    header = page.locator("[aria-controls]").filter(has_text=re.compile(r"^Errored \([1-9]\d*\)"))
    header.wait_for()
    rows = page.locator(f'[id="{header.get_attribute("aria-controls")}"]')
    return rows.get_by_text(re.compile(r"^[A-Za-z0-9_]+$"))


def guard_reason_on_run_page(page, ui: DevUI, run_tags: dict[str, str]) -> dict[str, Path]:
    """Where the guard's reason can be read on the run page: {place: screenshot}."""
    found: dict[str, Path] = {}

    def shows_reason(dialog) -> bool:
        dialog.wait_for()
        page.wait_for_timeout(500)  # the dialog fades in
        return all(phrase in dialog.inner_text() for phrase in GUARD_PHRASES)

    if FAILURE_REASON_TAG in run_tags:
        page.get_by_role("button", name="View tags and config").click()
        tags = page.get_by_role("dialog").last
        if shows_reason(tags):
            found["tags"] = shot(page, ui, "3-failure-reason-tag")
        tags.get_by_role("button", name="OK").click()
        tags.wait_for(state="hidden", timeout=5_000)

    # The failed step's events: click it in "Errored", then open each event's full message.
    errored_steps(page).first.click()
    page.wait_for_timeout(1000)
    shot(page, ui, "3-failed-step-events")
    buttons = page.get_by_role("button", name="View full message")
    for index in range(buttons.count()):
        buttons.nth(index).click()
        message = page.get_by_role("dialog").last
        if shows_reason(message):
            found[f"event {index}"] = shot(page, ui, f"3-failure-reason-event-{index}")
        message.get_by_role("button", name="Done").click()
        message.wait_for(state="hidden")
    return found


def test_a_new_engineer_runs_a_mandant_then_reads_why_the_guard_stopped_the_next_run(dev_ui, page):
    ui = dev_ui

    # 1. The UI as after the quick start: the job, Materialize all… for Mandant 0001, its run page.
    page.goto(ui.url)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("link", name="casavi_sync_job").first.click()
    shot(page, ui, "1-job")
    run_id = launch_from_job_page(page, ui, MANDANT, "1")
    status = wait_for_run_end(page)
    page.wait_for_timeout(1000)
    picture = shot(page, ui, "1-run-success")
    assert status == "Success", f"the first run of {MANDANT} ended {status}: see {picture}, {ui.log}"
    run = ui.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
    assert run["status"] == "SUCCESS"
    assert {"key": "dagster/partition", "value": MANDANT} in run["tags"]
    held = ui.sandbox_state()
    assert len(held["units"]) == 100 and all(ref.startswith(f"{MANDANT}-") for ref in held["units"])
    contacts_before = held["contacts"]

    # 2. The README picture's recipe, on this instance.
    graph = shots_module.asset_graph_screenshot(page, ui.url, ui.shots / "2-asset-graph.png")
    for asset in ("gebaeude", "casavi_contacts", "casavi_changeset", "casavi_sync"):
        assert page.get_by_text(asset, exact=True).first.is_visible(), f"{asset} not shown: see {graph}"

    # 3. A truncated delivery: 0001's tenants and rental contracts down to their header lines.
    for name in ("mietvertraege.csv", "mieter.csv"):
        path = ui.export / MANDANT / name
        path.write_bytes(path.read_bytes().split(b"\n", 1)[0] + b"\n")
    page.goto(f"{ui.url}/locations/casavi_pipeline/jobs/casavi_sync_job")
    run_id = launch_from_job_page(page, ui, MANDANT, "3")
    status = wait_for_run_end(page)
    page.wait_for_timeout(1000)
    picture = shot(page, ui, "3-run-failure")
    assert status == "Failure", f"the run of the truncated export ended {status}: see {picture}, {ui.log}"
    run = ui.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
    assert run["status"] == "FAILURE"
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    if FAILURE_REASON_TAG in tags:
        assert all(phrase in tags[FAILURE_REASON_TAG] for phrase in GUARD_PHRASES), tags

    found = guard_reason_on_run_page(page, ui, tags)
    assert found, (
        f"the guard's reason ({' … '.join(GUARD_PHRASES)}) is not shown on the run page; "
        f"see {sorted(ui.shots.glob('3-*.png'))}"
    )
    if FAILURE_REASON_TAG in tags:
        assert "tags" in found, f"the {FAILURE_REASON_TAG} tag is not shown; see {found}"
    # The guard stopped the sync before it wrote: casavi still holds every contact with its contracts.
    assert ui.sandbox_state()["contacts"] == contacts_before
