"""The query API's response cache over real HTTP on PostgreSQL: a kept answer is served only while
the read models it came from have not moved, and never to a request asking for a later position."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from graphql_helpers import (
    APPLE,
    SAP,
    CountingViewStore,
    GraphQLClient,
    LiveProjections,
    ReadSide,
    poll,
    read_model_statements,
)
from support.http import ServerThread
from support.postgres import PgDatabase

from example_app.commands import (
    AnnounceCorporateAction,
    CreditHoldings,
    OpenAccount,
    RegisterSecurity,
    ValidateCorporateAction,
)
from framework.adapters.pg_positions import PostgresPositionSignals
from framework.adapters.postgres import PostgresEventStore
from framework.errors import StoreUnavailable
from framework.graphql import QueryApiOptions, create_query_app
from framework.positions import PositionWatch
from framework.security import Principal
from projections.graphql import build_graphql
from projections.holdings import Holding

pytestmark = pytest.mark.postgres

HOLDINGS = '{ holdings(accountNumber: "RC-1") { isin quantity } }'


@dataclass
class Cached:
    client: GraphQLClient
    views: CountingViewStore
    side: ReadSide


@pytest.fixture
def cached(pg_database: PgDatabase) -> Iterator[Cached]:
    with pg_database.fresh_schema("rcache") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        side = ReadSide(store, views)
        side.execute([RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"),
                      OpenAccount(account_number="RC-1", holder_name="Cache"),
                      CreditHoldings(account_number="RC-1", isin=APPLE, quantity=10)], key_prefix="rc-seed")
        side.settle()
        app = create_query_app(build_graphql(), views, store, options=QueryApiOptions(consistency_timeout=0.3))
        try:
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                yield Cached(client, views, side)
        finally:
            views.close()
            store.close()


def _rows_read(cached: Cached, query: str, **kwargs: object) -> tuple[dict[str, object], int]:
    with cached.views.counting() as statements:
        body = cached.client.execute(query, **kwargs)  # type: ignore[arg-type]
    return body, len(read_model_statements(statements))


def test_a_repeated_query_is_answered_without_reading_rows(cached: Cached) -> None:
    first, read = _rows_read(cached, HOLDINGS)
    assert first == {"data": {"holdings": [{"isin": APPLE, "quantity": 10}]}} and read == 1
    again, read = _rows_read(cached, HOLDINGS)
    assert again == first and read == 0, "the second answer is the kept one"
    other, read = _rows_read(cached, '{ holdings(accountNumber: "RC-2") { isin quantity } }')
    assert other == {"data": {"holdings": []}} and read == 1, "another document is another entry"


def test_write_project_query_sees_the_new_data(cached: Cached) -> None:
    cached.client.data(HOLDINGS)
    cached.client.data(HOLDINGS)  # kept
    for total in (15, 22, 30):
        previous = total - {15: 10, 22: 15, 30: 22}[total]
        cached.side.execute([CreditHoldings(account_number="RC-1", isin=APPLE, quantity=previous)],
                            key_prefix=f"rc-{total}")
        cached.side.settle()
        body, read = _rows_read(cached, HOLDINGS)
        assert body == {"data": {"holdings": [{"isin": APPLE, "quantity": total}]}}, "never the stale answer"
        assert read == 1, "the projection moved: the answer is computed again"
        assert _rows_read(cached, HOLDINGS)[1] == 0, "and kept again"


def test_a_request_for_a_later_position_never_gets_the_kept_answer(cached: Cached) -> None:
    head = cached.side.store.head()
    cached.client.data(HOLDINGS)  # kept (an answer computed after a read-your-writes wait is not)
    kept, read = _rows_read(cached, HOLDINGS, position=head)
    assert read == 0 and kept["extensions"]["consistency"] == {
        "requested": head, "reached": True, "positions": {"holdings": head}}
    later, read = _rows_read(cached, HOLDINGS, position=head + 1)
    assert read == 1, "a position past the kept one is never answered from the cache"
    assert later["extensions"]["consistency"]["reached"] is False


def test_answers_are_kept_per_caller_and_variables(cached: Cached) -> None:
    query = "query Q($account: String!) { holdings(accountNumber: $account) { quantity } }"
    assert _rows_read(cached, query, variables={"account": "RC-1"})[1] == 1
    assert _rows_read(cached, query, variables={"account": "RC-1"})[1] == 0
    assert _rows_read(cached, query, variables={"account": "RC-9"})[1] == 1, "other variables, other entry"


def test_answers_with_errors_or_undeclared_fields_are_not_kept(cached: Cached) -> None:
    mixed = '{ holdings(accountNumber: "RC-1") { quantity } projections { name } }'
    for _ in range(2):
        body, read = _rows_read(cached, mixed)
        assert "errors" not in body and read == 1, "`projections` declares no read model: never kept"
    bad = '{ cards(first: 1000) { nodes { actionId } } }'
    for _ in range(2):
        assert cached.client.execute(bad)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert _rows_read(cached, '{ cards(first: 2) { nodes { actionId } } }')[1] == 1
    assert _rows_read(cached, '{ cards(first: 2) { nodes { actionId } } }')[1] == 0


def test_concurrent_readers_during_writes_never_see_the_past(cached: Cached) -> None:
    """Writes projected live while readers ask again and again: no reader's answers go backwards,
    an answer that says it reached a position holds every credit up to it, and the last write shows."""
    written: list[tuple[int, int]] = []  # (position, total after it), in order
    lock = threading.Lock()
    done = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        with GraphQLClient(cached.client.url.removesuffix("/graphql")) as client:
            last, asked = 0, 0
            while not done.is_set():
                with lock:
                    known = written[-1] if written else None
                asked += 1  # every other request without a position: those answers are the ones kept
                body = client.execute(HOLDINGS, position=known[0] if known and asked % 2 else None)
                quantity = body["data"]["holdings"][0]["quantity"]
                if quantity < last:
                    problems.append(f"went back from {last} to {quantity}")
                reached = (body.get("extensions") or {}).get("consistency", {}).get("reached")
                if known and asked % 2 and reached and quantity < known[1]:
                    problems.append(f"reached {known[0]} but holds {quantity} < {known[1]}")
                last = quantity

    with LiveProjections(cached.side), concurrent.futures.ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(reader) for _ in range(4)]
        total = 10
        for index in range(25):
            total += 1
            position = cached.side.execute([CreditHoldings(account_number="RC-1", isin=APPLE, quantity=1)],
                                           key_prefix=f"rc-live-{index}")
            with lock:
                written.append((position, total))
        for _ in range(200):  # bounded: the live projection catches up (each try waits up to 0.3 s)
            final = cached.client.execute(HOLDINGS, position=written[-1][0])
            if final["extensions"]["consistency"]["reached"]:
                break
        done.set()
        for future in readers:
            future.result()
    assert problems == []
    assert final["extensions"]["consistency"]["reached"] is True
    assert final["data"] == {"holdings": [{"isin": APPLE, "quantity": total}]}
    assert cached.client.data(HOLDINGS) == final["data"], "and the answer kept after it is the new one"


def test_a_partitioned_read_model_is_never_served_stale_while_its_lowest_partition_stands_still(
        pg_database: PgDatabase) -> None:
    """A partitioned projection's position is its lowest partition's: a commit of another partition
    leaves it where it was, yet changes rows. A kept answer must not survive that commit."""
    from example_app.app import build_router
    from framework.bus import CommandBus, CommandContext
    from framework.partitions import Partition, partition_of
    from framework.worker import ProjectionWorker
    from projections.holdings import HoldingsProjector

    with pg_database.fresh_schema("rcpart") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        try:
            bus = CommandBus(build_router(), store)
            count = HoldingsProjector.partitions
            workers = [ProjectionWorker(HoldingsProjector(), views, store, partition=Partition(i, count))
                       for i in range(count)]
            for command in (RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"),
                            OpenAccount(account_number="RC-1", holder_name="Cache"),
                            CreditHoldings(account_number="RC-1", isin=APPLE, quantity=10)):
                outcome = bus.execute(command, CommandContext())
            mine = partition_of(str(outcome.result.aggregate_id), count)
            for worker in workers:
                worker.catch_up()
            app = create_query_app(build_graphql(), views, store, options=QueryApiOptions())
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                cached = Cached(client, views, None)  # type: ignore[arg-type]
                assert _rows_read(cached, HOLDINGS) == ({"data": {"holdings": [{"isin": APPLE, "quantity": 10}]}}, 1)
                assert _rows_read(cached, HOLDINGS)[1] == 0, "kept"
                lowest = views.active_position("holdings")
                bus.execute(CreditHoldings(account_number="RC-1", isin=APPLE, quantity=5), CommandContext())
                workers[mine].catch_up()  # only RC-1's partition moves; the others stand at `lowest`
                assert views.active_position("holdings") == lowest, "the projection's position stood still"
                body, read = _rows_read(cached, HOLDINGS)
                assert body == {"data": {"holdings": [{"isin": APPLE, "quantity": 15}]}}, "never the stale answer"
                assert read == 1
        finally:
            views.close()
            store.close()


# --- with the process's listener: commits that did not touch an answer's rows leave it kept ------------

CARD = "query C($id: String!) { card(actionId: $id) { actionId status position } }"
PAGE = "{ cards(first: 5, orderBy: ACTION_ID) { nodes { actionId status } } }"


def _announce(action_id: str, isin: str = APPLE) -> AnnounceCorporateAction:
    return AnnounceCorporateAction.model_validate({
        "action_id": action_id, "isin": isin, "record_date": date(2030, 1, 15),
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "USD"}})


@pytest.fixture
def watched(pg_database: PgDatabase) -> Iterator[Cached]:
    """The query API as `eventfold query-api` runs it: a position watch listening for the commits."""
    with pg_database.fresh_schema("rcwatch") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        side = ReadSide(store, views)
        side.execute([RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"),
                      _announce("CA-A"), _announce("CA-B")], key_prefix="rcw-seed")
        side.settle()
        watch = PositionWatch(PostgresPositionSignals(pg_database.settings(schema), check_seconds=0.2), views,
                              store.head)
        listening = threading.Event()
        watch.observers.append(lambda change: listening.set() if change is None else None)
        app = create_query_app(build_graphql(), views, store, watch=watch,
                               options=QueryApiOptions(consistency_timeout=10))
        try:
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                client.data(CARD, {"id": "CA-none"})  # the first request starts the listener
                assert listening.wait(10), "the listener began"
                yield Cached(client, views, side)
        finally:
            views.close()
            store.close()


def _heard(cached: Cached, position: int) -> None:
    """Once this answers, the server's listener has heard ``position`` (a wait is woken by what it hears)."""
    body = cached.client.execute(CARD, {"id": "CA-none"}, position=position)
    assert body["extensions"]["consistency"]["reached"] is True


