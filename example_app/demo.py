"""Demo data: securities, accounts, movements and corporate actions through their whole life.

Every command carries an idempotency key, so seeding twice (a restart with
``--seed``) changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import date, timedelta

from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    OpenAccount,
    RegisterSecurity,
    RejectCorporateAction,
    TransferHoldings,
    ValidateCorporateAction,
)
from example_app.corporate_actions import CorporateAction
from framework import Command, CommandBus, CommandContext, CommandRejected, Seeding, UnitOfWork

__all__ = ["SECURITIES", "demo_commands", "seed", "seed_demo"]

SECURITIES = {"US0378331005": ("Apple Inc.", "USD"), "DE0007164600": ("SAP SE", "EUR"),
              "FR0000120271": ("TotalEnergies SE", "EUR")}
ACCOUNTS = {"ACC-1001": "Ada Lovelace", "ACC-1002": "Alan Turing", "ACC-1003": "Grace Hopper"}


def demo_commands(today: date) -> Iterator[Command]:
    record = today + timedelta(days=14)
    for isin, (name, currency) in SECURITIES.items():
        yield RegisterSecurity(isin=isin, name=name, currency=currency)
    for number, holder in ACCOUNTS.items():
        yield OpenAccount(account_number=number, holder_name=holder)
    yield CreditHoldings(account_number="ACC-1001", isin="US0378331005", quantity=1_000)
    yield CreditHoldings(account_number="ACC-1002", isin="US0378331005", quantity=250)
    yield CreditHoldings(account_number="ACC-1003", isin="DE0007164600", quantity=400)
    yield TransferHoldings(from_account="ACC-1001", to_account="ACC-1003", isin="US0378331005", quantity=300)
    yield AnnounceCorporateAction.model_validate({
        "action_id": "CA-APPLE-DIV", "isin": "US0378331005", "record_date": record,
        "payment_date": record + timedelta(days=7),
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "USD"},
    })
    yield ValidateCorporateAction(action_id="CA-APPLE-DIV")
    yield AnnounceCorporateAction.model_validate({
        "action_id": "CA-SAP-SPLIT", "isin": "DE0007164600", "record_date": record,
        "terms": {"kind": "stock_split", "new_units": 2, "old_units": 1},
    })
    yield ValidateCorporateAction(action_id="CA-SAP-SPLIT")
    yield CancelCorporateAction(action_id="CA-SAP-SPLIT", reason="The issuer withdrew the split")
    yield AnnounceCorporateAction.model_validate({
        "action_id": "CA-TTE-DIV", "isin": "FR0000120271", "record_date": record,
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.79", "currency": "EUR"},
    })
    yield RejectCorporateAction(action_id="CA-TTE-DIV", reasons=["Terms do not match the issuer's notice"])


def seed(bus: CommandBus, today: date, *, settle_seconds: float = 5.0) -> int:
    """Send the demo commands; returns the position of the last event written.

    Before cancelling an action it waits (bounded) for the corporate-action
    process to record its entitlements, so the demo shows cancellation notices too.
    """
    position = 0
    for index, command in enumerate(demo_commands(today)):
        if isinstance(command, CancelCorporateAction):
            _wait_for_entitlements(bus, command.action_id, settle_seconds)
        context = CommandContext(idempotency_key=f"demo-{index}", correlation_id="demo-seed", actor="demo")
        try:
            result = bus.execute(command, context).result
        except CommandRejected:
            continue  # already there from an earlier seed under other keys
        position = max(position, result.position or 0)
    return position


def _wait_for_entitlements(bus: CommandBus, action_id: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        action = UnitOfWork(bus.store).find(CorporateAction, key=action_id)
        if action is not None and action.entitlements_calculated:
            return
        time.sleep(0.05)


def seed_demo(seeding: Seeding) -> None:
    """The example's ``App(seed=...)``: the demo data, then GraphQL queries to try with curl."""
    position = seed(seeding.bus, date.today())
    print(_demo_queries(seeding.base_url, position), flush=True)


def _demo_queries(base: str, position: int) -> str:
    def curl(query: str, header: str = "") -> str:
        body = json.dumps({"query": query})
        return f"  curl -s {base}/graphql -H 'content-type: application/json' {header}-d '{body}'"

    return "\n".join([
        "",
        "Demo data loaded. Try these GraphQL queries (read models update within milliseconds):",
        "",
        curl("{ cards(first: 10) { edges { node { actionId status kind recordDate security { name } "
             "entitlements { accountNumber cashAmount newUnits status } } } pageInfo { hasNextPage endCursor } } }",
             f"-H 'Eventfold-Position: {position}' "),
        curl('{ holdings(accountNumber: "ACC-1001") { isin quantity } }'),
        curl('{ notifications(accountNumber: "ACC-1003") { nodes { actionId kind message } } }'),
        curl('{ cards(filter: {status: "cancelled"}) { nodes { actionId cancellationReason } } }'),
        curl("{ projections { name position lagEvents state } }"),
        "",
        f"The operator console (projections, dead letters, events, replays) is at {base}/console/",
        "",
        "Commands go to POST /commands/{Name} (GET /openapi.json lists them); pass the `position` a command",
        "returns as the Eventfold-Position header of a query to read your own write.",
        "",
    ])
