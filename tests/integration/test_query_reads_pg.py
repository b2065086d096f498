"""A kept answer's query read (``QueryRead``) against PostgreSQL's own answers: a commit that changes what
a query returns in PostgreSQL must be seen to (the cache drops the answer). The memory store's differential
test (tests/unit/test_query_reads.py) cannot show where PostgreSQL compares otherwise than Python: columns
it keeps as text or jsonb, times in a zone's repeated hour."""

from __future__ import annotations

import enum
import random
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest
import strawberry
from graphql_helpers import GraphQLClient
from strawberry.types import Info
from support.http import ServerThread
from support.postgres import PgDatabase

from framework.adapters.pg_positions import PostgresPositionSignals
from framework.adapters.postgres_views import PostgresViewStore
from framework.graphql import GraphQLSpec, QueryContext, create_query_app, reads
from framework.graphql.responses import Reads, RecordingViews, _changes_query
from framework.positions import PositionWatch, changed_values, touched_by
from framework.query import Condition, PageRequest, Sort, paginate
from framework.readmodel import ReadModel
from framework.settings import PostgresSettings

pytestmark = pytest.mark.postgres

NEW_YORK = ZoneInfo("America/New_York")
EDT_1_30 = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)  # 05:30 UTC: the first of the two 1:30s that night
EST_1_30 = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NEW_YORK)  # 06:30 UTC


class Priority(enum.IntEnum):
    ONE = 1
    TWO = 2
    TEN = 10


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "Blue"
    E = "é"


class Row(ReadModel):
    table = "rows"
    key = ("grp", "name")
    grp: int
    name: str
    priority: Priority | None = None
    colour: Colour | None = None
    state: Literal["open", "shut"] | None = None
    big: int | None = None
    ratio: float | None = None
    amount: Decimal | None = None
    at: datetime | None = None
    day: date | None = None
    ref: uuid.UUID | None = None
    flag: bool | None = None
    label: str | None = None


@dataclass
class Store:
    views: PostgresViewStore
    settings: PostgresSettings
    positions: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    def commit(self, puts: Sequence[Row] = (), deletes: Sequence[tuple[Any, ...]] = ()) -> Any:
        with self.views.batch("p", 1) as batch:
            for row in puts:
                batch.put(row)
            for key in deletes:
                batch.delete(Row, *key)
            changes = list(batch.changes())
            batch.advance(next(self.positions), None)
        return touched_by(changes), changed_values(changes)

    def query(self, where: Sequence[Condition], sort: Sort, after: tuple[Any, ...] | None = None,
              limit: int | None = None) -> tuple[list[Row], Reads]:
        reads = Reads()
        rows = RecordingViews(self.views, reads).query("p", Row, where, sort, after=after, limit=limit)
        return rows, reads

    def unseen(self, where: Sequence[Condition], sort: Sort, puts: Sequence[Row],
               deletes: Sequence[tuple[Any, ...]] = (), after: tuple[Any, ...] | None = None,
               limit: int | None = None) -> bool:
        """Whether the commit of ``puts`` and ``deletes`` changed what PostgreSQL answers to the query and
        the query's read did not see that it could."""
        before, reads = self.query(where, sort, after, limit)
        touched, rows = self.commit(puts, deletes)
        now = self.views.query("p", Row, where, sort, after=after, limit=limit)
        seen = _changes_query("p", touched, rows, reads.queries) if reads.queries else True
        return [r.model_dump() for r in before] != [r.model_dump() for r in now] and not seen


@pytest.fixture
def store(pg_database: PgDatabase) -> Iterator[Store]:
    with pg_database.fresh_schema("qrpg") as schema:
        views = PostgresViewStore(pg_database.settings(schema))
        views.create_schema()
        views.ensure_tables("p", 1, [Row])
        try:
            yield Store(views, pg_database.settings(schema))
        finally:
            views.close()


