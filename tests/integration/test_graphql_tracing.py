"""Spans of the query API over real HTTP: the example's GraphQL schema served by uvicorn in a thread, over
the holdings read model in the memory view store (filled by the example's projector from a memory event
store), with an in-memory span exporter.

One server span per operation, the child of the caller's ``traceparent``; errors recorded with their code;
a ``read-your-writes wait`` child when ``Eventfold-Position`` is sent; and nothing at all without a tracer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support.http import ServerThread

from example_app.commands import CreditHoldings, OpenAccount
from example_app.demo import demo_commands
from example_app.handlers import router as example_router
from framework import CommandBus
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.otel import OtelTracer
from framework.graphql import QueryApiOptions, create_query_app
from framework.graphql.app import build_schema
from framework.graphql.tracing import TracedOperations, hide_literals
from framework.tracing import NULL_TRACER, Tracer, trace_context_from_headers
from framework.worker import ProjectionWorker
from projections.cards import CardsProjector
from projections.graphql import Query, build_graphql
from projections.holdings import HoldingsProjector

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
PARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HOLDINGS = 'query Holdings { holdings(accountNumber: "ACC-1") { isin quantity } }'


@dataclass
class Served:
    client: httpx.Client
    exporter: InMemorySpanExporter
    head: int

    def post(self, query: str, headers: dict[str, str] | None = None, **body: object) -> httpx.Response:
        self.exporter.clear()
        response = self.client.post("/graphql", json={"query": query, **body}, headers=headers or {})
        assert "Traceback" not in response.text
        return response

    def spans(self, prefix: str = "") -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]

    def operation(self) -> ReadableSpan:
        """The one server span of the last request."""
        servers = [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        assert len(servers) == 1, [s.name for s in self.exporter.get_finished_spans()]
        return servers[0]


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracer(provider)
    provider.shutdown()


def filled() -> tuple[MemoryEventStore, MemoryViewStore]:
    """The demo's securities and corporate actions, and an account holding 7 Apple shares, projected into
    the holdings and cards read models."""
    store, views = MemoryEventStore(), MemoryViewStore()
    bus = CommandBus(example_router, store)
    for command in demo_commands(date(2024, 1, 1)):
        bus.execute(command)
    bus.execute(OpenAccount(account_number="ACC-1", holder_name="Ada"))
    bus.execute(CreditHoldings(account_number="ACC-1", isin="US0378331005", quantity=7))
    for projector in (HoldingsProjector(), CardsProjector()):
        ProjectionWorker(projector, views, store).catch_up()
    return store, views


@pytest.fixture(scope="module")
def served(tracer: Tracer, exporter: InMemorySpanExporter) -> Iterator[Served]:
    store, views = filled()
    app = create_query_app(build_graphql(), views, store, options=QueryApiOptions(consistency_timeout=0.2),
                           tracer=tracer)
    with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield Served(client, exporter, store.head())


def children_of(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    assert span.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id]


# --- the operation's span ------------------------------------------------------------------------


def test_a_query_with_a_traceparent_is_a_server_span_in_the_callers_trace(served: Served) -> None:
    response = served.post(HOLDINGS, {"traceparent": PARENT, "tracestate": "vendor=opaque"})
    assert response.json() == {"data": {"holdings": [{"isin": "US0378331005", "quantity": 7}]}}
    span = served.operation()
    assert span.name == "query"  # the type: operation names are the client's, unbounded
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert span.context.trace_state.get("vendor") == "opaque"
    assert dict(span.attributes or {}) == {
        "graphql.operation.type": "query",
        "graphql.operation.name": "Holdings",
        "graphql.document": 'query Holdings {\n  holdings(accountNumber: ?) {\n    isin\n    quantity\n  }\n}',
    }
    assert span.status.status_code is StatusCode.UNSET


def test_the_operation_name_sent_picks_the_operation_and_its_type(served: Served) -> None:
    document = "query A { holdings(accountNumber: \"X\") { isin } } query B { holdings(accountNumber: \"Y\") { isin } }"
    assert served.post(document, operationName="B").status_code == 200
    attributes = served.operation().attributes or {}
    assert (attributes["graphql.operation.type"], attributes["graphql.operation.name"]) == ("query", "B")


def test_an_anonymous_query_has_no_operation_name(served: Served) -> None:
    assert served.post('{ holdings(accountNumber: "ACC-1") { isin } }').status_code == 200
    span = served.operation()
    assert span.name == "query"
    assert "graphql.operation.name" not in (span.attributes or {})


@pytest.mark.parametrize("headers", [{}, {"traceparent": "00-not-a-trace-01"}, {"tracestate": "vendor=x"}],
                         ids=["none", "invalid", "tracestate-only"])
def test_without_a_valid_traceparent_a_new_trace_starts(served: Served, headers: dict[str, str]) -> None:
    served.post(HOLDINGS, headers)
    span = served.operation()
    assert span.parent is None
    assert span.context is not None and f"{span.context.trace_id:032x}" != TRACE_ID


def test_each_read_is_a_child_span_of_the_operation(served: Served) -> None:
    served.post(HOLDINGS)
    reads = children_of(served.operation(), served.spans())
    assert [(s.name, (s.attributes or {}).get("eventfold.projection")) for s in reads] == [("read query", "holdings")]


def test_a_dataloader_batch_is_one_read_span(served: Served) -> None:
    body = served.post("{ cards(first: 10) { nodes { actionId security { name } } } }").json()
    assert len(body["data"]["cards"]["nodes"]) == 3, body
    reads = children_of(served.operation(), served.spans())
    assert sorted((s.name, (s.attributes or {}).get("eventfold.projection")) for s in reads) == [
        ("read get_many", "cards"), ("read paginate", "cards")]  # three cards' securities, one batch


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "name", "code", "recorded"), [
    ("{ holdings(accountNumber: ", "GraphQL Operation", "GRAPHQL_PARSE_FAILED", "GraphQLSyntaxError"),
    ("query Nope { nope }", "query", "GRAPHQL_VALIDATION_FAILED", "GraphQLError"),
    ("{ cards(first: -1) { nodes { actionId } } }", "query", "BAD_USER_INPUT", "InvalidQuery"),
    ("mutation { nope }", "mutation", "GRAPHQL_VALIDATION_FAILED", "GraphQLError"),
], ids=["parse", "validation", "resolver", "mutation"])
def test_a_failed_operation_records_its_error_and_code(served: Served, query: str, name: str, code: str,
                                                       recorded: str) -> None:
    body = served.post(query).json()
    assert body["errors"][0]["extensions"]["code"] == code
    span = served.operation()
    assert span.name == name
    assert (span.attributes or {})["eventfold.graphql.error_code"] == code
    assert span.status.status_code is StatusCode.ERROR
    assert [str((e.attributes or {})["exception.type"]).rsplit(".", 1)[-1] for e in span.events] == [recorded]


def test_a_resolvers_error_is_recorded_on_its_read_too(served: Served) -> None:
    served.post("{ cards(first: -1) { nodes { actionId } } }")
    [read] = children_of(served.operation(), served.spans())
    assert (read.name, read.status.status_code) == ("read paginate", StatusCode.ERROR)


@pytest.mark.parametrize(("send", "name"), [
    (lambda s: s.post('query A { holdings(accountNumber: "X") { isin } }', operationName="B"), "GraphQL Operation"),
    (lambda s: s.client.get("/graphql", params={"query": "mutation { nope }"}), "mutation"),
], ids=["unknown-operation-name", "mutation-over-get"])
def test_a_request_strawberry_refuses_is_recorded_as_bad_request(
        served: Served, send: Callable[[Served], httpx.Response], name: str) -> None:
    served.exporter.clear()
    response = send(served)
    assert (response.status_code, response.json()["errors"][0]["extensions"]["code"]) == (400, "BAD_REQUEST")
    span = served.operation()
    assert span.name == name  # an operation name that is not in the document: no type either
    assert (span.attributes or {})["eventfold.graphql.error_code"] == "BAD_REQUEST"
    assert span.status.status_code is StatusCode.ERROR


# --- read-your-writes ------------------------------------------------------------------------------


def test_a_reached_position_is_a_wait_span_under_the_operation(served: Served) -> None:
    served.post(HOLDINGS, {"Eventfold-Position": str(served.head)})
    operation = served.operation()
    waits = children_of(operation, served.spans("read-your-writes wait"))
    assert len(waits) == 1
    assert dict(waits[0].attributes or {}) == {
        "eventfold.consistency.requested": served.head,
        "eventfold.consistency.projections": "holdings",
        "eventfold.consistency.reached": True,
        "eventfold.consistency.lowest": served.head,
    }
    assert [s.name for s in served.spans("read ")] == ["read query"]  # the wait's polls are not reads
    assert operation.status.status_code is StatusCode.UNSET


def test_a_position_not_reached_in_time_says_so(served: Served) -> None:
    body = served.post(HOLDINGS, {"Eventfold-Position": str(served.head + 100)}).json()
    assert body["extensions"]["consistency"]["reached"] is False
    wait = served.spans("read-your-writes wait")[0]
    attributes = wait.attributes or {}
    assert (attributes["eventfold.consistency.reached"], attributes["eventfold.consistency.requested"]) == (
        False, served.head + 100)
    assert wait.end_time is not None and wait.start_time is not None
    assert (wait.end_time - wait.start_time) / 1e9 >= 0.2  # the whole timeout


def test_without_the_header_there_is_no_wait_span(served: Served) -> None:
    served.post(HOLDINGS)
    assert served.spans("read-your-writes wait") == []


# --- tracing off -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tracer_given", [None, NULL_TRACER], ids=["no-tracer", "null-tracer"])
def test_without_an_enabled_tracer_no_extension_is_installed(tracer_given: Tracer | None) -> None:
    schema = build_schema(Query, QueryApiOptions(), tracer=tracer_given)
    assert not any(isinstance(e, TracedOperations) for e in schema.get_extensions())


def test_with_an_enabled_tracer_the_extension_is_installed(tracer: Tracer) -> None:
    schema = build_schema(Query, QueryApiOptions(), tracer=tracer)
    extensions = schema.get_extensions()
    assert isinstance(extensions[0], TracedOperations)  # first: its span encloses the others
    assert extensions[0] is not schema.get_extensions()[0]  # one per request


def test_an_app_without_a_tracer_records_nothing(exporter: InMemorySpanExporter) -> None:
    store, views = filled()
    exporter.clear()
    with ServerThread(create_query_app(build_graphql(), views, store)) as server:
        response = httpx.post(f"{server.base_url}/graphql", json={"query": HOLDINGS},
                              headers={"traceparent": PARENT}, timeout=10)
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()


# --- pieces --------------------------------------------------------------------------------------


def test_literal_values_are_hidden_from_the_recorded_document() -> None:
    hidden = hide_literals('query Q($n: Int = 3) { f(a: "secret", b: 1.5, c: [2], d: RED, e: true, v: $n) { x } }')
    assert hidden == "query Q($n: Int = ?) {\n  f(a: ?, b: ?, c: [?], d: RED, e: true, v: $n) {\n    x\n  }\n}"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"traceparent": PARENT}, {"traceparent": PARENT}),
    ({"traceparent": f" {PARENT} ", "tracestate": "a=1"}, {"traceparent": PARENT, "tracestate": "a=1"}),
    ({"traceparent": PARENT, "tracestate": "a=" + "x" * 600}, {"traceparent": PARENT}),
    ({"traceparent": PARENT, "tracestate": "a=é"}, {"traceparent": PARENT}),
    ({"traceparent": PARENT.upper()}, None),
    ({"traceparent": "00-abc-def-01"}, None),
    ({"traceparent": "ff" + PARENT[2:]}, None),  # an invalid version
    ({"traceparent": f"00-{'0' * 32}-{PARENT[36:52]}-01"}, None),  # an all-zero trace id
    ({"traceparent": f"{PARENT[:36]}{'0' * 16}-01"}, None),  # an all-zero parent id
    ({}, None),
])
def test_the_trace_context_of_request_headers(headers: dict[str, str], expected: dict[str, str] | None) -> None:
    assert trace_context_from_headers(headers) == expected
