"""The GraphQL adapter in process: types from read models, connections, error codes, limits and
read-your-writes, over an in-memory view store (no servers; requests go through the ASGI app)."""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import httpx
import pytest
import strawberry
from graphql import GraphQLError, Source, parse
from pydantic import Field
from strawberry.types import Info

from framework.adapters.memory_views import MemoryViewStore
from framework.errors import ConcurrencyConflict, StoreUnavailable
from framework.graphql import (
    Connection,
    GraphQLSpec,
    QueryApiOptions,
    QueryContext,
    connection,
    create_query_app,
    graphql_type,
    page_request,
)
from framework.graphql.app import _formatted, _top_level_fields
from framework.query import BY_KEY, InvalidQuery, Page, paginate
from framework.readmodel import ReadModel

SECRET = "password=hunter2 in /srv/app/secret.py"


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class ThingRow(ReadModel):
    table = "things"
    key = ("id",)

    id: str
    size: int
    colour: Colour
    tags: list[str]
    extra: dict[str, Any]
    price: Decimal | None = None
    made: date | None = None
    seen: datetime | None = None
    ref: UUID | None = None
    either: int | str = 0
    scores: list[dict[str, int]] = Field(default_factory=list)


Thing = graphql_type(ThingRow, name="Thing", exclude=("scores",), description="A thing.")


def _context(info: Info) -> QueryContext:
    context = info.context
    assert isinstance(context, QueryContext)
    return context


@strawberry.type
class Query:
    @strawberry.field
    async def things(self, info: Info, first: int | None = None, after: str | None = None,
                     last: int | None = None, before: str | None = None) -> Connection[Thing]:
        context = _context(info)
        page = await context.read(paginate, context.views, "things", ThingRow,
                                  page_request(first, after, last, before))
        return connection(page, Thing.from_row)

    @strawberry.field
    async def thing(self, info: Info, id: str) -> Thing | None:
        row = await _context(info).loader("things", ThingRow).load((id,))
        return Thing.from_row(row) if row else None

    @strawberry.field
    def broken(self) -> str:
        raise RuntimeError(SECRET)

    @strawberry.field
    def unavailable(self) -> str:
        raise StoreUnavailable(f"the read-model database is unavailable ({SECRET})")

    @strawberry.field
    def invalid(self) -> str:
        raise InvalidQuery("cursor 'x' is not one this query handed out")

    @strawberry.field
    def conflict(self) -> str:
        raise ConcurrencyConflict("someone else won")

    @strawberry.field
    def other(self) -> int:
        return 1


SPEC = GraphQLSpec(Query, {"things": ["things"], "thing": ["things"], "other": ["elsewhere"]})


def make_views(count: int = 5, position: int = 3) -> MemoryViewStore:
    views = MemoryViewStore()
    views.ensure_tables("things", 1, [ThingRow])
    views.ensure_tables("elsewhere", 1, [])
    with views.batch("things", 1) as batch:
        for i in range(count):
            batch.put(ThingRow(id=f"t{i:02d}", size=i, colour=Colour.RED if i % 2 else Colour.BLUE,
                               tags=["a", str(i)], extra={"n": i}, price=Decimal("1.50") if i else None))
        batch.advance(position, None)
    return views


def advance(views: MemoryViewStore, name: str, position: int) -> None:
    with views.batch(name, 1) as batch:
        batch.advance(position, None)


def client_for(views: MemoryViewStore | None = None, **options: Any) -> Any:
    with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx is what the project has
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    app = create_query_app(SPEC, views or make_views(), options=QueryApiOptions(**options))
    return TestClient(app, raise_server_exceptions=False)


def post(client: Any, query: str, *, position: int | str | None = None, status: int = 200,
         **body: Any) -> dict[str, Any]:
    headers = {} if position is None else {"Eventfold-Position": str(position)}
    response = client.post("/graphql", json={"query": query, **body}, headers=headers)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "hunter2" not in response.text
    result: dict[str, Any] = response.json()
    return result


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


# --- types from read models ----------------------------------------------------------------------


