"""The bus port: the ordered stream of stored events between the store and projections.

The relay publishes notifications (stored events with their global
position) in position order; workers fetch them through durable consumers and
acknowledge after their own transaction committed. The bus is transport only:
at-least-once, usually in order. Workers drop what they already applied and
back-fill any gap from the event store, which stays the source of truth.

Adapters: ``framework.adapters.memory_bus`` (embedded) and
``framework.adapters.nats`` (JetStream); both pass
``framework.testing.bus_conformance``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from framework.store import Notification

__all__ = ["Delivery", "EventConsumer", "EventPublisher", "FetchAhead"]


@dataclass(frozen=True)
class Delivery:
    """Fetched notifications and the call that acknowledges all of them."""

    notifications: Sequence[Notification]
    ack: Callable[[], Awaitable[None]]


class EventPublisher(Protocol):
    async def publish(self, notifications: Sequence[Notification]) -> None:
        """Publish in order; return once the bus acknowledged all of them, else raise."""

    async def last_published_position(self) -> int:
        """The position of the newest event on the bus (0 when empty)."""

    async def close(self) -> None:
        ...


FetchAhead = Callable[[int, float], Awaitable[Delivery]]
"""A consumer's optional ``fetch_ahead(max_events, timeout)``: a fetch that leaves the deliveries not yet
acknowledged outstanding (``fetch`` hands them back), so that the next delivery can be fetched while
one is applied; deliveries are then acknowledged in fetch order."""


class EventConsumer(Protocol):
    async def bind(self) -> None:
        """Attach to the bus (create the durable consumer if new) before catching up,
        so nothing published during the catch-up is left to gap back-filling."""

    async def fetch(self, max_events: int, timeout: float) -> Delivery:
        """Up to ``max_events`` notifications; an empty delivery after ``timeout``."""

    async def hand_back(self) -> None:
        """Give every delivery not acknowledged back to the bus now (another worker of the same
        durable consumer gets it next), rather than after the bus's acknowledgement wait."""

    async def close(self) -> None:
        ...
