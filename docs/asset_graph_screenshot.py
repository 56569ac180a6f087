"""Screenshot of the asset graph in the Dagster UI (docs/asset-graph.png), taken with headless Chromium.

    ./run dev &                                   # the UI on 127.0.0.1:3000
    apt-get install chromium                      # Debian's package; Playwright's own browsers are not used
    .venv/bin/python docs/asset_graph_screenshot.py [--url http://127.0.0.1:3000] [--out docs/asset-graph.png]

Materialize a Mandant first (e.g. 0001) if the picture should show the assets' status. The script drives
the UI through Playwright as a person would: it skips Dagster's one-time community notice, hides the
navigation and the asset sidebar, lays the graph out top to bottom with every group expanded (the
graph's own settings menu), then zooms in until the whole lineage (7 ERP assets → 5 casavi objects →
changeset → sync) just fits, and centres it. `casavi_pipeline_tests/test_ui_browser.py` uses the same
functions, so the picture's recipe is exercised by the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

#: Flags that work in containers and on CI: no sandbox (root), no GPU, no calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
#: One ctrl + wheel step of this many pixels zooms the graph by about ZOOM_STEP.
WHEEL_DELTA = 50
ZOOM_STEP = 1.1
TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    """Debian's Chromium (`apt-get install chromium`), or another one on PATH."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@contextlib.contextmanager
def browser(playwright: Playwright, executable: str | None = None) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile (removed afterwards) and a 1600×1000 viewport."""
    executable = executable or find_chromium()
    if executable is None:
        raise RuntimeError("chromium not found: apt-get install chromium")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


def skip_community_notice(page: Page) -> None:
    """Dagster asks once per instance to join its community; whenever that dialog shows, press Skip."""
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )


def _graph_settings(page: Page, item: str) -> None:
    """Pick an entry of the graph's settings menu (the gear under the zoom slider).

    The menu may close under the pointer while the graph re-renders (live status updates): then again.
    """
    gear = page.locator("#zoom-slider-container").get_by_role("button", name="settings")
    entry = page.get_by_role("menuitem", name=re.compile(item))
    for attempt in range(3):
        gear.click()
        try:
            entry.click(timeout=5_000)
            entry.wait_for(state="hidden", timeout=5_000)
            return
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)


def asset_graph_screenshot(page: Page, base_url: str, out: Path) -> Path:
    """The whole lineage at the largest zoom at which it fits the window, saved as a PNG at `out`."""
    page.goto(f"{base_url}/asset-groups")
    page.get_by_role("button", name="Materialize all").wait_for()
    page.get_by_role("button", name="Hide navigation").click()
    graph = page.locator("svg[class*=svgContainer]")
    laid_out = graph.filter(has_text="sync")  # the group "sync" collapsed, or its asset casavi_sync
    expanded = graph.filter(has_text="gebaeude").filter(has_text="casavi_sync")
    laid_out.wait_for()  # "Expand all groups" expands the groups the graph shows when it is picked
    _graph_settings(page, "vertical orientation")
    for attempt in range(3):
        _graph_settings(page, "Expand all groups")
        # Neither setting re-fits the graph (it may be off screen now); a reload lays it out anew and fits it.
        page.reload()
        laid_out.wait_for()
        try:
            expanded.wait_for(timeout=10_000)  # drawn with the layout: seconds, not minutes
            break
        except PlaywrightTimeoutError:  # on a starved machine the pick may have missed the groups: again
            if attempt == 2:
                raise
    # The sidebar's toggle sits right of the "Jump to…" box.
    page.get_by_role("combobox", name="Jump to…").locator("xpath=following::button[1]").click()
    page.wait_for_timeout(500)

    # The graph's visible area, less the toolbar above it and the zoom controls at its right.
    frame = graph.evaluate("e => e.parentElement.parentElement.getBoundingClientRect().toJSON()")
    left, top = frame["x"] + 10, frame["y"] + 60
    width, height = frame["width"] - 30, frame["height"] - 70
    centre = (left + width / 2, top + height / 2)

    def size() -> tuple[float, float]:
        box = graph.evaluate("e => e.getBoundingClientRect().toJSON()")
        return box["width"], box["height"]

    def zoom(direction: int) -> None:  # +1 in, -1 out
        page.mouse.move(*centre)
        page.keyboard.down("Control")
        page.mouse.wheel(0, -WHEEL_DELTA * direction)
        page.keyboard.up("Control")
        page.wait_for_timeout(400)

    for _ in range(20):
        w, h = size()
        if w > width or h > height:
            zoom(-1)
        elif w * ZOOM_STEP <= width and h * ZOOM_STEP <= height:
            zoom(+1)
        else:
            break
    # Centre it: the wheel without ctrl pans the graph.
    for _ in range(3):
        box = graph.evaluate("e => e.getBoundingClientRect().toJSON()")
        dx = box["x"] + box["width"] / 2 - centre[0]
        dy = box["y"] + box["height"] / 2 - centre[1]
        if abs(dx) < 8 and abs(dy) < 8:
            break
        page.mouse.move(*centre)
        page.mouse.wheel(dx, dy)
        page.wait_for_timeout(400)
    page.wait_for_timeout(1000)  # edges and labels settle
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("asset-graph.png"))
    parser.add_argument("--chromium", help="the browser binary (default: /usr/bin/chromium)")
    args = parser.parse_args()
    with sync_playwright() as playwright, browser(playwright, args.chromium) as context:
        page = context.new_page()
        skip_community_notice(page)
        try:
            print(f"wrote {asset_graph_screenshot(page, args.url.rstrip('/'), args.out)}")
        except Exception:
            failed = args.out.with_suffix(".failed.png")
            page.screenshot(path=str(failed))
            print(f"failed; the page as it was: {failed}")
            raise


if __name__ == "__main__":
    main()