def test_read_model_fields_become_graphql_fields() -> None:
    sdl = str(strawberry.Schema(query=Query))
    thing = sdl[sdl.index("type Thing {"):]
    thing = thing[:thing.index("}")]
    for line in ["id: String!", "size: Long!", "colour: String!", "tags: [String!]!", "extra: JSON!",
                 "price: Decimal", "made: Date", "seen: DateTime", "ref: UUID", "either: JSON!"]:
        assert line in thing, (line, thing)
    assert "scores" not in thing, "excluded"
    assert '"""A thing."""' in sdl
    assert "type Mutation" not in sdl and "type Subscription" not in sdl


def test_from_row_turns_enums_into_their_values() -> None:
    row = ThingRow(id="x", size=1, colour=Colour.BLUE, tags=[], extra={"k": [1]})
    converted = Thing.from_row(row)
    assert converted.colour == "blue" and converted.extra == {"k": [1]} and converted.price is None


def test_page_request_defaults() -> None:
    assert (page_request(None, None, None, None).first, page_request(None, None, None, None).last) == (20, None)
    backwards = page_request(None, None, None, "c")
    assert (backwards.first, backwards.last, backwards.before, backwards.backwards) == (None, 20, "c", True)
    assert page_request(5, "a", None, None).first == 5
    assert page_request(None, None, 7, None).last == 7
    with pytest.raises(InvalidQuery):
        page_request(101, None, None, None).size()


def test_an_empty_page_has_no_cursors() -> None:
    empty = connection(Page([], BY_KEY, has_next=False, has_previous=True), Thing.from_row)
    info = empty.page_info
    assert (info.start_cursor, info.end_cursor, info.has_previous_page, empty.edges) == (None, None, True, [])


# --- which projections a document reads ----------------------------------------------------------


@pytest.mark.parametrize(("document", "operation", "fields"), [
    ("{ things { nodes { id } } other }", None, {"things", "other"}),
    ("{ a: things { nodes { id } } b: thing(id: \"x\") { id } }", None, {"things", "thing"}),
    ("query A { things { nodes { id } } } query B { other }", "B", {"other"}),
    ("query A { things { nodes { id } } } query B { other }", None, {"things"}),
    ("query A { other }", "Z", set()),
    ("{ ...F } fragment F on Query { ...G thing(id: \"x\") { id } } fragment G on Query { other }", None,
     {"thing", "other"}),
    ("{ ... on Query { things { nodes { id } } } }", None, {"things"}),
    ("{ ...Missing other }", None, {"other"}),
    ("fragment F on Query { other }", None, set()),
])
def test_top_level_fields(document: str, operation: str | None, fields: set[str]) -> None:
    assert _top_level_fields(parse(document), operation) == fields
    assert _top_level_fields(None, operation) == set()


# --- error codes ---------------------------------------------------------------------------------


def graphql_error(message: str, original: Exception | None = None, path: list[str] | None = None) -> GraphQLError:
    source = Source("{ x }")
    return GraphQLError(message, source=source, positions=[2], path=path, original_error=original)


@pytest.mark.parametrize(("message", "code"), [
    ("'anonymous' exceeds maximum operation depth of 10", "QUERY_TOO_DEEP"),
    ("Maximum introspection depth exceeded", "QUERY_TOO_DEEP"),
    ("Syntax Error: Document contains more than 2000 tokens. Parsing aborted.", "QUERY_TOO_LARGE"),
    ("16 aliases found. Allowed: 15", "QUERY_TOO_LARGE"),
    ("Syntax Error: Unexpected '}'.", "GRAPHQL_PARSE_FAILED"),
    ("Cannot query field 'nope' on type 'Query'.", "GRAPHQL_VALIDATION_FAILED"),
    ("The mutation operation is not supported by the schema.", "GRAPHQL_VALIDATION_FAILED"),
])
def test_messages_map_to_stable_codes(message: str, code: str) -> None:
    formatted = _formatted(graphql_error(message))
    assert formatted["extensions"] == {"code": code}
    assert formatted["message"] == message
    assert formatted["locations"] == [{"line": 1, "column": 3}]


