"""The HTML report in a real headless browser: Debian's chromium, driven by Playwright.

`.ci/run` installs chromium; in CI (CI=true) a missing browser fails the test, locally it skips.
Screenshots are kept in each test's temp folder (their paths are printed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_openai import FakeOpenAI, Reply

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


@contextmanager
def opened(chromium: str, page_file: Path) -> Iterator[Any]:
    """The report open in chromium; on leaving, no console errors and nothing fetched."""
    from playwright.sync_api import sync_playwright

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
            yield page
            shot = page_file.with_suffix(".png")
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert problems == []
    assert [u for u in requests if not u.startswith("file:")] == []


def test_the_report_renders_in_a_browser(cli, write, tmp_path, chromium, monkeypatch):
    monkeypatch.setenv("SHOP_TOKEN", "tok-very-secret")
    pipeline = write("shop.yaml", PIPELINE)
    assert cli("run", pipeline, "--run-id", "first").exit_code == 1
    pipeline.write_text(PIPELINE.replace("{{ item }} #{{ index }}", "{{ item }} no. {{ index }}"))
    assert cli("run", pipeline, "--run-id", "second").exit_code == 1
    page_file = tmp_path / "run.html"
    assert cli("report", "second", "-o", page_file).exit_code == 0

    with opened(chromium, page_file) as page:
        assert _box(page.locator("#graph")) > (0, 0)
        nodes = page.locator("#graph .node")
        assert nodes.count() == 6
        for i in range(nodes.count()):
            assert _box(nodes.nth(i)) > (0, 0)
        assert page.locator("#graph .edge").count() == 4
        assert _box(page.locator("#timeline")) > (0, 0)
        bars = page.locator("#timeline .bar")
        assert bars.count() >= 4  # the steps that ran; skipped ones show their reason
        for i in range(bars.count()):
            assert _box(bars.nth(i)) > (0, 0)
        assert page.locator("#timeline .label", has_text="each ×3").count() == 1

        # clicking a node opens that step's details
        page.locator("#graph .node", has_text="broken").first.click()
        details = page.locator("details.step", has_text="broken").first
        assert details.get_attribute("open") is not None


def test_attempts_and_waits_are_drawn_on_the_timeline(cli, write, tmp_path, chromium, calls_log):
    pipeline = write(
        "retry.yaml",
        """
        version: 1
        name: retry
        tools:
          flaky: {type: function, function: "tools:flaky"}
          nap: {type: function, function: "tools:nap"}
        steps:
          - {id: warm_up, tool: nap, with: {name: w, seconds: 0.2}}
          - id: shaky
            tool: flaky
            with: {name: "{{ steps.warm_up.output }}", failures: 2}
            backoff: {initial: 0.2, factor: 1}
        """,
    )
    assert cli("run", pipeline, "--run-id", "retry").exit_code == 0
    page_file = tmp_path / "retry.html"
    assert cli("report", "retry", "-o", page_file).exit_code == 0

    with opened(chromium, page_file) as page:
        row = page.locator('#timeline .track[data-step="s1"] .bar')
        states = [row.nth(i).get_attribute("class") for i in range(row.count())]
        assert states == [
            "bar s-queued",
            "bar s-failed",
            "bar s-waiting",
            "bar s-failed",
            "bar s-waiting",
            "bar s-completed",
        ]
        for state in ("failed", "waiting", "completed"):
            assert _box(page.locator(f'#timeline .track[data-step="s1"] .s-{state}').first) > (0, 0)
        page.locator("#timeline .label", has_text="shaky (3 attempts)").click()
        assert page.locator("#s1 table.tries tr").count() == 4  # a header and three attempts


def test_a_foreach_row_unfolds_on_click_into_its_items_and_their_rate_limit_waits(
    cli, write, tmp_path, chromium, monkeypatch
):
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        fake.default = Reply.text("ok")
        pipeline = write(
            "fan.yaml",
            """
            version: 1
            name: fan
            limits:
              gpt-test: {rpm: 120}  # two a second: items beyond the first two wait
            steps:
              - id: each
                foreach: "range(4) | list"
                prompt: "item {{ item }}"
                model: gpt-test
            """,
        )
        assert cli("run", pipeline, "--run-id", "fan").exit_code == 0
    page_file = tmp_path / "fan.html"
    assert cli("report", "fan", "-o", page_file).exit_code == 0

    with opened(chromium, page_file) as page:
        items = page.locator('#timeline .label.item[data-parent="s0"]')
        assert items.count() == 4
        assert all(not items.nth(i).is_visible() for i in range(4))  # folded
        page.locator('#timeline button.fold[data-fold="s0"]').click()
        assert page.locator('button.fold[data-fold="s0"]').get_attribute("aria-expanded") == "true"
        for i in range(4):
            assert items.nth(i).is_visible() and _box(items.nth(i)) > (0, 0)
        tracks = page.locator('#timeline .track.item[data-parent="s0"]')
        assert tracks.count() == 4 and _box(tracks.first) > (0, 0)
        waits = page.locator('#timeline .track.item[data-parent="s0"] .s-ratelimit')
        assert waits.count() >= 2 and _box(waits.first) > (0, 0)
        # unfolding does not open the step's details; clicking the row's name does
        assert page.locator("#s0").get_attribute("open") is None
        page.locator('#timeline .label[data-step="s0"]').click(position={"x": 40, "y": 5})
        assert page.locator("#s0").get_attribute("open") is not None
        page.locator('#timeline button.fold[data-fold="s0"]').click()
        assert not items.first.is_visible()  # folded again
        page.locator('#timeline button.fold[data-fold="s0"]').click()  # unfolded in the screenshot


def _box(locator: Any) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None
    return (box["width"], box["height"])