def test_a_commit_to_another_card_leaves_a_kept_card_valid_and_claiming_the_new_position(watched: Cached) -> None:
    first, read = _rows_read(watched, CARD, variables={"id": "CA-A"})
    assert first["data"]["card"]["status"] == "announced" and read == 1
    assert _rows_read(watched, CARD, variables={"id": "CA-A"})[1] == 0, "kept"
    position = watched.side.execute([ValidateCorporateAction(action_id="CA-B")], key_prefix="rcw-b")
    watched.side.settle()
    _heard(watched, position)
    again, read = _rows_read(watched, CARD, variables={"id": "CA-A"}, position=position)
    assert read == 0, "CA-B's commit did not touch CA-A's row: still kept"
    assert again["data"] == first["data"]
    claimed = again["extensions"]["consistency"]
    assert claimed["reached"] is True and claimed["positions"]["cards"] >= position, "as of the newest position"
    assert _rows_read(watched, PAGE)[1] == 1
    moved = watched.side.execute([ValidateCorporateAction(action_id="CA-A")], key_prefix="rcw-a")
    watched.side.settle()
    _heard(watched, moved)
    body, read = _rows_read(watched, CARD, variables={"id": "CA-A"})
    assert body["data"]["card"]["status"] == "validated" and body["data"]["card"]["position"] >= moved
    assert read == 1, "its own row changed: computed again"
    assert _rows_read(watched, PAGE) == ({"data": {"cards": {"nodes": [
        {"actionId": "CA-A", "status": "validated"}, {"actionId": "CA-B", "status": "validated"}]}}}, 1)


