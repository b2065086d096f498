"""The response cache's honesty for answers that read pages (queries over a table), on real PostgreSQL
with the process's listener: a kept page survives a commit only when that commit cannot change it, and an
answer is always PostgreSQL's own answer at the position it claims.

The truth is PostgreSQL's: after every commit (the test is the only writer) each page asked in the test
is read straight from the view store and kept by position. Answers are then asked plainly (they must be
the newest truth: every commit finished before the request) and with ``Eventfold-Position`` (they must be
the truth at the position they claim). ``COMPUTED`` counts the resolver's runs: a page the cache kept
through a commit is not computed again."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import strawberry
from graphql_helpers import GraphQLClient
from strawberry.types import Info
from support.http import ServerThread
from support.postgres import PgDatabase

from framework.adapters.pg_positions import PostgresPositionSignals
from framework.adapters.postgres_views import PostgresViewStore
from framework.graphql import GraphQLSpec, QueryApiOptions, QueryContext, create_query_app, reads
from framework.graphql.filters import filter_input
from framework.positions import PositionWatch
from framework.query import PageRequest, Sort, encode_cursor, paginate
from framework.read import ReadModel

pytestmark = pytest.mark.postgres


class Entry(ReadModel):
    table = "entries"
    key = ("id",)
    id: int
    rank: int | None = None
    label: str = ""
    score: float | None = None


EntryWhere = filter_input(Entry, name="EntryWhere")
COMPUTED = {"count": 0}


@dataclass
class Hold:
    """Set by a test: the next page read waits, after reading, until ``release`` is set."""

    read: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


HOLD: list[Hold] = []


def page_of(views: Any, name: str, arguments: dict[str, Any]) -> list[str]:
    """What the field answers, read through ``views``: the truth when they are the store itself."""
    where = arguments.get("where")
    request = PageRequest(first=arguments.get("first"), after=arguments.get("after"), last=arguments.get("last"),
                          before=arguments.get("before"))
    page = paginate(views, name, Entry, request, where.conditions() if where else [],
                    Sort(arguments.get("order_by"), arguments.get("descending", False)))
    shown = [f"{r.id}:{r.rank}:{r.label}:{r.score}" for r in page.rows]
    if HOLD and not isinstance(views, PostgresViewStore):  # a request's read, not the truth's
        hold = HOLD.pop()
        hold.read.set()
        assert hold.release.wait(15)
    return [*shown, f"next={page.has_next}", f"previous={page.has_previous}"]


def _context(info: Info) -> QueryContext:
    assert isinstance(info.context, QueryContext)
    return info.context


async def _resolve(info: Info, name: str, arguments: dict[str, Any]) -> list[str]:
    COMPUTED["count"] += 1
    context = _context(info)
    return await context.read(page_of, context.views, name, arguments)  # type: ignore[no-any-return]


@strawberry.type
class Query:
    @strawberry.field
    @reads("entries")
    async def entries(self, info: Info, where: EntryWhere | None = None, order_by: str | None = None,  # type: ignore[valid-type]
                      descending: bool = False, first: int | None = None, after: str | None = None,
                      last: int | None = None, before: str | None = None) -> list[str]:
        return await _resolve(info, "entries", {"where": where, "order_by": order_by, "descending": descending,
                                                "first": first, "after": after, "last": last, "before": before})

    @strawberry.field
    @reads("parted")
    async def parted(self, info: Info, first: int | None = None, order_by: str | None = None) -> list[str]:
        return await _resolve(info, "parted", {"first": first, "order_by": order_by})


ENTRIES = """query E($where: EntryWhere, $orderBy: String, $descending: Boolean! = false, $first: Int,
  $after: String, $last: Int, $before: String) {
  entries(where: $where, orderBy: $orderBy, descending: $descending, first: $first, after: $after, last: $last,
          before: $before)
}"""
PARTED = "query P($first: Int, $orderBy: String) { parted(first: $first, orderBy: $orderBy) }"


@dataclass(frozen=True)
class Ask:
    """One page asked: its projection, document and variables."""

    name: str
    variables: tuple[tuple[str, Any], ...]

    @property
    def query(self) -> str:
        return ENTRIES if self.name == "entries" else PARTED

    def arguments(self) -> dict[str, Any]:
        """The resolver's arguments (the filter input built as Strawberry builds it)."""
        found = dict(self.variables)
        arguments = {_snake(k): v for k, v in found.items()}
        if found.get("where") is not None:
            arguments["where"] = _where(found["where"])
        return arguments


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _where(given: dict[str, dict[str, Any]]) -> Any:
    """``EntryWhere`` as Strawberry makes it of the variables (``in``/``isNull`` under their Python names)."""
    made = EntryWhere()
    for column, operators in given.items():
        filter_type = EntryWhere.__annotations__[column].__args__[0]  # X | None -> X
        kwargs = {{"in": "in_", "isNull": "is_null"}.get(k, k): v for k, v in operators.items()}
        setattr(made, column, filter_type(**kwargs))
    return made


