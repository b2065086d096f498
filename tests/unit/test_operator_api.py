"""The operations API (``/ops/``) and the console's files, in process: tokens and roles, bad input,
browsing and following a correlation id, dead letters and replays over the memory adapters."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from starlette.applications import Starlette
from support.tokens import Issuer, make_issuer

from example_app.commands import AnnounceCorporateAction, CreditHoldings, OpenAccount, RegisterSecurity
from example_app.handlers import router
from framework import CommandBus, CommandContext
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.browse import EventFilter, browse, follow_correlation
from framework.errors import ConfigurationError
from framework.http.console import console_routes
from framework.http.operator import LagHistory, operator_routes
from framework.views import DeadLetter
from framework.worker import ProjectionWorker
from projections.holdings import HoldingsProjector

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


class World:
    def __init__(self) -> None:
        self.store = MemoryEventStore()
        self.views = MemoryViewStore()
        self.bus = CommandBus(router, self.store)
        self.worker = ProjectionWorker(HoldingsProjector(), self.views, self.store)

    def send(self, command: Any, correlation_id: str) -> int:
        context = CommandContext(correlation_id=correlation_id, causation_id=f"request-{uuid.uuid4()}")
        return self.bus.execute(command, context).result.position or 0

    def client(self, issuer: Issuer | None = None) -> TestClient:
        auth = issuer.authenticator() if issuer else None
        app = Starlette(routes=[*console_routes(), *operator_routes(self.store, self.views, [HoldingsProjector()],
                                                                    authenticator=auth)])
        return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    world.send(RegisterSecurity(isin="US0378331005", name="Apple Inc.", currency="USD"), "setup")
    world.send(OpenAccount(account_number="ACC-1", holder_name="Ada"), "setup")
    world.send(CreditHoldings(account_number="ACC-1", isin="US0378331005", quantity=10), "credit-1")
    world.worker.catch_up()
    yield world


def test_every_route_needs_a_token_with_the_ops_role(world: World, issuer: Issuer) -> None:
    client = world.client(issuer)
    assert client.get("/ops/status").status_code == 401
    assert client.get("/ops/status", headers=issuer.bearer("bob", ["custody"])).status_code == 403
    answer = client.get("/ops/status", headers=issuer.bearer("olga", ["ops"]))
    assert answer.status_code == 200
    (holdings,) = answer.json()["projections"]
    assert holdings["name"] == "holdings" and holdings["position"] == holdings["head"] == answer.json()["head"] == 3
    refused = client.post("/ops/dead-letters/1/retry", json={})
    assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"


def test_the_console_files_are_served_with_a_policy_that_allows_this_server_only(world: World) -> None:
    client = world.client()
    page = client.get("/console/")
    assert page.status_code == 200 and "console.js" in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert client.get("/console/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/../pyproject.toml").status_code == 404
    bare = client.get("/console", follow_redirects=False)
    assert bare.status_code == 308 and bare.headers["location"] == "console/"


def test_bad_input_is_a_clear_400(world: World) -> None:
    client = world.client()
    for path in ("/ops/events?after=-1", "/ops/events?limit=0", "/ops/events?limit=x", "/ops/events?since=yesterday",
                 "/ops/streams/not-an-aggregate", "/ops/events/abc"):
        answer = client.get(path)
        assert answer.status_code == 400, path
        assert answer.json()["detail"] and "Traceback" not in answer.text
    assert client.post("/ops/replays", content=b"projection=holdings",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
    assert client.post("/ops/replays", json={"projection": "nope"}).status_code == 400
    assert client.post("/ops/replays", json=["holdings"]).status_code == 422
    assert client.get("/ops/events/99").status_code == 404
    wrong = client.post("/ops/status", json={})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"


def test_events_page_by_page_filtered_by_type_and_time(world: World) -> None:
    client = world.client()
    first = client.get("/ops/events?limit=2").json()
    assert [e["position"] for e in first["events"]] == [1, 2] and first["next_after"] == 2
    assert not first["complete"]
    rest = client.get("/ops/events?limit=2&after=2").json()
    assert [e["type"] for e in rest["events"]] == ["SecuritiesCredited"] and rest["complete"]
    credited = client.get("/ops/events?type=SecuritiesCredited,AccountOpened").json()["events"]
    assert [e["type"] for e in credited] == ["AccountOpened", "SecuritiesCredited"]
    assert credited[1]["data"]["quantity"] == 10 and credited[1]["metadata"]["correlation_id"] == "credit-1"
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/ops/events", params={"since": later}).json()["events"] == []
    assert len(client.get("/ops/events", params={"until": later}).json()["events"]) == 3
    stream = client.get("/ops/streams/Account:ACC-1").json()
    assert [e["type"] for e in stream["events"]] == ["AccountOpened", "SecuritiesCredited"]


def test_a_page_scans_a_bounded_number_of_events_and_says_where_it_stopped(world: World) -> None:
    page = browse(world.store, EventFilter(types=frozenset({"Nothing"})), after=0, limit=10, scan=2)
    assert page.events == [] and page.next_after == 2 and not page.complete
    with pytest.raises(ConfigurationError):
        EventFilter(since=datetime(2026, 1, 1))  # no time zone


def test_a_correlation_is_followed_to_the_commands_a_process_manager_issued(world: World) -> None:
    from projections.process import CorporateActionProcess

    process = ProjectionWorker(CorporateActionProcess(), world.views, world.store, world.bus)
    world.send(AnnounceCorporateAction.model_validate({
        "action_id": "CA-1", "isin": "US0378331005", "record_date": date.today() + timedelta(days=3),
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.5", "currency": "USD"}}), "ca-1")
    from example_app.commands import ValidateCorporateAction
    world.send(ValidateCorporateAction(action_id="CA-1"), "ca-1")
    from framework.dispatcher import Dispatcher
    dispatcher = Dispatcher(process, world.bus)
    for _ in range(3):  # validated -> calculate entitlements -> notify the depositor
        process.catch_up()
        dispatcher.run_once()
    trail = follow_correlation(world.store, "ca-1")
    assert [[e.type for e in s.events] for s in trail.steps] == [
        ["CorporateActionAnnounced"], ["CorporateActionValidated"], ["EntitlementsCalculated"], ["DepositorNotified"]]
    calculated, notified = trail.steps[2], trail.steps[3]
    assert calculated.issued_by == notified.issued_by == "corporate_action_process"
    assert calculated.caused_by == trail.steps[1].events[0].position
    assert notified.caused_by == calculated.events[0].position and trail.complete
    answer = world.client().get("/ops/correlations/ca-1").json()
    assert answer["steps"][3]["issued_by"] == "corporate_action_process" and answer["issued"] == []


def test_commands_issued_but_not_executed_are_part_of_the_trail(world: World) -> None:
    from example_app.commands import ValidateCorporateAction
    from projections.process import CorporateActionProcess

    process = ProjectionWorker(CorporateActionProcess(), world.views, world.store, world.bus)
    world.send(AnnounceCorporateAction.model_validate({
        "action_id": "CA-2", "isin": "US0378331005", "record_date": date.today() + timedelta(days=3),
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.5", "currency": "USD"}}), "ca-2")
    validated = world.send(ValidateCorporateAction(action_id="CA-2"), "ca-2")
    process.catch_up()  # the process manager issued its command; no dispatcher has run it
    (waiting,) = world.client().get("/ops/correlations/ca-2").json()["issued"]
    assert waiting["state"] == "pending" and waiting["projection"] == "corporate_action_process"
    assert waiting["caused_by"] == validated and waiting["command_name"] and waiting["payload"]["action_id"] == "CA-2"


def test_dead_letters_are_listed_retried_and_discarded(world: World) -> None:
    with world.views.batch("holdings", 1) as batch:
        batch.park(DeadLetter("holdings", 3, "SecuritiesCredited", "x", "boom"))
    client = world.client()
    (letter,) = client.get("/ops/dead-letters").json()["dead_letters"]
    assert letter["error"] == "boom" and letter["position"] == 3
    assert client.post(f"/ops/dead-letters/{letter['id']}/retry", json={}).status_code == 200
    assert [r.id for r in world.views.retry_requests("holdings")] == [letter["id"]]
    assert client.post(f"/ops/dead-letters/{letter['id']}/discard", json={}).json()["action"] == "discard"
    assert client.post(f"/ops/dead-letters/{letter['id']}/discard", json={}).status_code == 404
    assert client.post(f"/ops/dead-letters/{letter['id']}/nothing", json={}).status_code == 404


def test_a_replay_is_started_and_switched(world: World) -> None:
    client = world.client()
    started = client.post("/ops/replays", json={"projection": "holdings"}).json()
    assert started["state"] in ("running", "switched") and started["from_version"] == 1
    deadline = time.monotonic() + 10
    while (job := client.get("/ops/replays").json()["replays"][0])["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert job["state"] == "switched" and job["version"] == 2 and job["position"] == job["head"] == 3
    assert world.views.active_version("holdings") == 2


def test_lag_history_keeps_one_sample_per_interval_for_an_hour() -> None:
    now = [0.0]
    history = LagHistory(list, every=5, keep=20, clock=lambda: now[0])
    row = {"name": "a", "active": True, "lag_events": 3, "lag_seconds": 1.5}
    for step in range(10):
        now[0] = step * 2.5
        history.record([row, {**row, "name": "old", "active": False}])
    samples = history.samples()
    assert len(samples) == 4 and samples[-1] == {"t": 20.0, "lag": {"a": [3, 1.5]}}


def test_the_console_setting_turns_the_console_and_its_api_off(world: World) -> None:
    from example_app.app import app
    from framework.cli.serve import _console
    from framework.settings import Settings

    assert Settings.from_env({}).console is True
    assert Settings.from_env({"EVENTFOLD_CONSOLE": "off"}).console is False
    with pytest.raises(ConfigurationError, match="EVENTFOLD_CONSOLE"):
        Settings.from_env({"EVENTFOLD_CONSOLE": "maybe"})
    assert _console(Settings(console=False), world.store, world.views, app, None) == []
    paths = {route.path for route in _console(Settings(), world.store, world.views, app, None)}
    assert {"/console/", "/ops/status", "/ops/replays"} <= paths
