"""GraphQL subscriptions through a real ``eventfold query-api`` on PostgreSQL, the relay and projections
running on JetStream, with a real WebSocket client (graphql-transport-ws).

Each update carries the position it reflects: updates arrive in order and once, and a client that
resubscribes from the last position it got misses nothing and gets nothing twice. Connections
authenticate with the bearer token of their connection_init payload; field permissions and document
limits are the queries' own; a subscriber that does not read holds up neither the others nor the
projections.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from streaming_helpers import Deployment, InProcessRoles, deployment_for, wait_entitled, wait_settled
from support.http import CliServer
from support.live import LiveClient, Refused
from support.nats import NatsServer, delete_stream, settings_for
from support.postgres import PgDatabase
from support.tokens import AUDIENCE, ISSUER, Issuer, make_issuer

from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    OpenAccount,
    RegisterSecurity,
    ValidateCorporateAction,
)
from example_app.corporate_actions import CashTerms
from framework.bus import CommandBus, CommandContext
from framework.commands import Command
from projections import build_projectors

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

ISIN = "US0378331005"
ACCOUNT = "ACC-LIVE-1"
CARD = "subscription($id: String!, $since: Int!) { card(actionId: $id, since: $since) { position card { status } } }"
NOTIFICATIONS = ("subscription($account: String!, $since: Int) { notifications(accountNumber: $account, "
                 "since: $since) { position notification { actionId kind } } }")


@dataclass
class Live:
    url: str
    bus: CommandBus
    deployment: Deployment
    issuer: Issuer
    sent: int = 0

    def execute(self, *commands: Command) -> int:
        position = 0
        for command in commands:
            self.sent += 1
            context = CommandContext(idempotency_key=f"live-{self.sent}", actor="live-tests")
            position = self.bus.execute(command, context).result.position or position
        return position

    def announce(self, action_id: str) -> int:
        return self.execute(AnnounceCorporateAction(
            action_id=action_id, isin=ISIN, record_date=date.today() + timedelta(days=30),
            terms=CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.5"), currency="USD")))


@pytest.fixture(scope="module")
def live(pg_database: PgDatabase, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Live]:
    jetstream = settings_for(nats_server.url)
    issuer = make_issuer(tmp_path_factory.mktemp("keys"))
    workdir = tmp_path_factory.mktemp("live")
    try:
        with pg_database.fresh_schema("live") as schema, \
                deployment_for(pg_database, schema, jetstream, workdir) as deployment:
            store, views = deployment.store(), deployment.views()
            store.create_schema()  # what `eventfold init-db` does, without a process to start
            views.create_schema()
            for projector in build_projectors():
                views.ensure_tables(projector.name, 1, projector.read_models)
            bus = deployment.bus(store)
            env = deployment.env(EVENTFOLD_JWKS_FILE=str(issuer.jwks_file), EVENTFOLD_JWT_ISSUER=ISSUER,
                                 EVENTFOLD_JWT_AUDIENCE=AUDIENCE, EVENTFOLD_JWT_ALGORITHMS="RS256",
                                 EVENTFOLD_ANONYMOUS_ROLES="public", EVENTFOLD_GRAPHQL_MAX_DEPTH="2")
            with InProcessRoles(store, views, bus, jetstream, build_projectors()), \
                    CliServer("query-api", env) as server:
                side = Live(server.base_url, bus, deployment, issuer)
                side.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"),
                             OpenAccount(account_number=ACCOUNT, holder_name="Ann Live"),
                             CreditHoldings(account_number=ACCOUNT, isin=ISIN, quantity=100))
                yield side
                assert "Traceback" not in server.stderr, server.stderr[-3000:]
    finally:
        delete_stream(jetstream)


def updates_until(client: LiveClient, id_: str, field: str, last: Any, *, seen: set[str] | None = None
                  ) -> list[dict[str, Any]]:
    """Updates of subscription ``id_`` until one for which ``last(update)`` holds; with ``seen``, each
    update's action id is added to it and the check sees ``{"seen": seen}``."""
    received: list[dict[str, Any]] = []
    while True:
        received.append(client.next_data(id_, timeout=30)[field])
        if seen is not None:
            seen.add(received[-1]["notification"]["actionId"])
            if last({"seen": seen}):
                return received
        elif last(received[-1]):
            return received


def test_a_card_arrives_in_each_state_it_moves_through_in_order_and_once(live: Live) -> None:
    with LiveClient(live.url) as client:
        client.subscribe("card", CARD, {"id": "CA-LIVE-1", "since": 0})  # before the action exists
        live.announce("CA-LIVE-1")
        live.execute(ValidateCorporateAction(action_id="CA-LIVE-1"))
        wait_entitled(live.bus.store, "CA-LIVE-1")
        cancelled_at = live.execute(CancelCorporateAction(action_id="CA-LIVE-1", reason="withdrawn"))
        updates = updates_until(client, "card", "card", lambda u: u["card"]["status"] == "cancelled")
    positions = [u["position"] for u in updates]
    assert positions == sorted(set(positions)) and positions[-1] == cancelled_at  # in order, each once
    order = ["announced", "validated", "cancelled"]
    statuses = [order.index(u["card"]["status"]) for u in updates]
    assert statuses == sorted(statuses)

    with LiveClient(live.url) as again:  # resubscribing from the first update's position
        again.subscribe("card", CARD, {"id": "CA-LIVE-1", "since": positions[0]})
        assert again.next_data("card")["card"] == updates[-1]  # its state now, not the one already seen


