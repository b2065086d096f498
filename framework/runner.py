"""The long-running loops: the relay (store → bus) and projection consumers (bus → worker).

Both survive their dependencies going away: an unavailable store or bus is
one log line, then a retry with capped exponential backoff, never a crash and
never a lost event (the relay's checkpoint moves only after the bus
acknowledged; a worker acknowledges only after its transaction committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from framework.errors import BusUnavailable, StoreUnavailable
from framework.mapper import stored_trace_context
from framework.store import EventStore, Notification
from framework.streaming import Delivery, EventConsumer, EventPublisher, FetchAhead
from framework.tracing import NULL_TRACER, Span, TracedNotification, Tracer
from framework.worker import ProjectionHalted, ProjectionWorker

__all__ = ["Backoff", "run_projection", "run_relay"]

log = logging.getLogger(__name__)
_UNAVAILABLE = (StoreUnavailable, BusUnavailable, OSError, asyncio.TimeoutError)


class Backoff:
    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self._first, self._cap, self._next = first, cap, first

    def reset(self) -> None:
        self._next = self._first

    def delay(self) -> float:
        delay, self._next = self._next, min(self._cap, self._next * 2)
        return delay


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_relay(
    store: EventStore,
    publisher: EventPublisher,
    stop: asyncio.Event,
    *,
    name: str = "relay",
    batch_size: int = 1000,
    poll_seconds: float = 1.0,
    tracer: Tracer = NULL_TRACER,
) -> None:
    """Publish every stored event, in position order, until ``stop`` is set.

    With tracing on, each event that carries a trace context is published in
    a "relay publish <EventName>" span (the child of the command's span) whose
    context travels with it on the bus; the spans end when the bus acknowledged.
    """
    backoff = Backoff()
    position: int | None = None
    batch: Sequence[Notification] = ()  # kept while the bus is down: it is published again, not read again
    while not stop.is_set():
        try:
            if position is None:
                stored = await asyncio.to_thread(store.relay_checkpoint, name)
                position = max(stored, await publisher.last_published_position())
                log.info("relay %s: starting after position %d", name, position)
            if not batch:
                batch = await asyncio.to_thread(store.read_all, position, batch_size)
            if not batch:
                await asyncio.to_thread(store.wait_for_append, position, poll_seconds)
                continue
            await _publish(publisher, batch, tracer)
            position, batch = batch[-1].id, ()
            await asyncio.to_thread(store.save_relay_checkpoint, name, position)
            backoff.reset()
        except _UNAVAILABLE as error:
            delay = backoff.delay()
            log.warning("relay %s: %s; retrying in %.1fs", name, _describe(error), delay)
            await _pause(stop, delay)


async def _publish(publisher: EventPublisher, batch: Sequence[Notification], tracer: Tracer) -> None:
    if not tracer.enabled:
        await publisher.publish(batch)
        return
    spans: list[Span] = []
    traced = [_traced(n, tracer, spans) for n in batch]
    try:
        await publisher.publish(traced)
    except BaseException as error:
        for span in spans:
            span.record_error(error)
        raise
    finally:
        for span in spans:
            span.end()


def _traced(notification: Notification, tracer: Tracer, spans: list[Span]) -> Notification:
    """The notification with its relay span's context (unchanged if the event has no trace context)."""
    parent = stored_trace_context(notification)
    if parent is None:
        return notification
    span = tracer.start_span(f"relay publish {notification.topic}", parent=parent, kind="producer", attributes={
        "eventfold.event": notification.topic, "eventfold.position": notification.id,
        "eventfold.aggregate_id": str(notification.originator_id), "messaging.operation.type": "send"})
    spans.append(span)
    return TracedNotification(originator_id=notification.originator_id,
                              originator_version=notification.originator_version, topic=notification.topic,
                              state=notification.state, id=notification.id, trace_context=span.carrier() or parent)


async def run_projection(
    worker: ProjectionWorker,
    consumer: EventConsumer,
    stop: asyncio.Event,
    *,
    batch_size: int = 1000,
    fetch_seconds: float = 1.0,
    retry_letters_every: float = 5.0,
    prefetch: bool = True,
) -> None:
    """Catch up from the store, then apply the bus's deliveries until ``stop`` or a halt.

    With ``prefetch`` and a consumer that can fetch ahead (``fetch_ahead``: a fetch
    that leaves the unacknowledged delivery outstanding, see ``JetStreamConsumer``),
    the next delivery is fetched while this one is applied in the worker's thread:
    one fetch outstanding at most, and a delivery is acknowledged only after its
    transaction committed, in fetch order. A prefetched delivery is never
    acknowledged unapplied: after an error it is handed back by the next plain
    ``fetch`` (which returns every unacknowledged delivery to the bus), on a halt
    it stays unacknowledged (redelivered), and on ``stop`` it is applied first.
    """
    backoff = Backoff()
    caught_up = halted = False
    next_letter_check = 0.0
    fetch_ahead = _fetch_ahead_of(consumer) if prefetch else None
    ahead: asyncio.Task[Delivery] | None = None  # the next delivery, fetched while this one is applied
    try:
        while not stop.is_set() or ahead is not None:
            try:
                if not caught_up:
                    await consumer.bind()
                    await asyncio.to_thread(worker.views.set_state, worker.name, worker.version, "running")
                    await asyncio.to_thread(worker.catch_up)
                    caught_up = True
                if ahead is not None:
                    fetching, ahead = ahead, None
                    delivery = await fetching
                else:
                    delivery = await consumer.fetch(batch_size, fetch_seconds)
                if delivery.notifications:
                    if fetch_ahead is not None and not stop.is_set():
                        ahead = asyncio.ensure_future(fetch_ahead(batch_size, fetch_seconds))
                    await asyncio.to_thread(worker.apply, delivery.notifications)
                await delivery.ack()  # after the commit: a crash before it means a redelivery
                if time.monotonic() >= next_letter_check:
                    await asyncio.to_thread(worker.retry_dead_letters)
                    next_letter_check = time.monotonic() + retry_letters_every
                backoff.reset()
            except ProjectionHalted as error:
                log.error("%s", error)
                halted = True
                break
            except _UNAVAILABLE as error:
                # Nothing more is acknowledged: a prefetched delivery goes back to the bus with the
                # failed one at the next fetch (or after the bus's ack wait).
                await _settled(ahead)
                ahead = None
                delay = backoff.delay()
                log.warning("projection %s: %s; retrying in %.1fs", worker.name, _describe(error), delay)
                await _pause(stop, delay)
    except BaseException:
        if ahead is not None:
            ahead.cancel()  # unacknowledged whatever it gets: delivered again
        raise
    await _settled(ahead)  # halted with a delivery fetched ahead: left unacknowledged
    if not halted:
        await asyncio.to_thread(_mark_stopped, worker)


def _fetch_ahead_of(consumer: EventConsumer) -> FetchAhead | None:
    """The consumer's ``fetch_ahead``, if it can fetch ahead (a wrapper answers None when what it wraps cannot)."""
    ahead: FetchAhead | None = getattr(consumer, "fetch_ahead", None)
    return ahead


async def _settled(fetching: asyncio.Task[Delivery] | None) -> None:
    """Let an outstanding fetch finish (its delivery stays unacknowledged: the bus delivers it again);
    cancel it only if this task is being cancelled."""
    if fetching is None:
        return
    try:
        await asyncio.shield(fetching)
    except asyncio.CancelledError:
        fetching.cancel()
        raise
    except Exception as error:  # the fetch's own failure: nothing was delivered
        log.debug("a fetch ahead failed: %s", _describe(error))


def _mark_stopped(worker: ProjectionWorker) -> None:
    with contextlib.suppress(StoreUnavailable):
        worker.views.set_state(worker.name, worker.version, "stopped")


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
