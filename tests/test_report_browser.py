"""The HTML report in a real headless browser: Debian's chromium, driven by Playwright.

`.ci/run` installs chromium; in CI (CI=true) a missing browser fails the test, locally it skips.
The screenshot is kept in the test's temp folder (its path is printed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PIPELINE = (Path(__file__).parent / "pipelines" / "report_shop.yaml").read_text()

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_the_report_renders_in_a_browser(cli, write, tmp_path, chromium, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("SHOP_TOKEN", "tok-very-secret")
    pipeline = write("shop.yaml", PIPELINE)
    assert cli("run", pipeline, "--run-id", "first").exit_code == 1
    pipeline.write_text(PIPELINE.replace("{{ item }} #{{ index }}", "{{ item }} no. {{ index }}"))
    assert cli("run", pipeline, "--run-id", "second").exit_code == 1
    page_file = tmp_path / "run.html"
    assert cli("report", "second", "-o", page_file).exit_code == 0

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")

            assert _size(page, "#graph") > (0, 0)
            nodes = page.locator("#graph .node")
            assert nodes.count() == 6
            for i in range(nodes.count()):
                assert _box(nodes.nth(i)) > (0, 0)
            assert page.locator("#graph .edge").count() == 4
            assert _size(page, "#timeline") > (0, 0)
            bars = page.locator("#timeline .bar")
            assert bars.count() >= 4  # the steps that ran; skipped ones show their reason
            for i in range(bars.count()):
                assert _box(bars.nth(i)) > (0, 0)
            assert page.locator("#timeline .label", has_text="each ×3").count() == 1

            # clicking a node opens that step's details
            broken = page.locator("#graph .node", has_text="broken").first
            broken.click()
            details = page.locator("details.step", has_text="broken").first
            assert details.get_attribute("open") is not None

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert problems == []
    assert [u for u in requests if not u.startswith("file:")] == []


def _size(page, selector: str) -> tuple[float, float]:
    return _box(page.locator(selector))


def _box(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None
    return (box["width"], box["height"])
