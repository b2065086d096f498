"""Commands on a hot aggregate decided in batches on the loop (framework.combining) on real PostgreSQL:
each command gets the answer it would get in the serial order it arrived in, the store holds exactly
the accepted events with no gap in the aggregate's versions, and nothing is decided or appended twice,
whatever the batch meets: rule violations, keys, expected versions, a stale cache, a failed append, a
cancelled caller.

Batches are made certain by holding the events table's lock while the commands queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from support.loop_writes import Offload, events_locked, group_commit_store, run_with_appender
from support.postgres import PgDatabase
from support.writers import ISIN, open_accounts, replayed_holding

from example_app.accounts import Account
from example_app.commands import CreditHoldings, DebitHoldings, TransferHoldings
from example_app.handlers import router
from framework.adapters.pg_async import AsyncPostgresAppender
from framework.adapters.postgres import PostgresEventStore
from framework.bus import CommandBus, CommandContext, Executed
from framework.commands import Command
from framework.contention import HotAggregates
from framework.errors import ConcurrencyConflict, RuleViolation, StoreUnavailable, VersionMismatch

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresEventStore]:
    yield from group_commit_store(pg_database, pg_schema)


class CountingAppends:
    """Wraps an appender's ``append``: counts calls, the events they carried, and conflicts; can fail."""

    def __init__(self, appender: AsyncPostgresAppender) -> None:
        self.calls, self.events, self.conflicts, self.fail_next = 0, [], 0, False
        self._append = appender.append
        appender.append = self  # type: ignore[method-assign]

    async def __call__(self, events: Any, completion: Any) -> Any:
        self.calls += 1
        self.events.append(len(events))
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("the connection was lost")
        try:
            return await self._append(events, completion)
        except ConcurrencyConflict:
            self.conflicts += 1
            raise


