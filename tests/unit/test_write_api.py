"""The write API in process (Starlette TestClient, memory store): success and every error mapping."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest

from example_app.accounts import Account
from example_app.commands import CreditHoldings
from example_app.handlers import router as example_router
from example_app.securities import Security
from framework import CommandBus, CommandRouter, EventSchemaError, StoreUnavailable
from framework.adapters.memory import MemoryEventStore
from framework.bus import fingerprint
from framework.http.write_api import WriteApiOptions, create_write_app
from framework.mapper import from_stored
from framework.store import IdempotencyCompletion, StoredEvent

from .domain import (
    APPLE,
    Counter,
    CounterStarted,
    Explode,
    append_events,
    exploding_router,
    interfering_router,
)

with warnings.catch_warnings():  # starlette would rather have httpx2, which is not installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PROBLEM_JSON = "application/problem+json"


def make_client(
    router: CommandRouter = example_router,
    store: MemoryEventStore | None = None,
    options: WriteApiOptions | None = None,
    **bus_options: Any,
) -> TestClient:
    bus = CommandBus(router, store or MemoryEventStore(), **bus_options)
    return TestClient(create_write_app(bus, options), raise_server_exceptions=False)


@pytest.fixture
def store() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
def client(store: MemoryEventStore) -> Iterator[TestClient]:
    with make_client(store=store, options=WriteApiOptions(max_body_bytes=2048, retry_after_seconds=7)) as c:
        yield c


def post(client: TestClient, name: str, body: Any, **headers: str) -> Any:
    return client.post(f"/commands/{name}", json=body, headers=headers)


def post_raw(client: TestClient, name: str, body: Any, content_type: str = "application/json") -> Any:
    return client.post(f"/commands/{name}", content=body, headers={"content-type": content_type})


APPLE_SECURITY = {"isin": APPLE, "name": "Apple", "currency": "USD"}
ADA = {"account_number": "A-1", "holder_name": "Ada"}
KEY_1 = {"Idempotency-Key": "k1"}


def seed(client: TestClient) -> None:
    assert post(client, "RegisterSecurity", APPLE_SECURITY).status_code == 200
    assert post(client, "OpenAccount", ADA).status_code == 200


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:eventfold:problem:{code}"
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def credit(quantity: int = 5) -> dict[str, Any]:
    return {"account_number": "A-1", "isin": APPLE, "quantity": quantity}


# --- success ---------------------------------------------------------------------------------


def test_a_command_returns_id_version_and_position(client: TestClient) -> None:
    response = post(client, "RegisterSecurity", {**APPLE_SECURITY, "isin": "us0378331005"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"aggregate_id": str(Security.id_for(APPLE)), "version": 1, "position": 1}
    post(client, "OpenAccount", ADA)
    response = post(client, "CreditHoldings", credit())
    assert response.json() == {"aggregate_id": str(Account.id_for("A-1")), "version": 2, "position": 3}
    assert "idempotent-replayed" not in response.headers


def test_the_correlation_id_header_reaches_the_events(client: TestClient, store: MemoryEventStore) -> None:
    response = post(client, "RegisterSecurity", APPLE_SECURITY, **{"X-Correlation-ID": "c-42"})
    assert response.headers["x-correlation-id"] == "c-42"
    (envelope,) = [from_stored(n) for n in store.read_all(0, 10)]
    assert envelope.metadata.correlation_id == "c-42"
    assert envelope.metadata.causation_id  # the request's own id


def test_a_correlation_id_is_made_up_when_none_is_sent(client: TestClient, store: MemoryEventStore) -> None:
    response = post(client, "RegisterSecurity", APPLE_SECURITY)
    (envelope,) = [from_stored(n) for n in store.read_all(0, 10)]
    assert response.headers["x-correlation-id"] == envelope.metadata.correlation_id
    assert UUID(response.headers["x-correlation-id"])


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/json;charset=UTF-8"],
)
def test_json_media_types_are_accepted(client: TestClient, content_type: str) -> None:
    body = json.dumps(APPLE_SECURITY).encode()
    response = client.post("/commands/RegisterSecurity", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("content_type", [None, "application/x+json", "text/plain", "application/json; charset=utf-16",
                                          "application/json; boundary=x"])
def test_other_media_types_are_415(client: TestClient, content_type: str | None) -> None:
    """Without a content type (or with text/plain) a browser sends a cross-site POST without asking first."""
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/commands/RegisterSecurity", content=json.dumps(APPLE_SECURITY).encode(), headers=headers)
    problem(response, 415, "unsupported_media_type")


def test_openapi_describes_every_command_but_the_internal_ones(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    public = {f"/commands/{c.command_name}" for c in example_router if not c.internal}
    assert set(document["paths"]) == public
    assert not {"NotifyDepositor", "RecordEntitlements"} & set(document["components"]["schemas"])
    operation = document["paths"]["/commands/CreditHoldings"]["post"]
    assert {"200", "400", "404", "409", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "CreditHoldings" in document["components"]["schemas"]


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


# --- 400 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"isin": ',
        b"",
        b"{'isin': 1}",
        b'{"quantity": NaN}',
        b'{"quantity": Infinity}',
        b"\xff\xfe\x00",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the recursion limit
    ],
)
def test_malformed_json_is_400(body: bytes) -> None:
    with make_client(options=WriteApiOptions(max_body_bytes=1_000_000)) as client:
        problem(post_raw(client, "OpenAccount", body), 400, "malformed_json")


def test_the_400_says_where_the_json_broke(client: TestClient) -> None:
    response = post_raw(client, "OpenAccount", b'{\n "a": }')
    assert "line 2" in problem(response, 400, "malformed_json")["detail"]


@pytest.mark.parametrize("value", ["has space", "x" * 256, "tab\there", "caf\u00e9"])
def test_malformed_idempotency_keys_are_400(client: TestClient, value: str) -> None:
    headers = {"Idempotency-Key": value.encode()}
    response = client.post("/commands/OpenAccount", json=ADA, headers=headers)  # type: ignore[arg-type]
    detail = problem(response, 400, "malformed_header")["detail"]
    assert "idempotency-key" in detail


@pytest.mark.parametrize("value", ["has space", "x" * 256, "tab\there", "caf\u00e9", "<b>"])
def test_a_malformed_correlation_id_is_replaced_by_a_new_one(
    client: TestClient, store: MemoryEventStore, value: str
) -> None:
    headers = {"X-Correlation-ID": value.encode()}
    response = client.post("/commands/RegisterSecurity", json=APPLE_SECURITY, headers=headers)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    (envelope,) = [from_stored(n) for n in store.read_all(0, 10)]
    assert response.headers["x-correlation-id"] == envelope.metadata.correlation_id
    assert UUID(response.headers["x-correlation-id"])


# --- 404 / 405 ------------------------------------------------------------------------------


def test_an_unknown_command_is_404(client: TestClient) -> None:
    body = problem(post(client, "LaunchRocket", {}), 404, "unknown_command")
    assert "LaunchRocket" in body["detail"]


def test_an_unknown_command_is_404_before_the_body_is_looked_at(client: TestClient) -> None:
    problem(post_raw(client, "LaunchRocket", b"not json", "text/plain"), 404, "unknown_command")


@pytest.mark.parametrize("name", ["NotifyDepositor", "RecordEntitlements"])
def test_an_internal_command_is_404_exactly_like_an_unknown_name(
    client: TestClient, store: MemoryEventStore, name: str
) -> None:
    seed(client)
    head = store.head()
    valid = {"account_number": "A-1", "action_id": "CA-1", "kind": "entitlement", "message": "hello"}
    internal = post(client, name, valid if name == "NotifyDepositor" else {"action_id": "CA-1", "entitlements": []})
    unknown = post(client, "LaunchRocket", valid)
    assert (internal.status_code, internal.headers["content-type"]) == (unknown.status_code, PROBLEM_JSON) == (
        404, PROBLEM_JSON)
    assert internal.json() == {k: v.replace("LaunchRocket", name) if isinstance(v, str) else v
                               for k, v in unknown.json().items()}
    assert store.head() == head


@pytest.mark.parametrize(
    ("name", "payload", "detail"),
    [
        ("CreditHoldings", {**credit(), "account_number": "Z-9"}, "account 'Z-9' does not exist"),
        ("CreditHoldings", {**credit(), "isin": "DE0007164600"}, "security 'DE0007164600' does not exist"),
        ("DebitHoldings", {**credit(), "account_number": "Z-9"}, "account 'Z-9' does not exist"),
        ("ValidateCorporateAction", {"action_id": "CA-404"}, "corporate action 'CA-404' does not exist"),
    ],
)
def test_an_unknown_aggregate_is_404_naming_the_key_the_command_carried(
    client: TestClient, name: str, payload: dict[str, Any], detail: str
) -> None:
    seed(client)
    body = problem(post(client, name, payload), 404, "aggregate_not_found")
    assert body["detail"] == detail


def test_an_unknown_path_is_a_404_problem(client: TestClient) -> None:
    problem(client.get("/nope"), 404, "not_found")


def test_the_wrong_method_is_a_405_problem(client: TestClient) -> None:
    response = client.get("/commands/OpenAccount")
    problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


# --- 413 / 415 ------------------------------------------------------------------------------


def test_a_declared_oversized_body_is_413(client: TestClient) -> None:
    body = {"account_number": "A-1", "holder_name": "x" * 3000}
    detail = problem(post(client, "OpenAccount", body), 413, "body_too_large")["detail"]
    assert "2048" in detail


def test_an_oversized_chunked_body_is_413(client: TestClient) -> None:
    chunks = (b" " * 512 for _ in range(5))  # no content-length: counted while streaming
    problem(post_raw(client, "OpenAccount", chunks), 413, "body_too_large")


def test_a_body_at_the_limit_is_read(client: TestClient) -> None:
    payload = json.dumps(ADA).encode()
    response = post_raw(client, "OpenAccount", payload + b" " * (2048 - len(payload)))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_a_body_that_is_not_json_is_415(client: TestClient, content_type: str) -> None:
    problem(post_raw(client, "OpenAccount", b"{}", content_type), 415, "unsupported_media_type")


# --- 422 ------------------------------------------------------------------------------------


def test_validation_errors_are_422_with_field_paths(client: TestClient) -> None:
    response = post(client, "CreditHoldings", {"isin": "US0378331006", "quantity": 0})
    body = problem(response, 422, "invalid_command")
    assert {e["path"] for e in body["errors"]} == {"/account_number", "/isin", "/quantity"}
    assert all(e["message"] for e in body["errors"])


def test_a_json_array_is_422_at_the_root(client: TestClient) -> None:
    body = problem(post(client, "OpenAccount", [1, 2]), 422, "invalid_command")
    assert [e["path"] for e in body["errors"]] == ["/"]


def test_a_bad_term_is_422_under_the_terms_field(client: TestClient) -> None:
    payload = {
        "action_id": "CA-1",
        "isin": APPLE,
        "record_date": "2024-06-14",
        "terms": {"kind": "cash_dividend", "amount_per_unit": "-1", "currency": "USD"},
    }
    body = problem(post(client, "AnnounceCorporateAction", payload), 422, "invalid_command")
    (error,) = body["errors"]
    assert error["path"] == "/terms/amount_per_unit"


def test_a_nul_character_is_422_at_its_path_and_writes_nothing(client: TestClient, store: MemoryEventStore) -> None:
    raw = b'{"account_number": "A-1", "holder_name": "Ann\\u0000"}'  # JSON's escape of NUL
    body = problem(post_raw(client, "OpenAccount", raw), 422, "invalid_command")
    assert body["errors"] == [{"path": "/holder_name", "message": "must not contain NUL characters"}]
    assert store.head() == 0


def test_an_int_beyond_64_bits_in_the_terms_is_422_at_its_path(client: TestClient) -> None:
    seed(client)
    payload = {"action_id": "CA-1", "isin": APPLE, "record_date": "2024-06-14",
               "terms": {"kind": "stock_split", "new_units": 2**63, "old_units": 1}}
    body = problem(post(client, "AnnounceCorporateAction", payload), 422, "invalid_command")
    assert body["errors"] == [{"path": "/terms/new_units", "message": "must be at most 9223372036854775807"}]


def test_a_rule_violation_is_422_with_its_reason(client: TestClient) -> None:
    seed(client)
    body = problem(post(client, "DebitHoldings", credit(1)), 422, "rule_violation")
    assert body["reason"] == "insufficient_holdings"


def test_a_reused_idempotency_key_is_422(client: TestClient) -> None:
    seed(client)
    assert post(client, "CreditHoldings", credit(5), **KEY_1).status_code == 200
    problem(post(client, "CreditHoldings", credit(6), **KEY_1), 422, "idempotency_key_reused")


# --- 409 ------------------------------------------------------------------------------------


def test_already_exists_is_409_naming_the_key_the_command_carried(client: TestClient) -> None:
    seed(client)
    body = problem(post(client, "OpenAccount", ADA), 409, "already_exists")
    assert body["detail"] == "account 'A-1' already exists"


def test_an_invalid_transition_is_409_with_its_reason(client: TestClient) -> None:
    post(client, "RegisterSecurity", APPLE_SECURITY)
    announce = {
        "action_id": "CA-1",
        "isin": APPLE,
        "record_date": "2024-06-14",
        "terms": {"kind": "stock_split", "new_units": 2, "old_units": 1},
    }
    assert post(client, "AnnounceCorporateAction", announce).status_code == 200
    assert post(client, "ValidateCorporateAction", {"action_id": "CA-1"}).status_code == 200
    body = problem(post(client, "ValidateCorporateAction", {"action_id": "CA-1"}), 409, "invalid_transition")
    assert body["reason"] == "action_validated"


def test_a_key_in_flight_is_409(client: TestClient, store: MemoryEventStore) -> None:
    seed(client)
    store.claim_idempotency_key("k1", fingerprint(CreditHoldings(**credit())), uuid4(), 60.0)
    problem(post(client, "CreditHoldings", credit(), **KEY_1), 409, "idempotency_key_in_flight")


def test_a_repeated_key_replays_the_first_response(client: TestClient, store: MemoryEventStore) -> None:
    seed(client)
    first = post(client, "CreditHoldings", credit(), **KEY_1)
    head = store.head()
    again = client.post(
        "/commands/CreditHoldings",
        content=b'{"quantity":5,  "isin":"US0378331005","account_number":"A-1"}',
        headers={"Idempotency-Key": "k1", "content-type": "application/json"},
    )
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert store.head() == head


def test_a_concurrency_conflict_is_409(store: MemoryEventStore) -> None:
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"))
    calls: list[int] = []
    with make_client(interfering_router(store, 99, calls), store, max_attempts=2) as client:
        response = post(client, "IncrementCounter", {"counter_id": str(counter_id)})
    problem(response, 409, "concurrency_conflict")
    assert len(calls) == 2


def test_a_conflict_that_resolves_on_retry_is_200(store: MemoryEventStore) -> None:
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"))
    with make_client(interfering_router(store, 1, []), store, max_attempts=2) as client:
        response = post(client, "IncrementCounter", {"counter_id": str(counter_id), "by": 2})
    assert response.status_code == 200
    assert response.json()["version"] == 3


# --- 503 / 500 ------------------------------------------------------------------------------


class DownStore(MemoryEventStore):
    def append(self, events: Any, completion: IdempotencyCompletion | None = None) -> list[int]:
        raise StoreUnavailable("the event store cannot be reached")

    def read_stream(self, aggregate_id: UUID, after_version: int = 0) -> list[StoredEvent]:
        return []


def test_store_unavailable_is_503_with_retry_after() -> None:
    with make_client(store=DownStore(), options=WriteApiOptions(retry_after_seconds=7)) as client:
        response = post(client, "RegisterSecurity", APPLE_SECURITY)
    problem(response, 503, "store_unavailable")
    assert response.headers["retry-after"] == "7"


class DriverDownStore(DownStore):
    def append(self, events: Any, completion: IdempotencyCompletion | None = None) -> list[int]:
        raise StoreUnavailable("the PostgreSQL event store is unavailable (connection to db.internal:5432 refused)")


def test_a_503_names_the_dependency_in_our_words_and_logs_the_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), make_client(store=DriverDownStore()) as client:
        response = post(client, "RegisterSecurity", APPLE_SECURITY)
    assert problem(response, 503, "store_unavailable")["detail"] == "the event store is unavailable; retry later"
    assert "db.internal" not in response.text
    assert "db.internal:5432 refused" in caplog.text


def test_a_failing_readiness_check_says_unavailable_not_why(caplog: pytest.LogCaptureFixture) -> None:
    class Unready(DriverDownStore):
        def head(self) -> int:
            raise StoreUnavailable("terminating connection due to administrator command")

    with caplog.at_level(logging.WARNING), make_client(store=Unready()) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"event_store": "unavailable"}
    assert "administrator" in caplog.text and "administrator" not in response.text


@pytest.mark.parametrize(
    "error",
    [
        lambda: RuntimeError("secret-detail: password=hunter2"),
        lambda: KeyError("secret-detail"),
        lambda: ZeroDivisionError("secret-detail"),
    ],
)
def test_an_unexpected_exception_is_a_generic_500(
    error: Callable[[], BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), make_client(exploding_router(error)) as client:
        response = post(client, "Explode", Explode(note="boom").model_dump())
    body = problem(response, 500, "internal_error")
    assert body == {
        "type": "urn:eventfold:problem:internal_error",
        "title": "Internal error",
        "status": 500,
        "detail": "the server could not process the request",
        "code": "internal_error",
    }
    assert "secret-detail" not in response.text and "hunter2" not in response.text
    assert "secret-detail" in caplog.text  # ...but the operator's log has it


def test_an_unexpected_exception_is_logged_once_with_the_correlation_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), make_client(exploding_router(lambda: RuntimeError("boom"))) as client:
        response = post(client, "Explode", Explode(note="boom").model_dump(), **{"X-Correlation-ID": "corr-500"})
    problem(response, 500, "internal_error")
    assert response.headers["x-correlation-id"] == "corr-500"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, [r.getMessage() for r in errors]


def test_a_framework_error_without_a_status_is_a_generic_500() -> None:
    with make_client(exploding_router(lambda: EventSchemaError("stored event x/1 is corrupt"))) as client:
        response = post(client, "Explode", {})
    body = problem(response, 500, "event_schema_error")
    assert body["detail"] == "the server could not process the request"
    assert "corrupt" not in response.text


# --- the direct command route and Starlette's route answer alike ---------------------------------


def _mounted(router: CommandRouter = example_router) -> TestClient:
    """The write API mounted under /w (as ``eventfold dev`` mounts it): its commands go through
    Starlette's middleware and router, not the edge's direct route."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = create_write_app(CommandBus(router, MemoryEventStore()))
    return TestClient(Starlette(routes=[Mount("/w", app=app)]), raise_server_exceptions=False)


