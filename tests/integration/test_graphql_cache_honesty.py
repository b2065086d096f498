"""Adversarial checks of the response cache's honesty, on real PostgreSQL with the process's listener:
an answer never claims a position at which it is wrong, and never hides a commit that finished before
the request arrived. The read models are written here batch by batch (no event store), so the state at
every position is known: each answer is compared with it."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
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
from framework.positions import PositionWatch
from framework.read import ReadModel

pytestmark = pytest.mark.postgres


class Item(ReadModel):
    table = "items"
    key = ("id",)
    id: int
    value: str


class Tag(ReadModel):
    table = "tags"
    key = ("kind", "n")
    kind: str
    n: int
    text: str


class Other(ReadModel):
    table = "others"
    key = ("id",)
    id: int
    value: str


class Part(ReadModel):
    table = "parts"
    key = ("id",)
    id: int
    value: str


Hook = Callable[[], Awaitable[None]]


@dataclass
class Hooks:
    """What a resolver does after it read its row (a commit landing meanwhile), set by a test."""

    after_read: Hook | None = None


HOOKS = Hooks()


def _context(info: Info) -> QueryContext:
    assert isinstance(info.context, QueryContext)
    return info.context


@strawberry.type
class Query:
    @strawberry.field
    @reads("items")
    async def item(self, info: Info, id: int) -> str | None:
        row = await _context(info).loader("items", Item).load((id,))
        return row.value if row else None

    @strawberry.field
    @reads("items")
    async def tag(self, info: Info, kind: str, n: int) -> str | None:
        row = await _context(info).loader("items", Tag).load((kind, n))
        return row.text if row else None

    @strawberry.field
    @reads("items")
    async def item_with_other(self, info: Info, id: int) -> str | None:
        """Declares `items` only, yet reads `others` too (a mistake the cache can see)."""
        context = _context(info)
        row = await context.loader("items", Item).load((id,))
        other = await context.loader("others", Other).load((id,))
        return f"{row.value if row else None}/{other.value if other else None}"

    @strawberry.field
    @reads("items", "others")
    async def both(self, info: Info, id: int) -> str | None:
        context = _context(info)
        row = await context.loader("items", Item).load((id,))
        other = await context.loader("others", Other).load((id,))
        return f"{row.value if row else None}/{other.value if other else None}"

    @strawberry.field
    @reads("items")
    async def item_with_position(self, info: Info, id: int) -> str | None:
        """Reads a row by key, then the projection's position through another method of the store."""
        context = _context(info)
        row = await context.loader("items", Item).load((id,))
        position = await context.read(context.views.active_position, "items")
        return f"{row.value if row else None}@{position}"

    @strawberry.field
    @reads("parts", "items")
    async def part_and_item(self, info: Info, id: int) -> str | None:
        context = _context(info)
        part = await context.loader("parts", Part).load((id,))
        row = await context.loader("items", Item).load((id,))
        return f"{part.value if part else None}/{row.value if row else None}"

    @strawberry.field
    @reads("items")
    async def item_racing(self, info: Info, id: int) -> str | None:
        row = await _context(info).loader("items", Item).load((id,))
        if HOOKS.after_read is not None:
            hook, HOOKS.after_read = HOOKS.after_read, None
            await hook()
        return row.value if row else None


ITEM = "query I($id: Int!) { item(id: $id) }"
TAG = "query T($kind: String!, $n: Int!) { tag(kind: $kind, n: $n) }"
WITH_OTHER = "query W($id: Int!) { itemWithOther(id: $id) }"
BOTH = "query B($id: Int!) { both(id: $id) }"
RACING = "query R($id: Int!) { itemRacing(id: $id) }"
PART = "query P($id: Int!) { partAndItem(id: $id) }"
WITH_POSITION = "query X($id: Int!) { itemWithPosition(id: $id) }"


