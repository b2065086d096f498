"""The query API's fast reads answer exactly as the plain ones.

PostgreSQL rows of a read model whose columns JSON carries exactly are read as one JSON text each and
validated by pydantic in one call (``to_json`` + ``model_validate_json``), and pages are read on the
event loop (``query_async``). Compared here with the typed columns read as before (``SELECT *``, one
loader per column, ``model_validate``) and, end to end, with the same rows served from the in-memory
store (which keeps the Python objects as they were put): nulls, enums, dates and times, big ints, JSON,
text at its extremes, a field hidden by a permission, errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
import pytest
import strawberry
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    computed_field,
    field_serializer,
    field_validator,
    model_validator,
)
from starlette.testclient import TestClient
from strawberry.types import Info
from support.postgres import PgDatabase, PostgresServer, create_database, drop_database, unique_name

from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.postgres_views import PostgresViewStore, _as_json, _read_as_json
from framework.errors import StoreUnavailable
from framework.graphql import (
    Connection,
    GraphQLSpec,
    QueryApiOptions,
    QueryContext,
    connection,
    graphql_type,
    page_request,
    reads,
    requires,
)
from framework.query import Condition, PageRequest, Sort, paginate, paginate_async
from framework.readmodel import ReadModel
from framework.security import AllowAnonymous, anonymous
from framework.views import ViewStore

pytestmark = [pytest.mark.postgres]

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
ODD_TEXT = 'Zoë\t東京 \U0001f600 "quoted" \\back\\slash\n\x01\x7f \u2028 </script>'


class Colour(Enum):
    RED = "red"
    DARK_BLUE = "dark blue"


class Level(IntEnum):
    LOW = 1


class Inner(BaseModel):
    at: datetime
    amount: Decimal
    note: str | None = None


class Everything(ReadModel):
    table = "everything"
    key = ("id",)
    indexes = (("day",),)

    id: str
    big: int
    small: int | None
    flag: bool
    day: date
    day_or_none: date | None
    at: datetime
    uid: UUID
    colour: Colour
    colour_or_none: Colour | None
    kind: Literal["a", "b"]
    tags: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    inner: Inner | None = None
    note: str | None = None
    secret: str = ""


class WithDecimal(ReadModel):
    table = "with_decimal"
    key = ("id",)
    id: str
    amount: Decimal


class WithFloat(ReadModel):
    table = "with_float"
    key = ("id",)
    id: str
    ratio: float | None


class WithIntEnum(ReadModel):
    table = "with_int_enum"
    key = ("id",)
    id: str
    level: Level


def rows() -> list[Everything]:
    paris = timezone(timedelta(hours=5, minutes=30))
    return [
        Everything(id="a-max", big=INT64_MAX, small=INT64_MIN, flag=True, day=date(1, 1, 1), day_or_none=None,
                   at=datetime(2026, 12, 7, 3, 12, 28, 123456, tzinfo=UTC),
                   uid=UUID("12345678-1234-5678-1234-567812345678"), colour=Colour.DARK_BLUE, colour_or_none=None,
                   kind="a", tags=["x", ODD_TEXT, ""],
                   data={"big": 10**30, "float": 0.1, "null": None, "nested": {"list": [1, "2", True]},
                         "text": ODD_TEXT},
                   inner=Inner(at=datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=paris), amount=Decimal("1.10"),
                               note=None),
                   note=ODD_TEXT, secret="only for ops"),
        Everything(id="b-min", big=0, small=None, flag=False, day=date(9999, 12, 31), day_or_none=date(2026, 2, 28),
                   at=datetime(1970, 1, 1, tzinfo=UTC), uid=UUID(int=0), colour=Colour.RED,
                   colour_or_none=Colour.RED, kind="b", secret="s2"),
        Everything(id="c-" + "long" * 200, big=-1, small=1, flag=True, day=date(2026, 12, 8), day_or_none=None,
                   at=datetime(2026, 12, 7, tzinfo=UTC), uid=UUID(int=2**128 - 1), colour=Colour.RED,
                   colour_or_none=None, kind="a", data={}, note="", secret="s3"),
    ]


@pytest.fixture
def views(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresViewStore]:
    store = PostgresViewStore(pg_database.settings(pg_schema))
    store.create_schema()
    store.ensure_tables("things", 1, [Everything])
    with store.batch("things", 1) as batch:
        for row in rows():
            batch.put(row)
        batch.advance(3, None, since=0)
    try:
        yield store
    finally:
        store.close()


def typed(pg_database: PgDatabase, pg_schema: str) -> list[Everything]:
    """The rows read the plain way: every typed column loaded by psycopg, then ``model_validate``."""
    settings = pg_database.settings(pg_schema)
    with psycopg.connect(host=settings.host, port=settings.port, dbname=settings.dbname, user=settings.user,
                         password=settings.password, row_factory=dict_row) as conn:
        found = conn.execute(f'SELECT * FROM "{pg_schema}"."rm_things_v1_everything" ORDER BY id').fetchall()
    return [Everything.model_validate(r) for r in found]


def same(fast: list[Any], plain: list[Any]) -> None:
    assert fast == plain
    assert [r.model_dump_json() for r in fast] == [r.model_dump_json() for r in plain]  # offsets, digits
    for mine, theirs in zip(fast, plain, strict=True):
        for name in Everything.model_fields:
            assert type(getattr(mine, name)) is type(getattr(theirs, name)), name  # Enum, UUID, date...


def test_models_whose_columns_json_carries_exactly_are_read_as_json() -> None:
    assert _read_as_json(Everything)
    assert not _read_as_json(WithDecimal)  # a JSON number passes through a binary float
    assert not _read_as_json(WithFloat)
    assert not _read_as_json(WithIntEnum)  # stored as text


def test_rows_read_as_json_equal_the_typed_columns_read_plainly(
    views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    plain = typed(pg_database, pg_schema)
    assert len(plain) == 3
    same(views.query("things", Everything), plain)
    same(asyncio.run(views.query_async("things", Everything)), plain)
    keys = [(r.id,) for r in plain]
    same([r for r in views.get_many("things", Everything, keys) if r], plain)
    same([r for r in asyncio.run(views.get_many_async("things", Everything, keys)) if r], plain)
    for key, row in zip(keys, plain, strict=True):  # one key: its own statement, no arrays
        same([views.get_many("things", Everything, [key])[0]], [row])
        same([asyncio.run(views.get_many_async("things", Everything, [key]))[0]], [row])
    assert views.get_many("things", Everything, [("nope",)]) == [None]
    assert asyncio.run(views.get_many_async("things", Everything, [("nope",), keys[1]])) == [None, plain[1]]


def test_query_async_pages_as_query_does(views: PostgresViewStore) -> None:
    cases: list[tuple[list[Condition], Sort, dict[str, Any]]] = [
        ([], Sort(), {}),
        ([Condition("flag", "eq", True)], Sort("day", descending=True), {"limit": 1}),
        ([Condition("small", "is_null", True)], Sort(), {}),
        ([Condition("small", "is_null", False), Condition("big", "gte", -1)], Sort("big"), {"after": (-1, "x")}),
        ([Condition("colour", "in", ["red", None])], Sort("at"), {"limit": 5}),
        ([Condition("note", "contains", "%")], Sort(), {}),
        ([Condition("id", "prefix", "a-")], Sort(), {}),
    ]
    for where, sort, extra in cases:
        expected = views.query("things", Everything, where, sort, **extra)
        assert asyncio.run(views.query_async("things", Everything, where, sort, **extra)) == expected, where


def test_query_async_raises_what_query_raises(views: PostgresViewStore) -> None:
    for where in ([Condition("nope", "eq", 1)], [Condition("big", "eq", "not a number")]):
        with pytest.raises(Exception) as plain:
            views.query("things", Everything, where)
        with pytest.raises(type(plain.value)) as fast:
            asyncio.run(views.query_async("things", Everything, where))
        assert str(fast.value) == str(plain.value)


# --- end to end: the same documents over the in-memory store (no fast path) and PostgreSQL --------------

Thing = graphql_type(Everything, name="Thing", exclude=["secret"])


@strawberry.type
class FullThing(Thing):  # type: ignore[valid-type, misc]
    @strawberry.field(permission_classes=[requires("ops")])
    def secret(self, info: Info) -> str:
        return "hidden"


@strawberry.type
class Query:
    @strawberry.field
    @reads("things")
    async def things(self, info: Info, first: int | None = None, after: str | None = None,
                     last: int | None = None, before: str | None = None, colour: str | None = None
                     ) -> Connection[FullThing]:
        context = info.context
        assert isinstance(context, QueryContext)
        where = [Condition("colour", "eq", colour)] if colour else []
        page = await context.read(paginate, context.views, "things", Everything,
                                  page_request(first, after, last, before), where, Sort("day"))
        return connection(page, FullThing.from_row)

    @strawberry.field
    @reads("things")
    async def listed(self, info: Info) -> list[FullThing]:
        context = info.context
        assert isinstance(context, QueryContext)
        found = await context.read(context.views.query, "things", Everything, [], Sort("big", descending=True))
        return [FullThing.from_row(r) for r in found]

    @strawberry.field
    @reads("things")
    async def thing(self, info: Info, id: str) -> FullThing | None:
        context = info.context
        assert isinstance(context, QueryContext)
        row = await context.loader("things", Everything).load((id,))
        return FullThing.from_row(row) if row else None


FIELDS = ("id big small flag day dayOrNone at uid colour colourOrNone kind tags data note "
          "inner { at amount note }")
DOCUMENTS = [
    f"{{ things(first: 2) {{ edges {{ cursor node {{ {FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }}",
    f"{{ things(last: 2) {{ nodes {{ {FIELDS} }} pageInfo {{ hasPreviousPage startCursor }} }} }}",
    f'{{ things(colour: "red") {{ nodes {{ id colour }} }} listed {{ {FIELDS} }} }}',
    f'{{ a: thing(id: "a-max") {{ {FIELDS} }} b: thing(id: "nope") {{ id }} }}',
    '{ thing(id: "b-min") { id secret } }',  # hidden: an error for a caller without `ops`
    '{ things(after: "bm90IGEgY3Vyc29y") { nodes { id } } }',  # a cursor it never handed out
    "{ things(first: 101) { nodes { id } } }",  # past the page limit
    '{ things(colour: "purple") { nodes { id } } }',  # no such value: no rows
]


def answers(views: ViewStore) -> list[Any]:
    app_ = create_app(views)
    with TestClient(app_) as client:
        return [client.post("/graphql", json={"query": d}).json() for d in DOCUMENTS]


def create_app(views: ViewStore) -> Any:
    from framework.graphql import create_query_app

    return create_query_app(GraphQLSpec(Query), views, options=QueryApiOptions(response_cache_entries=0),
                            authenticator=AllowAnonymous(anonymous(frozenset())))


def differences(mine: Any, theirs: Any, path: str = "") -> list[str]:
    if isinstance(mine, dict) and isinstance(theirs, dict) and mine.keys() == theirs.keys():
        return [d for k in mine for d in differences(mine[k], theirs[k], f"{path}.{k}")]
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        return [d for i, (m, t) in enumerate(zip(mine, theirs, strict=True)) for d in differences(m, t, f"{path}[{i}]")]
    return [] if json.dumps(mine) == json.dumps(theirs) else [f"{path}: {mine!r:.200} != {theirs!r:.200}"]


def test_the_same_documents_answer_the_same_from_postgresql_as_from_memory(views: PostgresViewStore) -> None:
    memory = MemoryViewStore()
    memory.ensure_tables("things", 1, [Everything])
    with memory.batch("things", 1) as batch:
        for row in rows():
            batch.put(row)
        batch.advance(3, None, since=0)
    from_memory, from_postgres = answers(memory), answers(views)
    for document, mine, theirs in zip(DOCUMENTS, from_postgres, from_memory, strict=True):
        assert not differences(mine, theirs), document
        assert json.dumps(mine, sort_keys=True) == json.dumps(theirs, sort_keys=True), document
    assert from_postgres[0]["data"]["things"]["edges"][0]["node"]["big"] in (INT64_MAX, 0, -1)
    assert {e["extensions"]["code"] for e in from_postgres[4]["errors"]} == {"FORBIDDEN"}
    assert from_postgres[5]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# --- models whose validators see the values as they arrive (before/plain/wrap): a JSON text's strings are
# not the datetimes, dates and UUIDs psycopg's loaders give, so such models are read the typed way ---------

def _to_utc(value: Any) -> Any:
    return value.astimezone(UTC)  # written for the datetime the projector (and a typed column) gives


class Stamped(ReadModel):
    table = "stamped"
    key = ("id",)
    id: str
    at: Annotated[datetime, BeforeValidator(_to_utc)]
    day: date
    seen: datetime | None = None

    @field_validator("day", mode="before")
    @classmethod
    def _no_weekends(cls, value: Any) -> Any:
        return value - timedelta(days=1) if value.weekday() == 6 else value  # a date, as written

    @field_validator("seen", mode="wrap")
    @classmethod
    def _seen_in_utc(cls, value: Any, handler: Any) -> Any:
        return None if value is None else handler(value.astimezone(UTC))


class Checked(ReadModel):
    table = "checked"
    key = ("id",)
    id: str
    uid: UUID

    @model_validator(mode="before")
    @classmethod
    def _version_4(cls, data: Any) -> Any:
        assert data["uid"].version in (4, None), "not a version 4 UUID"  # a UUID, as written
        return data


def test_models_whose_validators_see_raw_values_are_read_as_typed_columns(
    pg_database: PgDatabase, pg_schema: str
) -> None:
    assert not _read_as_json(Stamped) and not _read_as_json(Checked)
    store = PostgresViewStore(pg_database.settings(pg_schema))
    try:
        store.create_schema()
        store.ensure_tables("stamps", 1, [Stamped, Checked])
        stamped = Stamped(id="s", at=datetime(2026, 12, 7, 5, tzinfo=timezone(timedelta(hours=2))),
                          day=date(2026, 12, 6), seen=datetime(2026, 12, 7, tzinfo=UTC))
        checked = Checked(id="c", uid=UUID("12345678-1234-4678-9234-567812345678"))
        with store.batch("stamps", 1) as batch:
            batch.put(stamped)
            batch.put(checked)
            batch.advance(1, None, since=0)
        assert store.query("stamps", Stamped) == [stamped]
        assert asyncio.run(store.query_async("stamps", Stamped)) == [stamped]
        assert store.get_many("stamps", Stamped, [("s",)]) == [stamped]
        assert asyncio.run(store.get_many_async("stamps", Checked, [("c",)])) == [checked]
        assert store.query("stamps", Checked) == [checked]
    finally:
        store.close()


# --- a database whose TimeZone had offsets in seconds (most zones before about 1900, Amsterdam until 1937):
# to_json prints such an offset (+00:19:32), which pydantic does not parse; psycopg's loader does --------

class Dated(ReadModel):
    table = "dated"
    key = ("id",)
    id: str
    at: datetime
    day: date


class Untimed(ReadModel):
    table = "untimed"
    key = ("id",)
    id: str
    day: date


@pytest.fixture
def amsterdam(pg_server: PostgresServer) -> Iterator[PgDatabase]:
    name = unique_name("eventfold_tz")
    create_database(pg_server, name)
    with pg_server.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'Europe/Amsterdam'").format(sql.Identifier(name)))
    try:
        yield PgDatabase(pg_server, name)
    finally:
        drop_database(pg_server, name)


def test_times_read_alike_whatever_the_databases_time_zone(amsterdam: PgDatabase) -> None:
    store = PostgresViewStore(amsterdam.settings("views"))
    try:
        store.create_schema()
        store.ensure_tables("dates", 1, [Dated])
        written = [Dated(id="old", at=datetime(1900, 1, 1, tzinfo=UTC), day=date(1900, 1, 1)),
                   Dated(id="new", at=datetime(2026, 12, 7, 4, 1, 2, 345678, tzinfo=UTC), day=date(2026, 12, 7))]
        with store.batch("dates", 1) as batch:
            for row in written:
                batch.put(row)
            batch.advance(1, None, since=0)
        by_id = sorted(written, key=lambda r: r.id)
        assert store.query("dates", Dated) == by_id
        assert asyncio.run(store.query_async("dates", Dated)) == by_id
        assert store.get_many("dates", Dated, [("old",), ("new",)]) == written
        assert asyncio.run(store.get_many_async("dates", Dated, [("old",)])) == written[:1]
        with amsterdam.connect() as conn:  # read column by column there; a model without times still as JSON
            assert _read_as_json(Dated) and not _as_json(Dated, conn)
            assert _as_json(Untimed, conn)
    finally:
        store.close()


class Serialized(ReadModel):
    table = "serialized"
    key = ("id",)
    id: str
    at: datetime

    @field_serializer("at")
    def _as_text(self, value: datetime) -> str:
        return value.isoformat()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        return self.id.upper()


def test_serializers_and_computed_fields_keep_rows_read_as_json() -> None:
    assert _read_as_json(Serialized)  # they shape output only, not what a row is read as


class ByColour(ReadModel):
    table = "by_colour"
    key = ("colour", "id")
    colour: Colour
    id: str


def test_rows_by_a_key_holding_an_enum_are_found_as_in_memory(views: PostgresViewStore) -> None:
    """A key's enum member is compared by its value, as it is stored (psycopg sends an enum by its name)."""
    memory = MemoryViewStore()
    row = ByColour(colour=Colour.DARK_BLUE, id="x")
    for store in (views, memory):
        store.ensure_tables("colours", 1, [ByColour])
        with store.batch("colours", 1) as batch:
            batch.put(row)
            batch.advance(1, None, since=0)
    for keys in ([(Colour.DARK_BLUE, "x")], [(Colour.DARK_BLUE, "x"), (Colour.RED, "x")]):
        expected = memory.get_many("colours", ByColour, keys)
        assert expected[0] == row
        assert views.get_many("colours", ByColour, keys) == expected
        assert asyncio.run(views.get_many_async("colours", ByColour, keys)) == expected


