"""Hot aggregates: commands on an aggregate that conflicted take turns, and nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Iterator
from uuid import uuid4

import pytest
from support.writers import ISIN, credit, hammer, replayed_quantity, setup_one_account

from example_app.commands import CreditHoldings
from example_app.handlers import router
from framework.adapters.memory import MemoryEventStore
from framework.bus import CommandBus
from framework.contention import HotAggregates, LoopTurns


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_aggregate_is_hot_for_a_while_after_a_conflict() -> None:
    clock, a, b = Clock(), uuid4(), uuid4()
    hot = HotAggregates(hot_seconds=5.0, clock=clock)
    assert hot.hot_among({a, b}) == set()
    hot.heat({a})
    assert hot.hot_among({a, b}) == {a}
    clock.now = 4.9
    assert hot.hot_among({a}) == {a}
    clock.now = 5.0
    assert hot.hot_among({a}) == set()


def test_turns_on_the_same_aggregates_in_any_order_do_not_deadlock() -> None:
    hot, a, b = HotAggregates(), uuid4(), uuid4()
    done: list[int] = []

    def take(order: list[object], n: int) -> None:
        for _ in range(200):
            with hot.turns(order):  # type: ignore[arg-type]
                done.append(n)

    threads = [threading.Thread(target=take, args=([a, b], 1)), threading.Thread(target=take, args=([b, a], 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(done) == [1] * 200 + [2] * 200


@pytest.fixture
def busy_threads() -> Iterator[None]:
    """Switch threads very often, so that handlers and appends interleave as under real load."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def test_many_threads_crediting_one_account_all_succeed_and_every_credit_counts(busy_threads: None) -> None:
    # Without turns on hot aggregates, about ten of these 640 commands end in 409 (3 attempts each).
    store = MemoryEventStore()
    bus = setup_one_account(store, max_attempts=3)
    failures = hammer(credit(bus), threads=16, each=40)
    assert failures == []
    assert replayed_quantity(store) == 16 * 40


def test_two_processes_on_one_store_lose_nothing_and_double_nothing(busy_threads: None) -> None:
    store = MemoryEventStore()
    first = setup_one_account(store)
    second = CommandBus(router, store)  # its own cache and its own hot aggregates, like another process
    failures = hammer(lambda n: (first if n % 2 else second).execute(
        CreditHoldings(account_number="HOT-1", isin=ISIN, quantity=1)), threads=8, each=40)
    assert replayed_quantity(store) == 8 * 40 - len(failures)  # every accepted credit, and only those


def test_loop_turns_run_one_aggregate_s_commands_one_after_the_other_and_are_dropped_after() -> None:
    turns, a, b = LoopTurns(), uuid4(), uuid4()
    inside: dict[object, int] = {a: 0, b: 0}
    most: dict[object, int] = {a: 0, b: 0}
    both_at_once: list[bool] = []

    async def take(ids: list[object], pause: float) -> None:
        async with turns.turns(ids):  # type: ignore[arg-type]
            for i in ids:
                inside[i] += 1
                most[i] = max(most[i], inside[i])
            both_at_once.append(inside[a] > 0 and inside[b] > 0)
            try:
                await asyncio.sleep(pause)
            finally:
                for i in ids:
                    inside[i] -= 1

    async def main() -> None:
        waiter = asyncio.ensure_future(take([a], 1.0))  # holds a's turn first
        tasks = [asyncio.ensure_future(take(ids, 0.001)) for ids in ([a], [b], [a, b], [b, a], [a], [b]) * 5]
        queued = asyncio.ensure_future(take([a, b], 0.001))
        await asyncio.sleep(0)
        waiter.cancel()  # a turn given up while held or while waited for leaves nothing behind
        queued.cancel()
        await asyncio.gather(*tasks)
        for cancelled in (waiter, queued):
            with contextlib.suppress(asyncio.CancelledError):
                await cancelled

    asyncio.run(asyncio.wait_for(main(), 30))
    assert most == {a: 1, b: 1}  # never two holders of one aggregate's turn
    assert any(both_at_once)  # a's and b's turns are held at the same time when no command wants both
    assert len(turns) == 0