@dataclass
class Side:
    """The read models and what they held after every commit (the truth to compare answers with)."""

    views: PostgresViewStore
    client: GraphQLClient
    watch: PositionWatch
    pg: PgDatabase
    loop: asyncio.AbstractEventLoop | None = None
    positions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    history: dict[str, list[tuple[int, dict[tuple[str, tuple[Any, ...]], str]]]] = field(default_factory=dict)
    version: dict[str, int] = field(default_factory=lambda: {"items": 1, "others": 1})

    def commit(self, name: str, puts: list[ReadModel] = (), deletes: list[tuple[type[ReadModel], tuple[Any, ...]]] = (),  # type: ignore[assignment]
               *, truth_deletes: list[tuple[type[ReadModel], tuple[Any, ...]]] | None = None) -> int:
        position = next(self.positions)
        with self.views.batch(name, self.version[name]) as batch:
            for row in puts:
                batch.put(row)
            for model, key in deletes:
                batch.delete(model, *key)
            batch.advance(position, None)
        state = dict(self.history.setdefault(name, [(0, {})])[-1][1])
        for row in puts:
            state[(row.table, row.key_values())] = _shown(row)
        for model, key in (deletes if truth_deletes is None else truth_deletes):
            state.pop((model.table, key), None)
        self.history[name].append((position, state))
        return position

    def truth(self, name: str, table: str, key: tuple[Any, ...], at: int) -> str | None:
        state = [s for p, s in self.history.get(name, [(0, {})]) if p <= at][-1]
        return state.get((table, key))

    def heard(self, name: str, position: int) -> None:
        """Once this returns, the server's listener has heard ``position`` of ``name``."""
        async def until() -> None:
            await self.watch.until([name], position, 10)
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(until(), self.loop).result(15)


def _shown(row: ReadModel) -> str:
    return row.text if isinstance(row, Tag) else row.value  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def side(pg_database: PgDatabase) -> Iterator[Side]:
    with pg_database.fresh_schema("rchonest") as schema:
        views = PostgresViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        views.ensure_tables("items", 1, [Item, Tag])
        views.ensure_tables("others", 1, [Other])
        views.ensure_tables("parts", 1, [Part])
        views.ensure_partitions("parts", 1, 2)
        watch = PositionWatch(PostgresPositionSignals(pg_database.settings(schema), check_seconds=0.2), views)
        listening = threading.Event()
        watch.observers.append(lambda change: listening.set() if change is None else None)
        app = create_query_app(GraphQLSpec(Query), views, None, watch=watch,
                               options=QueryApiOptions(consistency_timeout=3))
        try:
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                made = Side(views, client, watch, pg_database)
                made.commit("items", [Item(id=0, value="zero")])
                made.commit("others", [Other(id=0, value="zero")])
                captured: list[asyncio.AbstractEventLoop] = []
                watch.observers.append(lambda change: captured.append(asyncio.get_running_loop())
                                       if not captured else None)
                client.data(ITEM, {"id": 0})  # the first request starts the listener
                assert listening.wait(10), "the listener began"
                made.commit("items", [Item(id=0, value="zero")])  # a notice, to learn the server's loop
                made.loop = _wait_for(lambda: captured[0] if captured else None)
                yield made
        finally:
            HOOKS.after_read = None
            views.close()


def _wait_for(check: Callable[[], Any], tries: int = 500) -> Any:
    event = threading.Event()
    for _ in range(tries):
        found = check()
        if found is not None:
            return found
        event.wait(0.02)
    raise AssertionError("never came")


def _ask(side: Side, query: str, variables: dict[str, Any], *, position: int | None = None
         ) -> tuple[Any, int | None]:
    """The answer's value and the position it claims (None when it claims none)."""
    body = side.client.execute(query, variables, position=position)
    assert "errors" not in body, body
    value = next(iter(body["data"].values()))
    consistency = (body.get("extensions") or {}).get("consistency")
    if consistency is None:
        return value, None
    assert consistency["reached"] is True, consistency
    return value, consistency["positions"]["items"]


def _check_item(side: Side, item_id: int, *, position: int) -> None:
    """Asked plainly twice (computed, then kept), then claiming ``position``: each the truth."""
    head = max(p for p, _ in side.history["items"])
    for _ in range(2):
        value, _ = _ask(side, ITEM, {"id": item_id})
        assert value == side.truth("items", "items", (item_id,), head), "a plain answer hides a finished commit"
    value, claimed = _ask(side, ITEM, {"id": item_id}, position=position)
    assert claimed is not None and value == side.truth("items", "items", (item_id,), claimed), (
        f"item {item_id} at {claimed}: {value!r}")


# --- the tests ---------------------------------------------------------------------------------------