def _all_pages(read: Any, sort: Sort) -> list[str]:
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        page = read(PageRequest(first=1, after=after), sort)
        seen += [r.id for r in page.rows]
        if not page.has_next:
            return seen
        after = page.cursors[-1]
    return seen


def test_pages_sorted_by_an_enum_column_follow_their_cursors(views: PostgresViewStore) -> None:
    """A cursor's enum member is compared by its value, as it is stored (psycopg would send its name): page
    after page gives PostgreSQL's own order, each row once."""
    for sort in (Sort("colour"), Sort("colour", descending=True)):
        expected = [r.id for r in views.query("things", Everything, (), sort)]
        assert sorted(expected) == sorted(r.id for r in rows())
        assert _all_pages(lambda r, s: paginate(views, "things", Everything, r, (), s), sort) == expected
        assert _all_pages(lambda r, s: asyncio.run(paginate_async(views, "things", Everything, r, (), s)),
                          sort) == expected


def test_a_projection_finds_and_deletes_rows_by_a_key_holding_an_enum(views: PostgresViewStore) -> None:
    """As the in-memory store: ``get``, ``select`` and ``delete`` with an enum member (psycopg would send its
    name, the column holds its value: the row went unseen, and a deleted row stayed to be served)."""
    memory = MemoryViewStore()
    row = ByColour(colour=Colour.RED, id="y")
    for store in (views, memory):
        store.ensure_tables("colours", 1, [ByColour])
        with store.batch("colours", 1) as batch:
            batch.put(row)
            batch.advance(1, None, since=0)
        with store.batch("colours", 1) as batch:
            assert batch.get(ByColour, Colour.RED, "y") == row
            assert batch.select(ByColour, colour=Colour.RED) == [row]
            batch.delete(ByColour, Colour.RED, "y")
            batch.advance(2, None, since=1)
        assert store.query("colours", ByColour) == [], type(store).__name__