def _exchange(client: TestClient, prefix: str) -> list[tuple[int, dict[str, str], str]]:
    """What a client sees of a few commands: status, headers but the per-request id, body."""
    requests: list[tuple[str, Any, dict[str, str]]] = [
        ("RegisterSecurity", APPLE_SECURITY, {}), ("OpenAccount", ADA, KEY_1), ("OpenAccount", ADA, KEY_1),
        ("CreditHoldings", {"account_number": "A-1", "isin": APPLE, "quantity": "1"}, {}),
        ("CreditHoldings", {"account_number": "A-1", "isin": APPLE, "quantity": 1}, {"If-Match": '"9"'}),
        ("CreditHoldings", {"account_number": "A-1", "isin": APPLE, "quantity": 1}, {"If-Match": '"1"'}),
        ("NoSuchCommand", {}, {}), ("", {}, {}), ("CreditHoldings/x", {}, {}),
    ]
    seen = []
    for name, body, headers in requests:
        response = client.post(f"{prefix}/commands/{name}", json=body,
                                headers={**headers, "X-Correlation-ID": "same"})
        kept = {k: v for k, v in response.headers.items() if k != "content-length"}
        text = response.text.replace(str(response.json().get("aggregate_id")), "ID") if response.status_code == 200 \
            else response.text
        seen.append((response.status_code, kept, text))
    return seen