def test_a_commit_of_another_row_keeps_the_answer_and_its_own_row_drops_it(side: Side) -> None:
    side.commit("items", [Item(id=1, value="a"), Item(id=2, value="b")])
    _check_item(side, 1, position=1)
    moved = side.commit("items", [Item(id=2, value="b2")])
    side.heard("items", moved)
    _check_item(side, 1, position=moved)
    moved = side.commit("items", [Item(id=1, value="a2")])
    side.heard("items", moved)
    _check_item(side, 1, position=moved)


def test_a_row_deleted_then_inserted_again(side: Side) -> None:
    side.commit("items", [Item(id=5, value="five")])
    _check_item(side, 5, position=1)
    gone = side.commit("items", deletes=[(Item, (5,))])
    side.heard("items", gone)
    _check_item(side, 5, position=gone)
    back = side.commit("items", [Item(id=5, value="again")])
    side.heard("items", back)
    _check_item(side, 5, position=back)


def test_a_delete_by_a_key_in_another_spelling_drops_the_answer(side: Side) -> None:
    """A projector deleting row 7 by the text "07" (its event carried the id as text): PostgreSQL
    deletes row 7; the commit must not announce a key the cache cannot match with 7."""
    side.commit("items", [Item(id=7, value="seven")])
    _check_item(side, 7, position=1)
    gone = side.commit("items", deletes=[(Item, ("07",))], truth_deletes=[(Item, (7,))])
    assert side.views.get_many("items", Item, [(7,)]) == [None], "PostgreSQL deleted row 7"
    side.heard("items", gone)
    _check_item(side, 7, position=gone)


def test_composite_keys_and_look_alike_values(side: Side) -> None:
    side.commit("items", [Tag(kind="1", n=1, text="one-one"), Tag(kind="1", n=2, text="one-two"),
                          Item(id=1, value="item-1")])
    for _ in range(2):
        assert _ask(side, TAG, {"kind": "1", "n": 1})[0] == "one-one"
    moved = side.commit("items", [Tag(kind="1", n=1, text="changed")])
    side.heard("items", moved)
    value, claimed = _ask(side, TAG, {"kind": "1", "n": 1}, position=moved)
    assert value == "changed" and claimed is not None and claimed >= moved
    for _ in range(2):
        assert _ask(side, ITEM, {"id": 1})[0] == "item-1"
    moved = side.commit("items", [Item(id=1, value="item-1b")])  # text "1" in the other table only
    side.heard("items", moved)
    assert _ask(side, TAG, {"kind": "1", "n": 1}, position=moved)[0] == "changed"
    _check_item(side, 1, position=moved)


def test_a_commit_of_more_rows_than_announced_drops_everything(side: Side) -> None:
    side.commit("items", [Item(id=3, value="three")])
    _check_item(side, 3, position=1)
    many = side.commit("items", [Item(id=1000 + i, value="x") for i in range(300)] + [Item(id=3, value="3!")])
    side.heard("items", many)
    _check_item(side, 3, position=many)


def test_an_undeclared_projection_read_is_not_kept(side: Side) -> None:
    """`itemWithOther` declares `items` but reads `others`: its answer cannot be vouched for by the
    positions it recorded, so it must not be kept at all (it was, and outlived the change of `others`)."""
    side.commit("items", [Item(id=4, value="i4")])
    side.commit("others", [Other(id=4, value="o4")])
    for _ in range(2):
        assert _ask(side, WITH_OTHER, {"id": 4})[0] == "i4/o4"
    moved = side.commit("others", [Other(id=4, value="o4b")])
    side.heard("others", moved)
    assert _ask(side, WITH_OTHER, {"id": 4})[0] == "i4/o4b", "a commit to `others` hidden by the cache"


def test_two_projections_in_one_answer(side: Side) -> None:
    side.commit("items", [Item(id=8, value="i8")])
    side.commit("others", [Other(id=8, value="o8")])
    for _ in range(2):
        assert _ask(side, BOTH, {"id": 8})[0] == "i8/o8"
    moved = side.commit("others", [Other(id=8, value="o8b")])
    side.heard("others", moved)
    assert _ask(side, BOTH, {"id": 8})[0] == "i8/o8b"
    moved = side.commit("items", [Item(id=9, value="unrelated")])
    side.heard("items", moved)
    assert _ask(side, BOTH, {"id": 8})[0] == "i8/o8b"
    moved = side.commit("items", [Item(id=8, value="i8b")])
    side.heard("items", moved)
    assert _ask(side, BOTH, {"id": 8})[0] == "i8b/o8b"


