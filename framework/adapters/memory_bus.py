"""The bus port in process: what the embedded mode and unit tests use in place of JetStream.

Same semantics as ``framework.adapters.nats`` (both pass
``framework.testing.bus_conformance``): publishing a position already on the
bus is a no-op (JetStream's ``Nats-Msg-Id`` dedup), order is publish order,
durable consumers resume after their last acknowledged notification, and an
unacknowledged delivery is delivered again by the next fetch, or to the next
consumer with the same durable name.

Thread-safe and usable from several event loops: waiting fetches are woken
with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from framework.errors import BusUnavailable
from framework.store import Notification
from framework.streaming import Delivery

__all__ = ["MemoryBus", "MemoryConsumer", "MemoryPublisher"]


@dataclass
class _Durable:
    """A durable consumer's offsets into the log: acknowledged and handed out."""

    acked: int
    delivered: int


class MemoryBus:
    """An append-only, deduplicated log of notifications with durable consumer offsets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[Notification] = []
        self._positions: set[int] = set()
        self._durables: dict[str, _Durable] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._available = True

    def set_available(self, available: bool) -> None:
        """Simulate the bus going away (every call raises ``BusUnavailable``) and coming back."""
        self._available = available

    def check_available(self) -> None:
        if not self._available:
            raise BusUnavailable("the in-process bus is unavailable")

    def append(self, notifications: Sequence[Notification]) -> int:
        """Add the notifications whose positions are new; return how many were added."""
        self.check_available()
        with self._lock:
            fresh = [n for n in notifications if n.id not in self._positions]
            self._positions.update(n.id for n in fresh)
            self._log.extend(fresh)
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)
        return len(fresh)

    def last_position(self) -> int:
        self.check_available()
        with self._lock:
            return self._log[-1].id if self._log else 0

    def __len__(self) -> int:
        return len(self._log)

    def attach(self, name: str, deliver_all: bool) -> None:
        """Create durable ``name`` (at the start, or at the end of the log), or take it over:
        whatever it had handed out without an acknowledgement will be delivered again."""
        with self._lock:
            durable = self._durables.get(name)
            if durable is None:
                start = 0 if deliver_all else len(self._log)
                self._durables[name] = _Durable(acked=start, delivered=start)
            else:
                durable.delivered = durable.acked

    def take(self, name: str, limit: int) -> tuple[int, list[Notification]]:
        """Up to ``limit`` notifications after what ``name`` was handed; (end offset, notifications)."""
        with self._lock:
            durable = self._durables[name]
            batch = self._log[durable.delivered:durable.delivered + limit]
            durable.delivered += len(batch)
            return durable.delivered, batch

    def acknowledge(self, name: str, end: int) -> None:
        with self._lock:
            durable = self._durables[name]
            durable.acked = max(durable.acked, end)
            durable.delivered = max(durable.delivered, durable.acked)

    def hand_back(self, name: str) -> None:
        """Deliver again everything ``name`` was handed and did not acknowledge."""
        with self._lock:
            durable = self._durables[name]
            durable.delivered = durable.acked

    def waiter(self) -> asyncio.Future[None]:
        """A future of the running loop, resolved at the next append."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters.append((loop, future))
        return future

    def forget(self, future: asyncio.Future[None]) -> None:
        """Drop a waiter that timed out (so an idle bus does not collect them)."""
        with self._lock:
            self._waiters = [(loop, f) for loop, f in self._waiters if f is not future]

    def has_more(self, name: str) -> bool:
        with self._lock:
            return self._durables[name].delivered < len(self._log)

    def delete_consumer(self, name: str) -> bool:
        with self._lock:
            return self._durables.pop(name, None) is not None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class MemoryPublisher:
    """``EventPublisher`` on a ``MemoryBus``."""

    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus

    async def publish(self, notifications: Sequence[Notification]) -> None:
        self._bus.append(notifications)

    async def last_published_position(self) -> int:
        return self._bus.last_position()

    async def close(self) -> None:
        return None


class MemoryConsumer:
    """``EventConsumer`` on a ``MemoryBus``, with JetStream's durable-consumer semantics.

    A durable name seen for the first time starts after the current end of the
    log (``deliver_all=True``: at its start), like a new JetStream consumer with
    deliver policy NEW; the constructor creates it (or takes it over) at once.
    ``ack()`` of a delivery acknowledges it and everything before it.
    """

    def __init__(self, bus: MemoryBus, durable_name: str, *, deliver_all: bool = False) -> None:
        self._bus = bus
        self.name = durable_name
        self._outstanding: object | None = None
        bus.attach(durable_name, deliver_all)  # at once: nothing published from now on is missed

    async def bind(self) -> None:
        """Nothing left to do (the constructor attached); here for parity with JetStream."""
        self._bus.check_available()

    async def fetch(self, max_events: int, timeout: float) -> Delivery:
        await self.bind()
        self._hand_back()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._bus.check_available()
            end, batch = self._bus.take(self.name, max(1, max_events))
            if batch:
                return self._delivery(end, batch)
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait(remaining):
                return Delivery((), _nothing)

    async def _wait(self, seconds: float) -> bool:
        """Wait for an append; False if ``seconds`` passed without one."""
        waiter = self._bus.waiter()
        if self._bus.has_more(self.name):  # appended between take() and waiter()
            self._bus.forget(waiter)
            return True
        try:
            await asyncio.wait_for(waiter, seconds)
        except TimeoutError:
            return False
        finally:
            self._bus.forget(waiter)
        return True

    def _delivery(self, end: int, batch: list[Notification]) -> Delivery:
        token = object()
        self._outstanding = token

        async def ack() -> None:
            if self._outstanding is token:
                self._bus.check_available()
                self._bus.acknowledge(self.name, end)
                self._outstanding = None

        return Delivery(batch, ack)

    async def hand_back(self) -> None:
        self._hand_back()

    def _hand_back(self) -> None:
        if self._outstanding is not None:
            self._outstanding = None
            self._bus.hand_back(self.name)

    async def close(self) -> None:
        self._hand_back()


async def _nothing() -> None:
    return None