def test_the_direct_command_route_answers_as_starlettes_route_does() -> None:
    with make_client() as direct, _mounted() as mounted:
        assert _exchange(direct, "") == _exchange(mounted, "/w")


def test_an_unexpected_exception_is_the_same_500_on_both_routes(caplog: pytest.LogCaptureFixture) -> None:
    router = exploding_router(lambda: RuntimeError("boom"))
    with caplog.at_level(logging.ERROR), make_client(router) as direct, _mounted(router) as mounted:
        answers = [(r.status_code, r.headers["content-type"], r.text) for r in (
            direct.post("/commands/Explode", json={"note": "x"}),
            mounted.post("/w/commands/Explode", json={"note": "x"}))]
    assert answers[0] == answers[1] and answers[0][0] == 500
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2  # once per request


def test_other_methods_and_paths_still_go_through_starlette(client: TestClient) -> None:
    assert client.get("/commands/CreditHoldings").status_code == 405
    assert client.post("/commands/").status_code == 404
    assert client.post("/commands/CreditHoldings/").status_code == 404  # no slash redirect


def test_middleware_added_to_the_app_sees_commands_too() -> None:
    from starlette.types import ASGIApp, Receive, Scope, Send

    seen: list[str] = []

    class Recording:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    app = create_write_app(CommandBus(example_router, MemoryEventStore()))
    app.add_middleware(Recording)
    with TestClient(app) as client:
        assert client.post("/commands/RegisterSecurity", json=APPLE_SECURITY).status_code == 200
    assert seen == ["/commands/RegisterSecurity"]