@pytest.mark.parametrize("wait_for_notice", [True, False], ids=["notice-before-kept", "notice-after-kept"])
def test_a_commit_to_the_row_landing_while_the_answer_is_computed(side: Side, wait_for_notice: bool) -> None:
    """The resolver read the old row; the row's commit lands before the answer is kept (its notice
    heard before, or after, the answer is stored): the old answer must never be served for later."""
    side.commit("items", [Item(id=6, value="old")])
    landed: list[int] = []

    async def commit_meanwhile() -> None:
        landed.append(await asyncio.to_thread(side.commit, "items", [Item(id=6, value="new")]))
        if wait_for_notice:
            await side.watch.until(["items"], landed[0], 10)

    HOOKS.after_read = commit_meanwhile
    assert _ask(side, RACING, {"id": 6})[0] == "old", "it read the row before the commit"
    side.heard("items", landed[0])
    for _ in range(2):
        assert _ask(side, RACING, {"id": 6})[0] == "new", "the kept answer hides a finished commit"
    value, claimed = _ask(side, RACING, {"id": 6}, position=landed[0])
    assert value == "new" and claimed is not None and claimed >= landed[0]


def test_positions_equal_to_and_past_the_heard_head(side: Side) -> None:
    head = side.commit("items", [Item(id=11, value="eleven")])
    side.heard("items", head)
    _check_item(side, 11, position=head)
    value, claimed = _ask(side, ITEM, {"id": 11}, position=head)
    assert value == "eleven" and claimed == head
    body = side.client.execute(ITEM, {"id": 11}, position=head + 1)
    assert body["extensions"]["consistency"]["reached"] is False, "nothing past the head can be claimed"


def test_a_killed_listener_hides_no_commit(side: Side) -> None:
    """The listener's connection is killed, a commit to the kept row lands while nobody listens (its
    notice is lost): a request after the commit must not get the kept answer."""
    side.commit("items", [Item(id=12, value="before")])
    _check_item(side, 12, position=1)
    with side.pg.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name = 'eventfold-positions' AND datname = current_database()")
        moved = side.commit("items", [Item(id=12, value="after")])
    value, _ = _ask(side, ITEM, {"id": 12})
    assert value == "after", "a commit finished before the request, hidden"
    side.heard("items", moved)
    _check_item(side, 12, position=moved)


def _switch(side: Side, version: int, value: str) -> int:
    """A replay switched in: version ``version`` of `items`, where row 13 holds ``value``."""
    side.views.ensure_tables("items", version, [Item, Tag])
    rebuilt = next(side.positions)
    with side.views.switch("items", version) as batch:
        batch.put(Item(id=13, value=value))
        batch.advance(rebuilt, None)
    side.version["items"] = version
    side.history["items"].append((rebuilt, {("items", (13,)): value}))
    return rebuilt


def test_a_version_switch_while_kept(side: Side) -> None:
    """The view store remembers the active version for a second: a request waiting for the switch's
    position, or one whose fresh positions name the new version, must read the new version."""
    side.commit("items", [Item(id=13, value="v1")])
    _check_item(side, 13, position=1)
    rebuilt = _switch(side, 2, "v2")
    value, claimed = _ask(side, ITEM, {"id": 13}, position=rebuilt)
    assert claimed is not None and value == side.truth("items", "items", (13,), claimed), (
        f"{value!r} claimed at {claimed}, the switched-in version's")
    assert _ask(side, ITEM, {"id": 13})[0] == "v2"
    _switch(side, 3, "v3")
    assert _ask(side, ITEM, {"id": 13})[0] == "v3", "a switch that finished before the request, hidden"


def _partition_commit(side: Side, index: int, rows: list[Part]) -> int:
    position = next(side.positions)
    with side.views.partition_batch("parts", 1, index) as batch:
        for row in rows:
            batch.put(row)
        batch.advance(position, None)
    return position


