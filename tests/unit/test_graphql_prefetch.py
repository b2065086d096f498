"""A parent that knows its children's keys reads them in one batch; the children then resolve without
a coroutine each (``QueryContext.prefetch`` / ``row``), and ``selects`` says whether they are asked for."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import strawberry
from strawberry.types import Info

from framework.adapters.memory_views import MemoryViewStore
from framework.errors import StoreUnavailable
from framework.graphql import (
    Connection,
    GraphQLSpec,
    QueryApiOptions,
    QueryContext,
    connection,
    create_query_app,
    graphql_type,
    page_request,
    selects,
)
from framework.query import paginate
from framework.readmodel import ReadModel


class ItemRow(ReadModel):
    table = "items"
    key = ("id",)

    id: str
    kind: str


class KindRow(ReadModel):
    table = "kinds"
    key = ("kind",)

    kind: str
    label: str


ItemFields = graphql_type(ItemRow, name="ItemFields")
Kind = graphql_type(KindRow, name="Kind")
RESOLVED: list[bool] = []  # per `kind` field: resolved at once (True) or awaited (False)


def _context(info: Info) -> QueryContext:
    assert isinstance(info.context, QueryContext)
    return info.context


@strawberry.type
class Item(ItemFields):
    @strawberry.field
    def kind_of(self, info: Info) -> Kind | None:
        found = _context(info).row("items", KindRow, (self.kind,), Kind.from_row)
        RESOLVED.append(not inspect.isawaitable(found))
        return found


@strawberry.type
class Query:
    @strawberry.field
    async def items(self, info: Info, first: int | None = None, prefetch: bool = True) -> Connection[Item]:
        context = _context(info)
        page = await context.read(paginate, context.views, "items", ItemRow, page_request(first, None, None, None))
        if prefetch and selects(info, "edges.node.kindOf", "nodes.kindOf"):
            await context.prefetch("items", KindRow, [(row.kind,) for row in page.rows])
        return connection(page, Item.from_row)

    @strawberry.field
    async def item(self, info: Info, id: str) -> Item | None:
        row = await _context(info).loader("items", ItemRow).load((id,))
        return Item.from_row(row) if row else None


def _client(views: MemoryViewStore) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    spec = GraphQLSpec(query=Query, projections_by_field={"items": ["items"], "item": ["items"]})
    return TestClient(create_query_app(spec, views, options=QueryApiOptions()), raise_server_exceptions=False)


def _views(reads: list[tuple[str, int]], failing: bool = False) -> MemoryViewStore:
    views = MemoryViewStore()
    views.ensure_tables("items", 1, [ItemRow, KindRow])
    with views.batch("items", 1) as batch:
        for i in range(6):
            batch.put(ItemRow(id=f"i{i}", kind=f"k{i % 3}"))
        batch.put(KindRow(kind="k0", label="zero"))
        batch.put(KindRow(kind="k1", label="one"))  # k2 has no row: its items' kindOf is null
        batch.advance(1, None)
    original = views.get_many

    def counted(name: str, model: Any, keys: Any) -> Any:
        reads.append((model.__name__, len(keys)))
        if failing and model is KindRow:
            raise StoreUnavailable("the read-model database is unavailable")
        return original(name, model, keys)

    views.get_many = counted  # type: ignore[method-assign]
    return views


def _answer(query: str, *, failing: bool = False) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    RESOLVED.clear()
    reads: list[tuple[str, int]] = []
    with _client(_views(reads, failing)) as client:
        response = client.post("/graphql", json={"query": query})
    assert response.status_code == 200, response.text
    return response.json(), reads


def _ask(query: str) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    body, reads = _answer(query)
    assert "errors" not in body, body
    return body["data"], reads


LABELS = ["zero", "one", None, "zero", "one", None]


def test_a_prefetched_page_resolves_its_children_at_once_in_one_read() -> None:
    data, reads = _ask("{ items { edges { node { id kindOf { label } } } } }")
    assert [e["node"]["kindOf"] and e["node"]["kindOf"]["label"] for e in data["items"]["edges"]] == LABELS
    assert reads == [("KindRow", 3)]  # each key once, the missing one included
    assert RESOLVED == [True] * 6


def test_children_through_fragments_and_nodes_are_prefetched_too() -> None:
    data, reads = _ask("{ items { ...F } } fragment F on ItemConnection { nodes { ... on Item { kindOf { label } } } }")
    assert [n["kindOf"] and n["kindOf"]["label"] for n in data["items"]["nodes"]] == LABELS
    assert reads == [("KindRow", 3)] and RESOLVED == [True] * 6


def test_nothing_is_prefetched_when_the_children_are_not_asked_for() -> None:
    data, reads = _ask("{ items { nodes { id kind } } }")
    assert len(data["items"]["nodes"]) == 6 and reads == [] and RESOLVED == []


def test_without_a_prefetch_the_children_are_batched_and_awaited() -> None:
    data, reads = _ask("{ items(prefetch: false) { nodes { kindOf { label } } } }")
    assert [n["kindOf"] and n["kindOf"]["label"] for n in data["items"]["nodes"]] == LABELS
    assert reads == [("KindRow", 3)]  # the DataLoader's one batch
    assert RESOLVED == [False] * 6


def test_rows_loaded_once_are_answered_at_once_later_in_the_request() -> None:
    data, reads = _ask('{ a: item(id: "i0") { kindOf { label } } b: items { nodes { kindOf { label } } } }')
    assert data["a"]["kindOf"]["label"] == "zero"
    assert sum(n for model, n in reads if model == "KindRow") == 3  # whichever read first, no key twice


def test_a_failed_prefetch_fails_each_child_as_a_failed_batch_would() -> None:
    body, reads = _answer("{ items { nodes { id kindOf { label } } } }", failing=True)
    assert [n["id"] for n in body["data"]["items"]["nodes"]] == [f"i{i}" for i in range(6)]
    assert [n["kindOf"] for n in body["data"]["items"]["nodes"]] == [None] * 6
    assert [e["path"] for e in body["errors"]] == [["items", "nodes", i, "kindOf"] for i in range(6)]
    assert {e["extensions"]["code"] for e in body["errors"]} == {"SERVICE_UNAVAILABLE"}
    assert reads == [("KindRow", 3)]  # read once: the children meet the loader's kept failure