def test_a_kept_page_survives_commits_to_another_table_only(watched: Cached) -> None:
    assert _rows_read(watched, PAGE)[1] == 1
    assert _rows_read(watched, PAGE)[1] == 0
    position = watched.side.execute([RegisterSecurity(isin=SAP, name="SAP SE", currency="EUR")],
                                    key_prefix="rcw-sap")
    watched.side.settle()
    _heard(watched, position)
    assert watched.views.active_position("cards") >= position, "the cards projection moved (its securities)"
    assert _rows_read(watched, PAGE)[1] == 0, "no card changed: the page is kept"
    created = watched.side.execute([_announce("CA-C")], key_prefix="rcw-c")
    watched.side.settle()
    _heard(watched, created)
    body, read = _rows_read(watched, PAGE)
    assert read == 1 and [n["actionId"] for n in body["data"]["cards"]["nodes"]] == ["CA-A", "CA-B", "CA-C"]


def test_racing_writes_never_get_an_answer_older_than_the_position_it_claims(watched: Cached) -> None:
    """Cards announced and validated while readers ask for them again and again, every other request
    claiming positions: each answer is checked against the writer's log (the card's state at every
    position), a card shown at position c under a claim P is stale if it changed at some x, c < x <= P."""
    ids = [f"CA-R{i}" for i in range(12)]
    changes: dict[str, list[int]] = {i: [] for i in ids}  # positions at which each card changed
    answers: list[tuple[str, int, dict[str, object] | None]] = []  # (id, claimed position, card)
    lock = threading.Lock()
    done = threading.Event()

    def reader(seed: int) -> None:
        with GraphQLClient(watched.client.base_url) as client:
            asked = seed
            while not done.is_set():
                asked += 1
                action_id = ids[asked // 2 % len(ids)]  # each asked without a claim (kept), then with one
                body = client.execute(CARD, {"id": action_id}, position=1 if asked % 2 else None)
                assert "errors" not in body, body
                claimed = (body.get("extensions") or {}).get("consistency")
                if claimed is not None:
                    with lock:
                        answers.append((action_id, claimed["positions"]["cards"], body["data"]["card"]))

    with LiveProjections(watched.side), concurrent.futures.ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(reader, seed) for seed in range(4)]
        for index, action_id in enumerate(ids * 2):
            command = _announce(action_id) if index < len(ids) else ValidateCorporateAction(action_id=action_id)
            position = watched.side.execute([command], key_prefix=f"rcw-race-{index}")
            with lock:
                changes[action_id].append(position)
                before = len(answers)
            # Paced by the readers (not by time): each write is asked about, kept and served a few times.
            poll(lambda: len(answers) >= before + 12, what="twelve answers after a write")  # noqa: B023
        _heard(watched, position)
        done.set()
        for future in readers:
            future.result()
    stale = []
    for action_id, claimed, card in answers:
        shown = card["position"] if card else 0
        assert isinstance(shown, int)
        if any(shown < x <= claimed for x in changes[action_id]):
            stale.append((action_id, claimed, card))
    assert len(answers) > 20 and stale == []
    for action_id in ids:  # and what is kept at the end is the last state
        assert watched.client.data(CARD, {"id": action_id})["card"]["status"] == "validated"


