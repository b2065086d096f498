"""Shared pieces of the HTTP integration tests: example data, problem checks, reading the store."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from support.http import ServerThread

from example_app.accounts import Account
from example_app.app import build_router
from example_app.securities import check_isin
from framework.adapters.pg_async import AsyncPostgresAppender
from framework.adapters.postgres import PostgresEventStore
from framework.bus import CommandBus
from framework.events import EventEnvelope
from framework.http.write_api import WriteApiOptions, create_write_app
from framework.mapper import from_stored
from framework.settings import PostgresSettings
from framework.store import EventStore

PROBLEM_JSON = "application/problem+json"
TRACEBACK_MARKERS = ("Traceback", 'File "')
MAX_BODY_BYTES = 4096
RETRY_AFTER_SECONDS = 1


@dataclass
class WriteApi:
    """A running write API, and a separate store on the same schema to check what it wrote."""

    base_url: str
    store: PostgresEventStore
    schema: str
    write_async: bool = False  # commands decided and appended on the event loop (EVENTFOLD_WRITE_ASYNC)


def serve_write_api(
    settings: PostgresSettings, *, max_attempts: int = 5, write_async: bool = False
) -> tuple[ServerThread, PostgresEventStore]:
    """The example app's write API on uvicorn (in a thread) over a PostgreSQL store; started.
    ``write_async``: through the async command path, which the app's lifespan closes."""
    store = PostgresEventStore(settings)
    bus = CommandBus(build_router(), store, max_attempts=max_attempts, idempotency_lease_seconds=60)
    options = WriteApiOptions(max_body_bytes=MAX_BODY_BYTES, retry_after_seconds=RETRY_AFTER_SECONDS)
    appender = AsyncPostgresAppender(settings) if write_async else None
    server = ServerThread(create_write_app(bus, options, appender=appender), lifespan="on" if write_async else "off")
    try:
        server.start()
    except BaseException:
        store.close()
        raise
    return server, store




def new_isin(country: str = "XS") -> str:
    """A random ISIN with a correct check digit."""
    body = country + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(9))
    for digit in "0123456789":
        try:
            return check_isin(body + digit)
        except ValueError:
            continue
    raise AssertionError(f"no check digit fits {body}")


def new_code(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def assert_no_traceback(response: httpx.Response) -> None:
    text = response.text
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, f"{response.request.url} leaked a traceback: {text[:500]}"


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check an RFC 9457 problem response and return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"] == f"urn:eventfold:problem:{code}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"aggregate_id", "version", "position"}, body
    return body


def stream(store: EventStore, aggregate_id: UUID | str) -> list[EventEnvelope]:
    return [from_stored(s) for s in store.read_stream(UUID(str(aggregate_id)))]


def positioned(store: EventStore, account_number: str) -> list[EventEnvelope]:
    """An account's events as read from the global log, so each carries its position."""
    wanted = account_id(account_number)
    return [e for e in events_after(store, 0) if e.aggregate_id == wanted]


def events_after(store: EventStore, position: int) -> list[EventEnvelope]:
    return [from_stored(n) for n in store.read_all(position, 1_000_000)]


def account_id(number: str) -> UUID:
    return Account.id_for(number)


def holding_by_replay(store: EventStore, number: str, isin: str) -> tuple[int, int]:
    """(final holding, lowest running balance) folding the account's stored events in order."""
    balance, lowest = 0, 0
    for envelope in stream(store, account_id(number)):
        data = envelope.event.model_dump()
        if data.get("isin") != isin:
            continue
        if envelope.event_name == "SecuritiesCredited":
            balance += data["quantity"]
        elif envelope.event_name == "SecuritiesDebited":
            balance -= data["quantity"]
        lowest = min(lowest, balance)
    return balance, lowest
