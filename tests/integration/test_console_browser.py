"""The operator console (``/console/``) in a real headless Chromium, over ``eventfold dev`` with the demo data.

The application is the example plus an ``audit`` projection whose archive is "down" at start, so the
demo's rejected corporate action is parked as a dead letter (``support.console_app``). Each test opens
one page, checks what it shows against the public APIs (``/ops/status``, GraphQL ``projections``,
``/ops/events``), keeps a screenshot, and checks that no request left this server.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.browser import BrowserPage
from support.http import CliServer, clean_env

REPOSITORY = Path(__file__).resolve().parents[2]
SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class Console:
    base_url: str
    archive_down: Path

    def get(self, path: str) -> Any:
        response = httpx.get(self.base_url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def command(self, name: str, body: dict[str, Any], correlation_id: str) -> dict[str, Any]:
        response = httpx.post(f"{self.base_url}/commands/{name}", json=body, timeout=10,
                              headers={"X-Correlation-ID": correlation_id})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def settled(self, *, letters: int) -> dict[str, Any]:
        """The status once every active projection reached the head and ``letters`` letters are parked."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            status: dict[str, Any] = self.get("/ops/status")
            active = [p for p in status["projections"] if p["active"]]
            parked = sum(p["dead_letters"] for p in active)
            if status["head"] and all(p["position"] == p["head"] == status["head"] for p in active) \
                    and parked == letters and all(p["outbox_pending"] == 0 for p in active):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"projections did not settle: {status}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    marker = tmp_path_factory.mktemp("console") / "archive-down"
    marker.touch()
    env = clean_env(EVENTFOLD_SQLITE_PATH=":memory:", EVENTFOLD_APP="support.console_app:app",
                    CONSOLE_TEST_ARCHIVE_DOWN=str(marker))
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "tests"), env.get("PYTHONPATH", "")])
    with CliServer("dev", env, args=["--seed"]) as server:
        console = Console(server.base_url, marker)
        deadline = time.monotonic() + SETTLE_SECONDS
        while not any(p["name"] == "audit" and p["dead_letters"] for p in console.get("/ops/status")["projections"]):
            assert time.monotonic() < deadline, f"the demo seed did not park the audit letter: {server.stderr[-2000:]}"
            time.sleep(0.1)
        console.settled(letters=1)
        yield console


def only_local(console: Console, page: BrowserPage) -> None:
    assert page.urls, "the page made no request"
    strays = [u for u in page.urls if not u.startswith(console.base_url + "/")]
    assert not strays, f"requests left the machine: {strays}"
    assert not page.errors, page.errors


def cells(page: BrowserPage, projection: str) -> dict[str, str]:
    row = page.page.locator(f"#projections tr[data-projection='{projection}']").first
    return {c.get_attribute("data-field"): c.inner_text() for c in row.locator("td").all()}


def test_projections_page_shows_what_status_says_and_updates_live(console: Console,
                                                                  chromium_page: BrowserPage) -> None:
    status = console.settled(letters=1)
    graphql = httpx.post(console.base_url + "/graphql", timeout=10, json={
        "query": "{ projections { name version state position head lagEvents deadLetters outboxPending } }"}).json()
    page = chromium_page.page
    page.goto(console.base_url + "/console/")
    page.wait_for_selector("#projections tr[data-projection='audit']")
    for expected, told in zip(status["projections"], graphql["data"]["projections"], strict=True):
        shown = cells(chromium_page, expected["name"])
        assert shown["version"] == str(expected["version"]) == str(told["version"])
        assert shown["state"] == expected["state"] == told["state"] == "running"
        assert shown["position"] == str(expected["position"]) == str(told["position"]) == str(status["head"])
        assert shown["lag_events"] == "0" == str(told["lagEvents"])
        assert shown["dead_letters"] == str(expected["dead_letters"]) == str(told["deadLetters"])
        assert shown["outbox_pending"] == str(told["outboxPending"])
    assert cells(chromium_page, "audit")["dead_letters"] == "1"
    written = console.command("OpenAccount", {"account_number": f"ACC-{uuid.uuid4().hex[:6]}", "holder_name": "Live"},
                              "console-live")
    page.wait_for_selector(f"#status-at[data-head='{written['position']}']")  # the page polls: no reload
    page.wait_for_selector("#lag-chart polyline[data-projection='holdings']", state="attached")  # flat: no height
    chromium_page.screenshot("console-projections")
    only_local(console, chromium_page)