def test_unexpected_errors_are_masked_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="framework.graphql.app"):
        formatted = _formatted(graphql_error(SECRET, RuntimeError(SECRET), path=["broken"]))
    assert formatted == {"message": "internal error", "extensions": {"code": "INTERNAL_SERVER_ERROR"},
                         "locations": [{"line": 1, "column": 3}], "path": ["broken"]}
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records), "logged for the operator"


@pytest.mark.parametrize(("original", "code", "message"), [
    (InvalidQuery("a page holds 0 to 100 items, not 1000"), "BAD_USER_INPUT",
     "a page holds 0 to 100 items, not 1000"),
    (StoreUnavailable(SECRET), "SERVICE_UNAVAILABLE", "the read models are unavailable, retry shortly"),
    (ConcurrencyConflict("two writers"), "CONCURRENCY_CONFLICT", "two writers"),
    (GraphQLError("Int cannot represent non-integer value: 'x'"), "BAD_USER_INPUT", None),
    (GraphQLError("custom", extensions={"code": "FORBIDDEN"}), "FORBIDDEN", None),
])
def test_known_errors_keep_their_codes(original: Exception, code: str, message: str | None) -> None:
    error = graphql_error("Variable '$n' got invalid value 'x'", original)
    formatted = _formatted(error)
    assert formatted["extensions"]["code"] == code
    assert formatted["message"] == (message or error.message)
    assert "hunter2" not in str(formatted)


def test_location_and_path_are_optional() -> None:
    bare = GraphQLError("Cannot query field 'x' on type 'Query'.")
    assert _formatted(bare) == {"message": bare.message, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}


# --- the ASGI app --------------------------------------------------------------------------------


def test_resolver_errors_over_the_app() -> None:
    with client_for() as client:
        body = post(client, "{ other broken }")
        assert body["data"] is None or body["data"].get("other") == 1
        assert codes(body) == ["INTERNAL_SERVER_ERROR"]
        assert body["errors"][0]["message"] == "internal error" and body["errors"][0]["path"] == ["broken"]
        assert codes(post(client, "{ unavailable }", status=503)) == ["SERVICE_UNAVAILABLE"]  # nothing to answer
        assert codes(post(client, "{ invalid }")) == ["BAD_USER_INPUT"]
        assert codes(post(client, "{ conflict }")) == ["CONCURRENCY_CONFLICT"]


def test_pages_and_lookups_over_the_app() -> None:
    with client_for(make_views(count=25)) as client:
        first = post(client, "{ things { edges { cursor node { id colour price } } pageInfo { hasNextPage "
                             "endCursor } } }")["data"]["things"]
        assert len(first["edges"]) == 20 and first["pageInfo"]["hasNextPage"] is True
        assert first["edges"][1]["node"] == {"id": "t01", "colour": "red", "price": "1.50"}
        rest = post(client, "query($a: String) { things(after: $a) { nodes { id } pageInfo { hasNextPage } } }",
                    variables={"a": first["pageInfo"]["endCursor"]})["data"]["things"]
        assert [n["id"] for n in rest["nodes"]] == [f"t{i}" for i in range(20, 25)]
        assert rest["pageInfo"]["hasNextPage"] is False
        found = post(client, '{ a: thing(id: "t03") { size tags extra } b: thing(id: "nope") { id } }')["data"]
        assert found == {"a": {"size": 3, "tags": ["a", "3"], "extra": {"n": 3}}, "b": None}
        assert codes(post(client, '{ things(after: "bogus") { nodes { id } } }')) == ["BAD_USER_INPUT"]
        assert codes(post(client, "{ things(first: 500) { nodes { id } } }")) == ["BAD_USER_INPUT"]


