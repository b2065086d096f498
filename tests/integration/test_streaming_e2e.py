"""End to end over real servers: commands in over HTTP, the relay to JetStream, projection workers
and the corporate-action process into PostgreSQL read models.

Nothing lost, nothing doubled: the read models equal a fresh replay of the event store, the stream
holds every stored event once, and every depositor is told exactly once per action (once more on
cancellation). The roles run as ``eventfold`` subprocesses, or in process on the runner loops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import serve_write_api
from streaming_helpers import (
    Deployment,
    InProcessRoles,
    assert_matches_replay,
    assert_process_outcomes,
    assert_stream_matches_store,
    deployment_for,
    new_isin,
    record_date,
    rolled_back_gap,
    short_token,
    stored_positions,
    wait_entitled,
    wait_settled,
)
from support.http import CliServer
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase

from example_app.accounts import Account
from example_app.app import build_router
from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    DebitHoldings,
    OpenAccount,
    RegisterSecurity,
    RejectCorporateAction,
    TransferHoldings,
    ValidateCorporateAction,
)
from framework.adapters.nats import JetStreamSettings
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.bus import CommandBus
from framework.commands import Command
from framework.store import EventStore
from projections import build_projectors
from projections.cards import CorporateActionCard
from projections.entitlements import EntitlementRow
from projections.holdings import Holding
from projections.notifications import NotificationRow

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
               tmp_path: Path) -> Iterator[Deployment]:
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path) as deployed:
        yield deployed


def send(client: httpx.Client, command: Command, key: str | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    response = client.post(f"/commands/{command.command_name}", content=command.model_dump_json(), headers=headers)
    assert response.status_code == 200, (command.command_name, response.status_code, response.text)
    body: dict[str, Any] = response.json()
    return body


@dataclass
class Scenario:
    """What the HTTP script did, to check the outcome against."""

    accounts: list[str]
    isin_a: str
    isin_b: str
    dividend: str
    split: str
    rejected: str
    racing: str
    balances: dict[tuple[str, str], int]


def run_scenario(client: httpx.Client, store: EventStore, pg_database: PgDatabase, schema: str) -> Scenario:
    """Securities, accounts, movements and corporate actions through their whole life, over HTTP."""
    token = short_token()
    isin_a, isin_b = new_isin("US"), new_isin("DE")
    send(client, RegisterSecurity(isin=isin_a, name="Alpha Inc.", currency="USD"))
    send(client, RegisterSecurity(isin=isin_b, name="Beta AG", currency="EUR"))
    accounts = [f"E2E{token}-{i}" for i in range(8)]
    balances: dict[tuple[str, str], int] = {}
    for index, account in enumerate(accounts):
        send(client, OpenAccount(account_number=account, holder_name=f"Depositor {index}"))
        send(client, CreditHoldings(account_number=account, isin=isin_a, quantity=100 + 10 * index))
        balances[(account, isin_a)] = 100 + 10 * index
        if index < 5:
            send(client, CreditHoldings(account_number=account, isin=isin_b, quantity=40 + index))
            balances[(account, isin_b)] = 40 + index
    send(client, TransferHoldings(from_account=accounts[0], to_account=accounts[1], isin=isin_a, quantity=30))
    balances[(accounts[0], isin_a)] -= 30
    balances[(accounts[1], isin_a)] += 30
    send(client, DebitHoldings(account_number=accounts[2], isin=isin_a, quantity=10))
    balances[(accounts[2], isin_a)] -= 10
    rolled_back_gap(pg_database, schema)  # a hole in the positions: everyone must step over it

    # An idempotent retry writes nothing new and answers as the first time did.
    key = f"e2e-{token}-credit"
    credit = CreditHoldings(account_number=accounts[3], isin=isin_a, quantity=7)
    first = send(client, credit, key)
    events_before = len(store.read_stream(Account.id_for(accounts[3])))
    assert send(client, credit, key) == first
    assert len(store.read_stream(Account.id_for(accounts[3]))) == events_before
    balances[(accounts[3], isin_a)] += 7

    dividend, split, rejected, racing = (f"CA{token}-{kind}" for kind in ("DIV", "SPLIT", "REJ", "RACE"))
    send(client, AnnounceCorporateAction.model_validate({
        "action_id": dividend, "isin": isin_a, "record_date": record_date(),
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "USD"}}))
    send(client, ValidateCorporateAction(action_id=dividend))
    send(client, AnnounceCorporateAction.model_validate({
        "action_id": split, "isin": isin_b, "record_date": record_date(),
        "terms": {"kind": "stock_split", "new_units": 2, "old_units": 1}}))
    send(client, ValidateCorporateAction(action_id=split))
    send(client, AnnounceCorporateAction.model_validate({
        "action_id": rejected, "isin": isin_a, "record_date": record_date(),
        "terms": {"kind": "coupon", "amount_per_unit": "1.5", "currency": "USD"}}))
    send(client, RejectCorporateAction(action_id=rejected, reasons=["terms do not match the notice"]))
    # Cancelled right after validation: the process may or may not get its entitlements in first;
    # either way depositors hear exactly what the stored events say they should.
    send(client, AnnounceCorporateAction.model_validate({
        "action_id": racing, "isin": isin_b, "record_date": record_date(),
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.10", "currency": "EUR"}}))
    send(client, ValidateCorporateAction(action_id=racing))
    send(client, CancelCorporateAction(action_id=racing, reason="issued in error"))
    # Movements after the validations do not change their entitlements.
    send(client, CreditHoldings(account_number=accounts[4], isin=isin_a, quantity=5))
    balances[(accounts[4], isin_a)] += 5
    wait_entitled(store, split)
    send(client, CancelCorporateAction(action_id=split, reason="the issuer withdrew the split"))
    return Scenario(accounts, isin_a, isin_b, dividend, split, rejected, racing, balances)


def check_outcome(scenario: Scenario, store: EventStore, views: Any) -> None:
    outcome = assert_process_outcomes(store)
    accounts = scenario.accounts
    assert set(outcome.entitled[scenario.dividend]) == set(accounts)
    assert outcome.entitled[scenario.dividend][accounts[0]] == 70  # after the transfer, before later credits
    assert set(outcome.entitled[scenario.split]) == set(accounts[:5])
    assert scenario.rejected not in outcome.entitled
    split_notices = {k for k in outcome.notified if k[0] == scenario.split}
    kinds = ("entitlement", "cancellation")
    assert split_notices == {(scenario.split, a, kind) for a in accounts[:5] for kind in kinds}

    # The read models say the same.
    notifications = {(r.action_id, r.account_number, r.kind) for r in views.query("notifications", NotificationRow)}
    assert notifications == set(outcome.notified)
    entitlements = {(r.action_id, r.account_number): r for r in views.query("entitlements", EntitlementRow)}
    assert {k for k in entitlements if k[0] == scenario.split} == {(scenario.split, a) for a in accounts[:5]}
    assert all(r.status == "cancelled" for k, r in entitlements.items() if k[0] == scenario.split)
    assert all(r.status == "active" for k, r in entitlements.items() if k[0] == scenario.dividend)
    assert entitlements[(scenario.split, accounts[0])].new_units == 40  # 40 held, 2 for 1
    cards = {c.action_id: c for c in views.query("cards", CorporateActionCard)}
    assert cards[scenario.dividend].status == "validated"
    assert cards[scenario.dividend].entitled_accounts == len(accounts)
    assert cards[scenario.split].status == "cancelled"
    assert cards[scenario.rejected].status == "rejected"
    assert cards[scenario.racing].status == "cancelled"
    holdings = {(h.account_number, h.isin): h.quantity for h in views.query("holdings", Holding)}
    assert holdings == scenario.balances

    positions = stored_positions(store)
    assert positions != list(range(1, len(positions) + 1)), "the rolled-back hole should be there"


def test_commands_over_http_reach_read_models_through_jetstream_subprocesses(deployment: Deployment,
                                                                              pg_database: PgDatabase) -> None:
    deployment.init_db()
    store, views = deployment.store(), deployment.views()
    relay = deployment.start("relay")
    worker = deployment.start("project")
    with CliServer("write-api", deployment.env()) as api, httpx.Client(base_url=api.base_url, timeout=30) as client:
        scenario = run_scenario(client, store, pg_database, deployment.schema)
        wait_settled(views, store)

    check_outcome(scenario, store, views)
    assert_matches_replay(views, store)
    assert_stream_matches_store(deployment.jetstream, store)
    assert relay.alive and worker.alive
    deployment.assert_no_tracebacks()

    # A clean stop marks every projection stopped, still at the head.
    assert worker.stop() == 0 and relay.stop() == 0
    head = store.head()
    states = {s.name: s for s in views.states()}
    assert {name: (s.state, s.position) for name, s in states.items()} == {
        p.name: ("stopped", head) for p in build_projectors()}


def test_commands_over_http_reach_read_models_with_in_process_roles(
    pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    settings = pg_database.settings(pg_schema, pool_size=6)
    store, views = PostgresEventStore(settings), PostgresViewStore(settings)
    checker = PostgresEventStore(pg_database.settings(pg_schema, pool_size=2))
    try:
        store.create_schema()
        views.create_schema()
        bus = CommandBus(build_router(), store)
        server, server_store = serve_write_api(pg_database.settings(pg_schema, pool_size=4))
        try:
            with InProcessRoles(store, views, bus, jetstream_settings, build_projectors()), \
                    httpx.Client(base_url=server.base_url, timeout=30) as client:
                scenario = run_scenario(client, checker, pg_database, pg_schema)
                wait_settled(views, checker)
        finally:
            server.stop()
            server_store.close()
        check_outcome(scenario, checker, views)
        assert_matches_replay(views, checker)
        assert_stream_matches_store(jetstream_settings, checker)
    finally:
        checker.close()
        views.close()
        store.close()