def test_an_integer_enum_column_is_ordered_as_postgresql_keeps_it_as_text(store: Store) -> None:
    store.commit([Row(grp=0, name=n, priority=p) for n, p in (("a", Priority.ONE), ("b", Priority.TWO))]
                 + [Row(grp=0, name="c", priority=Priority.TWO)])
    # PostgreSQL keeps an enum's value as text: '10' sorts between '1' and '2', so the new row enters the page
    assert not store.unseen([], Sort("priority"), [Row(grp=0, name="d", priority=Priority.TEN)], limit=2)


def test_a_literal_column_null_is_not_what_postgresql_calls_null(store: Store) -> None:
    store.commit([Row(grp=0, name="a", state="open"), Row(grp=0, name="b")])
    # a Literal column is jsonb in PostgreSQL, None a JSON null there: IS NOT NULL holds for it
    assert not store.unseen([Condition("state", "is_null", False)], Sort(), [Row(grp=0, name="c", state=None)])


@pytest.mark.parametrize("asked", [[EDT_1_30], [EST_1_30, EDT_1_30]], ids=["eq", "in"])
def test_a_time_in_a_zones_repeated_hour_equals_its_instant(store: Store, asked: list[datetime]) -> None:
    store.commit([Row(grp=0, name="a", at=datetime(2026, 1, 1, tzinfo=UTC))])
    condition = Condition("at", "eq", asked[0]) if len(asked) == 1 else Condition("at", "in", asked)
    # Python's == says no for two zones' times when one is in a repeated hour; PostgreSQL compares instants
    arriving = Row(grp=0, name="b", at=datetime(2026, 11, 1, 5, 30, tzinfo=UTC))
    assert not store.unseen([condition], Sort(), [arriving])


def test_a_time_in_a_zones_repeated_hour_orders_by_its_instant(store: Store) -> None:
    store.commit([Row(grp=0, name=n, at=datetime(2026, 11, 1, h, tzinfo=UTC)) for n, h in (("a", 4), ("b", 7))])
    # both 1:30s of one zone: Python orders them as equal (the same tzinfo: wall times), PostgreSQL by instant
    assert not store.unseen([Condition("at", "lt", EST_1_30)], Sort(), [Row(grp=0, name="c", at=EDT_1_30)])


_VALUES: dict[str, list[Any]] = {
    "grp": [0, 1, -1, 2**63 - 1, -(2**63)],
    "name": ["", "a", "B", "b", "é", "\U0001f600", "\uffff", "a\u0301", "Z", "aa"],
    "priority": [None, *Priority], "colour": [None, *Colour], "state": [None, "open", "shut"],
    "big": [None, 0, 2**63 - 1, -(2**63), 2**53 + 1, 2**53],
    "ratio": [None, 0.0, -0.0, 1.5, float("inf"), float("-inf"), 5e-324, 9007199254740992.0],
    "amount": [None, Decimal("1.50"), Decimal("1.5"), Decimal("-0"), Decimal("1E+2"), Decimal("100")],
    "at": [None, datetime(2026, 11, 1, 5, 30, tzinfo=UTC), EDT_1_30, EST_1_30,
           datetime(2026, 3, 8, 3, 30, tzinfo=NEW_YORK), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)],
    "day": [None, date(2026, 1, 1), date(1, 1, 1), date(9999, 12, 31)],
    "ref": [None, uuid.UUID(int=0), uuid.UUID(int=2**127), uuid.UUID(int=1), uuid.UUID(int=2**128 - 1)],
    "flag": [None, True, False],
    "label": [None, "", "a", "A", "a_", "%", "é", "e\u0301", "\U0001f600", "\ufffd", "ab"],
}
_COLUMNS = [c for c in _VALUES if c not in Row.key]


def _row(chooser: random.Random, key: tuple[Any, ...] | None = None) -> Row:
    grp, name = key or (chooser.choice(_VALUES["grp"][:3]), chooser.choice(_VALUES["name"]))
    return Row(grp=grp, name=name, **{c: chooser.choice(_VALUES[c]) for c in _COLUMNS})


