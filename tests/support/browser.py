"""A real headless Chromium for browser tests: Debian's ``chromium`` driven by Playwright for Python.

``chromium_page`` gives a fresh page (its own context: no cookies or storage shared between tests)
that records the URL of every request it makes, and saves screenshots as test artifacts::

    def test_console(chromium_page: BrowserPage) -> None:
        chromium_page.page.goto(url)
        chromium_page.screenshot("projections")  # prints where the file is
        assert all(u.startswith(url) for u in chromium_page.urls)

Playwright's own browsers are never downloaded (no ``playwright install``): the system's
``/usr/bin/chromium`` is launched. Without it the tests are skipped, except when ``CI=true``: then
they fail, so a CI set-up without a browser cannot pass by skipping them (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("EVENTFOLD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("EVENTFOLD_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / ".test-artifacts")) / "browser"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run; `apt-get install -y chromium`)", pytrace=False)
    pytest.skip(reason)


@dataclass
class BrowserPage:
    """A Playwright page, every URL it requested (in order), its scripts' uncaught errors, and where its
    screenshots go."""

    page: Any
    urls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions of the page's scripts
    say: Callable[[str], None] = print

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.say(f"screenshot: {path}")
        return path


def _reporter(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a line even while pytest captures the test's output (screenshot paths)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        if capture is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(f"\n{line}", flush=True)
    return say


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """One Chromium per test module (starting one costs about a second)."""
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chromium_page(chromium_browser: Any, request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    """A fresh page in its own context, recording the URL of every request it makes."""
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    recorded = BrowserPage(page, say=_reporter(request))
    context.on("request", lambda request: recorded.urls.append(request.url))
    page.on("pageerror", lambda error: recorded.errors.append(str(error)))
    try:
        yield recorded
    finally:
        context.close()
