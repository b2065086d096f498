"""The in-process bus beyond the conformance suite: threads, event loops, simulated outages."""

from __future__ import annotations

import asyncio
import threading

import pytest

from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
from framework.errors import BusUnavailable
from framework.testing.bus_conformance import drain, notifications


def test_a_publish_from_another_thread_wakes_a_waiting_fetch() -> None:
    bus = MemoryBus()

    async def scenario() -> list[int]:
        consumer = MemoryConsumer(bus, "w", deliver_all=True)
        await consumer.bind()
        timer = threading.Timer(0.1, bus.append, args=(notifications([1, 2]),))
        timer.start()
        # A fetch that would wait an hour: only a wake-up by the publish can end it before the
        # guard (which turns "never woke" into a failure instead of a hung test).
        delivery = await asyncio.wait_for(consumer.fetch(10, 3600.0), 60)
        await delivery.ack()
        return [n.id for n in delivery.notifications]

    assert asyncio.run(scenario()) == [1, 2]


def test_one_bus_serves_consumers_in_successive_event_loops() -> None:
    bus = MemoryBus()
    asyncio.run(MemoryPublisher(bus).publish(notifications(range(1, 6))))

    async def take(count: int) -> list[int]:
        consumer = MemoryConsumer(bus, "w", deliver_all=True)
        received = [n.id for n in await drain(consumer, count, timeout=2)]
        await consumer.close()
        return received

    assert asyncio.run(take(2)) == [1, 2]
    assert asyncio.run(take(3)) == [3, 4, 5]


def test_an_unavailable_bus_raises_bus_unavailable_until_it_is_back() -> None:
    bus = MemoryBus()
    publisher, consumer = MemoryPublisher(bus), MemoryConsumer(bus, "w", deliver_all=True)

    async def scenario() -> None:
        await consumer.bind()
        bus.set_available(False)
        with pytest.raises(BusUnavailable):
            await publisher.publish(notifications([1]))
        with pytest.raises(BusUnavailable):
            await consumer.fetch(10, 0.1)
        with pytest.raises(BusUnavailable):
            await publisher.last_published_position()
        bus.set_available(True)
        await publisher.publish(notifications([1]))
        assert [n.id for n in await drain(consumer, 1, timeout=2)] == [1]

    asyncio.run(scenario())


def test_idle_fetches_leave_no_waiters_behind() -> None:
    bus = MemoryBus()

    async def scenario() -> None:
        consumer = MemoryConsumer(bus, "w")
        for _ in range(20):
            await consumer.fetch(10, 0.01)

    asyncio.run(scenario())
    assert bus._waiters == []


def test_duplicates_are_counted_out() -> None:
    bus = MemoryBus()
    assert bus.append(notifications([1, 2, 3])) == 3
    assert bus.append(notifications([2, 3, 4])) == 1
    assert len(bus) == 4 and bus.last_position() == 4
    assert bus.delete_consumer("nobody") is False
