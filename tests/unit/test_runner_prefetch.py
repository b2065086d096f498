"""``run_projection``'s fetch-ahead on the in-process bus: the next delivery is fetched while this
one is applied, a delivery is acknowledged only after its transaction committed (in fetch order),
and a failure with a delivery fetched ahead loses nothing and doubles nothing.

``MemoryConsumer`` itself has no ``fetch_ahead`` (its ``fetch`` hands back whatever is unacknowledged,
so ``run_projection`` does not fetch ahead with it); ``AheadConsumer`` adds one with JetStream's
semantics (``JetStreamConsumer.fetch_ahead``: earlier deliveries stay outstanding, an acknowledgement
covers everything before it, a plain ``fetch`` or ``close`` hands back every unacknowledged one).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
from framework.adapters.memory_views import MemoryViewStore
from framework.breaker import BreakingConsumer, bus_breaker
from framework.errors import StoreUnavailable
from framework.replay import rebuild
from framework.runner import run_projection
from framework.store import Notification
from framework.streaming import Delivery
from framework.views import Batch
from framework.worker import ProjectionWorker

from .test_worker import Tick, Ticks, Total, labels, tick, total

WAIT = 10.0  # an upper bound against hanging, never a timing that is asserted


class AheadConsumer(MemoryConsumer):
    """A ``MemoryConsumer`` with ``fetch_ahead``; records what it delivered and acknowledged."""

    def __init__(self, bus: MemoryBus, durable_name: str, worker: ProjectionWorker) -> None:
        super().__init__(bus, durable_name, deliver_all=True)
        self.worker = worker
        self._tokens: list[object] = []
        self._keep = False
        self.fetched_ahead: list[list[int]] = []
        self.acked: list[tuple[int, int]] = []  # (last position of the delivery, worker position then)
        self.fetched_ahead_event = threading.Event()

    async def fetch_ahead(self, max_events: int, timeout: float) -> Delivery:
        self._keep = True
        try:
            delivery = await self.fetch(max_events, timeout)
        finally:
            self._keep = False
        if delivery.notifications:
            self.fetched_ahead.append([n.id for n in delivery.notifications])
            self.fetched_ahead_event.set()
        return delivery

    def _delivery(self, end: int, batch: list[Notification]) -> Delivery:
        token = object()
        self._tokens.append(token)
        self._outstanding = token  # for MemoryConsumer: something is unacknowledged

        async def ack() -> None:
            if token not in self._tokens:
                return
            self._bus.check_available()
            self.acked.append((batch[-1].id, self.worker.views.position(self.worker.name, self.worker.version)))
            self._bus.acknowledge(self.name, end)
            del self._tokens[:self._tokens.index(token) + 1]
            if not self._tokens:
                self._outstanding = None

        return Delivery(batch, ack)

    def _hand_back(self) -> None:
        if not self._keep:
            self._tokens.clear()
            super()._hand_back()


class FlakyWorker(ProjectionWorker):
    """Fails its ``fail_at``-th ``apply`` (counting from 1) with ``StoreUnavailable`` once its handlers ran,
    before its commit (where ``run_projection`` starts the fetch ahead: a failure then finds it under way);
    ``hold_first`` makes the first ``apply`` wait there until the consumer fetched ahead."""

    def __init__(self, *args: object, fail_at: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fail_at, self.applies = fail_at, 0
        self.hold_first: threading.Event | None = None
        self.saw_fetch_ahead_while_applying = False
        self.applied: list[list[int]] = []

    def apply(self, notifications: Sequence[Notification]) -> None:
        self.applies += 1
        runners = self.on_handled
        self.on_handled = lambda: self._handled(runners)
        try:
            super().apply(notifications)
        finally:
            self.on_handled = runners
        self.applied.append([n.id for n in notifications])

    def _handled(self, runners: Callable[[], None] | None) -> None:
        if runners is not None:
            runners()
        if self.applies == 1 and self.hold_first is not None:
            self.saw_fetch_ahead_while_applying = self.hold_first.wait(WAIT)
        if self.applies == self.fail_at:
            raise StoreUnavailable("the view store went away")


def _assert_matches_replay(views: MemoryViewStore, store: MemoryEventStore, name: str = "ticks") -> None:
    """Every row equals a fresh replay of the store, and the position is at the head."""
    replayed = MemoryViewStore()
    rebuild(Ticks(), replayed, store)
    head = store.head()
    assert views.active_position(name) == head == replayed.active_position(name)
    for model in (Tick, Total):
        got = sorted(r.model_dump_json() for r in views.query(name, model))
        want = sorted(r.model_dump_json() for r in replayed.query(name, model))
        assert got == want, model.table
    assert total(views) == head and labels(views) == [f"e{i}" for i in range(head)]


def _filled(count: int) -> tuple[MemoryEventStore, MemoryBus]:
    store, bus = MemoryEventStore(), MemoryBus()
    tick(store, *(f"e{i}" for i in range(count)))
    bus.append(store.read_all(0, count))
    return store, bus


async def _run_until_settled(worker: ProjectionWorker, consumer: object, store: MemoryEventStore,
                             **options: object) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_projection(worker, consumer, stop, batch_size=10,  # type: ignore[arg-type]
                                              fetch_seconds=0.05, **options))  # type: ignore[arg-type]
    deadline = time.monotonic() + WAIT
    # Read in a thread: a worker held inside its batch (hold_first) keeps the memory views locked.
    while (await asyncio.to_thread(worker.views.position, worker.name, worker.version) < store.head()
           and time.monotonic() < deadline):
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, WAIT)


def _no_catch_up(worker: ProjectionWorker) -> None:
    """Every event takes the bus path (as in the benchmark)."""
    worker.catch_up = lambda until=None, progress=None: worker.position  # type: ignore[method-assign]


def test_the_next_delivery_is_fetched_while_this_one_is_applied() -> None:
    store, bus = _filled(50)
    views = MemoryViewStore()
    worker = FlakyWorker(Ticks(), views, store)
    _no_catch_up(worker)
    consumer = AheadConsumer(bus, "ticks", worker)
    worker.hold_first = consumer.fetched_ahead_event  # the first apply waits for a fetch ahead

    asyncio.run(_run_until_settled(worker, consumer, store))

    assert worker.saw_fetch_ahead_while_applying
    assert consumer.fetched_ahead and consumer.fetched_ahead[0] == list(range(11, 21))
    _assert_matches_replay(views, store)


def test_the_next_fetch_starts_once_the_handlers_ran_before_the_commit() -> None:
    """Not beside the handlers: its messages are parsed while the commit waits on the database."""
    store, bus = _filled(30)
    views = MemoryViewStore()
    fetching = threading.Event()
    seen: list[tuple[int, int]] = []  # (events handled, position committed) when a fetch ahead starts

    class Watching(AheadConsumer):
        async def fetch_ahead(self, max_events: int, timeout: float) -> Delivery:
            fetching.set()
            seen.append((worker.handled, worker.position))  # (the views are locked while a batch is open)
            return await super().fetch_ahead(max_events, timeout)

    class Handling(FlakyWorker):
        fetched_while_handling = False

        def apply_within(self, batch: Batch, notifications: Sequence[Notification], *,
                         since: int | None = None) -> None:
            if self.applies == 1:  # a fetch ahead started with the apply would come now
                self.fetched_while_handling = fetching.wait(0.5)
            super().apply_within(batch, notifications, since=since)

    worker = Handling(Ticks(), views, store)
    _no_catch_up(worker)
    consumer = Watching(bus, "ticks", worker)
    worker.hold_first = consumer.fetched_ahead_event  # the first commit waits for the fetch ahead
    asyncio.run(_run_until_settled(worker, consumer, store))

    assert not worker.fetched_while_handling and worker.saw_fetch_ahead_while_applying
    assert seen[0] == (10, 0)  # the first delivery's ten events handled, none committed
    _assert_matches_replay(views, store)


def test_deliveries_are_acknowledged_in_order_and_only_after_their_commit() -> None:
    store, bus = _filled(95)
    views = MemoryViewStore()
    worker = FlakyWorker(Ticks(), views, store)
    _no_catch_up(worker)
    consumer = AheadConsumer(bus, "ticks", worker)

    asyncio.run(_run_until_settled(worker, consumer, store))

    assert [last for last, _ in consumer.acked] == [*range(10, 95, 10), 95]
    assert all(position >= last for last, position in consumer.acked)  # committed before the ack
    assert worker.applied == [list(range(start, min(start + 10, 96))) for start in range(1, 96, 10)]
    _assert_matches_replay(views, store)


@pytest.mark.parametrize("fail_at", [1, 2, 5, 10])
def test_a_failure_with_a_delivery_fetched_ahead_loses_nothing_and_doubles_nothing(fail_at: int) -> None:
    store, bus = _filled(95)
    views = MemoryViewStore()
    worker = FlakyWorker(Ticks(), views, store, fail_at=fail_at)
    _no_catch_up(worker)
    consumer = AheadConsumer(bus, "ticks", worker)

    asyncio.run(_run_until_settled(worker, consumer, store))

    assert consumer.fetched_ahead  # the failure found a delivery fetched ahead
    assert all(position >= last for last, position in consumer.acked)
    _assert_matches_replay(views, store)
    # after the failure, what was fetched ahead came again (handed back), nothing was skipped
    applied = sorted({i for batch in worker.applied for i in batch})
    assert applied == list(range(1, 96))


def test_an_acknowledgement_that_fails_means_a_redelivery_not_a_double() -> None:
    store, bus = _filled(60)
    views = MemoryViewStore()
    worker = FlakyWorker(Ticks(), views, store)
    _no_catch_up(worker)

    class AckFailsOnce(AheadConsumer):
        failed = False

        def _delivery(self, end: int, batch: list[Notification]) -> Delivery:
            delivery = super()._delivery(end, batch)

            async def ack() -> None:
                if batch[-1].id == 30 and not self.failed:
                    self.failed = True
                    bus.set_available(False)  # the bus goes away between the commit and the ack
                    try:
                        await delivery.ack()
                    finally:
                        bus.set_available(True)
                await delivery.ack()

            return Delivery(delivery.notifications, ack)

    consumer = AckFailsOnce(bus, "ticks", worker)
    asyncio.run(_run_until_settled(worker, consumer, store))

    assert consumer.failed
    assert worker.applied.count(list(range(21, 31))) == 2  # delivered again, dropped by position
    _assert_matches_replay(views, store)


def test_stop_applies_the_delivery_fetched_ahead_and_marks_the_projection_stopped() -> None:
    store, bus = _filled(40)
    views = MemoryViewStore()
    worker = FlakyWorker(Ticks(), views, store)
    _no_catch_up(worker)
    consumer = AheadConsumer(bus, "ticks", worker)
    worker.hold_first = consumer.fetched_ahead_event

    async def scenario() -> None:
        stop = asyncio.Event()
        original = worker.apply

        def apply_then_stop(notifications: Sequence[Notification]) -> None:
            original(notifications)
            if worker.applies == 1:
                loop.call_soon_threadsafe(stop.set)  # stop while the second delivery is in hand

        worker.apply = apply_then_stop  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(run_projection(worker, consumer, stop, batch_size=10, fetch_seconds=0.05), WAIT)

    asyncio.run(scenario())
    assert [last for last, _ in consumer.acked] == [10, 20]  # the one fetched ahead was applied, not left
    assert views.position("ticks", 1) == 20
    assert views.states()[0].state == "stopped"


def test_no_fetch_ahead_without_the_option_or_the_capability() -> None:
    for prefetch, make in ((False, "ahead"), (True, "plain")):
        store, bus = _filled(35)
        views = MemoryViewStore()
        worker = FlakyWorker(Ticks(), views, store)
        _no_catch_up(worker)
        consumer = AheadConsumer(bus, "ticks", worker) if make == "ahead" else MemoryConsumer(
            bus, "ticks", deliver_all=True)
        asyncio.run(_run_until_settled(worker, consumer, store, prefetch=prefetch))
        if isinstance(consumer, AheadConsumer):
            assert not consumer.fetched_ahead
        _assert_matches_replay(views, store)


def test_fetching_ahead_goes_through_the_breaker_of_a_breaking_consumer() -> None:
    store, bus = _filled(45)
    views = MemoryViewStore()
    worker = FlakyWorker(Ticks(), views, store, fail_at=3)
    _no_catch_up(worker)
    inner = AheadConsumer(bus, "ticks", worker)
    breaker = bus_breaker(threshold=100)
    asyncio.run(_run_until_settled(worker, BreakingConsumer(inner, breaker), store))
    assert inner.fetched_ahead
    _assert_matches_replay(views, store)


def test_the_relay_and_a_fetching_ahead_projection_deliver_everything_once() -> None:
    store, bus, views = MemoryEventStore(), MemoryBus(), MemoryViewStore()
    worker = FlakyWorker(Ticks(), views, store)
    consumer = AheadConsumer(bus, "ticks", worker)

    async def scenario() -> None:
        from framework.runner import run_relay

        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_relay(store, MemoryPublisher(bus), stop, poll_seconds=0.05)),
                 asyncio.create_task(run_projection(worker, consumer, stop, batch_size=7, fetch_seconds=0.05))]
        for round_ in range(5):
            await asyncio.to_thread(tick, store, *(f"r{round_}-{i}" for i in range(20)))
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + WAIT
        while views.position("ticks", 1) < store.head() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    asyncio.run(scenario())
    assert total(views) == 100 and len(set(labels(views))) == 100
    assert views.states()[0].state == "stopped"
