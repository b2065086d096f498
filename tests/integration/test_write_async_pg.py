"""The async command path (``EVENTFOLD_WRITE_ASYNC``) on real PostgreSQL: commands decided on the event
loop and appended through psycopg's async pool keep every answer the threaded path gives.

As in test_group_commit_pg, groups are made certain by holding the events table's lock from another
connection while the commands pile up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from uuid import uuid4

import pytest
from support.loop_writes import Offload, events_locked, group_commit_store, run_with_appender
from support.postgres import PgDatabase, PostgresServer
from support.writers import open_accounts, replayed_holding

from example_app.accounts import Account
from example_app.commands import CreditHoldings, DebitHoldings
from example_app.handlers import router
from framework.adapters.pg_async import AsyncPostgresAppender
from framework.adapters.postgres import PostgresEventStore
from framework.aggregate import Aggregate
from framework.breaker import BreakingAsyncAppender, CircuitBreaker
from framework.bus import CommandBus, CommandContext, Executed
from framework.commands import Command, CommandRouter, Handler
from framework.contention import HotAggregates
from framework.errors import (
    AggregateNotFound,
    ConcurrencyConflict,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    RuleViolation,
    StoreUnavailable,
    VersionMismatch,
)
from framework.store import Claimed, StoredEvent
from framework.unit_of_work import UnitOfWork

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresEventStore]:
    yield from group_commit_store(pg_database, pg_schema)

ISIN = "US0378331005"


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def test_concurrent_commands_on_the_loop_each_get_the_answer_they_would_get_alone(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus = CommandBus(router, store)
    distinct = [f"DIST-{n}" for n in range(4)]
    open_accounts(bus, ["HOT-1", "KEYS-1", "KEYS-2", *distinct], "Async")  # also fills the bus's cache
    first_same = bus.execute(CreditHoldings(account_number="KEYS-1", isin=ISIN, quantity=5),
                             CommandContext(idempotency_key="same"))
    bus.execute(CreditHoldings(account_number="KEYS-2", isin=ISIN, quantity=7), CommandContext(idempotency_key="diff"))
    head = store.head()
    offload = Offload()

    async def main(appender: AsyncPostgresAppender) -> tuple[dict[str, object], int]:
        async def run(command: Command, key: str | None = None) -> object:
            try:
                return await bus.execute_async(command, CommandContext(idempotency_key=key), appender, offload)
            except Exception as error:  # the test compares errors too
                return error

        calls = {
            **{f"hot {n}": run(CreditHoldings(account_number="HOT-1", isin=ISIN, quantity=1)) for n in range(8)},
            **{n: run(CreditHoldings(account_number=n, isin=ISIN, quantity=2)) for n in distinct},
            "same key, same body": run(CreditHoldings(account_number="KEYS-1", isin=ISIN, quantity=5), "same"),
            "same key, other body": run(CreditHoldings(account_number="KEYS-2", isin=ISIN, quantity=1), "diff"),
            **{f"new key {n}": run(CreditHoldings(account_number="KEYS-2", isin=ISIN, quantity=3), "new")
               for n in range(2)},
            "too much": run(DebitHoldings(account_number="DIST-0", isin=ISIN, quantity=1_000)),
        }
        with events_locked(pg_database, pg_schema):
            tasks = {name: asyncio.ensure_future(call) for name, call in calls.items()}
            await _until(lambda: appender.group_commit.waiting() >= 1, "commands queue behind a commit")
        answers = {name: await task for name, task in tasks.items()}
        return answers, max(appender.group_commit.group_sizes)

    answers, largest_group = run_with_appender(main, replace(pg_database.settings(pg_schema, pool_size=4)))
    assert largest_group >= 2

    hot = [answers[f"hot {n}"] for n in range(8)]
    assert all(isinstance(a, Executed) and not a.replayed for a in hot), hot  # conflicts were retried
    assert sorted(a.result.version for a in hot if isinstance(a, Executed)) == list(range(2, 10))
    assert all(isinstance(answers[n], Executed) for n in distinct)
    same = answers["same key, same body"]
    assert isinstance(same, Executed) and same.replayed and same.result == first_same.result
    assert isinstance(answers["same key, other body"], IdempotencyKeyReused)
    assert isinstance(answers["too much"], RuleViolation)
    new_key = [answers[f"new key {n}"] for n in range(2)]
    executed = [a for a in new_key if isinstance(a, Executed) and not a.replayed]
    assert len(executed) == 1
    other = next(a for a in new_key if a is not executed[0])
    assert isinstance(other, IdempotencyKeyInFlight) or (isinstance(other, Executed) and other.replayed)
    assert offload.calls >= 1  # the hot conflicts' retries (and the refused debit) read the store on a thread

    accepted = 8 + len(distinct) + 1
    assert len(store.read_all(head, 1_000)) == accepted
    assert replayed_holding(store, "HOT-1") == 8
    assert [replayed_holding(store, n) for n in distinct] == [2] * len(distinct)
    assert replayed_holding(store, "KEYS-1") == 5
    assert replayed_holding(store, "KEYS-2") == 7 + 3
    replay = store.claim_idempotency_key("new", "h", uuid4(), 60)
    assert getattr(replay, "result", None) is not None


def test_a_cached_command_stays_on_the_loop_and_a_cache_miss_goes_to_a_thread(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus = CommandBus(router, store)
    open_accounts(bus, ["CACHED-1"], "Async")
    other_bus = CommandBus(router, store)  # its cache is empty: every aggregate is a miss
    offload = Offload()

    async def main(appender: AsyncPostgresAppender) -> tuple[Executed, int, Executed, int]:
        cached = await bus.execute_async(CreditHoldings(account_number="CACHED-1", isin=ISIN, quantity=4),
                                         None, appender, offload)
        on_loop = offload.calls
        missed = await other_bus.execute_async(CreditHoldings(account_number="CACHED-1", isin=ISIN, quantity=1),
                                               None, appender, offload)
        return cached, on_loop, missed, offload.calls

    cached, on_loop, missed, after_miss = run_with_appender(main, pg_database.settings(pg_schema, pool_size=2))
    assert on_loop == 0 and cached.result.version == 2
    assert after_miss == 1 and missed.result.version == 3
    assert replayed_holding(store, "CACHED-1") == 5


class _CountingRouter(CommandRouter):
    """The example's router, counting the handler runs that decided a command (ran to their end)."""

    def __init__(self) -> None:
        super().__init__()
        self.decided = 0

    def handler_for(self, command: Command) -> Handler:
        handler = router.handler_for(command)

        def counted(command: Command, unit: UnitOfWork) -> Aggregate | None:
            decided = handler(command, unit)
            self.decided += 1
            return decided
        return counted