def test_an_exception_handler_added_to_the_app_sees_command_errors_too() -> None:
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    async def teapot(_: Request, error: Exception) -> Response:
        return PlainTextResponse(f"handled {error}", status_code=418)

    app = create_write_app(CommandBus(exploding_router(lambda: RuntimeError("boom")), MemoryEventStore()))
    app.add_exception_handler(RuntimeError, teapot)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/commands/Explode", json={"note": "x"})
    assert (response.status_code, response.text) == (418, "handled boom")


def _mounted_with(options: WriteApiOptions) -> TestClient:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = create_write_app(CommandBus(example_router, MemoryEventStore()), options)
    return TestClient(Starlette(routes=[Mount("/w", app=app)]), raise_server_exceptions=False)


CREDIT = b'{"account_number": "A-1", "isin": "US0378331005", "quantity": %s}'
# (command, body, headers): bodies and headers a hostile client sends
HOSTILE: list[tuple[str, Any, dict[str, Any]]] = [
    ("CreditHoldings", b'{"account_number": "A-1", "isin": ', {}),  # malformed JSON
    ("CreditHoldings", b"", {}),  # no body at all
    ("CreditHoldings", b"[1, 2]", {}),  # JSON, not an object
    ("CreditHoldings", CREDIT % b"1, \"account_number\": \"A-2\"", {}),  # a key twice
    ("CreditHoldings", CREDIT % b"NaN", {}),
    ("CreditHoldings", CREDIT % b"9223372036854775808", {}),  # 2**63
    ("CreditHoldings", CREDIT % b"-9223372036854775809", {}),
    ("CreditHoldings", CREDIT % (b"9" * 5000), {}),  # a number longer than Python parses
    ("CreditHoldings", CREDIT % b"1e400", {}),
    ("CreditHoldings", b'{"account_number": "A\x00-1", "isin": "US0378331005", "quantity": 1}', {}),  # raw NUL
    ("CreditHoldings", b'{"account_number": "A\\u0000-1", "isin": "US0378331005", "quantity": 1}', {}),
    ("CreditHoldings", b'{"account_number": "\\ud800", "isin": "US0378331005", "quantity": 1}', {}),  # lone surrogate
    ("CreditHoldings", b"\xef\xbb\xbf" + CREDIT % b"1", {}),  # byte order mark
    ("CreditHoldings", b'{"account_number": "\xff"}', {}),  # not UTF-8
    ("CreditHoldings", b"[" * 100_000, {}),  # deep nesting, and oversized
    ("CreditHoldings", b" " * 3000, {}),  # oversized
    ("CreditHoldings", CREDIT % b"1", {"content-type": "text/plain"}),
    ("CreditHoldings", CREDIT % b"1", {"content-type": "application/json; charset=latin-1"}),
    ("CreditHoldings", CREDIT % b"1", {"content-type": "application/json; charset=utf-8"}),
    ("CreditHoldings", CREDIT % b"1", {"if-match": "W/\"1\""}),
    ("CreditHoldings", CREDIT % b"1", {"if-match": "99999999999999999999"}),
    ("CreditHoldings", CREDIT % b"1", {"idempotency-key": "caf\u00e9".encode()}),
    ("CreditHoldings", CREDIT % b"1", {"idempotency-key": "k" * 256}),
    ("CreditHoldings", CREDIT % b"1", {"authorization": "Bearer whatever"}),  # anonymous API: ignored
    ("NoSuchCommand", CREDIT % b"1", {}),
    ("NoSuchCommand", b" " * 3000, {"content-type": "text/plain"}),  # 404 before the body or its type
    ("CreditHoldings", CREDIT % b"1", {}),
]