def test_positions_read_on_the_event_loop_equal_the_blocking_read_and_survive_a_lost_connection(
        cached: Cached, pg_database: PgDatabase) -> None:
    """The response cache's fresh positions are read on the loop (no thread hop), over one connection
    of the view store's own: same answer as the blocking read; a lost connection fails one read
    (the request then runs uncached) and the next connects again."""
    names = ["cards", "holdings", "never-run"]
    views = cached.views

    async def main() -> None:
        assert await views.active_positions_async(names) == views.active_positions(names)
        assert views._async is not None
        with pg_database.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (views._async.info.backend_pid,))
        with pytest.raises(StoreUnavailable):
            await views.active_positions_async(names)
        assert await views.active_positions_async(names) == views.active_positions(names), "connected again"

    asyncio.run(main())


def test_positions_of_names_written_into_the_statement_are_read_as_given(cached: Cached) -> None:
    """The names are written into the positions statement (composed once per set of names): quoted as
    literals, whatever they hold, each read as itself; none known reads version 1 at position 0."""
    odd = ("it's", 'a "name"', "back\\slash", "co,ma}{", "x'); DROP TABLE y; --", "")
    views = cached.views

    async def main() -> None:
        for names in (odd, ("cards", *odd), ()):
            blocking = views.active_positions(names)
            assert await views.active_positions_async(names) == blocking
            assert set(blocking) == set(names) and all(blocking[n] == (1, 0, 0) for n in odd if n in names)

    asyncio.run(main())


def test_rows_by_key_read_on_the_event_loop_equal_the_blocking_read_and_survive_lost_connections(
        cached: Cached, pg_database: PgDatabase) -> None:
    """``get_many_async`` (the query API's rows by key, no thread hop): the blocking read's answer, in the
    keys' order, missing keys None; at most its limit of connections however many ask at once; idle
    connections whose server went away (terminated) are replaced at the next checkout, no failure."""
    views = cached.views
    keys = [("RC-1", APPLE), ("RC-9", APPLE), ("RC-1", "XX0000000000")]

    async def main() -> None:
        assert await views.get_many_async("holdings", Holding, keys) == views.get_many("holdings", Holding, keys)
        assert (await views.get_many_async("holdings", Holding, keys))[0].quantity == 10  # type: ignore[union-attr]
        assert await views.get_many_async("holdings", Holding, []) == []
        many = await asyncio.gather(*(views.get_many_async("holdings", Holding, keys) for _ in range(12)))
        assert all(rows == many[0] for rows in many)
        connections = views._rows_async
        assert 1 <= connections._open <= connections._limit == 4 and len(connections._idle) == connections._open
        with pg_database.connect() as admin:
            for conn in connections._idle:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        await asyncio.sleep(0.2)  # the goodbyes arrive
        assert await views.get_many_async("holdings", Holding, keys) == views.get_many("holdings", Holding, keys)

    asyncio.run(main())
    views._rows_async.close()  # this loop is over: its connections too (another loop starts afresh)


def test_a_row_by_key_is_read_on_the_event_loop(cached: Cached) -> None:
    """The query API asks the store's ``get_many_async`` for rows by key (no thread hop), and the
    answer is the row: a security by ISIN through the GraphQL endpoint."""
    asked: list[tuple[str, str]] = []
    original = cached.views.get_many_async

    async def spy(name: str, model: Any, keys: Any) -> Any:
        asked.append((name, model.table))
        return await original(name, model, keys)

    cached.views.get_many_async = spy  # type: ignore[method-assign]
    assert cached.client.data(f'{{ security(isin: "{APPLE}") {{ name }} }}') == {"security": {"name": "Apple Inc."}}
    assert asked == [("cards", "securities")]


# --- kept answers are the bytes a computed one would be; sharing a computation --------------------------