def ask(name: str = "entries", **variables: Any) -> Ask:
    return Ask(name, tuple(sorted(variables.items())))


@dataclass
class Side:
    views: PostgresViewStore
    client: GraphQLClient
    watch: PositionWatch
    loop: asyncio.AbstractEventLoop | None = None
    positions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    asks: list[Ask] = field(default_factory=list)
    truth: dict[tuple[int, int], dict[str, list[str]]] = field(default_factory=dict)  # (index of ask, position)
    version: dict[str, int] = field(default_factory=lambda: {"entries": 1, "parted": 1})
    head: dict[str, int] = field(default_factory=lambda: {"entries": 0, "parted": 0})

    def watching(self, *asks: Ask) -> None:
        """Pages whose truth is kept from now on (read once now, at the head)."""
        for asked in asks:
            self.asks.append(asked)
            self._record(len(self.asks) - 1, self.head[asked.name])

    def _record(self, index: int, position: int) -> None:
        asked = self.asks[index]
        self.truth[(index, position)] = {"page": page_of(self.views, asked.name, asked.arguments())}

    def commit(self, puts: list[Entry] = (), deletes: list[int] = (), *, name: str = "entries",  # type: ignore[assignment]
               partition: int | None = None) -> int:
        position = next(self.positions)
        batches = (self.views.batch(name, self.version[name]) if partition is None
                   else self.views.partition_batch(name, self.version[name], partition))
        with batches as batch:
            for row in puts:
                batch.put(row)
            for row_id in deletes:
                batch.delete(Entry, row_id)
            batch.advance(position, None)
        self.head[name] = self.views.active_position(name)
        self.settle(name, position)
        return position

    def settle(self, name: str, position: int) -> None:
        """The listener heard the head (``position``, or a partitioned projection's lowest partition's);
        the truth of every page of ``name`` at it recorded (a partitioned one's: the newest at that head)."""
        async def until() -> None:
            await self.watch.until([name], self.head[name], 10)
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(until(), self.loop).result(15)
        for index, asked in enumerate(self.asks):
            if asked.name == name:
                self._record(index, self.head[name])

    def at(self, index: int, position: int) -> list[str]:
        known = [p for (i, p) in self.truth if i == index and p <= position]
        assert known, f"no truth of ask {index} at {position}"
        return self.truth[(index, max(known))]["page"]


@pytest.fixture
def side(pg_database: PgDatabase) -> Iterator[Side]:
    with pg_database.fresh_schema("rchpages") as schema:
        views = PostgresViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        views.ensure_tables("entries", 1, [Entry])
        views.ensure_tables("parted", 1, [Entry])
        views.ensure_partitions("parted", 1, 2)
        watch = PositionWatch(PostgresPositionSignals(pg_database.settings(schema), check_seconds=0.2), views)
        listening = threading.Event()
        watch.observers.append(lambda change: listening.set() if change is None else None)
        app = create_query_app(GraphQLSpec(Query), views, None, watch=watch,
                               options=QueryApiOptions(consistency_timeout=3))
        try:
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                made = Side(views, client, watch)
                captured: list[asyncio.AbstractEventLoop] = []
                watch.observers.append(lambda change: captured.append(asyncio.get_running_loop())
                                       if not captured else None)
                client.data(ENTRIES, {"first": 1})  # the first request starts the listener
                assert listening.wait(10), "the listener began"
                with views.batch("entries", 1) as batch:  # a notice, to learn the server's loop
                    batch.advance(next(made.positions), None)
                made.loop = _wait_for(lambda: captured[0] if captured else None)
                made.head["entries"] = views.active_position("entries")
                yield made
        finally:
            HOLD.clear()
            views.close()


def _wait_for(check: Callable[[], Any], tries: int = 500) -> Any:
    event = threading.Event()
    for _ in range(tries):
        found = check()
        if found is not None:
            return found
        event.wait(0.02)
    raise AssertionError("never came")


def check(side: Side) -> int:
    """Every page watched, asked plainly twice and once claiming the head: each the truth it must be.
    Returns how many times the resolver ran."""
    before = COMPUTED["count"]
    for index, asked in enumerate(side.asks):
        variables = dict(asked.variables)
        for _ in range(2):
            body = side.client.execute(asked.query, variables)
            assert "errors" not in body, body
            assert next(iter(body["data"].values())) == side.at(index, side.head[asked.name]), (
                f"{asked}: a plain answer is not the newest page")
        body = side.client.execute(asked.query, variables, position=side.head[asked.name])
        assert "errors" not in body, body
        claimed = body["extensions"]["consistency"]["positions"][asked.name]
        assert next(iter(body["data"].values())) == side.at(index, claimed), f"{asked} at its claim {claimed}"
    return COMPUTED["count"] - before