async def _queued_behind_a_lock(pg_database: PgDatabase, schema: str, appender: AsyncPostgresAppender,
                                calls: list[Awaitable[Any]]) -> list[Any]:
    """Start every call while the events table is locked (the first append waits, the rest queue),
    then let them go; each call's answer or error."""
    async def answer(call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as error:
            return error

    with events_locked(pg_database, schema):
        tasks = [asyncio.ensure_future(answer(call)) for call in calls]
        for _ in range(400):
            if sum(appender.group_commit.group_sizes.values()) >= 1:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
    return [await task for task in tasks]


def _hot_bus(store: PostgresEventStore, accounts: list[str]) -> tuple[CommandBus, HotAggregates]:
    hot = HotAggregates()
    bus = CommandBus(router, store, hot_aggregates=hot)
    open_accounts(bus, accounts, "Batch")  # also fills the bus's cache
    hot.heat([Account.id_for(accounts[0])])
    return bus, hot


def _versions(store: PostgresEventStore, number: str) -> list[int]:
    return [e.originator_version for e in store.read_stream(Account.id_for(number), 0)]


def test_a_batch_answers_each_command_as_some_serial_order_would(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus, _ = _hot_bus(store, ["HOT-B", "OTHER-B"])
    offload = Offload()

    async def main(appender: AsyncPostgresAppender) -> tuple[list[Any], CountingAppends]:
        appends = CountingAppends(appender)

        def run(command: Command, context: CommandContext | None = None) -> Awaitable[Executed]:
            return bus.execute_async(command, context, appender, offload)

        credit = CreditHoldings(account_number="HOT-B", isin=ISIN, quantity=5)
        debit = DebitHoldings(account_number="HOT-B", isin=ISIN, quantity=3)
        calls = [
            run(credit),                       # 5
            run(debit),                        # 2
            run(debit),                        # refused on the staged state (2 < 3): decided again alone,
            run(credit),                       # after the batch, where it may fit
            run(credit, CommandContext(idempotency_key="k-1")),  # alone: its claim is its own
            run(credit, CommandContext(expected_version=2)),     # alone, and at 2 it is not
            run(TransferHoldings(from_account="HOT-B", to_account="OTHER-B", isin=ISIN, quantity=1)),
            *[run(CreditHoldings(account_number="HOT-B", isin=ISIN, quantity=1)) for _ in range(10)],
        ]
        return await _queued_behind_a_lock(pg_database, pg_schema, appender, calls), appends

    answers, appends = run_with_appender(main, pg_database.settings(pg_schema, pool_size=4))
    c1, d1, d2, c2, keyed, expecting, transfer, *ones = answers
    assert all(isinstance(a, Executed) for a in (c1, d1, c2, keyed, transfer, *ones)), answers
    assert isinstance(d2, Executed | RuleViolation)
    assert isinstance(expecting, VersionMismatch)
    assert max(appends.events) >= 3  # batched: several commands' events in one append
    accepted = [a for a in answers if isinstance(a, Executed)]
    versions = sorted(a.result.version for a in accepted if a is not transfer)
    assert len(set(versions)) == len(versions)  # each its own version
    assert _versions(store, "HOT-B") == list(range(1, len(accepted) + 2))  # opened + one per command
    second_debit = 3 if isinstance(d2, Executed) else 0
    assert replayed_holding(store, "HOT-B") == 5 - 3 - second_debit + 5 + 5 - 1 + 10
    assert replayed_holding(store, "OTHER-B") == 1
    positions = {n.id: n for n in store.read_all(0, 10_000)}
    for answer in (a for a in accepted if a is not transfer):  # its position: the event of its version
        event = positions[answer.result.position]
        assert (event.originator_id, event.originator_version) == (answer.result.aggregate_id, answer.result.version)


def test_a_batch_decided_on_a_stale_cache_is_retried_whole_and_nothing_is_lost_or_doubled(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus, _ = _hot_bus(store, ["HOT-S"])
    elsewhere = CommandBus(router, store)  # another process: our cache does not see its writes
    elsewhere.execute(CreditHoldings(account_number="HOT-S", isin=ISIN, quantity=100))
    offload = Offload()

    async def main(appender: AsyncPostgresAppender) -> tuple[list[Any], CountingAppends]:
        appends = CountingAppends(appender)
        calls = [bus.execute_async(CreditHoldings(account_number="HOT-S", isin=ISIN, quantity=1), None,
                                   appender, offload) for _ in range(12)]
        return await _queued_behind_a_lock(pg_database, pg_schema, appender, calls), appends

    answers, appends = run_with_appender(main, pg_database.settings(pg_schema, pool_size=4))
    assert all(isinstance(a, Executed) for a in answers), answers
    assert appends.conflicts >= 1 and offload.calls >= 1  # the batch conflicted; its members read the store
    assert sorted(a.result.version for a in answers) == list(range(3, 15))
    assert _versions(store, "HOT-S") == list(range(1, 15))
    assert replayed_holding(store, "HOT-S") == 100 + 12


def test_a_failed_batch_append_fails_each_member_with_its_own_error_and_retries_none(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus, _ = _hot_bus(store, ["HOT-F"])

    async def main(appender: AsyncPostgresAppender) -> tuple[list[Any], CountingAppends]:
        appends = CountingAppends(appender)
        first = asyncio.ensure_future(bus.execute_async(
            CreditHoldings(account_number="HOT-F", isin=ISIN, quantity=1), None, appender, Offload()))
        await asyncio.sleep(0)  # the first is decided alone and its append waits on the lock
        calls = [first] + [bus.execute_async(CreditHoldings(account_number="HOT-F", isin=ISIN, quantity=1), None,
                                             appender, Offload()) for _ in range(6)]

        async def fail_the_next_batch() -> None:
            while appends.calls < 1:
                await asyncio.sleep(0.001)
            appends.fail_next = True  # the batch after the first: its outcome unknown, as a lost connection's
        failing = asyncio.ensure_future(fail_the_next_batch())
        answers = await _queued_behind_a_lock(pg_database, pg_schema, appender, calls)
        await failing
        return answers, appends

    answers, appends = run_with_appender(main, pg_database.settings(pg_schema, pool_size=4))
    failed = [a for a in answers if isinstance(a, StoreUnavailable)]
    assert len(failed) >= 2 and all(isinstance(a, Executed) for a in answers if a not in failed), answers
    assert len({id(a) for a in failed}) == len(failed)  # each its own exception object
    assert appends.calls == len(answers) - len(failed) + 1  # the failed batch was never sent again
    accepted = len(answers) - len(failed)
    assert _versions(store, "HOT-F") == list(range(1, accepted + 2))
    assert replayed_holding(store, "HOT-F") == accepted


def test_a_caller_that_stops_waiting_leaves_its_batch_whole_and_is_decided_at_most_once(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus, _ = _hot_bus(store, ["HOT-C"])

    async def main(appender: AsyncPostgresAppender) -> list[Any]:
        def credit() -> Awaitable[Executed]:
            return bus.execute_async(CreditHoldings(account_number="HOT-C", isin=ISIN, quantity=1), None,
                                     appender, Offload())

        with events_locked(pg_database, pg_schema):
            tasks = [asyncio.ensure_future(credit()) for _ in range(10)]
            await asyncio.sleep(0.2)  # a batch is under way (its append waits on the lock), the rest queue
            for task in tasks[::3]:
                task.cancel()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        return answers

    answers = run_with_appender(main, pg_database.settings(pg_schema, pool_size=4))
    executed = [a for a in answers if isinstance(a, Executed)]
    cancelled = [a for a in answers if isinstance(a, asyncio.CancelledError)]
    assert len(executed) + len(cancelled) == 10 and len(cancelled) == 4
    # A cancelled caller's command was decided (once) if a batch had taken it, never if it was still queued.
    stored = len(_versions(store, "HOT-C")) - 1
    assert len(executed) <= stored <= 10
    assert _versions(store, "HOT-C") == list(range(1, stored + 2))
    assert replayed_holding(store, "HOT-C") == stored
    assert sorted(a.result.version for a in executed) == sorted(set(a.result.version for a in executed))