def test_lookups_of_one_request_share_one_batch() -> None:
    views = make_views()
    calls: list[int] = []
    original = views.get_many

    def counted(name: str, model: Any, keys: Any) -> Any:
        calls.append(len(keys))
        return original(name, model, keys)

    views.get_many = counted  # type: ignore[method-assign]
    with client_for(views) as client:
        aliases = " ".join(f'a{i}: thing(id: "t{i:02d}") {{ id }}' for i in range(5))
        data = post(client, f"{{ {aliases} }}")["data"]
    assert [data[f"a{i}"]["id"] for i in range(5)] == [f"t{i:02d}" for i in range(5)]
    assert calls == [5]


@pytest.mark.parametrize(("options", "query", "code"), [
    ({"max_depth": 2}, "{ things { edges { node { id } } } }", "QUERY_TOO_DEEP"),
    ({"max_depth": 2}, "{ things { ...E } } fragment E on ThingConnection { edges { node { id } } }",
     "QUERY_TOO_DEEP"),
    ({"max_tokens": 10}, "{ things { edges { node { id size colour } } } }", "QUERY_TOO_LARGE"),
    ({"max_aliases": 2}, "{ a: other b: other c: other }", "QUERY_TOO_LARGE"),
    ({"introspection": True}, "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }",
     "QUERY_TOO_DEEP"),
    ({}, "{ __schema { types { name } } }", "GRAPHQL_VALIDATION_FAILED"),
    ({"max_cost": 10}, "{ things(first: 5) { nodes { id size } } }", "QUERY_TOO_LARGE"),
    ({}, "{ things { ", "GRAPHQL_PARSE_FAILED"),
    ({}, "mutation { other }", "GRAPHQL_VALIDATION_FAILED"),
    ({}, "query($n: Int) { things(first: $n) { nodes { id } } }", None),
])
def test_limits_follow_the_options(options: dict[str, Any], query: str, code: str | None) -> None:
    with client_for(**options) as client:
        body = post(client, query, variables={"n": "many"})
        assert codes(body) == [code or "BAD_USER_INPUT"], body


def test_within_the_limits_is_fine() -> None:
    with client_for(max_depth=3, max_aliases=2, max_tokens=40) as client:
        assert post(client, "{ a: other b: other things { nodes { id } } }")["data"]["a"] == 1