def _entries(*rows: tuple[int, int | None, str]) -> list[Entry]:
    return [Entry(id=i, rank=r, label=label) for i, r, label in rows]


# --- the tests ---------------------------------------------------------------------------------------


def test_a_page_kept_through_commits_beyond_it_and_dropped_by_those_reaching_it(side: Side) -> None:
    side.commit(_entries(*((i, i * 10, f"e{i}") for i in range(1, 7))))  # ranks 10..60
    side.watching(ask(first=3, orderBy="rank"))
    assert check(side) == 1, "computed once, then kept"
    steps: list[tuple[str, list[Entry], list[int], bool]] = [
        ("a row beyond the page", _entries((20, 100, "x")), [], True),
        ("a row beyond the page deleted", [], [6], True),
        ("a tie with the last row read (the page reads one more), larger key", _entries((21, 40, "tie")), [], True),
        ("a row outside the page updated, still outside", _entries((5, 55, "e5b")), [], True),
        ("a row entering the page", _entries((22, 15, "in")), [], False),
        ("a tie with the last row, smaller key: before it", _entries((0, 30, "tie")), [], False),
        ("a row of the page leaving it", _entries((1, 500, "e1")), [], False),
        ("a row of the page deleted", [], [22], False),
        ("a null rank (sorts last in PostgreSQL: not decided, dropped)", _entries((23, None, "n")), [], False),
    ]
    for what, puts, deletes, kept in steps:
        side.commit(puts, deletes)
        computed = check(side)
        assert computed == (0 if kept else 1), f"{what}: computed {computed} times"


def test_descending_pages_cursors_and_last(side: Side) -> None:
    side.commit(_entries(*((i, i * 10, f"e{i}") for i in range(1, 9))))  # ranks 10..80
    cursor = encode_cursor([40, 4])
    side.watching(ask(first=3, orderBy="rank", descending=True),
                  ask(first=2, orderBy="rank", after=cursor),
                  ask(last=2, orderBy="rank", before=cursor),
                  ask(first=2, orderBy="rank", descending=True, after=cursor),
                  ask(last=3, orderBy="label"))
    assert check(side) == 5
    for puts, deletes in [(_entries((30, 5, "low")), []),  # below everything: outside the descending page
                          (_entries((31, 45, "mid")), []),  # just past the cursor: enters the `after` page
                          (_entries((32, 35, "b4")), []),  # just before the cursor: the `before` page
                          (_entries((33, 40, "z")), []),  # the cursor's rank, larger key: after it
                          (_entries((4, 41, "e4")), []),  # the cursor's own row moves
                          (_entries((34, 1000, "top")), []),  # heads the descending page
                          ([], [30, 31]),
                          (_entries((35, None, "null")), [])]:
        side.commit(puts, deletes)
        check(side)


OPERATORS: list[dict[str, Any]] = [
    {"rank": {"eq": 30}}, {"rank": {"ne": 30}}, {"rank": {"in": [20, 50]}}, {"rank": {"lt": 30}},
    {"rank": {"lte": 30}}, {"rank": {"gt": 40}}, {"rank": {"gte": 40}}, {"rank": {"isNull": True}},
    {"rank": {"isNull": False}}, {"label": {"prefix": "a_"}}, {"label": {"contains": "%"}},
    {"label": {"ne": "B"}}, {"label": {"eq": "é"}}, {"label": {"in": ["é", "B"]}},
    {"score": {"gte": 0.0}}, {"score": {"isNull": True}},
]


def test_filters_of_every_operator(side: Side) -> None:
    side.commit([Entry(id=i, rank=i * 10, label=["a_1", "ax", "b%", "B", "é", ""][i % 6],
                       score=[None, -0.0, 1.5][i % 3]) for i in range(1, 8)])
    side.watching(*(ask(where=where, first=2, orderBy="rank") for where in OPERATORS))
    assert check(side) == len(OPERATORS)
    kept = 0
    for puts, deletes in [([Entry(id=40, rank=1000, label="zz")], []),
                          ([Entry(id=41, rank=30, label="a_2", score=0.0)], []),
                          ([Entry(id=3, rank=None, label="é", score=None)], []),
                          ([Entry(id=42, rank=5, label="B", score=-1.0)], []),
                          ([Entry(id=5, rank=45, label="a%", score=2.0)], []),
                          ([], [1, 42])]:
        side.commit(puts, deletes)
        kept += len(OPERATORS) - check(side)
    assert kept > 0, "some filtered pages outlive commits outside them"


