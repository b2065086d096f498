"""Read-your-writes and subscriptions in the embedded (memory) mode: the in-process position signals
wake waiting requests and subscribers, over real HTTP and a real WebSocket client."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal

import httpx
import pytest
from support.http import ServerThread
from support.live import LiveClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from example_app.app import build_router
from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    OpenAccount,
    RegisterSecurity,
    ValidateCorporateAction,
)
from example_app.corporate_actions import CashTerms
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_positions import MemoryPositionSignals
from framework.adapters.memory_views import MemoryViewStore
from framework.bus import CommandBus
from framework.graphql import QueryApiOptions, create_query_app
from framework.positions import PositionWatch
from framework.worker import ProjectionWorker
from projections import build_projectors
from projections.graphql import build_graphql

ISIN = "US0378331005"


class Embedded:
    def __init__(self) -> None:
        self.store, self.views = MemoryEventStore(), MemoryViewStore()
        self.bus = CommandBus(build_router(), self.store)
        self.workers = [ProjectionWorker(p, self.views, self.store, self.bus) for p in build_projectors()]
        for worker in self.workers:
            self.views.ensure_tables(worker.name, 1, worker.projector.read_models)
        self.watch = PositionWatch(MemoryPositionSignals(self.views), self.views, self.store.head, max_waiting=20)

    def execute(self, *commands: object) -> int:
        position = 0
        for command in commands:
            position = self.bus.execute(command).result.position or position  # type: ignore[arg-type]
        return position

    def catch_up(self) -> None:
        from framework.dispatcher import Dispatcher
        from framework.projector import ProcessManager

        for _ in range(3):  # the process manager's commands make more events
            for worker in self.workers:
                worker.catch_up()
                if isinstance(worker.projector, ProcessManager):
                    dispatcher = Dispatcher(worker, self.bus)
                    while dispatcher.run_once():
                        pass


@pytest.fixture
def embedded() -> Iterator[tuple[Embedded, str]]:
    side = Embedded()
    app = create_query_app(build_graphql(), side.views, side.store, watch=side.watch,
                           options=QueryApiOptions(consistency_timeout=10))
    with ServerThread(app) as server:
        yield side, server.base_url


def announce(side: Embedded, action_id: str) -> int:
    return side.execute(AnnounceCorporateAction(
        action_id=action_id, isin=ISIN, record_date=date.today() + timedelta(days=10),
        terms=CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.5"), currency="USD")))


def test_a_waiting_query_is_answered_when_the_projection_commits(embedded: tuple[Embedded, str]) -> None:
    side, url = embedded
    side.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"))
    position = announce(side, "CA-1")
    query = {"query": '{ card(actionId: "CA-1") { status } }'}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(httpx.post, f"{url}/graphql", json=query,
                               headers={"Eventfold-Position": str(position)}, timeout=30) for _ in range(4)]
        side.catch_up()
        bodies = [a.result().json() for a in answers]
    for body in bodies:
        assert body["data"] == {"card": {"status": "announced"}}
        assert body["extensions"]["consistency"]["reached"] is True


def test_a_position_past_the_head_is_answered_at_once(embedded: tuple[Embedded, str]) -> None:
    side, url = embedded
    head = side.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"))
    body = httpx.post(f"{url}/graphql", json={"query": '{ card(actionId: "X") { status } }'},
                      headers={"Eventfold-Position": str(head + 1000)}, timeout=30).json()
    assert body["extensions"]["consistency"] == {"requested": head + 1000, "reached": False,
                                                 "positions": {"cards": 0}, "head": head}


def test_a_card_subscription_follows_its_states(embedded: tuple[Embedded, str]) -> None:
    side, url = embedded
    side.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"),
                 OpenAccount(account_number="ACC-1", holder_name="Ann"),
                 CreditHoldings(account_number="ACC-1", isin=ISIN, quantity=100))
    announced = announce(side, "CA-2")
    side.catch_up()
    query = "subscription($id: String!) { card(actionId: $id) { position card { status } } }"
    with LiveClient(url) as live:
        live.subscribe("1", query, {"id": "CA-2"})
        assert live.next_data("1")["card"] == {"position": announced, "card": {"status": "announced"}}
        side.execute(ValidateCorporateAction(action_id="CA-2"))
        side.catch_up()
        side.execute(CancelCorporateAction(action_id="CA-2", reason="withdrawn"))
        side.catch_up()
        updates = [live.next_data("1")["card"]]
        while updates[-1]["card"]["status"] != "cancelled":
            updates.append(live.next_data("1")["card"])
    positions = [u["position"] for u in updates]
    assert positions == sorted(set(positions)) and positions[0] > announced  # in order, once each
    statuses = [u["card"]["status"] for u in updates]
    assert statuses[-1] == "cancelled" and set(statuses) <= {"validated", "cancelled"}


def test_the_legacy_graphql_ws_protocol_is_not_offered(embedded: tuple[Embedded, str]) -> None:
    _, url = embedded
    ws_url = url.replace("http://", "ws://", 1) + "/graphql"
    with connect(ws_url, subprotocols=[Subprotocol("graphql-ws")], open_timeout=10) as ws, \
            pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4406