def test_a_resubscribing_client_misses_no_notification_and_gets_none_twice(live: Live) -> None:
    live.announce("CA-LIVE-2")
    live.execute(ValidateCorporateAction(action_id="CA-LIVE-2"))
    wait_entitled(live.bus.store, "CA-LIVE-2")
    with LiveClient(live.url) as client:
        client.subscribe("n", NOTIFICATIONS, {"account": ACCOUNT, "since": 0})
        first = updates_until(client, "n", "notifications", lambda u: u["notification"]["actionId"] == "CA-LIVE-2")
    seen = [(u["notification"]["actionId"], u["notification"]["kind"]) for u in first]
    assert len(seen) == len(set(seen))
    positions = [u["position"] for u in first]
    assert positions == sorted(set(positions))

    with LiveClient(live.url) as client:  # back from the position of the next-to-last one
        client.subscribe("n", NOTIFICATIONS, {"account": ACCOUNT, "since": positions[-2] if len(positions) > 1 else 0})
        assert client.next_data("n")["notifications"] == first[-1]
        live.execute(CancelCorporateAction(action_id="CA-LIVE-2", reason="withdrawn"))
        live.announce("CA-LIVE-3")
        live.execute(ValidateCorporateAction(action_id="CA-LIVE-3"))
        later = updates_until(client, "n", "notifications", lambda u: u["notification"]["actionId"] == "CA-LIVE-3")
    assert [u["notification"]["actionId"] for u in later] == ["CA-LIVE-2", "CA-LIVE-3"]
    assert later[0]["notification"]["kind"] != first[-1]["notification"]["kind"]  # the cancellation
    assert later[0]["position"] > first[-1]["position"]


def test_subscriptions_obey_the_field_permissions_with_the_connections_token(live: Live) -> None:
    query = "subscription { projectionLag(name: \"cards\") { projection position head lagEvents } }"
    with LiveClient(live.url) as anonymous:  # no token: the anonymous roles (here `public`)
        anonymous.subscribe("lag", query)
        refused = anonymous.receive()
    assert refused["type"] == "error", refused
    assert refused["payload"][0]["extensions"]["code"] == "FORBIDDEN"

    with LiveClient(live.url, authorization=f"Bearer {live.issuer.token(roles=['ops'])}") as operator:
        operator.subscribe("lag", query)
        lag = operator.next_data("lag")["projectionLag"]
    assert lag["projection"] == "cards" and lag["head"] >= lag["position"] >= 1
    assert lag["lagEvents"] == lag["head"] - lag["position"]


def test_a_connection_with_a_bad_token_is_closed(live: Live) -> None:
    with pytest.raises(Refused) as refused:
        LiveClient(live.url, authorization="Bearer not-a-token")
    assert refused.value.code == 4403


def test_subscriptions_obey_the_document_limits(live: Live) -> None:
    deep = "subscription { card(actionId: \"CA-LIVE-1\") { card { security { name } } } }"
    with LiveClient(live.url) as client:
        client.subscribe("deep", deep)
        refused = client.receive()
    assert refused["type"] == "error", refused
    assert refused["payload"][0]["extensions"]["code"] == "QUERY_TOO_DEEP"


def test_a_subscriber_that_does_not_read_holds_up_neither_the_others_nor_the_projections(live: Live) -> None:
    account = "ACC-LIVE-SLOW"
    live.execute(OpenAccount(account_number=account, holder_name="Sam Slow"),
                 CreditHoldings(account_number=account, isin=ISIN, quantity=10))
    with LiveClient(live.url, max_queue=1) as slow, LiveClient(live.url) as fast:
        slow.subscribe("n", NOTIFICATIONS, {"account": account, "since": 0})
        fast.subscribe("n", NOTIFICATIONS, {"account": account, "since": 0})
        actions = {f"CA-SLOW-{i}" for i in range(6)}
        for action in sorted(actions):
            live.announce(action)
            live.execute(ValidateCorporateAction(action_id=action))
        # The process manager notifies concurrently: notifications are in the order of their positions.
        got = updates_until(fast, "n", "notifications", lambda u: len(u["seen"]) == len(actions), seen=set())
        assert sorted(u["notification"]["actionId"] for u in got) == sorted(actions)  # each once
        assert [u["position"] for u in got] == sorted({u["position"] for u in got})  # in order
        views = live.deployment.views()
        wait_settled(views, live.bus.store, ["notifications", "cards"])  # the slow one never read meanwhile
        late = updates_until(slow, "n", "notifications", lambda u: len(u["seen"]) == len(actions), seen=set())
    assert late == got  # the slow subscriber, once it reads, gets the same updates: nothing lost, nothing doubled


def test_an_unknown_subscription_field_is_a_validation_error(live: Live) -> None:
    """An unknown subscription field is a validation error, as for queries."""
    with LiveClient(live.url) as client:
        client.subscribe("x", "subscription { nothing }")
        refused = client.receive()
    assert refused["type"] == "error"
    assert refused["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"



def test_a_subscription_document_that_does_not_parse_is_refused_with_an_error(live: Live) -> None:
    """As a query's: the parser's message and code (the fixture also checks no traceback was logged)."""
    too_many_tokens = 'subscription { card(actionId: "CA-LIVE-1") { ' + " ".join(["position"] * 2_100) + " } }"
    for document, code in (("subscription { card(actionId: ", "GRAPHQL_PARSE_FAILED"),
                           (too_many_tokens, "QUERY_TOO_LARGE")):
        with LiveClient(live.url) as client:
            client.subscribe("bad", document)
            refused = client.receive()
        assert refused["type"] == "error", refused
        assert refused["payload"][0]["message"].startswith("Syntax Error: ")
        assert refused["payload"][0]["extensions"]["code"] == code