def _condition(chooser: random.Random) -> Condition:
    column = chooser.choice([c for c in _VALUES if c not in ("priority", "state")])  # (PostgreSQL refuses those)
    operators = ["eq", "ne", "lt", "lte", "gt", "gte", "in", "is_null"]
    operator = chooser.choice(operators + (["prefix", "contains"] if column in ("name", "label") else []))
    values = [v for v in _VALUES[column] if v is not None]
    if operator == "is_null":
        return Condition(column, operator, chooser.random() < 0.5)
    if operator == "in":
        return Condition(column, operator, [chooser.choice(values) for _ in range(2)])
    if operator in ("prefix", "contains"):
        return Condition(column, operator, chooser.choice(["a", "", "_", "%", "é", "e"]))
    return Condition(column, operator, chooser.choice(values))


@pytest.mark.parametrize("seed", range(3))
def test_random_commits_against_postgresqls_answers(store: Store, seed: int) -> None:
    chooser = random.Random(seed)
    rows = {r.key_values(): r for r in (_row(chooser) for _ in range(25))}
    store.commit(list(rows.values()))
    for _ in range(150):
        sort = Sort(chooser.choice([None, *_COLUMNS, "name", "grp"]), chooser.random() < 0.5)
        where = [_condition(chooser) for _ in range(chooser.randrange(2))]
        after = sort.values(chooser.choice(list(rows.values()))) if chooser.random() < 0.3 else None
        if sort.column in ("priority", "state"):
            after = None  # PostgreSQL cannot compare those columns with a cursor's values (text with a number, jsonb)
        puts = [_row(chooser) for _ in range(chooser.randrange(1, 3))]
        puts.append(_row(chooser, chooser.choice(list(rows))))
        puts = list({p.key_values(): p for p in puts}.values())
        deletes = [k for k in chooser.sample(list(rows), 1) if k not in {p.key_values() for p in puts}]
        deletes = deletes if chooser.random() < 0.3 else []
        assert not store.unseen(where, sort, puts, deletes, after, chooser.choice([None, 1, 3, 6])), (
            where, sort, after, puts, deletes)
        rows.update({p.key_values(): p for p in puts})
        for key in deletes:
            rows.pop(key)


def _page(views: Any) -> list[str]:
    return [row.name for row in paginate(views, "p", Row, PageRequest(first=2), sort=Sort("priority")).rows]


@strawberry.type
class Query:
    @strawberry.field
    @reads("p")
    async def by_priority(self, info: Info) -> list[str]:
        context = info.context
        assert isinstance(context, QueryContext)
        return await context.read(_page, context.views)  # type: ignore[no-any-return]


def test_a_kept_page_sorted_by_an_enum_of_numbers_is_postgresqls_after_a_row_enters_it(
        pg_database: PgDatabase, store: Store) -> None:
    """Through the query API: the commit's notice heard by the listener, the kept page checked against it."""
    store.commit([Row(grp=0, name=n, priority=p) for n, p in (("a", Priority.ONE), ("b", Priority.TWO),
                                                            ("c", Priority.TWO))])
    watch = PositionWatch(PostgresPositionSignals(store.settings, check_seconds=5), store.views)
    listening, heard = threading.Event(), threading.Event()
    watch.observers.append(lambda change: (listening if change is None else heard).set())
    app = create_query_app(GraphQLSpec(Query), store.views, None, watch=watch)
    with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
        query = "{ byPriority }"
        assert client.data(query)["byPriority"] == ["a", "b"]  # the first request starts the listener
        assert listening.wait(10)
        store.commit()  # a commit of no row, heard: the answer kept before listening no longer holds
        assert heard.wait(10)
        heard.clear()
        assert client.data(query)["byPriority"] == ["a", "b"]  # computed again and kept, commits now heard
        store.commit([Row(grp=0, name="d", priority=Priority.TEN)])
        assert heard.wait(10), "the commit's notice heard"
        assert client.data(query)["byPriority"] == _page(store.views) == ["a", "d"]
