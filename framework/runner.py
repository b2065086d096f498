"""The long-running loops: the relay (store → bus) and projection consumers (bus → worker).

Both survive their dependencies going away: an unavailable store or bus is
one log line, then a retry with capped exponential backoff, never a crash and
never a lost event (the relay's checkpoint moves only after the bus
acknowledged; a worker acknowledges only after its transaction committed).
A projection runs in one worker at a time: the holder of its lease; other
workers started on it stand by and take over when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from framework.dispatcher import Dispatcher, DispatchOptions
from framework.errors import BusUnavailable, ConcurrencyConflict, StoreUnavailable
from framework.mapper import stored_trace_context
from framework.projector import ProcessManager
from framework.store import Notification, RelaySource
from framework.streaming import Delivery, EventConsumer, EventPublisher, FetchAhead
from framework.tracing import NULL_TRACER, Span, TracedNotification, Tracer
from framework.worker import ProjectionHalted, ProjectionWorker, RetryLater

__all__ = ["Backoff", "LeaseOptions", "run_dispatcher", "run_projection", "run_relay", "worker_identity"]

log = logging.getLogger(__name__)
_UNAVAILABLE = (StoreUnavailable, BusUnavailable, OSError, asyncio.TimeoutError)
_RETRIED = (*_UNAVAILABLE, RetryLater)  # expected while waiting: a warning, not an error


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
    store: RelaySource,
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


@dataclass(frozen=True)
class LeaseOptions:
    """One active worker per projection: how long a lease lives without a heartbeat, how often the
    holder renews it, and how often a standby asks for it. A standby takes over a dead worker's
    projection within ``ttl_seconds + standby_poll_seconds``; a stopped worker's at once."""

    ttl_seconds: float = 3.0
    renew_seconds: float = 1.0
    standby_poll_seconds: float = 0.5

    @classmethod
    def for_ttl(cls, ttl_seconds: float) -> LeaseOptions:
        """Renewed three times per lifetime; standbys ask at most every half second."""
        return cls(ttl_seconds, ttl_seconds / 3, min(0.5, ttl_seconds / 6))