def test_event_browser_pages_filters_and_opens_a_stream(console: Console, chromium_page: BrowserPage) -> None:
    # The seed alone may fill exactly one page: one more event makes a second page, whatever ran before.
    console.command("OpenAccount", {"account_number": f"ACC-{uuid.uuid4().hex[:6]}", "holder_name": "Paging"},
                    "console-paging")
    page = chromium_page.page
    page.goto(console.base_url + "/console/#/events")
    page.wait_for_selector("#events tr[data-position='1']")
    first = [int(p) for p in page.locator("#events tbody tr").evaluate_all("rows => rows.map(r => r.dataset.position)")]
    assert first == list(range(1, 26))  # the global stream, oldest first, 25 a page
    page.click("#next-page")
    page.wait_for_selector("#events tr[data-position='26']")
    announced = [e for e in console.get("/ops/events?limit=500&type=CorporateActionAnnounced")["events"]]
    page.goto(console.base_url + "/console/#/events?type=CorporateActionAnnounced")
    page.wait_for_selector(f"#events tr[data-position='{announced[0]['position']}']")
    shown = page.locator("#events tbody tr").evaluate_all("rows => rows.map(r => Number(r.dataset.position))")
    assert shown == [e["position"] for e in announced] and len(shown) >= 3
    page.click(f"#events tr[data-position='{announced[0]['position']}'] button")
    detail = page.locator("#event-detail")
    detail.get_by_text("CA-APPLE-DIV").first.wait_for()
    assert "correlation_id" in detail.inner_text() and "recorded_at" in detail.inner_text()
    chromium_page.screenshot("console-events")
    page.fill("#open-stream input[name=aggregate]", "Account:ACC-1001")
    page.click("#open-stream button")
    page.wait_for_selector("#stream #events tbody tr")
    types = page.locator("#stream #events tbody tr td:nth-child(3)").all_inner_texts()
    assert types[0] == "AccountOpened" and "SecuritiesDebited" in types
    chromium_page.screenshot("console-stream")
    only_local(console, chromium_page)


def test_a_correlation_id_leads_from_a_corporate_action_to_its_notifications(console: Console,
                                                                             chromium_page: BrowserPage) -> None:
    correlation = f"console-ca-{uuid.uuid4().hex[:8]}"
    action = f"CA-CONSOLE-{uuid.uuid4().hex[:6].upper()}"
    record = (date.today() + timedelta(days=10)).isoformat()
    console.command("AnnounceCorporateAction", {"action_id": action, "isin": "US0378331005", "record_date": record,
                                                "terms": {"kind": "cash_dividend", "amount_per_unit": "1.50",
                                                          "currency": "USD"}}, correlation)
    console.command("ValidateCorporateAction", {"action_id": action}, correlation)
    console.settled(letters=1)
    page = chromium_page.page
    page.goto(console.base_url + f"/console/#/events?correlation_id={correlation}")
    page.click(f"#events a[data-correlation='{correlation}']")  # from an event to everything its correlation led to
    page.wait_for_selector(".step.issued li[data-type='DepositorNotified']")
    notified = page.locator(".step.issued", has=page.locator("li[data-type='DepositorNotified']"))
    assert notified.get_attribute("data-issued-by") == "corporate_action_process"
    assert "because of EntitlementsCalculated" in notified.inner_text()  # why: the entitlements were calculated
    assert notified.locator("li[data-type='DepositorNotified']").count() == 3  # the three holders of the security
    assert "null" not in page.inner_text("#trail").split()  # nothing rendered from a missing value
    steps = page.locator(".step").all_inner_texts()
    assert "CorporateActionAnnounced" in steps[0] and "CorporateActionValidated" in steps[1]
    assert any("EntitlementsCalculated" in s and "because of CorporateActionValidated" in s for s in steps)
    notified.locator("li[data-type='DepositorNotified'] button").first.click()
    page.locator("#event-detail").get_by_text(action).first.wait_for()
    chromium_page.screenshot("console-correlation")
    only_local(console, chromium_page)


