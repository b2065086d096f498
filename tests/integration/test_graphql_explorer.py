"""The GraphQL explorer in a real headless Chromium: served by `eventfold dev` (and by `eventfold
query-api` when EVENTFOLD_GRAPHQL_EXPLORER is on), it loads nothing from outside this machine, runs a
query with the headers typed into it and shows the answer; a screenshot is kept as an artifact."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from support.browser import BrowserPage
from support.http import CliServer, clean_env, eventfold_executable
from support.postgres import PgDatabase

EXPLORER = "/graphql/explorer"
ISIN = "GB00B03MLX29"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[CliServer]:
    with CliServer("dev", clean_env(EVENTFOLD_SQLITE_PATH=str(tmp_path / "events.sqlite3"))) as server:
        yield server


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _left_the_machine(urls: list[str]) -> list[str]:
    """Requested URLs whose host is not this machine (``data:`` URLs stay in the page)."""
    return [u for u in urls if urlsplit(u).scheme != "data" and urlsplit(u).hostname not in LOCAL_HOSTS]


def _run(browser: BrowserPage, query: str, **headers: str) -> tuple[Any, str, dict[str, str]]:
    """Type the query and headers, press Run: the answer shown, the status line, the headers sent."""
    page = browser.page
    page.fill("#query", query)
    page.fill("#variables", "{}")
    page.fill("#authorization", headers.get("authorization", ""))
    page.fill("#position", headers.get("position", ""))
    with page.expect_request(lambda r: r.url.endswith("/graphql") and r.method == "POST") as sent:
        page.click("#run")
    page.locator("#status", has_text=re.compile(r"^HTTP")).wait_for()  # no script eval: the page's CSP forbids it
    shown = json.loads(page.text_content("#result") or "null")
    return shown, page.text_content("#status") or "", sent.value.headers


def test_dev_serves_an_explorer_that_stays_on_this_machine(dev: CliServer, chromium_page: BrowserPage) -> None:
    written = httpx.post(f"{dev.base_url}/commands/RegisterSecurity", timeout=30,
                         json={"isin": ISIN, "name": "Explorer plc", "currency": "GBP"})
    assert written.status_code == 200, written.text
    position = written.json()["position"]

    page = chromium_page.page
    page.goto(f"{dev.base_url}{EXPLORER}")
    page.wait_for_selector("details[data-type='Query'] .field")  # the schema browser, from introspection
    assert "cards" in (page.text_content("#types") or "")

    answer, status, sent = _run(chromium_page, f'{{ security(isin: "{ISIN}") {{ name currency }} }}',
                                position=str(position), authorization="a-token")
    assert status.startswith("HTTP 200"), status
    assert sent["eventfold-position"] == str(position) and sent["authorization"] == "Bearer a-token"
    assert answer["data"] == {"security": {"name": "Explorer plc", "currency": "GBP"}}
    assert answer["extensions"]["consistency"]["reached"] is True, "Eventfold-Position was sent"

    chromium_page.screenshot("graphql-explorer-dev")  # prints where it is

    assert chromium_page.errors == [], "no script error"
    refused, status, _sent = _run(chromium_page, "{ nosuchfield }")
    assert status.startswith("HTTP 400") and refused["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "data" not in refused, "the explorer asks for application/graphql-response+json"

    assert chromium_page.urls, "the page's requests were recorded"
    assert _left_the_machine(chromium_page.urls) == []


def test_the_explorer_sends_nothing_it_cannot_serve_itself(dev: CliServer) -> None:
    page = httpx.get(f"{dev.base_url}{EXPLORER}", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset in ("explorer.js", "explorer.css"):
        served = httpx.get(f"{dev.base_url}{EXPLORER}/{asset}", timeout=30)
        assert served.status_code == 200
        assert "http://" not in served.text and "https://" not in served.text, f"{asset} names no other host"
    assert "http" not in page.text.replace("http-equiv", "")


@pytest.fixture(scope="module")
def database(pg_database: PgDatabase) -> Iterator[dict[str, str]]:
    with pg_database.fresh_schema("explorer") as schema:
        env = {"EVENTFOLD_DATABASE_URL": pg_database.url(), "EVENTFOLD_DB_SCHEMA": schema}
        done = subprocess.run([eventfold_executable(), "init-db"], env=clean_env(**env), capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        yield env


@pytest.mark.postgres
def test_query_api_serves_it_only_when_the_setting_says(database: dict[str, str],
                                                       chromium_page: BrowserPage) -> None:
    with CliServer("query-api", clean_env(**database)) as plain:
        assert httpx.get(f"{plain.base_url}{EXPLORER}", timeout=30).status_code == 404, "off by default"
    on = clean_env(**database, EVENTFOLD_GRAPHQL_EXPLORER="true", EVENTFOLD_GRAPHQL_INTROSPECTION="true")
    with CliServer("query-api", on) as server:
        chromium_page.page.goto(f"{server.base_url}{EXPLORER}")
        chromium_page.page.wait_for_selector("details[data-type='Query'] .field")
        answer, status, _sent = _run(chromium_page, '{ holdings(accountNumber: "NOBODY") { quantity } }')
        assert status.startswith("HTTP 200") and answer == {"data": {"holdings": []}}
        assert _left_the_machine(chromium_page.urls) == []
