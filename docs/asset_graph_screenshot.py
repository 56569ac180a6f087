"""Screenshot of the asset graph in the Dagster UI (docs/asset-graph.png), taken with headless Chromium.

    ./run dev &                                   # the UI on 127.0.0.1:3000
    apt-get install chromium                      # Debian's package
    .venv/bin/python docs/asset_graph_screenshot.py [--url http://127.0.0.1:3000] [--out docs/asset-graph.png]

Talks to Chromium over the DevTools protocol (websockets, which dagster already depends on) because the
graph opens with its groups collapsed and does not re-fit after expanding: the script presses the UI's own
"expand all groups" shortcut (⌥E), zooms out with ctrl + mouse wheel, then takes the picture. It also marks
Dagster's one-time community notice as seen on that instance, so no dialog covers the graph.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

DEVTOOLS_PORT = 9333
WIDTH, HEIGHT = 1800, 1100


def _devtools(ws):
    """`call(method, **params)`: one DevTools command, waiting for its answer."""
    counter = itertools.count(1)

    def call(method: str, **params) -> dict:
        message_id = next(counter)
        ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(ws.recv())
            if reply.get("id") == message_id:
                return reply.get("result", {})

    return call


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("asset-graph.png"))
    parser.add_argument("--settle", type=float, default=12.0, help="seconds for the UI to load and lay out")
    parser.add_argument(
        "--zoom-out", type=int, default=3, help="ctrl + mouse-wheel steps out after expanding"
    )
    args = parser.parse_args()

    httpx.post(f"{args.url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    profile = tempfile.mkdtemp()
    chromium = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--remote-debugging-port={DEVTOOLS_PORT}", f"--user-data-dir={profile}",
         f"--window-size={WIDTH},{HEIGHT}", f"{args.url}/asset-groups"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{DEVTOOLS_PORT}/json/list", timeout=2).json()
                page = next(p for p in pages if p["type"] == "page")
                break
            except (httpx.TransportError, StopIteration):
                if time.monotonic() > deadline:
                    raise SystemExit("chromium's DevTools endpoint did not come up") from None
                time.sleep(0.5)
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            call = _devtools(ws)
            time.sleep(args.settle)
            for kind in ("keyDown", "keyUp"):  # the UI's own shortcut to expand all groups: ⌥E
                call("Input.dispatchKeyEvent", type=kind, modifiers=1, key="e", code="KeyE",
                     windowsVirtualKeyCode=69)  # fmt: skip
            time.sleep(args.settle / 2)
            # Expanding does not re-fit the zoom: ctrl + mouse wheel over the graph zooms out.
            for _ in range(args.zoom_out):
                call("Input.dispatchMouseEvent", type="mouseWheel", x=WIDTH * 0.6, y=HEIGHT * 0.45,
                     deltaX=0, deltaY=120, modifiers=2)  # fmt: skip
                time.sleep(0.2)
            time.sleep(2)
            shot = call("Page.captureScreenshot", format="png")
        args.out.write_bytes(base64.b64decode(shot["data"]))
        print(f"wrote {args.out}")
    finally:
        chromium.terminate()
        chromium.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
