"""Both modes answer alike, and the embedded quickstart does what it prints.

- Embedded: ``eventfold dev`` (SQLite file, in-process bus, in-memory read models) in a subprocess.
- Distributed: ``eventfold init-db``, ``write-api``, ``relay``, ``project`` and ``query-api``, each
  its own subprocess, on real PostgreSQL and a real NATS JetStream stream of this test.

The same commands go to each write API over HTTP (every one followed by a read of its own write),
then the same queries go to each GraphQL endpoint; the answers must be identical except for
timestamps that legitimately differ between two runs (``VOLATILE``).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql_helpers import (
    APPLE,
    ASML,
    GraphQLClient,
    Role,
    Server,
    assert_no_leak,
    poll,
    printed_queries,
    running,
    send_command,
    utc_today,
    wait_settled,
    without,
)
from support.http import clean_env, eventfold_executable
from support.nats import NatsServer
from support.postgres import PgDatabase

from framework.adapters.nats import JetStreamSettings

CARD = ("actionId isin securityName kind recordDate paymentDate terms status reasons cancellationReason "
        "entitledAccounts announcedAt updatedAt security { isin name currency } "
        "entitlements { accountNumber recordDate holding cashAmount currency newUnits status }")
ACCOUNTS = ("M-1", "M-2", "M-3")


def compared_queries() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every query both modes must answer identically."""
    today = utc_today()
    queries: dict[str, tuple[str, dict[str, Any]]] = {}
    for order in ("RECORD_DATE", "ACTION_ID"):
        for descending in (False, True):
            queries[f"cards-{order}-{descending}"] = (
                f"query($d: Boolean!) {{ cards(orderBy: {order}, descending: $d) {{ edges {{ cursor "
                f"node {{ {CARD} }} }} pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} }} }}",
                {"d": descending})
    # announcedAt differs between runs, and so do cursors holding it: the order is compared, not the cursors.
    queries["cards-announced"] = ("{ cards(orderBy: ANNOUNCED_AT, descending: true) { nodes { actionId } } }", {})
    queries["cards-page"] = ("{ cards(first: 2, orderBy: ACTION_ID) { edges { cursor node { actionId } } "
                             "pageInfo { hasNextPage endCursor } } }", {})
    queries["cards-last"] = ("{ cards(last: 2) { nodes { actionId } pageInfo { hasPreviousPage } } }", {})
    queries["cards-cancelled"] = ('{ cards(filter: {status: "cancelled"}) { nodes { actionId cancellationReason } } }',
                                  {})
    queries["cards-asml"] = (f'{{ cards(filter: {{isin: "{ASML}"}}) {{ nodes {{ actionId status }} }} }}', {})
    queries["cards-dates"] = ("query($f: Date, $t: Date) { cards(filter: {recordDateFrom: $f, recordDateTo: $t}) "
                              "{ nodes { actionId recordDate } } }",
                              {"f": str(today), "t": str(today + timedelta(days=10))})
    for action in ("M-DIV", "M-SPLIT", "M-CPN", "M-LATE", "M-OPEN", "M-NONE"):
        queries[f"card-{action}"] = (f"query($a: String!) {{ card(actionId: $a) {{ {CARD} }} }}", {"a": action})
    for isin in (APPLE, ASML, "XS0000000000"):
        queries[f"security-{isin}"] = ("query($i: String!) { security(isin: $i) { isin name currency } }", {"i": isin})
    for account in (*ACCOUNTS, "M-NOBODY"):
        holdings = ("query($a: String!, $d: Date) { holdings(accountNumber: $a, asOf: $d) "
                    "{ accountNumber isin quantity } }")
        queries[f"holdings-{account}"] = (holdings, {"a": account, "d": None})
        queries[f"holdings-{account}-yesterday"] = (holdings, {"a": account, "d": str(today - timedelta(days=1))})
        queries[f"holdings-{account}-today"] = (holdings, {"a": account, "d": str(today)})
        queries[f"entitlements-{account}"] = (
            "query($a: String!) { entitlements(accountNumber: $a) { edges { cursor node { actionId accountNumber "
            "recordDate holding cashAmount currency newUnits status } } pageInfo { hasNextPage } } }", {"a": account})
        queries[f"notifications-{account}"] = (
            "query($a: String!) { notifications(accountNumber: $a) { nodes { actionId accountNumber kind message "
            "notifiedAt } pageInfo { hasNextPage } } }", {"a": account})
    queries["projections"] = ("{ projections { name version active state lagEvents deadLetters error } }", {})
    return queries


Command = Callable[..., int]