STATUSES = [400, 400, 422, 400, 400, 422, 422, 413, 422, 400, 422, 400, 400, 400, 413, 413, 415, 415, 200, 400, 400,
            400, 400, 200, 404, 404, 200]


def _hostile_exchange(client: TestClient, prefix: str) -> list[tuple[int, dict[str, str], str]]:
    seen = []
    for name, body, headers in [("RegisterSecurity", json.dumps(APPLE_SECURITY).encode(), {}),
                                ("OpenAccount", json.dumps(ADA).encode(), {}), *HOSTILE]:
        response = client.post(f"{prefix}/commands/{name}", content=body,
                               headers={"content-type": "application/json", "X-Correlation-ID": "same", **headers})
        text = response.text
        if response.status_code == 200:
            text = text.replace(str(response.json().get("aggregate_id")), "ID")
        seen.append((response.status_code, dict(response.headers.items()), text))
    return seen


def test_hostile_requests_get_the_same_answers_on_the_direct_route_and_starlettes() -> None:
    options = WriteApiOptions(max_body_bytes=2048)
    with make_client(options=options) as direct, _mounted_with(options) as mounted:
        answers = _hostile_exchange(direct, "")
        assert answers == _hostile_exchange(mounted, "/w")
    statuses = [status for status, _, _ in answers[2:]]
    assert statuses == STATUSES