ODD_NAME = "Soci\u00e9t\u00e9\u2028G\u00e9n\u00e9rale \u2713 \U0001f4c8 \"quoted\" \\ </script>"
ODD_CARD = '{ card(actionId: "CA-ODD") { actionId securityName status } }'


def test_a_kept_answer_is_byte_identical_to_a_computed_one(cached: Cached) -> None:
    """Non-ASCII text, U+2028 included, is escaped as in a computed answer, with and without a claim
    (a kept answer claiming positions was encoded again, unescaped)."""
    head = cached.side.execute([RegisterSecurity(isin=SAP, name=ODD_NAME, currency="EUR"),
                                _announce("CA-ODD", SAP)], key_prefix="rc-odd")
    cached.side.settle()
    fresh = create_query_app(build_graphql(), cached.views, options=QueryApiOptions(response_cache_entries=0))
    with ServerThread(fresh) as server, GraphQLClient(server.base_url) as computing:
        for claim in ({}, {"Eventfold-Position": str(head)}):
            computed = computing.http.post(computing.url, json={"query": ODD_CARD}, headers=claim)
            assert computed.status_code == 200 and computed.json()["data"]["card"]["securityName"] == ODD_NAME
            assert b"\\u2028" in computed.content and computed.content.isascii()
            answers = [cached.client.http.post(cached.client.url, json={"query": ODD_CARD}, headers=claim)
                       for _ in range(3)]  # computed (and kept), then kept
            for answer in answers:
                assert answer.content == computed.content, (claim, answer.content, computed.content)
                assert answer.headers["content-type"] == computed.headers["content-type"]
    with cached.views.counting() as statements:
        cached.client.http.post(cached.client.url, json={"query": ODD_CARD}, headers={"Eventfold-Position": "1"})
    assert not read_model_statements(statements), "the claim was answered from the kept answer"


