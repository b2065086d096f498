"""The GraphQL helpers an application builds its schema with: fields that declare the projections they
read (read-your-writes), DataLoaders on the query context, nested models as typed objects, and filter
inputs from read models. In process, over the in-memory view store; requests go through the ASGI app."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal

import pytest
import strawberry
from graphql import parse
from pydantic import BaseModel, ConfigDict, Field
from strawberry.types import Info

from framework.adapters.memory_views import MemoryViewStore
from framework.errors import ConfigurationError
from framework.graphql import (
    GraphQLSpec,
    QueryApiOptions,
    QueryContext,
    create_query_app,
    filter_input,
    graphql_type,
    reads,
)
from framework.graphql.reads import ReadMap
from framework.query import Condition
from framework.readmodel import ReadModel

# --- a small shop: orders (with nested lines and terms) and their parcels ---------------------------


class Status(Enum):
    OPEN = "open"
    SHIPPED = "shipped"


class Line(BaseModel):
    """One line of an order."""

    sku: str
    quantity: int = Field(description="Units ordered.")
    tags: list[Status] = Field(default_factory=list)


class Cash(BaseModel):
    kind: Literal["cash"]
    amount: Decimal


class Credit(BaseModel):
    kind: Literal["credit"]
    days: int


class Address(BaseModel):
    model_config = ConfigDict(title="ShippingAddress")

    city: str
    previous: Address | None = None  # a model nested in itself: JSON where it recurs


class OrderRow(ReadModel):
    table = "orders"
    key = ("order_id",)

    order_id: str
    customer: str
    status: Status
    channel: Literal["web", "shop"] = "web"
    note: str | None = None
    total: Decimal
    lines: list[Line]
    first_line: Line | None = None
    terms: Annotated[Cash | Credit, Field(discriminator="kind")]
    address: Address | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class ParcelRow(ReadModel):
    table = "parcels"
    key = ("parcel_id",)

    parcel_id: str
    order_id: str
    weight: int


OrderFields = graphql_type(OrderRow, name="OrderFields")
Parcel = graphql_type(ParcelRow, name="Parcel")
OrderWhere = filter_input(OrderRow, name="OrderWhere")
LOADS: list[list[Any]] = []


def _context(info: Info) -> QueryContext:
    assert isinstance(info.context, QueryContext)
    return info.context


@strawberry.type
class Order(OrderFields):
    @strawberry.field
    @reads("parcels")
    async def parcels(self, info: Info) -> list[Parcel]:
        rows = await _context(info).rows_by("parcels", ParcelRow, "order_id").load(self.order_id)
        return [Parcel.from_row(r) for r in rows]

    @strawberry.field
    async def shouted(self, info: Info) -> str:
        async def load(names: list[str]) -> list[str]:
            LOADS.append(names)
            return [n.upper() for n in names]

        return await _context(info).dataloader("shout", load).load(self.customer)


@strawberry.type
class Query:
    @strawberry.field
    @reads("orders")
    async def orders(self, info: Info, where: OrderWhere | None = None) -> list[Order]:
        context = _context(info)
        rows = await context.read(context.views.query, "orders", OrderRow, where.conditions() if where else [])
        return [Order.from_row(r) for r in rows]

    @strawberry.field
    @reads("orders", "audit")
    def audited(self) -> int:
        return 1

    @strawberry.field
    def plain(self) -> int:
        return 2


def orders() -> list[OrderRow]:
    return [
        OrderRow(order_id="o1", customer="ada", status=Status.OPEN, note="ring at 50% volume", total=Decimal("12.50"),
                 lines=[Line(sku="A-1", quantity=2, tags=[Status.OPEN])], first_line=Line(sku="A-1", quantity=2),
                 terms=Cash(kind="cash", amount=Decimal("12.50")),
                 address=Address(city="Oslo", previous=Address(city="Bergen")), extra={"gift": True}),
        OrderRow(order_id="o2", customer="bob", status=Status.SHIPPED, total=Decimal("3"), lines=[],
                 terms=Credit(kind="credit", days=30)),
        OrderRow(order_id="o3", customer="Ada", status=Status.OPEN, note="ring_twice", total=Decimal("7.25"),
                 lines=[Line(sku="B-2", quantity=1)], terms=Credit(kind="credit", days=10)),
    ]


def make_views() -> MemoryViewStore:
    views = MemoryViewStore()
    views.ensure_tables("orders", 1, [OrderRow])
    views.ensure_tables("parcels", 1, [ParcelRow])
    views.ensure_tables("audit", 1, [])
    with views.batch("orders", 1) as batch:
        for row in orders():
            batch.put(row)
        batch.advance(5, None)
    with views.batch("parcels", 1) as batch:
        for parcel_id, order_id, weight in [("p1", "o1", 3), ("p2", "o1", 4), ("p3", "o3", 1)]:
            batch.put(ParcelRow(parcel_id=parcel_id, order_id=order_id, weight=weight))
        batch.advance(2, None)
    return views


@pytest.fixture
def views() -> MemoryViewStore:
    return make_views()


@pytest.fixture
def client(views: MemoryViewStore) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    app = create_query_app(GraphQLSpec(Query), views, options=QueryApiOptions(consistency_timeout=0.05))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def post(client: Any, query: str, *, position: int | None = None, **body: Any) -> dict[str, Any]:
    headers = {} if position is None else {"Eventfold-Position": str(position)}
    response = client.post("/graphql", json={"query": query, **body}, headers=headers)
    assert response.status_code == 200, response.text
    assert "Traceback" not in response.text
    result: dict[str, Any] = response.json()
    return result


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


# --- fields declare what they read ------------------------------------------------------------------

READS = ReadMap.of(strawberry.Schema(query=Query))


@pytest.mark.parametrize(("document", "operation", "projections"), [
    ("{ orders { orderId } }", None, {"orders"}),
    ("{ orders { orderId parcels { weight } } }", None, {"orders", "parcels"}),
    ("{ mine: orders { a: parcels { weight } } }", None, {"orders", "parcels"}),
    ("{ orders { ...P } } fragment P on Order { parcels { weight } }", None, {"orders", "parcels"}),
    ("{ orders { ... on Order { parcels { weight } } } }", None, {"orders", "parcels"}),
    ("{ audited plain }", None, {"orders", "audit"}),
    ("{ plain __typename }", None, set()),
    ("query A { plain } query B { orders { parcels { weight } } }", "A", set()),
    ("query A { plain } query B { orders { parcels { weight } } }", "B", {"orders", "parcels"}),
    ("query A { plain }", "C", set()),
])
def test_an_operation_reads_what_its_selected_fields_declare(
    document: str, operation: str | None, projections: set[str],
) -> None:
    assert READS.projections(parse(document), operation) == projections
    assert READS.declared() == {"orders", "parcels", "audit"}


def test_a_fragment_spread_many_times_is_walked_once() -> None:
    fragments = "".join(f"fragment F{i} on Order {{ ...F{i + 1} ...F{i + 1} }} " for i in range(30))
    document = parse(f"{{ orders {{ ...F0 }} }} {fragments} fragment F30 on Order {{ parcels {{ weight }} }}")
    assert READS.projections(document, None) == {"orders", "parcels"}  # 2**30 paths, 31 fragments


def test_read_your_writes_waits_for_the_declared_projections(client: Any, views: MemoryViewStore) -> None:
    body = post(client, "{ orders { orderId } }", position=5)
    assert body["extensions"]["consistency"] == {"requested": 5, "reached": True, "positions": {"orders": 5}}
    body = post(client, "{ orders { parcels { weight } } }", position=5)
    assert body["extensions"]["consistency"]["positions"] == {"orders": 5, "parcels": 2}
    assert body["extensions"]["consistency"]["reached"] is False
    body = post(client, "{ plain }", position=5)
    assert body["extensions"]["consistency"] == {"requested": 5, "reached": True, "positions": {}}


def test_a_named_field_map_still_adds_to_the_declarations(views: MemoryViewStore) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    spec = GraphQLSpec(Query, projections_by_field={"plain": ["audit"], "orders": ["parcels"]})
    with TestClient(create_query_app(spec, views, options=QueryApiOptions(consistency_timeout=0))) as named:
        assert set(post(named, "{ plain }", position=1)["extensions"]["consistency"]["positions"]) == {"audit"}
        positions = post(named, "{ orders { orderId } }", position=1)["extensions"]["consistency"]["positions"]
        assert set(positions) == {"orders", "parcels"}


def test_reads_is_checked_where_it_is_written() -> None:
    with pytest.raises(ConfigurationError):
        reads()
    with pytest.raises(ConfigurationError, match="under @strawberry"):
        @strawberry.type
        class Wrong:
            @reads("orders")  # type: ignore[arg-type]  # on the field, not on its resolver
            @strawberry.field
            def f(self) -> int:
                return 1


# --- DataLoaders on the context -----------------------------------------------------------------------


def test_children_of_many_parents_come_in_one_query(client: Any, views: MemoryViewStore) -> None:
    calls: list[Sequence[Condition]] = []
    original = views.query

    def counted(name: str, model: Any, where: Sequence[Condition] = (), *args: Any, **kwargs: Any) -> Any:
        calls.append(where)
        return original(name, model, where, *args, **kwargs)

    views.query = counted  # type: ignore[method-assign]
    data = post(client, "{ orders { orderId parcels { parcelId weight } } }")["data"]
    assert data["orders"] == [
        {"orderId": "o1", "parcels": [{"parcelId": "p1", "weight": 3}, {"parcelId": "p2", "weight": 4}]},
        {"orderId": "o2", "parcels": []},
        {"orderId": "o3", "parcels": [{"parcelId": "p3", "weight": 1}]},
    ]
    assert len(calls) == 2  # the orders, then every order's parcels at once
    assert calls[1] == [Condition("order_id", "in", ["o1", "o2", "o3"])]


def test_a_dataloader_of_the_applications_own_is_one_per_request(client: Any) -> None:
    LOADS.clear()
    assert [o["shouted"] for o in post(client, "{ orders { shouted } }")["data"]["orders"]] == ["ADA", "BOB", "ADA"]
    post(client, "{ orders { shouted } }  # another text: the response cache keeps the first answer")
    assert LOADS == [["ada", "bob", "Ada"], ["ada", "bob", "Ada"]]  # one batch each, no cache across requests


# --- nested models are typed objects -----------------------------------------------------------------


def test_nested_models_become_object_types() -> None:
    sdl = str(strawberry.Schema(query=Query))
    for expected in ['"""One line of an order."""\ntype Line {', '"""Units ordered."""\n  quantity: Long!',
                     "tags: [String!]!", "lines: [Line!]!", "firstLine: Line", "terms: CashOrCredit!",
                     "union CashOrCredit = Cash | Credit", "kind: String!", "amount: Decimal!",
                     "type ShippingAddress {", "previous: JSON", "address: ShippingAddress", "extra: JSON!",
                     "status: String!"]:
        assert expected in sdl, expected


def test_nested_values_come_back_typed(client: Any) -> None:
    query = ("{ orders { orderId lines { sku quantity tags } firstLine { sku } terms { __typename "
             "... on Cash { amount } ... on Credit { days } } address { city previous } extra } }")
    first, second, _ = post(client, query)["data"]["orders"]
    assert first == {"orderId": "o1", "lines": [{"sku": "A-1", "quantity": 2, "tags": ["open"]}],
                     "firstLine": {"sku": "A-1"}, "terms": {"__typename": "Cash", "amount": "12.50"},
                     "address": {"city": "Oslo", "previous": {"city": "Bergen", "previous": None}},
                     "extra": {"gift": True}}
    assert second["terms"] == {"__typename": "Credit", "days": 30}
    assert second["firstLine"] is None and second["address"] is None and second["lines"] == []


def test_two_nested_models_of_one_name_are_a_clear_error() -> None:
    class Line(BaseModel):  # another model called Line
        text: str

    class NotesRow(ReadModel):
        table = "notes"
        key = ("id",)

        id: str
        line: Line

    with pytest.raises(ConfigurationError, match="title"):
        graphql_type(NotesRow)


# --- filter inputs from read models ------------------------------------------------------------------


def test_a_filter_input_has_an_operator_input_per_scalar_column() -> None:
    sdl = str(strawberry.Schema(query=Query))
    where = sdl[sdl.index("input OrderWhere {"):]
    where = where[:where.index("}")]
    for line in ["orderId: StringFilter", "status: EnumFilter", "channel: EnumFilter", "note: StringFilter",
                 "total: DecimalFilter"]:
        assert line in where, (line, where)
    assert "lines" not in where and "terms" not in where and "extra" not in where
    string = sdl[sdl.index("input StringFilter {"):]
    string = string[:string.index("}")]
    assert all(f"  {op}:" in string for op in ("eq", "ne", "in", "prefix", "contains", "isNull"))
    assert filter_input(OrderRow, name="OrderWhere") is OrderWhere  # asked again, the same type


@pytest.mark.parametrize(("where", "ids"), [
    ('{customer: {eq: "ada"}}', ["o1"]),
    ('{customer: {prefix: "a"}}', ["o1"]),  # case-sensitive
    ('{note: {contains: "%"}}', ["o1"]),
    ('{note: {contains: "_"}}', ["o3"]),  # literally
    ('{note: {isNull: true}}', ["o2"]),
    ('{note: {ne: "ring_twice"}}', ["o1"]),  # a null note is not "different"
    ('{status: {eq: "open"}, total: {gt: "10"}}', ["o1"]),
    ('{status: {in: ["shipped", "open"]}, orderId: {ne: "o1"}}', ["o2", "o3"]),
    ('{total: {gte: 3, lte: "7.25"}}', ["o2", "o3"]),
    ("{customer: {}}", ["o1", "o2", "o3"]),
    ('{note: {eq: null}}', ["o1", "o2", "o3"]),  # null sets no condition; isNull asks for null
    ('{channel: {in: ["web"]}, customer: {ne: "ada"}}', ["o2", "o3"]),
])
def test_a_filter_input_sets_its_conditions(client: Any, where: str, ids: list[str]) -> None:
    body = post(client, f"{{ orders(where: {where}) {{ orderId }} }}")
    assert "errors" not in body, body
    assert [o["orderId"] for o in body["data"]["orders"]] == ids


@pytest.mark.parametrize("where", ['{status: {eq: "lost"}}', '{note: {prefix: "a\\u0000"}}'])
def test_a_filter_value_the_column_cannot_hold_is_bad_user_input(client: Any, where: str) -> None:
    assert codes(post(client, f"{{ orders(where: {where}) {{ orderId }} }}")) == ["BAD_USER_INPUT"]


def test_a_filter_input_on_a_structured_column_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="lines"):
        filter_input(OrderRow, name="ByLines", fields=("customer", "lines"))