def test_a_body_in_many_parts_is_read_as_one_on_both_routes() -> None:
    body = json.dumps({"account_number": "A-1", "isin": APPLE, "quantity": 3}).encode()
    with make_client() as direct, _mounted() as mounted:
        for client, prefix in ((direct, ""), (mounted, "/w")):
            for name, seeded in (("RegisterSecurity", APPLE_SECURITY), ("OpenAccount", ADA)):
                assert client.post(f"{prefix}/commands/{name}", json=seeded).status_code == 200
            parts = (body[i:i + 5] for i in range(0, len(body), 5))  # no content-length: chunked
            response = client.post(f"{prefix}/commands/CreditHoldings", content=parts,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 200, response.text
            assert response.json()["version"] == 2


def test_a_client_gone_while_its_body_is_read_is_no_error_on_either_route(
        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = create_write_app(CommandBus(example_router, MemoryEventStore()))
    mounted = Starlette(routes=[Mount("/w", app=app)])

    async def call(asgi: Any, path: str) -> list[dict[str, Any]]:
        messages = iter([{"type": "http.request", "body": b'{"account_', "more_body": True},
                         {"type": "http.disconnect"}])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "root_path": "",
                 "query_string": b"", "headers": [(b"content-type", b"application/json")], "scheme": "http",
                 "server": ("test", 80), "client": ("127.0.0.1", 5000), "http_version": "1.1",
                 "asgi": {"version": "3.0"}, "app": asgi}
        await asgi(scope, receive, send)
        return sent

    with caplog.at_level(logging.DEBUG):
        direct, through_starlette = asyncio.run(call(app, "/commands/OpenAccount")), asyncio.run(
            call(mounted, "/w/commands/OpenAccount"))
    # Both answer what Starlette answers an error (to nobody: the client is gone), and log it as the client's doing
    assert [m.get("status") for m in direct] == [m.get("status") for m in through_starlette] == [500, None]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([r for r in caplog.records if "went away before its request was read" in r.getMessage()]) == 2