def worker_identity() -> str:
    """Who holds a lease, as status shows it: host, pid and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def run_projection(
    worker: ProjectionWorker,
    consumer: EventConsumer,
    stop: asyncio.Event,
    *,
    batch_size: int = 1000,
    fetch_seconds: float = 1.0,
    retry_letters_every: float = 5.0,
    prefetch: bool = True,
    lease: LeaseOptions | None = None,
    owner: str | None = None,
    dispatch: DispatchOptions | None = None,
) -> None:
    """Run ``worker`` while it holds its projection's lease, as a standby while another worker does.

    Never ends before ``stop``: a lost lease or another worker's commit sends it back to standby,
    an unavailable dependency or an unexpected error is retried with backoff, and a halted
    projection keeps its lease (and its state) until stopped. A process manager's outbox and
    deadlines are dispatched beside it (``framework.dispatcher``) while it is active.
    """
    lease = lease or LeaseOptions()
    owner = owner or worker_identity()
    while not stop.is_set():
        if not await _acquire(worker, owner, lease, stop):
            return  # stopped while standing by: nothing to hand over
        if not await _reloaded(worker, stop):
            break
        outcome = await _run_leased(worker, consumer, stop, owner, lease, dispatch, _ActiveOptions(
            batch_size, fetch_seconds, retry_letters_every, prefetch))
        if outcome == "lost" and not stop.is_set():
            continue  # standing by again
        if outcome == "halted":
            await _released(worker, owner, "halted")
            return
        break
    await _released(worker, owner, "stopped")


@dataclass(frozen=True)
class _ActiveOptions:
    batch_size: int
    fetch_seconds: float
    retry_letters_every: float
    prefetch: bool


async def _acquire(worker: ProjectionWorker, owner: str, lease: LeaseOptions, stop: asyncio.Event) -> bool:
    """Wait as a standby until this worker holds the lease; False when stopped first."""
    backoff, told = Backoff(), False
    while not stop.is_set():
        try:
            if await asyncio.to_thread(worker.views.acquire_lease, worker.name, owner, lease.ttl_seconds):
                log.info("%s: active (%s)", worker.name, owner)
                return True
            if not told:
                log.info("%s: standing by while another worker runs it", worker.name)
                told = True
            await _pause(stop, lease.standby_poll_seconds)
        except _UNAVAILABLE as error:
            delay = backoff.delay()
            log.warning("projection %s: %s; retrying in %.1fs", worker.name, _describe(error), delay)
            await _pause(stop, delay)
    return False


async def _run_leased(worker: ProjectionWorker, consumer: EventConsumer, stop: asyncio.Event, owner: str,
                      lease: LeaseOptions, dispatch: DispatchOptions | None, options: _ActiveOptions) -> str:
    """Run actively until stopped, halted, or the lease is lost ("stopped" / "halted" / "lost")."""
    active, lost = asyncio.Event(), asyncio.Event()
    watch = asyncio.create_task(_set_when(stop, active))
    dispatcher = _dispatcher_for(worker, dispatch)
    wake = asyncio.Event()
    if dispatcher is not None:
        loop = asyncio.get_running_loop()

        def woken() -> None:
            loop.call_soon_threadsafe(wake.set)

        worker.on_outbox = woken
    tasks = [asyncio.create_task(_keep_lease(worker, dispatcher, owner, lease, active, lost))]
    if dispatcher is not None:
        tasks.append(asyncio.create_task(run_dispatcher(dispatcher, active, wake)))
    try:
        halted = await _run_active(worker, consumer, active, owner, lost, options)
        if halted:  # keep the lease (and the halted state: a standby would only halt again) until stopped;
            await active.wait()  # its outbox is still dispatched meanwhile
    finally:
        active.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        watch.cancel()
        worker.on_outbox = None
        if dispatcher is not None:
            await asyncio.to_thread(dispatcher.close)
    if halted:
        return "halted"
    return "lost" if lost.is_set() else "stopped"


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def _dispatcher_for(worker: ProjectionWorker, options: DispatchOptions | None) -> Dispatcher | None:
    if worker.commands is None or not isinstance(worker.projector, ProcessManager):
        return None
    return Dispatcher(worker, worker.commands, options)


async def _keep_lease(worker: ProjectionWorker, dispatcher: Dispatcher | None, owner: str, lease: LeaseOptions,
                      active: asyncio.Event, lost: asyncio.Event) -> None:
    """Renew the lease every ``renew_seconds``, saying whether the worker made progress since; if
    another worker took it (this one was too slow to renew), stop being active."""
    seen = -1
    while not active.is_set():
        await _pause(active, lease.renew_seconds)
        if active.is_set():
            return
        done = worker.furthest + (dispatcher.dispatched if dispatcher is not None else 0)
        try:
            held = await asyncio.to_thread(worker.views.acquire_lease, worker.name, owner, lease.ttl_seconds,
                                           progressed=done != seen)
        except _UNAVAILABLE as error:
            log.warning("%s: could not renew the lease: %s", worker.name, _describe(error))
            continue
        seen = done
        if not held:
            log.warning("%s: another worker took over the lease; standing by", worker.name)
            lost.set()
            active.set()


async def run_dispatcher(dispatcher: Dispatcher, stop: asyncio.Event, wake: asyncio.Event,
                         poll_seconds: float = 0.5) -> None:
    """Dispatch the outbox and fire deadlines until ``stop``: at once when ``wake`` is set (a batch
    that issued commands committed), else every ``poll_seconds`` (postponed commands, deadlines)."""
    backoff = Backoff()
    while not stop.is_set():
        wake.clear()
        try:
            settled = await asyncio.to_thread(dispatcher.run_once)
            backoff.reset()
        except Exception as error:  # unavailable, or unexpected: never the end of the dispatcher
            delay = backoff.delay()
            log.warning("dispatcher %s: %s; retrying in %.1fs", dispatcher.name, _describe(error), delay)
            await _pause(stop, delay)
            continue
        if settled:
            continue  # there may be more
        await _pause_or_wake(stop, wake, poll_seconds)


async def _pause_or_wake(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _reloaded(worker: ProjectionWorker, stop: asyncio.Event) -> bool:
    """The worker starts from what is committed now (another worker may have run it meanwhile);
    False if stopped first."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            await asyncio.to_thread(worker.reload)
            return True
        except _UNAVAILABLE:
            await _pause(stop, backoff.delay())
    return False


async def _released(worker: ProjectionWorker, owner: str, ended: str) -> None:
    """A clean stop: say so (only if this worker still holds the lease; a halted projection stays
    halted) and hand the lease over at once."""
    with contextlib.suppress(*_UNAVAILABLE):
        if ended == "stopped":
            await asyncio.to_thread(worker.views.set_state_if_owner, worker.name, worker.version, owner, "stopped")
        await asyncio.to_thread(worker.views.release_lease, worker.name, owner)