def run_scenario(write_url: str, client: GraphQLClient) -> dict[str, Any]:
    """The commands, each followed by a read of its own write; then every compared query's answer."""
    today = utc_today()
    with httpx.Client(timeout=30, event_hooks={"response": [lambda r: (r.read(), assert_no_leak(r))]}) as http:
        def command(command_name: str, **body: Any) -> int:
            return send_command(http, write_url, command_name, body)

        def sees(query: str, position: int) -> dict[str, Any]:
            return client.data(query, position=position)

        def holdings(account: str) -> str:
            return f'{{ holdings(accountNumber: "{account}") {{ isin quantity }} }}'

        def card(action: str) -> str:
            return f'{{ card(actionId: "{action}") {{ status entitledAccounts }} }}'

        command("RegisterSecurity", isin=APPLE, name="Apple Inc.", currency="USD")
        position = command("RegisterSecurity", isin=ASML, name="ASML Holding N.V.", currency="EUR")
        registered = sees(f'{{ security(isin: "{ASML}") {{ name }} }}', position)
        assert registered == {"security": {"name": "ASML Holding N.V."}}
        for number, holder in zip(ACCOUNTS, ("Ada", "Alan", "Grace"), strict=True):
            command("OpenAccount", account_number=number, holder_name=holder)
        position = command("CreditHoldings", account_number="M-1", isin=APPLE, quantity=100)
        assert sees(holdings("M-1"), position) == {"holdings": [{"isin": APPLE, "quantity": 100}]}
        command("CreditHoldings", account_number="M-2", isin=APPLE, quantity=40)
        command("CreditHoldings", account_number="M-2", isin=ASML, quantity=500)
        command("CreditHoldings", account_number="M-3", isin=ASML, quantity=10)
        position = command("TransferHoldings", from_account="M-2", to_account="M-3", isin=ASML, quantity=200)
        assert sees(holdings("M-3"), position) == {"holdings": [{"isin": ASML, "quantity": 210}]}
        position = command("DebitHoldings", account_number="M-1", isin=APPLE, quantity=30)
        assert sees(holdings("M-1"), position) == {"holdings": [{"isin": APPLE, "quantity": 70}]}

        refused = http.post(f"{write_url}/commands/DebitHoldings",
                            json={"account_number": "M-1", "isin": APPLE, "quantity": 1_000})
        outcome: dict[str, Any] = {"refused": (refused.status_code, refused.json()["code"])}

        def announce(action_id: str, isin: str, days: int, terms: dict[str, Any], paid: int | None = None) -> int:
            return command("AnnounceCorporateAction", action_id=action_id, isin=isin,
                           record_date=str(today + timedelta(days=days)),
                           payment_date=str(today + timedelta(days=paid)) if paid is not None else None, terms=terms)

        position = announce("M-DIV", APPLE, 10, {"kind": "cash_dividend", "amount_per_unit": "1.5", "currency": "USD"},
                            20)
        assert sees(card("M-DIV"), position) == {"card": {"status": "announced", "entitledAccounts": None}}
        position = command("ValidateCorporateAction", action_id="M-DIV")
        assert sees(card("M-DIV"), position)["card"]["status"] == "validated"

        announce("M-SPLIT", ASML, 5, {"kind": "stock_split", "new_units": 3, "old_units": 1})
        position = command("ValidateCorporateAction", action_id="M-SPLIT")
        poll(lambda: sees(card("M-SPLIT"), position)["card"]["entitledAccounts"] is not None,
             what="M-SPLIT's entitlements")
        position = command("CancelCorporateAction", action_id="M-SPLIT", reason="withdrawn by the issuer")
        assert sees(card("M-SPLIT"), position)["card"]["status"] == "cancelled"

        announce("M-CPN", ASML, 3, {"kind": "coupon", "amount_per_unit": "0.125", "currency": "EUR"})
        position = command("RejectCorporateAction", action_id="M-CPN", reasons=["bad terms", "late notice"])
        assert sees(card("M-CPN"), position)["card"]["status"] == "rejected"
        announce("M-LATE", APPLE, -1, {"kind": "cash_dividend", "amount_per_unit": "2", "currency": "USD"})
        command("ValidateCorporateAction", action_id="M-LATE")
        position = announce("M-OPEN", ASML, 30, {"kind": "cash_dividend", "amount_per_unit": "0.5", "currency": "EUR"})
        assert sees(card("M-OPEN"), position)["card"]["status"] == "announced"

    outcome["head"] = wait_settled(client)
    for name, (query, variables) in compared_queries().items():
        outcome[name] = client.data(query, variables)
    return outcome