def test_random_commits_never_make_a_page_wrong(side: Side) -> None:
    chooser = random.Random(14)
    labels = ["", "a", "ab", "b", "B", "é", "a_", "%"]

    def row(row_id: int) -> Entry:
        return Entry(id=row_id, rank=chooser.choice([None, *range(0, 60, 5)]), label=chooser.choice(labels),
                     score=chooser.choice([None, 0.5, 1.0, -0.0]))

    side.commit([row(i) for i in range(12)])
    side.watching(ask(first=4, orderBy="rank"), ask(first=4, orderBy="label", descending=True),
                  ask(first=3), ask(last=3, orderBy="rank"),
                  ask(first=3, orderBy="rank", where={"rank": {"gte": 20}}),
                  ask(first=3, orderBy="rank", after=encode_cursor([25, 5])),
                  ask(first=3, orderBy="score", where={"score": {"isNull": False}}))
    check(side)
    for _ in range(30):
        puts = [row(chooser.randrange(20)) for _ in range(chooser.randrange(0, 3))]
        deletes = [d for d in chooser.sample(range(20), chooser.randrange(0, 2)) if d not in {p.id for p in puts}]
        side.commit(puts, deletes)
        check(side)


def test_a_partitioned_projection_and_a_version_switch(side: Side) -> None:
    side.commit(_entries((1, 10, "a"), (2, 20, "b")), name="parted", partition=0)
    side.commit(_entries((3, 30, "c")), name="parted", partition=1)
    side.watching(ask("parted", first=2, orderBy="rank"))
    check(side)
    for partition, puts in [(0, _entries((4, 100, "beyond"))), (1, _entries((5, 5, "heads"))),
                            (1, _entries((6, 200, "beyond")))]:
        side.commit(puts, name="parted", partition=partition)
        check(side)
    side.watching(ask(first=2, orderBy="rank"))
    side.commit(_entries((1, 10, "v1")))
    check(side)
    side.views.ensure_tables("entries", 2, [Entry])
    with side.views.switch("entries", 2) as batch:
        batch.put(Entry(id=9, rank=99, label="v2"))
        batch.advance(position := next(side.positions), None)
    side.version["entries"] = 2
    side.views.note_active_version("entries", 2)  # the truth reads the new version at once
    side.head["entries"] = position
    side.settle("entries", position)
    assert check(side) >= 1, "a switch drops every kept page of the projection"


def _metric(side: Side, name: str) -> int:
    text = side.client.http.get(side.client.base_url + "/metrics").text
    found = [line for line in text.splitlines() if line.startswith(name + " ")]
    return int(float(found[0].split()[-1])) if found else 0


@pytest.mark.parametrize("commit_meanwhile", [False, True], ids=["nothing-meanwhile", "page-changed-meanwhile"])
def test_requests_arriving_while_their_answer_is_computed_share_it_when_it_holds_for_them(
        side: Side, commit_meanwhile: bool) -> None:
    """Requests for an answer being computed wait for it, then take it only as they would take a kept
    one: when the page changed after it was read (and before they arrived), it is computed again, by one of
    them, and the others take that computation's answer (their positions, read after they arrived, hold for it)."""
    import concurrent.futures

    side.commit(_entries(*((i, i * 10, f"e{i}") for i in range(1, 7))))
    side.watching(ask(first=2, orderBy="rank"))
    asked = side.asks[-1]
    hold = Hold()
    HOLD.append(hold)
    followers = 3
    with concurrent.futures.ThreadPoolExecutor(followers + 1) as pool:
        def one() -> Any:
            with GraphQLClient(side.client.base_url) as client:
                return client.execute(asked.query, dict(asked.variables))["data"]["entries"]

        before = COMPUTED["count"]
        leader = pool.submit(one)
        assert hold.read.wait(15), "the first request read its page"
        if commit_meanwhile:
            side.commit(_entries((30, 1, "heads")))  # heard before the others arrive
        others = [pool.submit(one) for _ in range(followers)]
        _wait_for(lambda: _metric(side, "eventfold_graphql_response_cache_waiting") == followers or None)
        hold.release.set()
        assert leader.result(15) == side.at(0, side.head["entries"] - (1 if commit_meanwhile else 0))
        answers = [f.result(15) for f in others]
    assert answers == [side.at(0, side.head["entries"])] * followers, "each the newest page at its arrival"
    computed = COMPUTED["count"] - before
    assert computed == (2 if commit_meanwhile else 1), computed
    check(side)