def test_body_limit_declared_and_streamed() -> None:
    with client_for(max_body_bytes=200) as client:
        ok = client.post("/graphql", content=b'{"query": "{ other }"}' + b" " * 150,
                         headers={"content-type": "application/json"})
        assert ok.status_code == 200 and ok.json() == {"data": {"other": 1}}
        declared = client.post("/graphql", json={"query": "{ other }" + " " * 300})
        assert declared.status_code == 413
        assert declared.json()["errors"][0]["extensions"]["code"] == "BODY_TOO_LARGE"

        def chunks() -> Any:
            yield b'{"query": "{ other }'
            for _ in range(10):
                yield b" " * 50
            yield b'"}'

        streamed = client.post("/graphql", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.json()["errors"][0]["extensions"]["code"] == "BODY_TOO_LARGE"


@pytest.mark.parametrize("value", ["x", "-1", "", "1e3", "٣", "²"])
def test_a_bad_position_header_is_400(value: str) -> None:
    with client_for() as client:
        response = client.post("/graphql", json={"query": "{ other }"},
                               headers={"Eventfold-Position": value.encode()})
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST_HEADER"


def test_an_error_escaping_the_graphql_app_is_answered_by_the_edge(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """``/graphql`` is handed to the GraphQL app ahead of Starlette's router and error middleware: a bug
    that escapes it is logged once by the edge and answered with its 500 problem document."""
    from starlette.testclient import TestClient

    def broken(_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("framework.graphql.app.position_claimed", broken)
    app = create_query_app(SPEC, make_views())
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        response = client.post("/graphql", json={"query": "{ other }"}, headers={"X-Correlation-ID": "bug-1"})
    assert response.status_code == 500 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error" and response.headers["x-correlation-id"] == "bug-1"
    assert [r.getMessage() for r in caplog.records] == ["unhandled error on POST /graphql"]


def test_healthz_and_get() -> None:
    with client_for() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/graphql", params={"query": "{ other }"}).json() == {"data": {"other": 1}}
        assert client.get("/graphql", params={"query": "mutation { other }"}).status_code == 400


# --- read your writes ----------------------------------------------------------------------------


def test_reached_positions_are_reported() -> None:
    with client_for(make_views(position=3), consistency_timeout=0.1) as client:
        body = post(client, "{ things { nodes { id } } }", position=3)
        assert body["extensions"] == {"consistency": {"requested": 3, "reached": True, "positions": {"things": 3}}}
        body = post(client, "{ things { nodes { id } } other }", position=2)
        assert body["extensions"]["consistency"]["positions"] == {"elsewhere": 0, "things": 3}
        assert body["extensions"]["consistency"]["reached"] is False, "elsewhere is still at 0"
        assert "extensions" not in post(client, "{ things { nodes { id } } }")


def test_a_query_waits_for_the_position() -> None:
    views = make_views(position=3)
    timer = threading.Timer(0.2, advance, (views, "things", 9))
    with client_for(views, consistency_timeout=10, poll_seconds=0.01) as client:
        timer.start()
        try:
            body = post(client, "{ things { nodes { id } } }", position=8)
        finally:
            timer.join()
    assert body["extensions"]["consistency"] == {"requested": 8, "reached": True, "positions": {"things": 9}}


def test_the_wait_is_bounded() -> None:
    with client_for(make_views(position=3), consistency_timeout=0.1) as client:
        body = post(client, "{ things { nodes { id } } }", position=1_000)
    assert body["data"]["things"]["nodes"], "answers with what it has"
    assert body["extensions"]["consistency"] == {"requested": 1_000, "reached": False, "positions": {"things": 3}}


def test_only_the_chosen_operations_projections_are_waited_for() -> None:
    document = "query A { things { nodes { id } } } query B { other }"
    with client_for(make_views(position=3), consistency_timeout=0.1) as client:
        body = post(client, document, position=3, operationName="A")
        assert body["extensions"]["consistency"]["positions"] == {"things": 3}
        body = post(client, document, position=3, operationName="B")
        assert body["extensions"]["consistency"]["positions"] == {"elsewhere": 0}


def test_an_unavailable_store_while_waiting_is_not_a_crash() -> None:
    views = make_views()

    def down(name: str) -> int:
        raise StoreUnavailable(f"the read-model database is unavailable ({SECRET})")

    def all_down(names: Any) -> Any:
        raise StoreUnavailable(f"the read-model database is unavailable ({SECRET})")

    views.active_position = down  # type: ignore[method-assign]
    views.active_positions = all_down  # type: ignore[method-assign]  # the response cache's read of them too
    with client_for(views) as client:
        response = client.post("/graphql", json={"query": "{ things { nodes { id } } }"},
                               headers={"Eventfold-Position": "1"})
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert response.status_code == 503, response.text  # nothing could be read: retry later
    assert response.headers["retry-after"] == "1"
    assert codes(response.json()) == ["SERVICE_UNAVAILABLE"], response.json()


def test_concurrent_requests_keep_their_own_consistency() -> None:
    views = make_views(position=3)
    app = create_query_app(SPEC, views, options=QueryApiOptions(consistency_timeout=0.3, poll_seconds=0.01))

    async def run() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            def ask(position: int | None) -> Any:
                headers = {} if position is None else {"Eventfold-Position": str(position)}
                return client.post("/graphql", json={"query": "{ things { nodes { id } } }"}, headers=headers)

            responses = await asyncio.gather(ask(50), ask(None), ask(2), ask(None), ask(60))
            return [r.json() for r in responses]

    waited, plain, reached, plain_too, other = asyncio.run(run())
    assert waited["extensions"]["consistency"]["requested"] == 50
    assert waited["extensions"]["consistency"]["reached"] is False
    assert reached["extensions"]["consistency"] == {"requested": 2, "reached": True, "positions": {"things": 3}}
    assert other["extensions"]["consistency"]["requested"] == 60
    assert "extensions" not in plain and "extensions" not in plain_too