def check_outcome(outcome: dict[str, Any]) -> None:
    """What the scenario must have produced, whichever the mode."""
    assert outcome["refused"][0] == 422, outcome["refused"]
    div = outcome["card-M-DIV"]["card"]
    assert div["entitlements"] == [
        {"accountNumber": "M-1", "recordDate": div["recordDate"], "holding": 70, "cashAmount": "105.00",
         "currency": "USD", "newUnits": None, "status": "active"},
        {"accountNumber": "M-2", "recordDate": div["recordDate"], "holding": 40, "cashAmount": "60.00",
         "currency": "USD", "newUnits": None, "status": "active"},
    ]
    split = outcome["card-M-SPLIT"]["card"]
    assert split["status"] == "cancelled" and split["cancellationReason"] == "withdrawn by the issuer"
    assert [(e["accountNumber"], e["newUnits"], e["status"]) for e in split["entitlements"]] == [
        ("M-2", 600, "cancelled"), ("M-3", 420, "cancelled")]
    assert outcome["card-M-LATE"]["card"]["entitledAccounts"] == 0
    assert outcome["card-M-CPN"]["card"]["reasons"] == ["bad terms", "late notice"]
    assert outcome["card-M-NONE"] == {"card": None}
    kinds = {a: sorted((n["actionId"], n["kind"]) for n in outcome[f"notifications-{a}"]["notifications"]["nodes"])
             for a in ACCOUNTS}
    assert kinds == {
        "M-1": [("M-DIV", "entitlement")],
        "M-2": [("M-DIV", "entitlement"), ("M-SPLIT", "cancellation"), ("M-SPLIT", "entitlement")],
        "M-3": [("M-SPLIT", "cancellation"), ("M-SPLIT", "entitlement")],
    }
    assert outcome["holdings-M-1-yesterday"] == {"holdings": []}
    assert outcome["holdings-M-3-today"] == outcome["holdings-M-3"] != {"holdings": []}
    rows = outcome["projections"]["projections"]
    assert {r["name"] for r in rows} == {"holdings", "cards", "entitlements", "notifications",
                                         "corporate_action_process"}
    assert all(r["lagEvents"] == 0 and r["deadLetters"] == 0 and r["error"] is None and r["active"] for r in rows)


# --- the modes -----------------------------------------------------------------------------------


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "logs"


def embedded_outcome(tmp_path: Path, logs: Path) -> dict[str, Any]:
    dev = Server(["dev", "--store", str(tmp_path / "embedded.sqlite3")], clean_env(), logs, "dev")
    with running(dev), GraphQLClient(dev.base_url) as client:
        outcome = run_scenario(dev.base_url, client)
    assert_clean_exit(dev)
    return outcome


def distributed_env(pg_database: PgDatabase, schema: str, jetstream: JetStreamSettings) -> dict[str, str]:
    return clean_env(
        EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=schema, EVENTFOLD_DB_POOL_SIZE="4",
        EVENTFOLD_NATS_URL=",".join(jetstream.servers), EVENTFOLD_STREAM=jetstream.stream,
        EVENTFOLD_SUBJECT_PREFIX=jetstream.subject_prefix, EVENTFOLD_STREAM_STORAGE="memory",
        EVENTFOLD_CONSUMER_PREFIX=jetstream.consumer_prefix, EVENTFOLD_CONSISTENCY_TIMEOUT_SECONDS="20",
    )


