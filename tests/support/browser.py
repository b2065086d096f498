"""A real headless Chromium for the tests, driven by Playwright for Python, and what its pages asked for.

The browser is Debian's ``chromium`` package (``/usr/bin/chromium``, or ``EVENTFOLD_TEST_CHROMIUM``),
never one Playwright downloads (no ``playwright install``). Without a browser, or without the
``playwright`` package, the browser tests are skipped with the reason, except when ``CI=true``:
then they fail, so a broken CI set-up can never pass by skipping them (``.ci/run`` installs the
package when it is missing).

    # tests/integration/conftest.py imports the fixtures ``chromium`` and ``browser_page``

    def test_page(browser_page: BrowserPage) -> None:
        browser_page.page.goto(url)
        assert browser_page.requests_not_to_this_machine() == []

One browser per test module: while it is open, Playwright's event loop runs in the test thread, so
``asyncio.run`` cannot be called there (keep browser tests in modules of their own).

Every request a page makes is recorded (``BrowserPage.requests``), with the URLs that left the
machine picked out, so a test can insist that a page loads nothing from the internet. Screenshots
go to ``tmp/artifacts/`` under the repository (or ``EVENTFOLD_TEST_ARTIFACTS``); the path is printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

__all__ = ["BROWSER_ARGS", "BrowserPage", "artifact_path", "browser_page", "chromium", "chromium_path"]

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_ROOT = Path(__file__).resolve().parents[2]


def chromium_path() -> str:
    return os.environ.get("EVENTFOLD_TEST_CHROMIUM", "/usr/bin/chromium")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}: the browser tests must run in CI", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium per test module (a Playwright ``Browser``).

    Playwright's sync API runs an event loop in this thread while the browser is open, so
    ``asyncio.run`` cannot be called meanwhile: the browser closes at the end of the module that
    used it (keep browser tests in modules of their own)."""
    path = chromium_path()
    if not os.access(path, os.X_OK):
        _unavailable(f"no Chromium at {path} (Debian: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=BROWSER_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class BrowserPage:
    """A fresh page (its own context: no cookies or storage shared) and every URL it requested."""

    page: Any
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def requests_not_to_this_machine(self) -> list[str]:
        """Requested URLs whose host is not this machine (``data:`` and ``about:`` URLs stay local)."""
        return [url for url in self.requests if not _local(url)]


def _local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "about", "blob"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS or parts.netloc in LOCAL_HOSTS


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[BrowserPage]:
    context = chromium.new_context()
    page = context.new_page()
    recorded = BrowserPage(page)
    page.on("request", lambda request: recorded.requests.append(request.url))
    page.on("console", lambda message: recorded.console_errors.append(message.text)
            if message.type == "error" else None)
    try:
        yield recorded
    finally:
        context.close()


def artifact_path(name: str) -> Path:
    """Where a test keeps ``name`` (a screenshot, say) for people to look at after the run."""
    folder = Path(os.environ.get("EVENTFOLD_TEST_ARTIFACTS", _ROOT / "tmp" / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / re.sub(r"[^\w.-]+", "_", name)