def test_a_dead_letter_is_retried_with_a_button_after_a_confirmation(console: Console,
                                                                     chromium_page: BrowserPage) -> None:
    (letter,) = console.get("/ops/dead-letters")["dead_letters"]
    page = chromium_page.page
    page.goto(console.base_url + "/console/#/dead-letters")
    row = page.locator(f"#dead-letters tr[data-letter='{letter['id']}']")
    row.wait_for()
    assert "the audit archive is unreachable" in row.inner_text() and "CorporateActionRejected" in row.inner_text()
    row.get_by_text("Show").click()
    page.locator("#letter-detail").get_by_text("CA-TTE-DIV").first.wait_for()  # the event's data
    assert "correlation_id" in page.locator("#letter-detail").inner_text()  # and its metadata
    chromium_page.screenshot("console-dead-letters")
    row.locator("button[data-action='retry']").click()
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-cancel")  # a change of mind changes nothing
    assert console.get("/ops/dead-letters")["dead_letters"] == [letter]
    console.archive_down.unlink()  # the operator fixed the cause
    row.locator("button[data-action='retry']").click()
    page.click("#confirm-ok")
    page.wait_for_selector("#no-letters", timeout=20_000)  # applied by the audit worker, so gone
    audit = next(p for p in console.settled(letters=0)["projections"] if p["name"] == "audit")
    assert audit["dead_letters"] == 0 and audit["error"] is None and audit["state"] == "running"
    only_local(console, chromium_page)


def test_a_blue_green_rebuild_is_started_watched_and_switched(console: Console, chromium_page: BrowserPage) -> None:
    before = next(p for p in console.get("/ops/status")["projections"] if p["name"] == "holdings" and p["active"])
    page = chromium_page.page
    page.goto(console.base_url + "/console/#/replays")
    page.wait_for_selector("#replay-projection option[value='holdings']", state="attached")
    page.select_option("#replay-projection", "holdings")
    page.click("#start-replay button")
    page.click("#confirm-ok")
    switched = page.locator("#replays tr[data-state='switched']")
    switched.wait_for(timeout=20_000)
    assert switched.locator("td[data-field='version']").inner_text() == str(before["version"] + 1)
    active = console.get("/ops/status")["projections"]
    assert any(p["name"] == "holdings" and p["active"] and p["version"] == before["version"] + 1 for p in active)
    page.wait_for_selector(f"#replay-versions tr[data-projection='holdings'][data-version='{before['version'] + 1}']")
    chromium_page.screenshot("console-replays")
    only_local(console, chromium_page)


def test_partitions_in_the_status_are_shown_under_their_projection(console: Console,
                                                                   chromium_page: BrowserPage) -> None:
    """Partitioned projections (when the status carries a ``partitions`` list) show one line per partition."""
    status = console.get("/ops/status")
    holdings = next(p for p in status["projections"] if p["name"] == "holdings")
    holdings["partitions"] = [{"partition": 0, "owner": "host-a:1", "position": 20, "lag_events": 3},
                              {"partition": 1, "owner": None, "position": 23, "lag_events": 0}]
    page = chromium_page.page
    page.route("**/ops/status", lambda route: route.fulfill(json=status))  # what a partitioned status would say
    page.goto(console.base_url + "/console/")
    lines = page.locator("tr.partition[data-partition-of='holdings']")
    lines.first.wait_for()
    assert lines.count() == 2
    assert "owner: host-a:1" in lines.nth(0).inner_text() and "lag_events: 3" in lines.nth(0).inner_text()
    assert "owner: -" in lines.nth(1).inner_text()
    assert page.locator("tr.partition[data-partition-of='cards']").count() == 0
    only_local(console, chromium_page)