def distributed_outcome(env: dict[str, str], logs: Path) -> dict[str, Any]:
    init = subprocess.run([eventfold_executable(), "init-db"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert init.returncode == 0, init.stderr
    write_api = Server(["write-api"], env, logs, "write-api")
    query_api = Server(["query-api"], env, logs, "query-api")
    relay, project = Role(["relay"], env, logs, "relay"), Role(["project"], env, logs, "project")
    with running(write_api, relay, project, query_api), GraphQLClient(query_api.base_url) as client:
        outcome = run_scenario(write_api.base_url, client)
        assert all(role.running for role in (write_api, relay, project, query_api)), [
            role.describe() for role in (write_api, relay, project, query_api) if not role.running]
    for role in (write_api, relay, project, query_api):
        assert_clean_exit(role)
    return outcome


def assert_clean_exit(role: Role) -> None:
    """Stopped by SIGTERM without a traceback (uvicorn re-raises the signal after its graceful shutdown)."""
    assert role.process is not None and role.process.returncode in (0, -signal.SIGTERM), role.describe()
    for marker in TRACEBACK_MARKERS:
        assert marker not in role.stderr() + role.stdout(), role.describe()


TRACEBACK_MARKERS = ("Traceback",)


@pytest.mark.postgres
@pytest.mark.nats
def test_embedded_and_distributed_modes_answer_alike(
    tmp_path: Path, logs: Path, pg_database: PgDatabase, pg_schema: str, nats_server: NatsServer,
    jetstream_settings: JetStreamSettings,
) -> None:
    embedded = embedded_outcome(tmp_path, logs / "embedded")
    distributed = distributed_outcome(distributed_env(pg_database, pg_schema, jetstream_settings),
                                      logs / "distributed")
    check_outcome(embedded)
    check_outcome(distributed)
    embedded.pop("head"), distributed.pop("head")  # PostgreSQL may leave gaps in positions; SQLite does not
    assert without(embedded) == without(distributed)
    assert without(embedded) != embedded, "the timestamps compared away are there"


# --- eventfold dev --seed ------------------------------------------------------------------------


def seeded_answers(client: GraphQLClient, queries: list[tuple[str, dict[str, str], dict[str, Any]]], *,
                   complete: bool = True) -> list[dict[str, Any]]:
    """Each printed query's data, sent as printed; ``complete``: every top-level field has something."""
    answers = []
    for url, headers, body in queries:
        assert url == client.url, (url, client.url)
        response = client.http.post(url, json=body, headers=headers)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert "errors" not in answer and answer["data"], answer
        if complete:
            assert all(v not in (None, [], {}) for v in answer["data"].values()), answer
            assert all(v.get("nodes") or v.get("edges") for v in answer["data"].values() if isinstance(v, dict)), answer
        if "Eventfold-Position" in headers:
            assert answer["extensions"]["consistency"]["reached"] is True, answer
        answers.append(answer["data"])
    return answers


def wait_for_demo_queries(dev: Server) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    def printed() -> list[tuple[str, dict[str, str], dict[str, Any]]] | None:
        output = dev.stdout()
        return printed_queries(output) if "read your own write" in output else None

    queries = poll(printed, timeout=60, every=0.05, what="the demo queries being printed")
    assert len(queries) == 5, dev.stdout()
    assert [h.get("Eventfold-Position") is not None for _, h, _ in queries] == [True, False, False, False, False]
    return queries


CARDS = "{ cards(first: 100) { nodes { actionId status entitledAccounts cancellationReason } } }"


def test_dev_seed_prints_queries_that_work_and_a_restart_rebuilds_the_same_answers(tmp_path: Path) -> None:
    store = tmp_path / "dev.sqlite3"
    first = Server(["dev", "--store", str(store), "--seed"], clean_env(), tmp_path, "dev-seeded")
    with running(first), GraphQLClient(first.base_url) as client:
        printed = wait_for_demo_queries(first)
        seeded_answers(client, printed, complete=False)  # straight away, as a newcomer would
        head = wait_settled(client)
        before = seeded_answers(client, printed)
        cards = client.data(CARDS)
    assert_clean_exit(first)
    assert {c["actionId"]: c["status"] for c in cards["cards"]["nodes"]} == {
        "CA-APPLE-DIV": "validated", "CA-SAP-SPLIT": "cancelled", "CA-TTE-DIV": "rejected"}
    notices = before[2]["notifications"]["nodes"]
    assert sorted((n["actionId"], n["kind"]) for n in notices) == [
        ("CA-APPLE-DIV", "entitlement"), ("CA-SAP-SPLIT", "cancellation"), ("CA-SAP-SPLIT", "entitlement")]

    # Restarted on the same file, seeding again: the events are kept, the seed writes nothing new
    # (idempotency keys), and the in-memory read models are rebuilt to the very same answers.
    again = Server(["dev", "--store", str(store), "--seed"], clean_env(EVENTFOLD_CONSISTENCY_TIMEOUT_SECONDS="0.5"),
                   tmp_path, "dev-restarted")
    with running(again), GraphQLClient(again.base_url) as client:
        reprinted = wait_for_demo_queries(again)
        assert [(h, b) for _, h, b in reprinted] == [(h, b) for _, h, b in printed], "same position, same queries"
        assert wait_settled(client) == head, "nothing new was written"
        assert seeded_answers(client, reprinted) == before
        assert client.data(CARDS) == cards
        beyond = client.execute('{ holdings(accountNumber: "ACC-1001") { isin quantity } }', position=head + 100)
        assert beyond["data"] == {"holdings": [{"isin": APPLE, "quantity": 700}]}
        assert beyond["extensions"]["consistency"]["reached"] is False, "EVENTFOLD_CONSISTENCY_TIMEOUT_SECONDS"
    assert_clean_exit(again)