class Numbered(ReadModel):
    table = "numbered"
    key = ("number",)
    number: int


@pytest.mark.parametrize("keys", [[("not a number",)], [("not a number",), ("2",)]])
def test_get_many_async_raises_what_get_many_raises(views: PostgresViewStore, keys: list[tuple[Any, ...]]) -> None:
    """A key PostgreSQL refuses (text for a bigint key: an ``ID`` argument, say) is the caller's error, as in
    ``get_many``: not ``StoreUnavailable``, which the circuit breaker counts against the database."""
    views.ensure_tables("numbers", 1, [Numbered])
    with pytest.raises(psycopg.Error) as plain:
        views.get_many("numbers", Numbered, keys)
    with pytest.raises(type(plain.value)) as fast:
        asyncio.run(views.get_many_async("numbers", Numbered, keys))
    assert str(fast.value) == str(plain.value)


def test_a_read_waiting_for_a_connection_gives_up_as_the_blocking_reads_do(
    pg_database: PgDatabase, pg_schema: str
) -> None:
    """Every loop connection stuck (a statement waiting on a lock, a server that stopped answering): a read
    waiting for one fails with ``StoreUnavailable`` after the connect timeout, as the blocking pool's
    checkout does, instead of waiting forever (and the query API answering nothing)."""
    settings = pg_database.server.settings(pg_database.name, schema=pg_schema, pool_size=2, connect_timeout=1.0)
    store = PostgresViewStore(settings)
    locker = pg_database.connect()
    try:
        store.create_schema()
        store.ensure_tables("waits", 1, [Untimed])

        async def scenario() -> None:
            assert await store.query_async("waits", Untimed) == []
            locker.execute("BEGIN")
            locker.execute(f'LOCK TABLE "{pg_schema}".rm_waits_v1_untimed IN ACCESS EXCLUSIVE MODE')
            stuck = [asyncio.ensure_future(store.query_async("waits", Untimed)) for _ in range(2)]
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.get_many_async("waits", Untimed, [("x",)]), 60)
            locker.execute("COMMIT")
            assert await asyncio.gather(*stuck) == [[], []]

        asyncio.run(scenario())
    finally:
        locker.close()
        store.close()
