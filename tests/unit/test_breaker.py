"""Circuit breakers without a network: the async path, the bus wrappers, metrics, and the relay's retry."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from example_app.app import build_router
from example_app.commands import OpenAccount
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_bus import MemoryBus, MemoryConsumer
from framework.breaker import BreakingConsumer, BreakingPublisher, CircuitBreaker, bus_breaker
from framework.bus import CommandBus
from framework.errors import BusUnavailable, StoreUnavailable
from framework.metrics import Metrics
from framework.runner import run_relay
from framework.store import Notification
from framework.testing.bus_conformance import notifications


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlakyPublisher:
    """Fails while ``down``; records what it published."""

    def __init__(self) -> None:
        self.down, self.calls, self.published = False, 0, list[int]()

    async def publish(self, batch: Sequence[Notification]) -> None:
        self.calls += 1
        if self.down:
            raise BusUnavailable("bus down")
        self.published += [n.id for n in batch]

    async def last_published_position(self) -> int:
        return self.published[-1] if self.published else 0

    async def close(self) -> None:
        pass


def test_the_async_path_opens_refuses_probes_and_closes() -> None:
    clock, flaky = Clock(), FlakyPublisher()
    publisher = BreakingPublisher(flaky, CircuitBreaker(2, 5.0, dependency="message bus",
                                                        unavailable=BusUnavailable, clock=clock))
    batch = notifications([1])

    async def scenario() -> None:
        flaky.down = True
        for _ in range(2):
            with pytest.raises(BusUnavailable, match="bus down"):
                await publisher.publish(batch)
        with pytest.raises(BusUnavailable, match="message bus is failing"):
            await publisher.publish(batch)
        assert flaky.calls == 2
        clock.now, flaky.down = 5.0, False
        await publisher.publish(batch)  # the probe

    asyncio.run(scenario())
    assert publisher.breaker.state == "closed"
    assert (publisher.breaker.opened_total, publisher.breaker.refused_total) == (1, 1)
    assert flaky.published == [1]


def test_only_the_breakers_own_kind_of_failure_counts() -> None:
    breaker = bus_breaker(threshold=1)

    def store_down() -> None:
        raise StoreUnavailable("not the bus")

    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            breaker.call(store_down)
    assert breaker.state == "closed"


def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, unavailable=BusUnavailable, clock=clock)

    async def down() -> None:
        raise BusUnavailable("down")

    async def scenario() -> None:
        with pytest.raises(BusUnavailable):
            await breaker.call_async(down)
        clock.now = 1.0
        probe = asyncio.create_task(breaker.call_async(asyncio.Event().wait))
        await asyncio.sleep(0)
        assert breaker.refusing_for() is not None  # while the probe is out, others are refused
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert breaker.refusing_for() is None
        await breaker.call_async(lambda: asyncio.sleep(0))  # the next call probes, and closes it
        assert breaker.state == "closed"

    asyncio.run(scenario())


def test_the_cool_down_starts_short_and_doubles_with_each_failed_probe_up_to_the_longest() -> None:
    """A dependency back after a short restart is probed soon; one away for long, every ``cool_down``."""
    clock = Clock()
    breaker = CircuitBreaker(2, 2.0, first_cool_down=0.25, clock=clock)
    for _ in range(2):
        with pytest.raises(StoreUnavailable, match="down"):
            breaker.call(_raise_store_unavailable)
    waits = []
    for _ in range(5):
        waits.append(breaker.refusing_for())
        with pytest.raises(StoreUnavailable, match="not trying again"):
            breaker.call(_raise_store_unavailable)  # refused: the dependency is not tried
        clock.now += waits[-1] or 0.0
        with pytest.raises(StoreUnavailable, match=r"^down$"):
            breaker.call(_raise_store_unavailable)  # the probe, failing
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0]
    clock.now += 2.0
    assert breaker.call(lambda: "answered") == "answered"
    assert breaker.state == "closed"
    for _ in range(2):  # opened again: the short cool-down again
        with pytest.raises(StoreUnavailable):
            breaker.call(_raise_store_unavailable)
    assert breaker.refusing_for() == 0.25
    assert (breaker.opened_total, breaker.refused_total) == (2, 5)


def test_a_call_admitted_before_it_opened_does_not_lengthen_the_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 2.0, first_cool_down=0.25, clock=clock)

    def straggler() -> None:  # admitted while closed, failing after another call opened the breaker
        with pytest.raises(StoreUnavailable):
            breaker.call(_raise_store_unavailable)
        clock.now = 0.1
        raise StoreUnavailable("a straggler")

    with pytest.raises(StoreUnavailable, match="straggler"):
        breaker.call(straggler)
    assert breaker.refusing_for() == 0.25  # counted from the straggler's failure, not doubled


def test_without_a_first_cool_down_it_is_the_cool_down() -> None:
    assert CircuitBreaker(1, 5.0).first_cool_down == 5.0
    assert CircuitBreaker(1, 1.0, first_cool_down=3.0).first_cool_down == 1.0


def test_the_consumer_wrapper_fails_fast_while_open() -> None:
    bus = MemoryBus()
    consumer = BreakingConsumer(MemoryConsumer(bus, "w", deliver_all=True), bus_breaker(threshold=1, cool_down=60))

    async def scenario() -> None:
        await consumer.bind()
        bus.set_available(False)
        with pytest.raises(BusUnavailable):
            await consumer.fetch(10, 0.01)
        bus.set_available(True)
        with pytest.raises(BusUnavailable, match="not trying again"):
            await consumer.fetch(10, 0.01)

    asyncio.run(scenario())


def test_breakers_are_exported_as_metrics() -> None:
    clock = Clock()
    open_one = CircuitBreaker(1, 5.0, dependency="read models", clock=clock)
    closed_one = bus_breaker()
    with pytest.raises(StoreUnavailable):
        open_one.call(_raise_store_unavailable)
    assert open_one.refuse() == 5.0
    metrics = Metrics(process=False)
    metrics.watch_breakers([open_one, closed_one])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples}

    def state(dependency: str, name: str) -> float:
        return samples[("eventfold_circuit_breaker_state", (("dependency", dependency), ("state", name)))]

    assert [state("read_models", s) for s in ("closed", "open", "half-open")] == [0, 1, 0]
    assert [state("message_bus", s) for s in ("closed", "open", "half-open")] == [1, 0, 0]
    assert samples[("eventfold_circuit_breaker_opened_total", (("dependency", "read_models"),))] == 1
    assert samples[("eventfold_circuit_breaker_refused_total", (("dependency", "read_models"),))] == 1


def _raise_store_unavailable() -> None:
    raise StoreUnavailable("down")


class CountingStore(MemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches_read = 0

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        batch = super().read_all(after_position, limit)
        self.batches_read += bool(batch)
        return batch


def test_the_relay_publishes_a_failed_batch_again_without_reading_it_again() -> None:
    store, flaky = CountingStore(), FlakyPublisher()
    bus = CommandBus(build_router(), store)
    for number in ("ACC-1", "ACC-2", "ACC-3"):
        bus.execute(OpenAccount(account_number=number, holder_name="Relay"))
    flaky.down = True

    async def scenario() -> None:
        stop = asyncio.Event()
        relay = asyncio.create_task(run_relay(store, flaky, stop, poll_seconds=0.01))
        while flaky.calls < 2:  # two failed publishes (with the relay's back-off between them)
            await asyncio.sleep(0.01)
        flaky.down = False
        while store.relay_checkpoint("relay") < store.head():
            await asyncio.sleep(0.01)
        stop.set()
        await relay

    asyncio.run(scenario())
    assert store.batches_read == 1
    assert flaky.published == [n.id for n in store.read_all(0, 100)]
