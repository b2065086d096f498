"""The console of ``eventfold query-api`` on PostgreSQL, with tokens: the page asks for one, keeps it for the
tab, and then shows exactly what ``eventfold status --json`` prints and what the store holds."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.browser import BrowserPage
from support.http import CliServer, clean_env, eventfold_executable
from support.postgres import PgDatabase
from support.tokens import AUDIENCE, ISSUER, Issuer, make_issuer

from example_app.app import build_router
from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.bus import CommandBus, CommandContext
from framework.worker import ProjectionWorker
from projections.entitlements import EntitlementsProjector

HOSTILE = (
    f"/ops/events?after={2**63}", f"/ops/events/{2**63}", f"/ops/events?limit={2**63}",
    "/ops/events?type=Account%00Opened", "/ops/events?correlation_id=a%00b", "/ops/correlations/a%00b",
    "/ops/streams/Account:ACC%001", f"/ops/streams/{'9' * 40}", "/ops/events?since=99999-01-01T00:00:00",
)


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return make_issuer(tmp_path)


@pytest.fixture
def database(pg_database: PgDatabase, pg_schema: str) -> Iterator[dict[str, str]]:
    """Initialised tables with a few events, of which ``entitlements`` has applied the first three and
    ``holdings`` (partitioned) all of them, rebuilt by ``eventfold replay`` into version 2."""
    env = {"EVENTFOLD_DATABASE_URL": pg_database.url(), "EVENTFOLD_DB_SCHEMA": pg_schema}
    done = subprocess.run([eventfold_executable(), "init-db"], env=clean_env(**env), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    store = PostgresEventStore(pg_database.settings(pg_schema))
    views = PostgresViewStore(pg_database.settings(pg_schema))
    try:
        bus = CommandBus(build_router(), store)
        for command in (RegisterSecurity(isin="US0378331005", name="Apple Inc.", currency="USD"),
                        OpenAccount(account_number="ACC-1", holder_name="Ada"),
                        CreditHoldings(account_number="ACC-1", isin="US0378331005", quantity=5)):
            bus.execute(command, CommandContext(correlation_id="console-pg"))
        ProjectionWorker(EntitlementsProjector(), views, store).catch_up()
        bus.execute(OpenAccount(account_number="ACC-2", holder_name="Alan"), CommandContext())
        env["head"] = str(store.head())
    finally:
        views.close()
        store.close()
    replay = subprocess.run([eventfold_executable(), "replay", "holdings"], env=clean_env(**env), capture_output=True,
                            text=True, timeout=120, check=False)
    assert replay.returncode == 0, replay.stderr
    yield env


def test_query_api_console_asks_for_a_token_then_matches_eventfold_status(
        database: dict[str, str], issuer: Issuer, chromium_page: BrowserPage) -> None:
    head = int(database.pop("head"))
    env = clean_env(**database, EVENTFOLD_ANONYMOUS_ROLES="", EVENTFOLD_JWKS_FILE=str(issuer.jwks_file),
                    EVENTFOLD_JWT_ISSUER=ISSUER, EVENTFOLD_JWT_AUDIENCE=AUDIENCE)
    status = subprocess.run([eventfold_executable(), "status", "--json"], env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    rows = {row["name"]: row for row in json.loads(status.stdout) if row["state"] != "retired"}  # active versions
    assert rows["entitlements"]["position"] == 3 and rows["entitlements"]["head"] == head == 4
    assert rows["holdings"]["version"] == 2 and len(rows["holdings"]["partitions"]) == 4
    with CliServer("query-api", env) as server:
        refused = httpx.get(server.base_url + "/ops/status", timeout=10)
        assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
        wrong = httpx.post(server.base_url + "/ops/status", timeout=10)
        assert wrong.status_code == 405 and wrong.headers["content-type"] == "application/problem+json"
        graphql = httpx.post(server.base_url + "/graphql", json={"query": "{ projections { name } }"}, timeout=10,
                             headers=issuer.bearer("olga", ["ops"]))
        assert sorted(p["name"] for p in graphql.json()["data"]["projections"]) == sorted([*rows, "holdings"])  # and v1
        ops = issuer.bearer("olga", ["ops"])
        for path in HOSTILE:  # refused in our words or matching nothing, never a 500
            answer = httpx.get(server.base_url + path, headers=ops, timeout=10)
            assert answer.status_code in (200, 400, 404), (path, answer.status_code, answer.text)
            assert "Traceback" not in answer.text
            if answer.status_code != 200:  # else it matched nothing: a filter no event can meet
                assert answer.headers["content-type"] == "application/problem+json", (path, answer.text)
            else:
                assert answer.json().get("events", []) == [], (path, answer.text)
        page = chromium_page.page
        page.goto(server.base_url + "/console/")
        page.locator("#notice.error").get_by_text("role ops").wait_for()  # no token: refused, and told why
        page.fill("#token", issuer.token("carol", ["custody"]))
        page.click("#token-form button[type=submit]")
        page.locator("#notice.error").get_by_text("needs the role: ops").wait_for()
        page.fill("#token", issuer.token("olga", ["ops"]))
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#projections tr[data-projection='holdings']")
        assert page.evaluate("sessionStorage.getItem('eventfold.console.token')").count(".") == 2  # kept for the tab
        assert page.get_attribute("#status-at", "data-head") == str(head)
        for name, row in rows.items():
            shown_row = f"#projections tr[data-projection='{name}'][data-version='{row['version']}']"
            cells = page.locator(shown_row).locator("td")
            shown = {c.get_attribute("data-field"): c.inner_text() for c in cells.all()}
            for field in ("version", "state", "position", "head", "lag_events", "dead_letters", "outbox_pending",
                          "deadlines_pending"):
                assert shown[field] == str(row[field]), (name, field, shown, row)
        lines = page.locator("#projections tr.partition[data-partition-of='holdings']").all_inner_texts()
        assert len(lines) == len(rows["holdings"]["partitions"])
        for line, partition in zip(lines, rows["holdings"]["partitions"], strict=True):
            assert f"index: {partition['index']}" in line and f"position: {partition['position']}" in line, line
        chromium_page.screenshot("console-query-api")
    strays = [u for u in chromium_page.urls if not u.startswith(server.base_url + "/")]
    assert not strays, f"requests left the machine: {strays}"
    assert not chromium_page.errors, chromium_page.errors
