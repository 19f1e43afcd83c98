"""Real-browser smoke test: ``streamlit run`` against the real service, driven by Debian's chromium
through Playwright (never ``playwright install``; ``make chromium`` installs /usr/bin/chromium).

Set FLEETCAST_UPDATE_SCREENSHOT=1 to refresh docs/dashboard.png from this run (not in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleetcast_testkit import free_port
from playwright.sync_api import Page, sync_playwright

from orchestration.cli import stop as stop_process_groups

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HEATMAP_SVG = ".st-key-heatmap [data-testid=stVegaLiteChart] svg.marks"
DOCS_SCREENSHOT = REPO / "docs" / "dashboard.png"


@pytest.fixture
def streamlit_url(live_service: Any, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "FLEETCAST_API_URL": live_service.url, "FLEETCAST_DASHBOARD_REFRESH_SECONDS": "3600",
           "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "streamlit.log"
    command = [str(Path(sys.executable).parent / "streamlit"), "run", "dashboard/app.py",
               "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--client.toolbarMode", "minimal"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "streamlit did not start:\n" + log_path.read_text(errors="replace")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_groups([proc], timeout=15)


def _predictions_served(service_url: str) -> int:
    return int(httpx.get(f"{service_url}/health").json()["predictions_served"])


def _cells(page: Page) -> int:
    return page.locator(f"{HEATMAP_SVG} g.mark-rect.role-mark path").count()


@pytest.mark.browser
@pytest.mark.slow
def test_heatmap_draws_and_metric_switch_in_chromium(
    live_service: Any, streamlit_url: str, tmp_path: Path
) -> None:
    assert CHROMIUM.exists(), "Debian chromium is missing: `make chromium` (apt-get install chromium)"
    servers = [p["server_name"] for p in httpx.get(f"{live_service.url}/predictions").json()["predictions"]]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # tall enough for the whole page: Streamlit scrolls inside its own container, not the page
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(streamlit_url, wait_until="domcontentloaded", timeout=60_000)
            # fails the test if the heatmap never appears
            page.locator(HEATMAP_SVG).wait_for(state="visible", timeout=90_000)
            page.locator(f"{HEATMAP_SVG} text", has_text="CPU %").first.wait_for(timeout=30_000)
            assert _cells(page) == len(servers) * 16  # one row of 16 half-hour cells per server
            assert page.locator("[data-testid=stException]").count() == 0
            served = _predictions_served(live_service.url)

            page.locator(".st-key-heatmap_metric").click()
            page.get_by_role("option", name="Memory", exact=True).click()
            page.locator(f"{HEATMAP_SVG} text", has_text="Memory %").first.wait_for(timeout=30_000)
            assert page.locator(".st-key-heatmap_metric input").input_value() == "Memory"
            assert _cells(page) == len(servers) * 16
            # the actuals toggle doubles the columns: 16 half hours of history + 16 of forecast
            page.locator(".st-key-heatmap_actual label").click()
            page.locator(f"{HEATMAP_SVG} text", has_text="actual (left of the line)").first.wait_for(timeout=30_000)
            assert _cells(page) == len(servers) * 32
            page.wait_for_timeout(1000)  # let the chart settle before the picture
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            assert page.locator("[data-testid=stException]").count() == 0
            # the switch was served from the dashboard's cache: the service saw no new /predictions
            assert _predictions_served(live_service.url) == served
        finally:
            browser.close()
    if os.environ.get("FLEETCAST_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