def test_a_partitioned_projection_beside_a_plain_one(side: Side) -> None:
    """One answer reads a partitioned projection and a plain one: a commit of the partition that is not
    the lowest changes its row while the projection's position stands still; a commit of the plain one
    that touches nothing it read moves the other position."""
    _partition_commit(side, 1, [Part(id=2, value="p2")])
    _partition_commit(side, 0, [Part(id=1, value="p1")])
    side.commit("items", [Item(id=1, value="i1")])
    for _ in range(2):
        assert _ask(side, PART, {"id": 1})[0] == "p1/i1"
    lowest = side.views.active_position("parts")
    moved = _partition_commit(side, 0, [Part(id=1, value="p1b")])
    assert side.views.active_position("parts") == lowest, "the lowest partition stood still"
    side.heard("items", side.commit("items", [Item(id=99, value="unrelated")]))
    for _ in range(2):
        assert _ask(side, PART, {"id": 1})[0] == "p1b/i1", f"partition 0's commit at {moved} hidden"
    body = side.client.execute(PART, {"id": 1}, position=lowest)
    assert body["data"]["partAndItem"] == "p1b/i1" and body["extensions"]["consistency"]["reached"] is True
    side.heard("items", side.commit("items", [Item(id=1, value="i1b")]))
    assert _ask(side, PART, {"id": 1})[0] == "p1b/i1b"


def test_a_kept_answer_keeps_the_media_type_asked_for(side: Side) -> None:
    side.commit("items", [Item(id=21, value="x")])
    accept = {"Accept": "application/graphql-response+json, application/json;q=0.9"}
    types = []
    for _ in range(2):
        response = side.client.post(ITEM, {"id": 21}, headers=accept)
        assert response.status_code == 200 and response.json() == {"data": {"item": "x"}}
        types.append(response.headers["content-type"].split(";")[0])
    assert types == ["application/graphql-response+json"] * 2, types


def test_a_read_through_another_method_of_the_store_is_vouched_for_by_equal_positions_only(side: Side) -> None:
    side.commit("items", [Item(id=22, value="v")])
    first = _ask(side, WITH_POSITION, {"id": 22})[0]
    assert _ask(side, WITH_POSITION, {"id": 22})[0] == first
    moved = side.commit("items", [Item(id=23, value="another row")])
    side.heard("items", moved)
    assert _ask(side, WITH_POSITION, {"id": 22})[0] == f"v@{moved}", "the position it showed moved"


def test_racing_commits_never_make_an_answer_wrong_at_its_claim_or_older_than_its_request(side: Side) -> None:
    """Readers ask for four rows again and again, every other time claiming the newest position written,
    while a writer changes those rows and others, one commit at a time. An answer must be the truth at
    some position between the one it claims (a plain one: the newest commit finished before it was
    asked) and the newest commit finished once it came back."""
    import concurrent.futures
    import random

    ids = [31, 32, 33, 34]
    side.commit("items", [Item(id=i, value=f"{i}-0") for i in ids])
    lock = threading.Lock()
    head = [max(p for p, _ in side.history["items"])]
    done = threading.Event()
    answers: list[tuple[int, int, Any, int | None, int]] = []  # (id, head before, value, claimed, head after)

    def reader(seed: int) -> None:
        chooser = random.Random(seed)
        with GraphQLClient(side.client.base_url) as client:
            asked = 0
            while not done.is_set():
                asked += 1
                item_id = chooser.choice(ids)
                with lock:
                    before = head[0]
                body = client.execute(ITEM, {"id": item_id}, position=before if asked % 2 else None)
                with lock:
                    after = head[0]
                assert "errors" not in body, body
                consistency = (body.get("extensions") or {}).get("consistency")
                claimed = consistency["positions"]["items"] if consistency and consistency["reached"] else None
                answers.append((item_id, before, body["data"]["item"], claimed, after))

    writer = random.Random(7)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(reader, seed) for seed in range(4)]
        for index in range(60):
            changed = writer.sample([*ids, 40, 41, 42], 2)
            with lock:  # the head moves once the commit has finished
                position = side.commit("items", [Item(id=i, value=f"{i}-{index + 1}") for i in changed])
                head[0] = position
            _wait_for(lambda: len(answers) >= 4 * (index + 1) or None)  # noqa: B023 - paced by the readers
        done.set()
        for future in readers:
            future.result()
    wrong = []
    for item_id, before, value, claimed, after in answers:
        if claimed is not None:
            # A claim says the projection had applied that position: the rows are never older (an answer
            # computed after the wait may be newer: its rows are read after the positions are reported).
            if not any(side.truth("items", "items", (item_id,), q) == value for q in range(claimed, after + 1)):
                wrong.append(("claimed", item_id, claimed, after, value))
        elif not any(side.truth("items", "items", (item_id,), q) == value for q in range(before, after + 1)):
            wrong.append(("plain", item_id, before, after, value))
    assert len(answers) > 100
    assert not wrong, "\n".join(map(str, wrong))
