"""Subscription documents over a real WebSocket (graphql-transport-ws), embedded (memory) mode: each
distinct document is parsed and validated once however many subscribe with it (with tracing on too),
and hostile documents are refused with the queries' limits, messages and codes, from the caches too."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import strawberry.schema.schema as strawberry_schema
from graphql import parse, validate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.http import ServerThread
from support.live import LiveClient

import framework.graphql.app as graphql_app
import framework.graphql.tracing as graphql_tracing
from example_app.commands import RegisterSecurity
from framework.adapters.otel import OtelTracer
from framework.graphql import QueryApiOptions, create_query_app
from framework.graphql.limits import check_document
from projections.graphql import build_graphql
from unit.test_live_memory import ISIN, Embedded, announce

CARD = "subscription($id: String!) { card(actionId: $id) { position card { status } } }"
LIMITS = QueryApiOptions(max_depth=2, max_aliases=3, max_cost=40)


@functools.cache
def _exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def served(options: QueryApiOptions, *, traced: bool = False) -> Iterator[tuple[Embedded, str]]:
    side = Embedded()
    tracer = None
    if traced:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter()))
        tracer = OtelTracer(provider)
    app = create_query_app(build_graphql(), side.views, side.store, watch=side.watch, options=options,
                           tracer=tracer)
    side.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"))
    announce(side, "CA-1")
    side.catch_up()
    with ServerThread(app) as server:
        yield side, server.base_url


@pytest.fixture(params=[False, True], ids=["untraced", "traced"])
def embedded(request: pytest.FixtureRequest) -> Iterator[tuple[Embedded, str]]:
    yield from served(QueryApiOptions(), traced=request.param)


@pytest.fixture(scope="module")
def limited() -> Iterator[tuple[Embedded, str]]:
    yield from served(LIMITS)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Calls of graphql-core's parse and validate wherever the query path calls them: our documents'
    caches, the tracing extension, and Strawberry's own parse and validation."""
    counts: Counter[str] = Counter()

    def counting(label: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def counter(*args: Any, **kwargs: Any) -> Any:
            counts[label] += 1
            return call(*args, **kwargs)
        return counter

    for module in (graphql_app, graphql_tracing, strawberry_schema):
        monkeypatch.setattr(module, "parse", counting("parse", parse))
    monkeypatch.setattr(graphql_app, "validate", counting("validate", validate))
    monkeypatch.setattr(strawberry_schema, "validate_document",
                        counting("validate", strawberry_schema.validate_document))
    monkeypatch.setattr(graphql_app, "check_document", counting("limits", check_document))
    return counts


def subscribe_all(url: str, query: str, subscriptions: int) -> None:
    with LiveClient(url) as live:
        for n in range(subscriptions):
            live.subscribe(str(n), query, {"id": "CA-1"})
        for _ in range(subscriptions):
            message = live.receive()
            assert message["type"] == "next" and "errors" not in message["payload"], message


def test_a_subscription_document_is_parsed_and_validated_once_however_many_subscribe(
        embedded: tuple[Embedded, str], counted: Counter[str]) -> None:
    _, url = embedded
    subscribe_all(url, CARD, 30)
    assert counted == {"parse": 1, "limits": 1, "validate": 1}
    subscribe_all(url, CARD, 30)  # another connection: the caches are the schema's
    assert counted == {"parse": 1, "limits": 1, "validate": 1}
    subscribe_all(url, CARD.replace("subscription(", "subscription Card("), 5)  # another document
    assert counted == {"parse": 2, "limits": 2, "validate": 2}


def refusal(message: str, code: str, line_column: tuple[int, int] | None = (1, 1)) -> list[dict[str, Any]]:
    shown: dict[str, Any] = {"message": message}
    if line_column is not None:
        shown["locations"] = [{"line": line_column[0], "column": line_column[1]}]
    shown["extensions"] = {"code": code}
    return [shown]


HOSTILE = {
    "deep": ('subscription { card(actionId: "CA-1") { card { security { name } } } }',
             refusal("the operation is deeper than the 2 levels allowed", "QUERY_TOO_DEEP")),
    "aliases": ('subscription { card(actionId: "CA-1") { a: position b: position c: position d: position } }',
                refusal("the operation uses more than the 3 aliases allowed (fragments counted each time "
                        "they are spread)", "QUERY_TOO_LARGE")),
    "cost": ('subscription { card(actionId: "CA-1") { card { ' + " ".join(["status"] * 45) + " } } }",
             refusal("the operation costs more than the 40 allowed (each field and fragment spread counts "
                     "once per use, a connection's fields once per item of its page)", "QUERY_TOO_LARGE")),
    "nesting": ("subscription { card(actionId: " + "[" * 40 + '"x"' + "]" * 40 + ") { position } }",
                refusal("the document nests selections or values more than 32 levels deep", "QUERY_TOO_DEEP",
                        None)),
    "introspection": ('subscription { card(actionId: "CA-1") { __typename } __schema { types { name } } }',
                      refusal("introspection is disabled on this server", "GRAPHQL_VALIDATION_FAILED", (1, 54))),
    "nul": ('subscription { card(actionId: "CA\\u0000") { position } }',
            refusal("string values must not contain NUL (\\u0000) characters", "BAD_USER_INPUT", (1, 31))),
    "unknown field": ("subscription { nothing }",
                      refusal("Cannot query field 'nothing' on type 'Subscription'.", "GRAPHQL_VALIDATION_FAILED",
                              (1, 16))),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_subscription_document_is_refused_each_time_with_the_same_error(
        limited: tuple[Embedded, str], name: str) -> None:
    _, url = limited
    document, expected = HOSTILE[name]
    for _ in range(2):  # the second time from the caches
        with LiveClient(url) as live:
            live.subscribe("x", document)
            assert live.receive() == {"id": "x", "type": "error", "payload": expected}


def test_variables_holding_nul_are_refused_each_time(limited: tuple[Embedded, str]) -> None:
    _, url = limited
    for _ in range(2):
        with LiveClient(url) as live:
            live.subscribe("v", CARD, {"id": "CA\u0000"})
            assert live.receive() == {"id": "v", "type": "error", "payload": refusal(
                "variables must not contain NUL (\\u0000) characters or lone surrogates", "BAD_USER_INPUT", None)}


UNPARSED = {
    "syntax": ("subscription { card(actionId: ", "GRAPHQL_PARSE_FAILED"),
    "tokens": ('subscription { card(actionId: "CA-1") { ' + " ".join(["position"] * 2_100) + " } }",
               "QUERY_TOO_LARGE"),
    "parser nesting": ('subscription { card(actionId: "CA-1") ' + "{ a " * 900 + "}" * 900 + " }", "QUERY_TOO_DEEP"),
}


@pytest.mark.parametrize("name", list(UNPARSED))
def test_a_subscription_document_that_does_not_parse_is_refused_with_the_queries_error(
        limited: tuple[Embedded, str], name: str) -> None:
    """The socket gets an error, the one a query over HTTP gets (before: ``complete``, and a traceback)."""
    _, url = limited
    document, code = UNPARSED[name]
    over_http = httpx.post(f"{url}/graphql", json={"query": document}, timeout=30).json()["errors"]
    assert [e["extensions"]["code"] for e in over_http] == [code]
    for _ in range(2):
        with LiveClient(url) as live:
            live.subscribe("x", document)
            assert live.receive() == {"id": "x", "type": "error", "payload": over_http}
