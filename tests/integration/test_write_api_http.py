"""The example app's write API over real HTTP (uvicorn) on a real PostgreSQL event store."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
import pytest
from http_helpers import (
    MAX_BODY_BYTES,
    RETRY_AFTER_SECONDS,
    WriteApi,
    accepted,
    account_id,
    assert_no_traceback,
    events_after,
    holding_by_replay,
    new_code,
    new_isin,
    positioned,
    problem,
    serve_write_api,
    stream,
)
from support.postgres import PgDatabase, PostgresServer
from support.tcp_proxy import TcpProxy

from example_app.app import build_router
from example_app.corporate_actions import CorporateAction
from example_app.securities import Security

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "loop"])
def write_async(request: pytest.FixtureRequest) -> bool:
    """Every test here runs against both command paths: threads, and the event loop (EVENTFOLD_WRITE_ASYNC)."""
    return bool(request.param)


# --- helpers -------------------------------------------------------------------------------------


def post(client: httpx.Client, name: str, body: Any, **headers: str) -> httpx.Response:
    return client.post(f"/commands/{name}", json=body, headers=headers)


def security(client: httpx.Client) -> str:
    isin = new_isin()
    accepted(post(client, "RegisterSecurity", {"isin": isin, "name": "Test Plc", "currency": "EUR"}))
    return isin


def account(client: httpx.Client, isin: str | None = None, quantity: int = 0) -> str:
    number = new_code("ACC")
    accepted(post(client, "OpenAccount", {"account_number": number, "holder_name": "Ada Lovelace"}))
    if isin is not None and quantity:
        credit = {"account_number": number, "isin": isin, "quantity": quantity}
        accepted(post(client, "CreditHoldings", credit))
    return number


def announce_body(action_id: str, isin: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "action_id": action_id,
        "isin": isin,
        "record_date": "2026-06-30",
        "payment_date": "2026-07-15",
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "EUR"},
    }
    body.update(overrides)
    return body


# --- success and metadata ------------------------------------------------------------------------


def test_a_command_returns_aggregate_version_and_position(client: httpx.Client, write_api: WriteApi) -> None:
    isin = new_isin()
    head = write_api.store.head()
    body = accepted(post(client, "RegisterSecurity", {"isin": isin, "name": "Acme", "currency": "USD"}))

    assert body["aggregate_id"] == str(Security.id_for(isin))
    assert body["version"] == 1
    assert isinstance(body["position"], int) and body["position"] > head
    written = events_after(write_api.store, head)
    assert [(e.event_name, e.position) for e in written] == [("SecurityRegistered", body["position"])]
    assert written[0].event.model_dump() == {"isin": isin, "name": "Acme", "currency": "USD"}


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_describes_every_command_but_the_internal_ones(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    schemas = document["components"]["schemas"]
    commands = [c for c in build_router() if not c.internal]
    assert {c.command_name for c in commands} >= {"RegisterSecurity", "CancelCorporateAction"}
    assert not {"NotifyDepositor", "RecordEntitlements"} & {c.command_name for c in commands}
    assert not {"NotifyDepositor", "RecordEntitlements"} & set(schemas)
    assert set(document["paths"]) == {f"/commands/{c.command_name}" for c in commands}
    for command in commands:
        operation = document["paths"][f"/commands/{command.command_name}"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        assert set(schema["properties"]) == set(command.model_fields), command.command_name
        required = {n for n, f in command.model_fields.items() if f.is_required()}
        assert set(schema.get("required", [])) == required, command.command_name
        assert {"200", "400", "404", "409", "413", "415", "422", "503"} <= set(operation["responses"])
        assert {p["name"] for p in operation["parameters"]} >= {"Idempotency-Key", "X-Correlation-ID"}


# --- every error status --------------------------------------------------------------------------


def test_malformed_json_is_400(client: httpx.Client, write_api: WriteApi) -> None:
    head = write_api.store.head()
    for raw in (b'{"account_number": ', b"{'single': 'quotes'}", b'{"quantity": NaN}', b""):
        response = client.post(
            "/commands/OpenAccount", content=raw, headers={"content-type": "application/json"}
        )
        problem(response, 400, "malformed_json")
    assert write_api.store.head() == head


def test_malformed_header_is_400(client: httpx.Client) -> None:
    response = post(client, "OpenAccount", {"account_number": new_code("A"), "holder_name": "X"},
                    **{"Idempotency-Key": "has spaces in it"})
    problem(response, 400, "malformed_header")


def test_unknown_command_is_404(client: httpx.Client) -> None:
    body = problem(post(client, "LaunchRocket", {"target": "moon"}), 404, "unknown_command")
    assert "LaunchRocket" in body["detail"]


def test_an_internal_command_is_404_exactly_like_an_unknown_name(client: httpx.Client, write_api: WriteApi) -> None:
    number = account(client)
    head = write_api.store.head()
    body = {"account_number": number, "action_id": new_code("CA"), "kind": "entitlement", "message": "hello"}
    internal = post(client, "NotifyDepositor", body, **{"Idempotency-Key": new_code("K")})
    unknown = post(client, "NotifyDepositorr", body, **{"Idempotency-Key": new_code("K")})
    assert problem(internal, 404, "unknown_command") == {
        k: v.replace("NotifyDepositorr", "NotifyDepositor") if isinstance(v, str) else v
        for k, v in problem(unknown, 404, "unknown_command").items()}
    problem(post(client, "RecordEntitlements", {"action_id": "CA-1", "entitlements": []}), 404, "unknown_command")
    assert write_api.store.head() == head


def test_unknown_aggregate_is_404_naming_the_key_the_command_carried(client: httpx.Client, write_api: WriteApi) -> None:
    isin = security(client)
    missing = new_code("NOPE")
    head = write_api.store.head()
    response = post(client, "DebitHoldings", {"account_number": missing, "isin": isin, "quantity": 1})
    assert problem(response, 404, "aggregate_not_found")["detail"] == f"account '{missing}' does not exist"
    action_id = new_code("CA")
    response = post(client, "ValidateCorporateAction", {"action_id": action_id})
    assert problem(response, 404, "aggregate_not_found")["detail"] == f"corporate action '{action_id}' does not exist"
    number, unknown_isin = account(client), new_isin()
    response = post(client, "CreditHoldings", {"account_number": number, "isin": unknown_isin, "quantity": 1})
    assert problem(response, 404, "aggregate_not_found")["detail"] == f"security '{unknown_isin}' does not exist"
    assert [e.event_name for e in events_after(write_api.store, head)] == ["AccountOpened"]


def test_creating_twice_is_409_already_exists(client: httpx.Client, write_api: WriteApi) -> None:
    isin = security(client)
    head = write_api.store.head()
    response = post(client, "RegisterSecurity", {"isin": isin, "name": "Again", "currency": "EUR"})
    assert problem(response, 409, "already_exists")["detail"] == f"security '{isin}' already exists"
    number = account(client)
    response = post(client, "OpenAccount", {"account_number": number, "holder_name": "Someone Else"})
    problem(response, 409, "already_exists")
    assert [e.event_name for e in events_after(write_api.store, head)] == ["AccountOpened"]


def test_an_invalid_transition_is_409_with_the_state_as_reason(
    client: httpx.Client, write_api: WriteApi
) -> None:
    isin = security(client)
    action_id = new_code("CA")
    accepted(post(client, "AnnounceCorporateAction", announce_body(action_id, isin)))
    accepted(post(client, "ValidateCorporateAction", {"action_id": action_id}))
    head = write_api.store.head()

    response = post(client, "ValidateCorporateAction", {"action_id": action_id})
    assert problem(response, 409, "invalid_transition")["reason"] == "action_validated"
    body = problem(post(client, "RejectCorporateAction", {"action_id": action_id, "reasons": ["late"]}),
                   409, "invalid_transition")
    assert body["reason"] == "action_validated"
    assert write_api.store.head() == head


def test_an_oversized_body_is_413(client: httpx.Client, write_api: WriteApi) -> None:
    head = write_api.store.head()
    big = {"account_number": new_code("BIG"), "holder_name": "x" * (MAX_BODY_BYTES + 10)}
    problem(post(client, "OpenAccount", big), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield b'{"account_number": "BIG-1", "holder_name": "'
        for _ in range(MAX_BODY_BYTES // 512 + 2):
            yield b"y" * 512
        yield b'"}'

    response = client.post("/commands/OpenAccount", content=chunks(),
                           headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    problem(response, 413, "body_too_large")
    assert write_api.store.head() == head
    assert client.get("/healthz").status_code == 200


def test_a_non_json_content_type_is_415(client: httpx.Client, write_api: WriteApi) -> None:
    head = write_api.store.head()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        response = client.post("/commands/OpenAccount", content=b'{"account_number": "A-1"}',
                               headers={"content-type": content_type})
        problem(response, 415, "unsupported_media_type")
    assert write_api.store.head() == head


def test_an_invalid_payload_is_422_with_field_paths(client: httpx.Client, write_api: WriteApi) -> None:
    head = write_api.store.head()
    body = problem(post(client, "OpenAccount", {"account_number": "no spaces allowed", "nickname": "x"}),
                   422, "invalid_command")
    paths = {e["path"] for e in body["errors"]}
    assert paths == {"/account_number", "/holder_name", "/nickname"}, body["errors"]
    assert all(isinstance(e["message"], str) and e["message"] for e in body["errors"])

    isin = security(client)
    bad_terms = announce_body(new_code("CA"), isin,
                              terms={"kind": "cash_dividend", "amount_per_unit": "-1", "currency": "eur"})
    body = problem(post(client, "AnnounceCorporateAction", bad_terms), 422, "invalid_command")
    paths = {e["path"] for e in body["errors"]}
    assert any(p.startswith("/terms/") and p.endswith("/amount_per_unit") for p in paths), paths
    assert any(p.startswith("/terms/") and p.endswith("/currency") for p in paths), paths

    body = problem(post(client, "RegisterSecurity", {"isin": "XS0000000001", "name": "N", "currency": "EUR"}),
                   422, "invalid_command")
    assert [e["path"] for e in body["errors"]] == ["/isin"]
    body = problem(post(client, "OpenAccount", ["not", "an", "object"]), 422, "invalid_command")
    assert body["errors"]
    assert [e.event_name for e in events_after(write_api.store, head)] == ["SecurityRegistered"]


def test_a_broken_rule_is_422_with_a_reason(client: httpx.Client, write_api: WriteApi) -> None:
    isin = security(client)
    number = account(client, isin, 10)
    head = write_api.store.head()

    body = problem(post(client, "DebitHoldings", {"account_number": number, "isin": isin, "quantity": 11}),
                   422, "rule_violation")
    assert body["reason"] == "insufficient_holdings"
    body = problem(post(client, "TransferHoldings", {"from_account": number, "to_account": number,
                                                     "isin": isin, "quantity": 1}), 422, "rule_violation")
    assert body["reason"] == "same_account"
    late = announce_body(new_code("CA"), isin, record_date="2026-07-01", payment_date="2026-06-01")
    body = problem(post(client, "AnnounceCorporateAction", late), 422, "rule_violation")
    assert body["reason"] == "payment_before_record_date"
    assert write_api.store.head() == head
    assert holding_by_replay(write_api.store, number, isin) == (10, 0)


def test_what_a_read_model_cannot_hold_is_422_and_writes_nothing(client: httpx.Client, write_api: WriteApi) -> None:
    isin = security(client)
    number = account(client, isin, 10**15)  # MAX_HOLDING
    head = write_api.store.head()

    raw = b'{"account_number": "NUL-1", "holder_name": "Ann\\u0000"}'  # NUL, as JSON escapes it
    response = client.post("/commands/OpenAccount", content=raw, headers={"content-type": "application/json"})
    body = problem(response, 422, "invalid_command")
    assert body["errors"] == [{"path": "/holder_name", "message": "must not contain NUL characters"}]

    huge = announce_body(new_code("CA"), isin, terms={"kind": "stock_split", "new_units": 2**63, "old_units": 1})
    body = problem(post(client, "AnnounceCorporateAction", huge), 422, "invalid_command")
    assert body["errors"] == [{"path": "/terms/new_units", "message": "must be at most 9223372036854775807"}]

    big = announce_body(new_code("CA"), isin, terms={"kind": "stock_split", "new_units": 2**62, "old_units": 1})
    body = problem(post(client, "AnnounceCorporateAction", big), 422, "rule_violation")
    assert body["reason"] == "split_ratio_out_of_range"

    body = problem(post(client, "CreditHoldings", {"account_number": number, "isin": isin, "quantity": 1}),
                   422, "rule_violation")
    assert body["reason"] == "holding_limit_exceeded"
    assert write_api.store.head() == head


def test_a_wrong_method_is_405_problem(client: httpx.Client) -> None:
    response = client.get("/commands/OpenAccount")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/problem+json")


def test_an_unreachable_store_is_503_with_retry_after_and_recovers_without_restart(
    pg_server: PostgresServer, pg_database: PgDatabase, write_api: WriteApi
) -> None:
    if pg_server.host.startswith("/"):
        pytest.skip("the proxy needs PostgreSQL on TCP, not a unix socket")
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        settings = replace(pg_database.settings(write_api.schema, pool_size=2),
                           host=proxy.host, port=proxy.port, connect_timeout=2.0)
        server, store = serve_write_api(settings, write_async=write_api.write_async)
        try:
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                _cut_and_restore(client, proxy, write_api)
        finally:
            server.stop()
            store.close()


def _cut_and_restore(client: httpx.Client, proxy: TcpProxy, write_api: WriteApi) -> None:
    before = account(client)  # works through the proxy
    assert proxy.accepted >= 1

    proxy.cut()
    numbers = [new_code("DOWN") for _ in range(3)]
    for number in numbers:  # two meet the pooled (now broken) connections, one finds none
        response = post(client, "OpenAccount", {"account_number": number, "holder_name": "Down"})
        assert_no_traceback(response)
        problem(response, 503, "store_unavailable")
        assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert client.get("/healthz").status_code == 200
    assert proxy.refused >= 1  # new connections were attempted and refused

    proxy.restore()
    recovered = new_code("BACK")
    statuses = Counter[int]()
    for _ in range(300):  # the pool reconnects in the background; bounded by attempts, not time
        response = post(client, "OpenAccount", {"account_number": recovered, "holder_name": "Back"})
        assert_no_traceback(response)
        statuses[response.status_code] += 1
        if response.status_code != 503:
            break
        time.sleep(0.1)
    assert response.status_code == 200, (statuses, response.text)
    assert set(statuses) <= {200, 503}, statuses
    assert [e.event_name for e in stream(write_api.store, account_id(recovered))] == ["AccountOpened"]
    assert all(stream(write_api.store, account_id(n)) == [] for n in numbers)
    assert stream(write_api.store, account_id(before))


# --- idempotency ---------------------------------------------------------------------------------


def test_a_repeated_key_and_body_replays_the_first_response(
    client: httpx.Client, write_api: WriteApi
) -> None:
    isin = security(client)
    number = account(client)
    body = {"account_number": number, "isin": isin, "quantity": 5, "reference": "REF-1"}
    key = new_code("key")
    first = post(client, "CreditHoldings", body, **{"Idempotency-Key": key})
    first_body = accepted(first)
    assert "idempotent-replayed" not in first.headers
    head = write_api.store.head()

    for _ in range(3):
        again = post(client, "CreditHoldings", body, **{"Idempotency-Key": key})
        assert accepted(again) == first_body
        assert again.headers["idempotent-replayed"] == "true"
    assert write_api.store.head() == head
    assert holding_by_replay(write_api.store, number, isin) == (5, 0)

    other = post(client, "CreditHoldings", body, **{"Idempotency-Key": new_code("key")})
    assert accepted(other)["version"] == first_body["version"] + 1  # a new key is a new request


def test_a_repeated_key_with_another_body_is_422(client: httpx.Client, write_api: WriteApi) -> None:
    isin = security(client)
    number = account(client)
    key = new_code("key")
    accepted(post(client, "CreditHoldings", {"account_number": number, "isin": isin, "quantity": 5},
                  **{"Idempotency-Key": key}))
    head = write_api.store.head()
    response = post(client, "CreditHoldings", {"account_number": number, "isin": isin, "quantity": 6},
                    **{"Idempotency-Key": key})
    problem(response, 422, "idempotency_key_reused")
    response = post(client, "DebitHoldings", {"account_number": number, "isin": isin, "quantity": 5},
                    **{"Idempotency-Key": key})
    problem(response, 422, "idempotency_key_reused")
    assert write_api.store.head() == head


def test_fifty_concurrent_requests_with_one_key_execute_once(
    client: httpx.Client, write_api: WriteApi
) -> None:
    isin = security(client)
    number = account(client)
    key = new_code("key")
    body = {"account_number": number, "isin": isin, "quantity": 3, "reference": "ONCE"}
    responses = asyncio.run(_send_together(write_api.base_url, "CreditHoldings", [body] * 50,
                                           {"Idempotency-Key": key}))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    executed = [r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers]
    assert len(executed) == 1, statuses
    expected = executed[0].json()
    for response in responses:
        if response.status_code == 200:
            assert response.json() == expected
        else:
            problem(response, 409, "idempotency_key_in_flight")

    credits = [e for e in positioned(write_api.store, number) if e.event_name == "SecuritiesCredited"]
    assert len(credits) == 1
    assert credits[0].position == expected["position"]
    late = post(client, "CreditHoldings", body, **{"Idempotency-Key": key})
    assert accepted(late) == expected and late.headers["idempotent-replayed"] == "true"


async def _send_together(
    base_url: str, name: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        # open the connections first, so the commands themselves arrive together
        await asyncio.gather(*(client.get("/healthz") for _ in bodies))
        responses = await asyncio.gather(
            *(client.post(f"/commands/{name}", json=b, headers=headers or {}) for b in bodies)
        )
    for response in responses:
        assert_no_traceback(response)
    return list(responses)


# --- expected versions: If-Match and ETag ---------------------------------------------------------


def test_if_match_on_the_current_version_runs_and_the_etag_is_the_new_version(
    client: httpx.Client, write_api: WriteApi
) -> None:
    isin = security(client)
    number = new_code("ACC")
    opened = post(client, "OpenAccount", {"account_number": number, "holder_name": "Ada"}, **{"If-Match": '"0"'})
    assert accepted(opened)["version"] == 1 and opened.headers["etag"] == '"1"'
    credit = {"account_number": number, "isin": isin, "quantity": 5}
    first = post(client, "CreditHoldings", credit, **{"If-Match": opened.headers["etag"]})  # the ETag, sent back
    assert accepted(first)["version"] == 2 and first.headers["etag"] == '"2"'
    second = post(client, "CreditHoldings", credit, **{"If-Match": "2"})  # the bare version
    assert accepted(second)["version"] == 3 and second.headers["etag"] == '"3"'
    assert holding_by_replay(write_api.store, number, isin) == (10, 0)


def test_if_match_on_another_version_is_409_with_the_current_version_and_writes_nothing(
    client: httpx.Client, write_api: WriteApi
) -> None:
    isin = security(client)
    number = account(client, isin, 5)  # opened, credited: version 2
    head = write_api.store.head()
    response = post(client, "DebitHoldings", {"account_number": number, "isin": isin, "quantity": 1},
                    **{"If-Match": '"1"'})
    body = problem(response, 409, "version_mismatch")
    assert (body["expected_version"], body["current_version"]) == (1, 2)
    assert "version 2" in body["detail"] and "etag" not in response.headers
    assert_no_traceback(response)
    assert write_api.store.head() == head

    fresh = post(client, "OpenAccount", {"account_number": new_code("ACC"), "holder_name": "Bo"}, **{"If-Match": "3"})
    body = problem(fresh, 409, "version_mismatch")
    assert (body["expected_version"], body["current_version"]) == (3, 0)  # it does not exist yet
    assert write_api.store.head() == head


def test_clients_that_decided_on_one_version_write_once_and_the_rest_hear_version_mismatch(
    client: httpx.Client, write_api: WriteApi
) -> None:
    isin = security(client)
    number = account(client, isin, 100)  # version 2
    debit = {"account_number": number, "isin": isin, "quantity": 7}
    responses = asyncio.run(_send_together(write_api.base_url, "DebitHoldings", [debit] * 8, {"If-Match": '"2"'}))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 409: 7}, statuses
    for response in responses:
        if response.status_code == 409:  # the bus's own retries end in a mismatch, never a conflict
            assert problem(response, 409, "version_mismatch")["current_version"] == 3
    assert holding_by_replay(write_api.store, number, isin) == (93, 0)


def test_an_idempotency_key_replay_answers_first_whatever_if_match_says(
    client: httpx.Client, write_api: WriteApi
) -> None:
    isin = security(client)
    number = account(client, isin, 5)  # version 2
    body = {"account_number": number, "isin": isin, "quantity": 1, "reference": "REF-IM"}
    key = new_code("key")
    first = post(client, "DebitHoldings", body, **{"Idempotency-Key": key, "If-Match": '"2"'})
    first_body = accepted(first)
    head = write_api.store.head()
    for if_match in ('"2"', '"3"', "99"):  # stale now, current, never true: the key's answer stands
        again = post(client, "DebitHoldings", body, **{"Idempotency-Key": key, "If-Match": if_match})
        assert accepted(again) == first_body
        assert again.headers["idempotent-replayed"] == "true" and again.headers["etag"] == '"3"'
    assert write_api.store.head() == head

    refused_key = new_code("key")  # a mismatch is not remembered: the key is free for a corrected expectation
    problem(post(client, "DebitHoldings", body, **{"Idempotency-Key": refused_key, "If-Match": "2"}),
            409, "version_mismatch")
    retried = post(client, "DebitHoldings", body, **{"Idempotency-Key": refused_key, "If-Match": "3"})
    assert accepted(retried)["version"] == 4 and "idempotent-replayed" not in retried.headers
    assert holding_by_replay(write_api.store, number, isin) == (3, 0)


@pytest.mark.parametrize("value", ['W/"1"', "*", '"1", "2"', "abc", "01", "-1", '"1', "1.0", '""',
                                   "99999999999999999999"])
def test_a_malformed_if_match_is_400_and_writes_nothing(client: httpx.Client, write_api: WriteApi,
                                                         value: str) -> None:
    head = write_api.store.head()
    response = post(client, "OpenAccount", {"account_number": new_code("ACC"), "holder_name": "Ada"},
                    **{"If-Match": value})
    assert "If-Match" in problem(response, 400, "malformed_header")["detail"]
    assert write_api.store.head() == head


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_debits_never_overdraw(client: httpx.Client, write_api: WriteApi) -> None:
    isin = security(client)
    number = account(client, isin, 100)
    debit = {"account_number": number, "isin": isin, "quantity": 7}
    responses = asyncio.run(_send_together(write_api.base_url, "DebitHoldings", [debit] * 24))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 409, 422}, statuses
    for response in responses:
        if response.status_code == 409:
            problem(response, 409, "concurrency_conflict")
        elif response.status_code == 422:
            assert problem(response, 422, "rule_violation")["reason"] == "insufficient_holdings"
    succeeded = [r.json() for r in responses if r.status_code == 200]
    assert 1 <= len(succeeded) <= 100 // 7
    assert len({s["version"] for s in succeeded}) == len(succeeded)
    assert len({s["position"] for s in succeeded}) == len(succeeded)

    final, lowest = holding_by_replay(write_api.store, number, isin)
    assert lowest >= 0
    assert final == 100 - 7 * len(succeeded)
    debits = [e for e in positioned(write_api.store, number) if e.event_name == "SecuritiesDebited"]
    assert sorted(e.position for e in debits) == sorted(s["position"] for s in succeeded)


def test_concurrent_transfers_conserve_holdings(client: httpx.Client, write_api: WriteApi) -> None:
    isin = security(client)
    left, right = account(client, isin, 30), account(client, isin, 30)
    bodies = [
        {"from_account": a, "to_account": b, "isin": isin, "quantity": 4}
        for a, b in [(left, right), (right, left)] * 8
    ]
    responses = asyncio.run(_send_together(write_api.base_url, "TransferHoldings", bodies))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 409, 422}, statuses
    assert statuses[200] >= 1

    left_final, left_lowest = holding_by_replay(write_api.store, left, isin)
    right_final, right_lowest = holding_by_replay(write_api.store, right, isin)
    assert left_lowest >= 0 and right_lowest >= 0
    assert left_final + right_final == 60
    moved = Counter()
    for body, response in zip(bodies, responses, strict=True):
        if response.status_code == 200:
            moved[body["from_account"]] += 4
    assert left_final == 30 - moved[left] + moved[right]


# --- a whole corporate-action lifecycle ----------------------------------------------------------


def test_corporate_action_lifecycle_end_to_end(client: httpx.Client, write_api: WriteApi) -> None:
    isin, action_id = new_isin("DE"), new_code("DIV")
    alice, bob = new_code("ALICE"), new_code("BOB")
    head = write_api.store.head()
    steps: list[tuple[str, dict[str, Any], str | None]] = [
        ("RegisterSecurity", {"isin": isin, "name": "Example AG", "currency": "EUR"}, "corr-register"),
        ("OpenAccount", {"account_number": alice, "holder_name": "Alice"}, None),
        ("OpenAccount", {"account_number": bob, "holder_name": "Bob"}, "corr-accounts"),
        ("CreditHoldings", {"account_number": alice, "isin": isin, "quantity": 1000}, None),
        ("TransferHoldings", {"from_account": alice, "to_account": bob, "isin": isin, "quantity": 300,
                              "reference": "T-1"}, "corr-transfer"),
        ("AnnounceCorporateAction", announce_body(action_id, isin), "corr-action"),
        ("ValidateCorporateAction", {"action_id": action_id}, "corr-action"),
        ("CancelCorporateAction", {"action_id": action_id, "reason": "issuer withdrew"}, "corr-action"),
    ]
    results = []
    for name, body, correlation in steps:
        headers = {"X-Correlation-ID": correlation} if correlation else {}
        response = post(client, name, body, **headers)
        result = accepted(response)
        if correlation:
            assert response.headers["x-correlation-id"] == correlation
        results.append((result, response.headers["x-correlation-id"]))

    written = events_after(write_api.store, head)
    assert [e.event_name for e in written] == [
        "SecurityRegistered", "AccountOpened", "AccountOpened", "SecuritiesCredited",
        "SecuritiesDebited", "SecuritiesCredited",
        "CorporateActionAnnounced", "CorporateActionValidated", "CorporateActionCancelled",
    ]
    action = CorporateAction.id_for(action_id)
    assert [r["aggregate_id"] for r, _ in results] == [
        str(Security.id_for(isin)), str(account_id(alice)), str(account_id(bob)), str(account_id(alice)),
        str(account_id(alice)), str(action), str(action), str(action),
    ]
    assert [r["version"] for r, _ in results] == [1, 1, 1, 2, 3, 1, 2, 3]
    commands_of_events = [0, 1, 2, 3, 4, 4, 5, 6, 7]  # the transfer wrote two events
    for index, (result, _) in enumerate(results):
        last = max(e.position or 0 for e, c in zip(written, commands_of_events, strict=True) if c == index)
        assert result["position"] == last

    _check_metadata(written, commands_of_events, [c for _, c in results])
    assert written[4].aggregate_id == account_id(alice) and written[5].aggregate_id == account_id(bob)
    assert written[5].event.model_dump()["reference"] == "T-1"
    assert holding_by_replay(write_api.store, alice, isin) == (700, 0)
    assert holding_by_replay(write_api.store, bob, isin) == (300, 0)
    cancelled = written[-1].event.model_dump()
    assert cancelled == {"action_id": action_id, "reason": "issuer withdrew"}
    response = post(client, "ValidateCorporateAction", {"action_id": action_id})
    assert problem(response, 409, "invalid_transition")["reason"] == "action_cancelled"


def _check_metadata(written: list[Any], commands_of_events: list[int], correlations: list[str]) -> None:
    event_ids = [e.metadata.event_id for e in written]
    assert all(isinstance(i, UUID) for i in event_ids) and len(set(event_ids)) == len(written)
    causations: dict[int, set[str]] = {}
    for envelope, command in zip(written, commands_of_events, strict=True):
        metadata = envelope.metadata
        assert isinstance(metadata.recorded_at, datetime) and metadata.recorded_at.tzinfo is not None
        assert metadata.correlation_id == correlations[command]
        assert metadata.causation_id
        causations.setdefault(command, set()).add(metadata.causation_id)
    assert all(len(ids) == 1 for ids in causations.values())  # one command, one cause
    assert len({next(iter(ids)) for ids in causations.values()}) == len(causations)
    assert correlations[6] == correlations[7] == "corr-action"
