"""The conformance suite of the bus port (``framework.streaming``): every adapter must pass it.

Subclass ``BusConformance`` in a pytest module and say how to build the
adapter with a ``BusHarness``, either from ``make_harness()`` or by
overriding the ``harness`` fixture (to set up and tear down a server)::

    from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
    from framework.testing.bus_conformance import BusConformance, BusHarness

    class MemoryHarness(BusHarness):
        def __init__(self) -> None:
            self.bus = MemoryBus()

        async def make_publisher(self) -> EventPublisher:
            return MemoryPublisher(self.bus)

        async def make_consumer(self, durable_name: str, *, deliver_all: bool) -> EventConsumer:
            consumer = MemoryConsumer(self.bus, durable_name, deliver_all=deliver_all)
            await consumer.bind()
            return consumer

    class TestMemoryBus(BusConformance):
        def make_harness(self) -> BusHarness:
            return MemoryHarness()

Each test gets a fresh harness over an empty bus and runs its scenario in its
own event loop (``asyncio.run``: no pytest plugin needed); every publisher and
consumer it made is closed afterwards, then ``BusHarness.aclose()`` runs in
the same loop. The suite needs pytest but no driver: it imports no adapter.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from uuid import UUID, uuid4

import pytest

from framework.store import Notification
from framework.streaming import Delivery, EventConsumer, EventPublisher

__all__ = ["BusConformance", "BusHarness", "BusSession", "drain", "notification", "notifications"]


class BusHarness:
    """How the suite builds the adapter under test. Its methods run inside the test's event loop."""

    async def make_publisher(self) -> EventPublisher:
        raise NotImplementedError

    async def make_consumer(self, durable_name: str, *, deliver_all: bool) -> EventConsumer:
        """A consumer whose durable consumer already exists when this returns.

        ``deliver_all=False`` is the adapter's default: a durable name seen for the
        first time starts after the events already on the bus.
        """
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the harness opened in this loop (connections)."""


def notification(position: int, aggregate_id: UUID | None = None, version: int = 1, *,
                 topic: str = "ThingHappened", aggregate_type: str = "Thing",
                 correlation_id: str | None = None) -> Notification:
    """A notification whose state is an Eventfold event document (``{"v","agg","meta","data"}``)."""
    document = {
        "v": 1,
        "agg": aggregate_type,
        "meta": {"event_id": str(uuid4()), "recorded_at": "2024-01-02T03:04:05+00:00",
                 "correlation_id": correlation_id, "causation_id": None, "actor": None},
        "data": {"position": position, "note": "déjà vu ✓"},
    }
    return Notification(
        id=position,
        originator_id=aggregate_id or uuid4(),
        originator_version=version,
        topic=topic,
        state=json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode(),
    )


def notifications(positions: Iterable[int]) -> list[Notification]:
    """One notification per position, for a few aggregates with increasing versions."""
    aggregates = [uuid4(), uuid4(), uuid4()]
    versions = dict.fromkeys(aggregates, 0)
    made = []
    for position in positions:
        aggregate = aggregates[position % 3]
        versions[aggregate] += 1
        made.append(notification(position, aggregate, versions[aggregate], topic=f"Event{position % 4}",
                                 correlation_id=f"corr-{position}"))
    return made


async def drain(consumer: EventConsumer, count: int, *, batch: int = 1000,
                timeout: float = 10.0) -> list[Notification]:
    """Fetch until ``count`` notifications arrived (or ``timeout`` passed), acknowledging each fetch."""
    received: list[Notification] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        delivery = await consumer.fetch(min(batch, count - len(received)),
                                        max(0.05, min(1.0, deadline - time.monotonic())))
        received.extend(delivery.notifications)
        await delivery.ack()
    return received


def _ids(items: Sequence[Notification]) -> list[int]:
    return [n.id for n in items]


class BusSession:
    """What one scenario opened; all of it is closed when the scenario ends."""

    def __init__(self, harness: BusHarness) -> None:
        self.harness = harness
        self._opened: list[EventPublisher | EventConsumer] = []

    async def publisher(self) -> EventPublisher:
        publisher = await self.harness.make_publisher()
        self._opened.append(publisher)
        return publisher

    async def consumer(self, durable_name: str, *, deliver_all: bool = True) -> EventConsumer:
        consumer = await self.harness.make_consumer(durable_name, deliver_all=deliver_all)
        self._opened.append(consumer)
        return consumer

    async def close(self) -> None:
        for opened in reversed(self._opened):
            await opened.close()
        self._opened.clear()
        await self.harness.aclose()


Scenario = Callable[[BusSession], Awaitable[None]]


class BusConformance:
    """Abstract test case for ``EventPublisher`` / ``EventConsumer`` adapter pairs."""

    #: how long a fetch may wait for events that were already published
    fetch_timeout: float = 5.0
    #: how long a fetch waits when the test expects nothing
    quiet_timeout: float = 0.3
    #: the bound on one whole scenario
    scenario_timeout: float = 120.0

    def make_harness(self) -> BusHarness:
        raise NotImplementedError("subclasses build the adapter here, or override the harness fixture")

    @pytest.fixture
    def harness(self) -> Iterator[BusHarness]:
        yield self.make_harness()

    def run(self, harness: BusHarness, scenario: Scenario) -> None:
        async def main() -> None:
            session = BusSession(harness)
            try:
                await asyncio.wait_for(scenario(session), self.scenario_timeout)
            finally:
                await session.close()

        asyncio.run(main())

    @staticmethod
    def durable() -> str:
        return f"conformance-{uuid4().hex[:8]}"

    async def _nothing_more(self, consumer: EventConsumer) -> None:
        delivery = await consumer.fetch(100, self.quiet_timeout)
        assert _ids(delivery.notifications) == []
        await delivery.ack()

    # --- publishing ------------------------------------------------------------------------

    def test_published_events_are_fetched_in_order_unchanged(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, consumer = await s.publisher(), await s.consumer(self.durable())
            sent = notifications(range(1, 11))
            await publisher.publish(sent[:4])
            await publisher.publish(sent[4:])
            received = await drain(consumer, 10, timeout=self.fetch_timeout)
            assert received == sent
            assert all(isinstance(n.originator_id, UUID) for n in received)
            assert all(isinstance(n.state, bytes) for n in received)
            await self._nothing_more(consumer)

        self.run(harness, scenario)

    def test_publishing_nothing_is_a_no_op(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher = await s.publisher()
            await publisher.publish([])
            assert await publisher.last_published_position() == 0

        self.run(harness, scenario)

    def test_positions_already_published_are_dropped(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, consumer = await s.publisher(), await s.consumer(self.durable())
            sent = notifications(range(1, 9))
            await publisher.publish(sent[:5])
            await publisher.publish(sent[:5])  # a relay that crashed before saving its checkpoint
            await publisher.publish(sent[2:])  # an overlapping batch
            assert _ids(await drain(consumer, 8, timeout=self.fetch_timeout)) == list(range(1, 9))
            await self._nothing_more(consumer)

        self.run(harness, scenario)

    def test_last_published_position(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher = await s.publisher()
            assert await publisher.last_published_position() == 0
            await publisher.publish(notifications([1, 2, 3]))
            assert await publisher.last_published_position() == 3
            await publisher.publish(notifications([1, 2]))
            assert await publisher.last_published_position() == 3
            await publisher.publish(notifications([7, 12]))  # gaps: rolled-back transactions
            assert await publisher.last_published_position() == 12
            assert await (await s.publisher()).last_published_position() == 12

        self.run(harness, scenario)

    def test_gaps_between_positions_are_kept_as_they_are(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, consumer = await s.publisher(), await s.consumer(self.durable())
            await publisher.publish(notifications([2, 3, 7, 40]))
            assert _ids(await drain(consumer, 4, timeout=self.fetch_timeout)) == [2, 3, 7, 40]

        self.run(harness, scenario)

    def test_a_large_batch_keeps_its_order(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, consumer = await s.publisher(), await s.consumer(self.durable())
            sent = notifications(range(1, 5001))
            await publisher.publish(sent)
            assert await publisher.last_published_position() == 5000
            received = await drain(consumer, 5000, batch=1000, timeout=max(30.0, self.fetch_timeout))
            assert _ids(received) == list(range(1, 5001))
            assert received[4321] == sent[4321]
            await self._nothing_more(consumer)

        self.run(harness, scenario)

    # --- fetching --------------------------------------------------------------------------

    def test_fetch_returns_at_most_max_events(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, consumer = await s.publisher(), await s.consumer(self.durable())
            await publisher.publish(notifications(range(1, 11)))
            first = await _first_delivery(consumer, 3, self.fetch_timeout)
            assert 1 <= len(first.notifications) <= 3
            assert _ids(first.notifications) == list(range(1, len(first.notifications) + 1))

        self.run(harness, scenario)

    def test_fetch_on_an_empty_bus_returns_nothing_after_the_timeout(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            consumer = await s.consumer(self.durable())
            started = time.monotonic()
            delivery = await consumer.fetch(10, 0.5)
            waited = time.monotonic() - started
            assert list(delivery.notifications) == []
            await delivery.ack()  # a no-op
            assert 0.25 <= waited < 10, waited

        self.run(harness, scenario)

    def test_a_waiting_fetch_returns_when_events_arrive(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, consumer = await s.publisher(), await s.consumer(self.durable())
            started = time.monotonic()
            fetching = asyncio.ensure_future(consumer.fetch(100, 20.0))
            await asyncio.sleep(0.2)
            await publisher.publish(notifications([1]))
            delivery = await fetching
            assert _ids(delivery.notifications) == [1]
            assert time.monotonic() - started < 10  # long before the fetch's own timeout
            await delivery.ack()

        self.run(harness, scenario)

    def test_durable_consumers_are_independent(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher = await s.publisher()
            first, second = await s.consumer(self.durable()), await s.consumer(self.durable())
            await publisher.publish(notifications(range(1, 6)))
            assert _ids(await drain(first, 5, timeout=self.fetch_timeout)) == [1, 2, 3, 4, 5]
            assert _ids(await drain(second, 5, timeout=self.fetch_timeout)) == [1, 2, 3, 4, 5]

        self.run(harness, scenario)

    def test_a_new_durable_consumer_starts_after_the_events_already_published(
        self, harness: BusHarness
    ) -> None:
        async def scenario(s: BusSession) -> None:
            publisher = await s.publisher()
            await publisher.publish(notifications([1, 2, 3]))
            consumer = await s.consumer(self.durable(), deliver_all=False)
            await self._nothing_more(consumer)
            await publisher.publish(notifications([4, 5]))
            assert _ids(await drain(consumer, 2, timeout=self.fetch_timeout)) == [4, 5]

        self.run(harness, scenario)

    # --- acknowledgements ------------------------------------------------------------------

    def test_a_durable_consumer_resumes_after_its_last_acknowledgement(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, name = await s.publisher(), self.durable()
            await publisher.publish(notifications(range(1, 21)))
            first = await s.consumer(name)
            assert _ids(await drain(first, 10, batch=5, timeout=self.fetch_timeout)) == list(range(1, 11))
            await first.close()
            second = await s.consumer(name)  # a restarted worker
            assert _ids(await drain(second, 10, timeout=self.fetch_timeout)) == list(range(11, 21))
            await self._nothing_more(second)

        self.run(harness, scenario)

    def test_an_unacknowledged_delivery_goes_to_the_next_consumer(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, name = await s.publisher(), self.durable()
            await publisher.publish(notifications(range(1, 11)))
            first = await s.consumer(name)
            assert _ids(await drain(first, 4, batch=4, timeout=self.fetch_timeout)) == [1, 2, 3, 4]
            unacked = await _first_delivery(first, 4, self.fetch_timeout)
            assert _ids(unacked.notifications) == [5, 6, 7, 8]
            await first.close()  # e.g. its transaction failed and the worker stopped
            second = await s.consumer(name)
            assert _ids(await drain(second, 6, timeout=self.fetch_timeout)) == [5, 6, 7, 8, 9, 10]

        self.run(harness, scenario)

    def test_an_unacknowledged_delivery_comes_again_on_the_next_fetch(self, harness: BusHarness) -> None:
        async def scenario(s: BusSession) -> None:
            publisher, consumer = await s.publisher(), await s.consumer(self.durable())
            await publisher.publish(notifications(range(1, 9)))
            unacked = await _first_delivery(consumer, 4, self.fetch_timeout)
            count = len(unacked.notifications)
            again = await _first_delivery(consumer, 4, self.fetch_timeout)
            assert _ids(again.notifications)[:count] == _ids(unacked.notifications)
            await unacked.ack()  # stale: handed back by the fetch above, so it changes nothing
            await again.ack()
            await again.ack()  # twice is harmless
            rest = await drain(consumer, 8 - len(again.notifications), timeout=self.fetch_timeout)
            assert _ids(again.notifications) + _ids(rest) == list(range(1, 9))

        self.run(harness, scenario)

    def test_a_handed_back_delivery_goes_to_another_consumer_at_once(self, harness: BusHarness) -> None:
        """A worker that lost its projection's lease stays up but hands its deliveries back: the new
        owner gets them now, not after the bus's acknowledgement wait."""

        async def scenario(s: BusSession) -> None:
            publisher, name = await s.publisher(), self.durable()
            await publisher.publish(notifications(range(1, 9)))
            old = await s.consumer(name)
            unacked = await _first_delivery(old, 4, self.fetch_timeout)
            assert _ids(unacked.notifications) == [1, 2, 3, 4]
            await old.hand_back()  # the old consumer stays open
            await unacked.ack()  # stale: handed back, so it acknowledges nothing
            new = await s.consumer(name)
            assert _ids(await drain(new, 8, timeout=self.fetch_timeout)) == list(range(1, 9))

        self.run(harness, scenario)


async def _first_delivery(consumer: EventConsumer, max_events: int, timeout: float) -> Delivery:
    """The first non-empty delivery within ``timeout`` (unacknowledged)."""
    deadline = time.monotonic() + timeout
    while True:
        delivery = await consumer.fetch(max_events, max(0.05, min(1.0, deadline - time.monotonic())))
        if delivery.notifications or time.monotonic() >= deadline:
            return delivery