async def _run_active(worker: ProjectionWorker, consumer: EventConsumer, stop: asyncio.Event, owner: str,
                      lost: asyncio.Event, options: _ActiveOptions) -> bool:
    """Catch up from the store, then apply the bus's deliveries until ``stop``; True if halted.

    With ``prefetch`` and a consumer that can fetch ahead (``fetch_ahead``: a fetch
    that leaves the unacknowledged delivery outstanding, see ``JetStreamConsumer``),
    the next delivery is fetched while this one is applied in the worker's thread
    (from when its handlers ran, while its commit runs: ``_NextFetch``):
    one fetch outstanding at most, and a delivery is acknowledged only after its
    transaction committed, in fetch order. A prefetched delivery is never
    acknowledged unapplied: after an error it is handed back by the next plain
    ``fetch`` (which returns every unacknowledged delivery to the bus), on a halt
    it stays unacknowledged (redelivered), and on ``stop`` it is applied first.
    """
    backoff = Backoff()
    caught_up = halted = False
    next_letter_check = 0.0
    fetch_ahead = _fetch_ahead_of(consumer) if options.prefetch else None
    ahead: asyncio.Task[Delivery] | None = None  # the next delivery, fetched while this one is applied
    try:
        while not stop.is_set() or ahead is not None:
            try:
                if not caught_up:
                    await consumer.bind()
                    await asyncio.to_thread(worker.views.set_state_if_owner, worker.name, worker.version, owner,
                                            "running")
                    await asyncio.to_thread(worker.catch_up)
                    caught_up = True
                if ahead is not None:
                    fetching, ahead = ahead, None
                    delivery = await fetching
                else:
                    delivery = await consumer.fetch(options.batch_size, options.fetch_seconds)
                if lost.is_set():
                    break  # what came after the lease was lost is the new owner's: handed back below
                if delivery.notifications:
                    next_fetch = _NextFetch(fetch_ahead, options, stop)
                    worker.on_handled = next_fetch.start_soon
                    try:
                        await asyncio.to_thread(worker.apply, delivery.notifications)
                    finally:
                        worker.on_handled = None
                        ahead = next_fetch.task  # started by the worker: settled below if the apply failed
                    ahead = next_fetch.start()
                await delivery.ack()  # after the commit: a crash before it means a redelivery
                if time.monotonic() >= next_letter_check:
                    await asyncio.to_thread(worker.retry_dead_letters)
                    next_letter_check = time.monotonic() + options.retry_letters_every
                backoff.reset()
            except ProjectionHalted as error:
                log.error("%s", error)
                halted = True
                break
            except ConcurrencyConflict as error:
                # Another worker committed this projection: this one's view of it is stale.
                log.warning("projection %s: %s; standing by", worker.name, _describe(error))
                await _settled(ahead)
                ahead = None
                lost.set()
                break
            except Exception as error:
                # Unavailable dependencies, an event being retried, or the unexpected: nothing more is
                # acknowledged; a prefetched delivery goes back to the bus with the failed one at the
                # next fetch (or after the bus's ack wait). Never the end of the process.
                await _settled(ahead)
                ahead = None
                delay = backoff.delay()
                log.log(logging.WARNING if isinstance(error, _RETRIED) else logging.ERROR,
                        "projection %s: %s; retrying in %.1fs", worker.name, _describe(error), delay)
                if isinstance(error, RetryLater):
                    await asyncio.to_thread(_record_error, worker, owner, error)
                await _pause(stop, delay)
    except BaseException:
        if ahead is not None:
            ahead.cancel()  # unacknowledged whatever it gets: delivered again
        raise
    await _settled(ahead)  # halted with a delivery fetched ahead: left unacknowledged
    if lost.is_set():
        await _handed_back(consumer, worker.name)
    return halted


class _NextFetch:
    """The fetch ahead of one delivery's application, started once: by the worker's thread when the
    delivery's handlers ran (``on_handled``), else after it was applied. Started then, its messages are
    parsed while the commit waits on the database, not beside the handlers (sharing the GIL with them,
    and holding it when the worker comes back from each of its round trips to the database)."""

    def __init__(self, fetch: FetchAhead | None, options: _ActiveOptions, stop: asyncio.Event) -> None:
        self._fetch, self._options, self._stop = fetch, options, stop
        self._loop = asyncio.get_running_loop()
        self.task: asyncio.Task[Delivery] | None = None

    def start_soon(self) -> None:
        """From the worker's thread: runs before the loop hears that ``apply`` ended (both go through
        ``call_soon_threadsafe``, in this order), so ``task`` is set by then."""
        self._loop.call_soon_threadsafe(self.start)

    def start(self) -> asyncio.Task[Delivery] | None:
        if self.task is None and self._fetch is not None and not self._stop.is_set():
            self.task = asyncio.ensure_future(self._fetch(self._options.batch_size, self._options.fetch_seconds))
        return self.task


async def _handed_back(consumer: EventConsumer, name: str) -> None:
    """Unacknowledged deliveries go to the new owner now, not after the bus's ack wait."""
    try:
        await consumer.hand_back()
    except Exception as error:  # the ack wait returns them anyway
        log.warning("projection %s: could not hand deliveries back: %s", name, _describe(error))


def _record_error(worker: ProjectionWorker, owner: str, error: Exception) -> None:
    with contextlib.suppress(*_UNAVAILABLE):
        worker.views.set_state_if_owner(worker.name, worker.version, owner, "running", _describe(error))


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


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