def test_a_command_on_a_hot_aggregate_is_decided_once_on_the_loop_holding_its_turn(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    hot, counting, offload = HotAggregates(), _CountingRouter(), Offload()
    bus = CommandBus(counting, store, hot_aggregates=hot)
    open_accounts(bus, ["HOT-2", "COOL-2"], "Async")
    hot.heat([Account.id_for("HOT-2")])  # as a conflict on it would

    async def main(appender: AsyncPostgresAppender) -> list[tuple[Executed, int, int]]:
        answers = []
        for number in ("HOT-2", "COOL-2"):
            counting.decided, offload.calls = 0, 0
            executed = await bus.execute_async(CreditHoldings(account_number=number, isin=ISIN, quantity=1),
                                               None, appender, offload)
            answers.append((executed, counting.decided, offload.calls))
        return answers

    (on_hot, hot_decided, hot_offloaded), (on_cool, cool_decided, cool_offloaded) = run_with_appender(
        main, pg_database.settings(pg_schema, pool_size=2))
    assert (hot_decided, hot_offloaded) == (1, 0)  # its turn taken on the loop, decided once, in it
    assert (cool_decided, cool_offloaded) == (1, 0)
    assert on_hot.result.version == on_cool.result.version == 2
    assert replayed_holding(store, "HOT-2") == replayed_holding(store, "COOL-2") == 1


class _ConflictCounter:
    """An appender's ``append``, counting the appends the store refused as conflicts."""

    def __init__(self, appender: AsyncPostgresAppender) -> None:
        self.conflicts, self._append = 0, appender.append

    async def __call__(self, *args: Any) -> Any:
        try:
            return await self._append(*args)
        except ConcurrencyConflict:
            self.conflicts += 1
            raise


def test_commands_on_a_hot_aggregate_take_turns_on_the_loop_without_conflicts_or_threads(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    hot, counting, offload = HotAggregates(), _CountingRouter(), Offload()
    bus = CommandBus(counting, store, hot_aggregates=hot)
    cool = [f"COOL-3{n}" for n in "abcde"]  # other aggregates are not held up by the hot one's turns
    open_accounts(bus, ["HOT-3", *cool], "Async")
    hot.heat([Account.id_for("HOT-3")])
    head = store.head()

    async def main(appender: AsyncPostgresAppender) -> tuple[list[object], int]:
        counter = _ConflictCounter(appender)
        appender.append = counter  # type: ignore[method-assign]
        counting.decided = 0

        async def run(number: str, quantity: int, key: str | None = None) -> object:
            command = CreditHoldings(account_number=number, isin=ISIN, quantity=quantity)
            try:
                return await bus.execute_async(command, CommandContext(idempotency_key=key), appender, offload)
            except Exception as error:
                return error

        calls = [run("HOT-3", 1) for _ in range(20)] + [run("HOT-3", 5, "once"), run("HOT-3", 5, "once")]
        calls += [run(number, 2) for number in cool]
        with events_locked(pg_database, pg_schema):  # they all pile up behind the first group's commit
            tasks = [asyncio.ensure_future(call) for call in calls]
            await _until(lambda: sum(appender.group_commit.group_sizes.values()) >= 1, "a group is sent")
            await asyncio.sleep(0.1)
        return [await task for task in tasks], counter.conflicts

    answers, conflicts = run_with_appender(main, pg_database.settings(pg_schema, pool_size=4))
    plain, keyed, others = answers[:20], answers[20:22], answers[22:]
    assert all(isinstance(a, Executed) and not a.replayed for a in plain + others), answers
    assert conflicts == 0 and offload.calls == 0  # one after the other on the loop: none decided on stale state
    hot_versions = sorted(a.result.version for a in plain + keyed if isinstance(a, Executed) and not a.replayed)
    assert hot_versions == list(range(2, 23))  # 20 plain + the key's one execution, each its own version
    assert sum(isinstance(a, IdempotencyKeyInFlight) or (isinstance(a, Executed) and a.replayed)
               for a in keyed) == 1
    assert counting.decided == 20 + 1 + 5  # each decided once; the key's second answer needed no decision
    assert len(store.read_all(head, 1_000)) == 26
    assert replayed_holding(store, "HOT-3") == 20 + 5
    assert [replayed_holding(store, n) for n in cool] == [2] * 5


def test_expected_version_and_errors_on_the_loop_are_the_threaded_path_s(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus = CommandBus(router, store)
    open_accounts(bus, ["EXP-1"], "Async")

    async def main(appender: AsyncPostgresAppender) -> list[object]:
        async def run(command: Command, context: CommandContext) -> object:
            try:
                return await bus.execute_async(command, context, appender, Offload())
            except Exception as error:
                return error

        credit = CreditHoldings(account_number="EXP-1", isin=ISIN, quantity=1)
        return [
            await run(credit, CommandContext(expected_version=1)),
            await run(credit, CommandContext(expected_version=1)),  # it is at 2 now
            await run(CreditHoldings(account_number="NOPE", isin=ISIN, quantity=1), CommandContext()),
            await run(credit, CommandContext(expected_version=2, idempotency_key="k")),
            await run(credit, CommandContext(expected_version=7, idempotency_key="k")),  # replay answers first
        ]

    matched, mismatched, missing, keyed, replayed = run_with_appender(
        main, pg_database.settings(pg_schema, pool_size=2))
    assert isinstance(matched, Executed) and matched.result.version == 2
    assert isinstance(mismatched, VersionMismatch) and mismatched.current_version == 2
    assert isinstance(missing, AggregateNotFound)
    assert isinstance(keyed, Executed) and keyed.result.version == 3
    assert isinstance(replayed, Executed) and replayed.replayed and replayed.result == keyed.result
    assert replayed_holding(store, "EXP-1") == 2


def test_the_async_appender_fails_fast_while_postgresql_is_down_and_recovers_at_once(
    private_postgres: PostgresServer,
) -> None:
    cluster = private_postgres.cluster
    assert cluster is not None
    settings = private_postgres.settings("postgres", pool_size=2, connect_timeout=30.0)
    setup = PostgresEventStore(settings)
    setup.create_schema()
    setup.close()
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, cool_down=5.0, clock=lambda: now[0])

    async def main(raw: AsyncPostgresAppender) -> None:
        appender = BreakingAsyncAppender(raw, breaker)
        assert len(await appender.append([StoredEvent(uuid4(), 1, "tests.Happened", b"{}")])) == 1
        cluster.pause()
        try:
            with pytest.raises(StoreUnavailable) as refused:
                await appender.append([StoredEvent(uuid4(), 1, "tests.Happened", b"{}")])
            assert "couldn't get a connection" not in str(refused.value)
            with pytest.raises(StoreUnavailable, match="failing"):  # the breaker is open
                await appender.claim_idempotency_key("k", "h", uuid4(), 60)
        finally:
            await asyncio.to_thread(cluster.resume)  # returns once PostgreSQL accepts connections
        now[0] += 5.0  # the breaker's cool-down has passed: the next call is its probe
        assert isinstance(await appender.claim_idempotency_key("k", "h", uuid4(), 60), Claimed)
        assert len(await appender.append([StoredEvent(uuid4(), 1, "tests.Happened", b"{}")])) == 1

    run_with_appender(main, settings)


def test_a_cancelled_caller_does_not_stop_its_group_s_commit(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    aggregate = uuid4()

    async def main(appender: AsyncPostgresAppender) -> None:
        with events_locked(pg_database, pg_schema):
            task = asyncio.ensure_future(appender.append([StoredEvent(aggregate, 1, "tests.Happened", b"{}")]))
            await _until(lambda: bool(appender.group_commit.group_sizes), "the append is committing")
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: bool(store.read_stream(aggregate)), "the cancelled caller's append committed")

    run_with_appender(main, pg_database.settings(pg_schema, pool_size=2))
    assert [e.originator_version for e in store.read_stream(aggregate)] == [1]


class _SlowThreads(Offload):
    """``Offload`` on a loaded machine: what goes to a thread starts late, while the loop goes on deciding."""

    async def __call__(self, function: Callable[..., Any], *args: object) -> Any:
        self.calls += 1

        def late() -> Any:
            time.sleep(0.01)
            return function(*args)
        return await asyncio.to_thread(late)


def test_keyed_commands_on_one_aggregate_from_a_cold_cache_take_turns_instead_of_running_out_of_attempts(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    """A restarted write API: its cache is empty, so the first attempts load on threads and conflict with each
    other; the retries then take the aggregate's turn. A retry on a thread takes the loop's turn too, or the
    commands the loop decides from its warm cache keep appending between its read and its append (a CI run
    saw a retry conflict five times and answer 409)."""
    open_accounts(CommandBus(router, store), ["COLD-1"], "Async")
    # A cold cache, as after a restart. Two attempts: once a retry holds its turn, only a first attempt already
    # under way when the aggregate got hot can still beat it. Before the fix every run had commands out of attempts.
    bus = CommandBus(router, store, max_attempts=2)
    offload = _SlowThreads()

    async def main(appender: AsyncPostgresAppender) -> list[object]:
        sending = asyncio.Semaphore(8)

        async def run(quantity: int) -> object:
            async with sending:
                command = CreditHoldings(account_number="COLD-1", isin=ISIN, quantity=quantity)
                try:
                    return await bus.execute_async(command, CommandContext(idempotency_key=f"cold-{quantity}"),
                                                   appender, offload)
                except Exception as error:
                    return error
        return list(await asyncio.gather(*(run(n) for n in range(1, 121))))

    answers = run_with_appender(main, pg_database.settings(pg_schema, pool_size=4))
    assert [a for a in answers if not isinstance(a, Executed)] == []
    assert replayed_holding(store, "COLD-1") == sum(range(1, 121))