@pytest.fixture
def watched_app(pg_database: PgDatabase) -> Iterator[tuple[Any, CountingViewStore, int]]:
    """A query API with a listening watch, to be driven in-process (httpx's ASGI transport): a request's
    task can be cancelled as a server cancels the request of a client gone."""
    with pg_database.fresh_schema("rcshare") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        side = ReadSide(store, views)
        head = side.execute([RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"), _announce("CA-S")],
                            key_prefix="rcs-seed")
        side.settle()
        watch = PositionWatch(PostgresPositionSignals(pg_database.settings(schema), check_seconds=0.2), views,
                              store.head)
        app = create_query_app(build_graphql(), views, store, watch=watch,
                               options=QueryApiOptions(consistency_timeout=5))
        try:
            yield app, views, head
        finally:
            views.close()
            store.close()


SHARED_CARD = '{ card(actionId: "CA-S") { actionId status } }'


@pytest.mark.parametrize("leader_ends", ["cancelled", "failed"])
def test_sharers_compute_their_own_answer_when_the_leader_is_cancelled_or_fails(
        watched_app: tuple[Any, CountingViewStore, int], leader_ends: str) -> None:
    """Requests waiting for another's computation of their answer (claiming positions or not) get nothing
    from it but a kept answer: a leader cancelled or failing leaves none, and they compute the answer again
    at once (not after the sharing timeout), without the leader's error: one of them, the others sharing it."""
    import httpx

    app, views, head = watched_app
    original = views.get_many_async
    entered, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def gated(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the leader's read: held until cancelled, or failing once the others wait
            entered.set()
            await release.wait()
            raise StoreUnavailable("the read-model database is unavailable (test)")
        return await original(*args, **kwargs)

    async def run() -> tuple[list[httpx.Response], float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            async def ask(claim: bool) -> httpx.Response:
                headers = {"Eventfold-Position": str(head)} if claim else {}
                return await client.post("/graphql", json={"query": SHARED_CARD}, headers=headers)

            for _ in range(2):  # the listener starts and learns the positions (claims share once heard)
                warm = await client.post("/graphql", json={"query": '{ card(actionId: "CA-none") { status } }'},
                                         headers={"Eventfold-Position": str(head)})
                assert warm.status_code == 200, warm.text
            views.get_many_async = gated  # type: ignore[method-assign]
            loop = asyncio.get_running_loop()
            leader = asyncio.create_task(ask(False))
            await asyncio.wait_for(entered.wait(), 10)
            sharers = [asyncio.create_task(ask(claim)) for claim in (False, True, False, True)]
            await asyncio.sleep(0.1)  # they wait for the leader's computation
            assert not any(s.done() for s in sharers)
            started = loop.time()
            if leader_ends == "cancelled":
                leader.cancel()
            else:
                release.set()
            answers = await asyncio.wait_for(asyncio.gather(*sharers), 10)
            elapsed = loop.time() - started
            if leader_ends == "failed":
                failed = await leader
                assert failed.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
            else:
                with pytest.raises(asyncio.CancelledError):
                    await leader
            return answers, elapsed

    answers, elapsed = asyncio.run(run())
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["data"] == {"card": {"actionId": "CA-S", "status": "announced"}} and "errors" not in body
    assert elapsed < 0.9, f"the sharers computed at once, not after the sharing timeout ({elapsed:.2f} s)"
    assert calls == 2, "one of the sharers computed the answer again, the others shared that computation"


def test_the_view_stores_text_order_is_asked_once_per_api(cached: Cached) -> None:
    """Whether the store orders text by code point decides how kept pages are followed; it was asked
    (through a thread) by every request whose answer may be kept."""
    asked = []
    original = cached.views.orders_text_by_code_point

    def counted() -> bool:
        asked.append(1)
        return original()

    cached.views.orders_text_by_code_point = counted  # type: ignore[method-assign]
    for first in range(1, 6):  # five documents: each computed, each keepable
        assert "errors" not in cached.client.execute(f"{{ cards(first: {first}) {{ nodes {{ actionId }} }} }}")
    assert len(asked) == 1, len(asked)


# --- review (gql-writes): sharing an answer that is never kept --------------------------------------------------

def _query_api(app: Any) -> Any:
    """The ``_QueryApi`` behind an app's ``/graphql`` route (behind its ``_Guard``)."""
    route = next(r for r in app.routes if getattr(r, "path", None) == "/graphql")
    return route.app._app


def test_requests_sharing_an_answer_that_is_never_kept_do_not_wait_round_after_round(
        watched_app: tuple[Any, CountingViewStore, int]) -> None:
    """An answer computed without error but not kept (over the cache's size bound here; also an answer
    computed within seconds of a version switch) leaves nothing a sharer could take: the requests that
    waited for it compute their own at once. They waited, one round after another, for up to three such
    computations, each led by one of them (4 reads' time instead of 2, with as many reads)."""
    import httpx

    app, views, _head = watched_app
    _query_api(app)._responses._max_bytes = 10  # as an answer over 256 KB: computed, never kept
    original = views.get_many_async
    delay, calls = 0.5, 0

    async def slow(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(delay)
        return await original(*args, **kwargs)

    async def run() -> tuple[list[httpx.Response], float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            async def ask() -> httpx.Response:
                return await client.post("/graphql", json={"query": SHARED_CARD})

            assert (await ask()).status_code == 200  # the listener started, positions known
            views.get_many_async = slow  # type: ignore[method-assign]
            loop = asyncio.get_running_loop()
            started = loop.time()
            leader = asyncio.create_task(ask())
            await asyncio.sleep(0.05)
            answers = await asyncio.wait_for(asyncio.gather(leader, *(ask() for _ in range(6))), 30)
            return answers, loop.time() - started

    answers, elapsed = asyncio.run(run())
    for answer in answers:
        assert answer.status_code == 200 and answer.json() == {
            "data": {"card": {"actionId": "CA-S", "status": "announced"}}}, answer.text
    assert elapsed < 3 * delay, f"{elapsed:.2f} s for reads of {delay} s ({calls} reads)"
    assert _query_api(app)._computing == {}, "no computation left behind"


@pytest.fixture
def shared_side(pg_database: PgDatabase) -> Iterator[tuple[Any, CountingViewStore, ReadSide, PositionWatch]]:
    """``watched_app`` with the read side, to commit while a request is computed (driven in-process)."""
    with pg_database.fresh_schema("rcrace") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        side = ReadSide(store, views)
        side.execute([RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"), _announce("CA-S"),
                      _announce("CA-T")], key_prefix="rcr-seed")
        side.settle()
        watch = PositionWatch(PostgresPositionSignals(pg_database.settings(schema), check_seconds=0.2), views,
                              store.head)
        app = create_query_app(build_graphql(), views, store, watch=watch,
                               options=QueryApiOptions(consistency_timeout=5))
        try:
            yield app, views, side, watch
        finally:
            views.close()
            store.close()


@pytest.mark.parametrize("touches", [True, False])
def test_a_computation_made_stale_by_a_commit_is_never_an_answer_for_that_commits_position(
        shared_side: tuple[Any, CountingViewStore, ReadSide, PositionWatch], touches: bool) -> None:
    """The leader reads its row, then a commit lands (touching that row or another one) and is heard;
    requests arriving then, claiming its position or not, share the leader's computation while it runs.
    Each gets the row as of that commit: the leader's answer only when the commit left its row alone
    (claiming the commit's position), else an answer computed again."""
    import httpx

    app, views, side, watch = shared_side
    original = views.get_many_async
    held, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def gated(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        rows = await original(*args, **kwargs)
        if calls == 1:  # the leader has read the row: it holds its answer until the commit is heard
            held.set()
            await release.wait()
        return rows

    def commit() -> int:
        position = side.execute([ValidateCorporateAction(action_id="CA-S" if touches else "CA-T")],
                                key_prefix=f"rcr-{touches}")
        side.settle()
        return position

    async def run() -> tuple[httpx.Response, list[httpx.Response], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            async def ask(position: int | None) -> httpx.Response:
                headers = {} if position is None else {"Eventfold-Position": str(position)}
                return await client.post("/graphql", json={"query": SHARED_CARD}, headers=headers)

            for _ in range(2):  # the listener started, positions known (another card: nothing kept for CA-S)
                warm = await client.post("/graphql", json={"query": '{ card(actionId: "CA-none") { status } }'},
                                         headers={"Eventfold-Position": "0"})
                assert warm.status_code == 200, warm.text
            views.get_many_async = gated  # type: ignore[method-assign]
            leader = asyncio.create_task(ask(None))
            await asyncio.wait_for(held.wait(), 10)
            position = await asyncio.to_thread(commit)
            for _ in range(500):
                if watch.positions_known().get("cards", -1) >= position:
                    break
                await asyncio.sleep(0.02)
            assert watch.positions_known()["cards"] >= position, "the commit was heard"
            others = [asyncio.create_task(ask(claim)) for claim in (position, None, position, None, position)]
            await asyncio.sleep(0.2)  # they share the leader's computation
            release.set()
            answers = await asyncio.wait_for(asyncio.gather(*others), 20)
            return await leader, answers, position

    leader, answers, position = asyncio.run(run())
    assert leader.json()["data"]["card"]["status"] == "announced", "read before the commit"
    expected = "validated" if touches else "announced"
    for answer, claim in zip(answers, (position, None, position, None, position), strict=True):
        body = answer.json()
        assert answer.status_code == 200 and body["data"] == {"card": {"actionId": "CA-S", "status": expected}}, body
        if claim is not None:
            consistency = body["extensions"]["consistency"]
            assert consistency["reached"] is True and consistency["positions"]["cards"] >= position, consistency
    assert calls == (2 if touches else 1), "the others shared the leader's computation, or the next one"


def test_claims_under_a_steady_stream_of_commits_to_the_row_they_read(
        shared_side: tuple[Any, CountingViewStore, ReadSide, PositionWatch]) -> None:
    """A writer credits one account again and again (each commit changes the row every reader reads);
    readers over HTTP ask for it at once, most claiming the newest position the writer was given, so
    their computations are shared, found stale and shared again. Each answer claiming position P shows
    at least the quantity credited at P, claims positions at or past P, and no answer waits unbounded."""
    import time as clock

    app, _views, side, _watch = shared_side
    side.execute([OpenAccount(account_number="RC-1", holder_name="Stream"),
                  CreditHoldings(account_number="RC-1", isin=APPLE, quantity=1)], key_prefix="rcst-seed")
    side.settle()
    written: list[tuple[int, int]] = [(0, 0)]  # (position, quantity at it)
    checked: list[tuple[int, int, int]] = []  # (claimed P, positions claimed, quantity shown)
    slowest = [0.0]
    lock, done = threading.Lock(), threading.Event()
    with ServerThread(app) as server:
        def reader(seed: int) -> None:
            with GraphQLClient(server.base_url) as client:
                asked = seed
                while not done.is_set():
                    asked += 1
                    with lock:
                        position, quantity = written[-1]
                    claim = position if asked % 4 else None
                    started = clock.monotonic()
                    body = client.execute(HOLDINGS, position=claim)
                    took = clock.monotonic() - started
                    assert "errors" not in body, body
                    shown = body["data"]["holdings"][0]["quantity"]
                    with lock:
                        slowest[0] = max(slowest[0], took)
                        if claim is not None:
                            consistency = body["extensions"]["consistency"]
                            assert consistency["reached"] is True, consistency
                            checked.append((claim, consistency["positions"]["holdings"], shown))
                            assert shown >= quantity, (claim, shown, quantity)

        with LiveProjections(side), concurrent.futures.ThreadPoolExecutor(8) as pool:
            readers = [pool.submit(reader, seed) for seed in range(8)]
            for index in range(60):
                position = side.execute([CreditHoldings(account_number="RC-1", isin=APPLE, quantity=1)],
                                        key_prefix=f"rcst-{index}")
                with lock:
                    written.append((position, 2 + index))
                clock.sleep(0.03)
            done.set()
            for future in readers:
                future.result()
    quantity_at = dict(written)
    for claim, positions, shown in checked:
        assert positions >= claim, (claim, positions)
        at_claimed = max(q for p, q in written if p <= positions)
        assert shown >= at_claimed, ("older than the positions it claims", claim, positions, shown, at_claimed)
    assert len(checked) > 50 and quantity_at, len(checked)
    assert slowest[0] < 8, f"an answer took {slowest[0]:.1f} s"


class _RolesFromHeader:
    """``Authorization: Bearer <subject>:<role,role>``: a caller per header (no signature: tests only)."""

    blocking = False

    def authenticate(self, authorization: str | None) -> Principal:
        subject, _, roles = (authorization or "Bearer anon:").removeprefix("Bearer ").partition(":")
        return Principal(subject=subject, roles=frozenset(r for r in roles.split(",") if r))


def test_a_computation_is_shared_and_kept_only_for_the_same_caller(
        shared_side: tuple[Any, CountingViewStore, ReadSide, PositionWatch]) -> None:
    """The same body bytes (parsed once), from callers of other roles or subjects, while one caller's answer
    is being computed: only that caller's requests share it or get it kept; every other caller computes."""
    import httpx

    _app, views, side, _watch = shared_side
    app = create_query_app(build_graphql(), views, side.store, authenticator=_RolesFromHeader(),
                           options=QueryApiOptions(consistency_timeout=5))
    original = views.get_many_async
    held, release = asyncio.Event(), asyncio.Event()
    callers: list[str] = []

    async def gated(*args: Any, **kwargs: Any) -> Any:
        callers.append("read")
        rows = await original(*args, **kwargs)
        if len(callers) == 1:
            held.set()
            await release.wait()
        return rows

    body = json.dumps({"query": SHARED_CARD}).encode()

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            async def ask(token: str) -> httpx.Response:
                return await client.post("/graphql", content=body, headers={
                    "content-type": "application/json", "authorization": f"Bearer {token}"})

            views.get_many_async = gated  # type: ignore[method-assign]
            leader = asyncio.create_task(ask("ann:ops"))
            await asyncio.wait_for(held.wait(), 10)
            others = [asyncio.create_task(ask(t)) for t in ("ann:ops", "bob:ops", "ann:", "ann:ops,x", "ann:ops")]
            await asyncio.sleep(0.2)
            assert len(callers) == 4, "other callers compute at once; ann:ops's two others wait for the leader"
            release.set()
            answers = [await leader, *await asyncio.wait_for(asyncio.gather(*others), 20)]
            reads_after_sharing = len(callers)
            answers += [await ask(t) for t in ("ann:ops", "bob:ops", "ann:", "ann:ops,x", "carl:ops")]
            assert len(callers) == reads_after_sharing + 1, "each caller's kept answer, carl's computed"
            return answers

    answers = asyncio.run(run())
    for answer in answers:
        assert answer.status_code == 200 and answer.json() == {
            "data": {"card": {"actionId": "CA-S", "status": "announced"}}}, answer.text
    assert len(callers) == 1 + 3 + 1, "ann:ops shared; bob:ops, ann: and ann:ops,x computed; carl:ops computed"


def test_a_sharer_leading_the_next_computation_reads_positions_as_it_begins(
        shared_side: tuple[Any, CountingViewStore, ReadSide, PositionWatch]) -> None:
    """A commit lands after the leader read its positions and before the others arrive (its answer is stale
    for them), another while it computes. One of them computes again, the others share it: twice in all.
    That one computed at the positions it had read when it began to wait, from before the second commit
    (its rows were newer): its answer was stale for the others too, and a third computation followed."""
    import httpx

    app, views, side, watch = shared_side
    side.execute([OpenAccount(account_number="RC-1", holder_name="Rounds"),
                  CreditHoldings(account_number="RC-1", isin=APPLE, quantity=1)], key_prefix="rcro-seed")
    side.settle()
    original = views.query_async
    entered, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def gated(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the leader, its positions read, waits before reading its rows
            entered.set()
            await release.wait()
        return await original(*args, **kwargs)

    def credit(index: int) -> int:
        position = side.execute([CreditHoldings(account_number="RC-1", isin=APPLE, quantity=1)],
                                key_prefix=f"rcro-{index}")
        side.settle()
        return position

    async def heard(position: int) -> None:
        for _ in range(500):
            if watch.positions_known().get("holdings", -1) >= position:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"position {position} not heard")

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            async def ask() -> httpx.Response:
                return await client.post("/graphql", json={"query": HOLDINGS})

            for _ in range(2):  # the listener started, positions known (another document: nothing kept)
                warm = await client.post("/graphql", json={"query": '{ holdings(accountNumber: "RC-0") { isin } }'},
                                         headers={"Eventfold-Position": "0"})
                assert warm.status_code == 200, warm.text
            views.query_async = gated  # type: ignore[method-assign]
            leader = asyncio.create_task(ask())
            await asyncio.wait_for(entered.wait(), 10)
            await heard(await asyncio.to_thread(credit, 1))
            others = [asyncio.create_task(ask()) for _ in range(4)]
            await asyncio.sleep(0.2)  # they wait for the leader, their positions read
            await heard(await asyncio.to_thread(credit, 2))
            release.set()
            return [await leader, *await asyncio.wait_for(asyncio.gather(*others), 20)]

    answers = asyncio.run(run())
    for answer in answers:
        assert answer.json() == {"data": {"holdings": [{"isin": APPLE, "quantity": 3}]}}, answer.text
    assert calls == 2, f"computed {calls} times"
    assert _query_api(app)._computing == {}, "no computation left behind"
