"""The projection runtime: applies stored events to one projector's read models, exactly once.

Per batch, one view-store transaction holds the view changes and the new
position; notifications at or below the position are dropped (redelivery),
and a gap before or inside a batch is filled from the event store, which is
the source of truth (a position missing there too was rolled back: skipped).
A handler that keeps failing halts the projection or parks the event as a
dead letter, per the projector's ``on_error``.

The worker is synchronous; ``framework.consumer_loop`` drives it from a bus.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from framework.bus import CommandBus, CommandContext
from framework.errors import (
    BusUnavailable,
    CommandRejected,
    EventfoldError,
    StoreUnavailable,
    VersionSwitched,
)
from framework.events import EventEnvelope
from framework.mapper import from_stored
from framework.observe import NULL_OBSERVER, Observer, correlation_id
from framework.projector import HandlerContext, IssuedCommand, Projector
from framework.store import EventStore, Notification
from framework.tracing import NULL_SPAN, NULL_TRACER, Span, TraceContext, Tracer, trace_context_of, traced
from framework.views import Batch, DeadLetter, ViewStore

__all__ = ["HandlerFailed", "ProjectionHalted", "ProjectionWorker", "WorkerOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    catch_up_batch: int = 5000
    handler_attempts: int = 3
    retry_backoff_seconds: float = 0.2


class HandlerFailed(Exception):
    """A handler raised; carries the notification so the worker can isolate it."""

    def __init__(self, notification: Notification, error: Exception) -> None:
        super().__init__(f"{notification.topic} at {notification.id}: {error!r}")
        self.notification = notification
        self.error = error


class ProjectionHalted(EventfoldError):
    code = "projection_halted"


class ProjectionWorker:
    def __init__(
        self,
        projector: Projector,
        views: ViewStore,
        store: EventStore,
        commands: CommandBus | None = None,
        options: WorkerOptions | None = None,
        *,
        version: int | None = None,
        follow_active: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        observer: Observer | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.projector = projector
        self.observer = observer or NULL_OBSERVER
        self.tracer = tracer or NULL_TRACER
        self.views = views
        self.store = store
        self.commands = commands
        self.options = options or WorkerOptions()
        self._follow_active = follow_active
        self._sleep = sleep
        self._names = projector.handled_event_names()
        self.version = version or views.active_version(projector.name)
        views.ensure_tables(projector.name, self.version, projector.read_models)
        self.position = views.position(projector.name, self.version)
        if self.position == 0:  # from scratch: "no such row" needs no query while the cache knows them all
            views.cache_empty_tables(projector.name, self.version, projector.read_models)

    @property
    def name(self) -> str:
        return self.projector.name

    def catch_up(self, until: int | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Apply stored events after the position, up to ``until`` (default: the head now).

        Three things overlap: reading the next batch from the store, running the
        handlers of this one, and committing the previous one. A batch reads
        through the previous batch's changes (``layer_over``) while that one is
        still committing; if a commit fails the cached rows are forgotten and the
        error surfaces (the position is the last commit).
        """
        target = self.store.head() if until is None else until
        with _fewer_collections():
            while True:
                try:
                    return self._catch_up(target, progress)
                except VersionSwitched:  # a rebuild was switched in meanwhile: continue on it
                    self._follow_switch()

    def _catch_up(self, target: int, progress: Callable[[int], None] | None) -> int:
        size = self.options.catch_up_batch
        with ThreadPoolExecutor(2, thread_name_prefix=f"catch-up-{self.name}") as pool:
            reading = pool.submit(self.store.read_all, self.position, size)
            committing: Future[int] | None = None
            previous: Batch | None = None
            staged_to = self.position
            try:
                while staged_to < target:
                    batch = [n for n in reading.result() if n.id <= target]
                    if not batch:
                        break
                    started = time.perf_counter()
                    reading = pool.submit(self.store.read_all, batch[-1].id, size)
                    staged = self._stage(batch, over=previous)
                    self._confirm(committing, progress)
                    committing, previous = None, staged
                    if staged is None:  # a handler failed: settle this batch the careful way
                        self._apply_one_by_one(batch)
                    else:
                        committing = pool.submit(self._commit_staged, staged, batch, started)
                    staged_to = batch[-1].id
                self._confirm(committing, progress)
            except BaseException:
                self.views.forget_cached(self.name, self.version)
                raise
        return self.position

    def _stage(self, batch: Sequence[Notification], *, over: Batch | None) -> Batch | None:
        staged = self.views.stage(self.name, self.version)
        staged.layer_over(over)
        try:
            self.apply_within(staged, batch)
        except HandlerFailed:
            return None
        staged.publish()
        return staged

    def _commit_staged(self, staged: Batch, batch: Sequence[Notification], started: float) -> int:
        self.views.commit_staged(self.name, self.version, staged, follow_active=self._follow_active)
        self._batch_done(batch, started)
        return batch[-1].id

    def _batch_done(self, batch: Sequence[Notification], started: float) -> None:
        """Report a committed batch to the observer, and log one line for it."""
        seconds = time.perf_counter() - started
        self.observer.batch_applied(self.name, len(batch), seconds)
        log.info("%s: applied %d events (%d..%d) in %.1f ms", self.name, len(batch), batch[0].id,
                 batch[-1].id, seconds * 1000, extra={
                     "projection": self.name, "first_position": batch[0].id, "last_position": batch[-1].id,
                     "size": len(batch), "duration_ms": round(seconds * 1000, 3)})

    def _confirm(self, committing: Future[int] | None, progress: Callable[[int], None] | None) -> None:
        if committing is not None:
            self.position = committing.result()
            if progress:
                progress(self.position)

    def apply(self, notifications: Sequence[Notification]) -> None:
        """Apply a delivery: drop what is done, fill gaps from the store, one transaction."""
        try:
            self._apply_new(notifications)
        except VersionSwitched:
            self._follow_switch()
            self._apply_new(notifications)

    def _apply_new(self, notifications: Sequence[Notification]) -> None:
        fresh = sorted({n.id: n for n in notifications if n.id > self.position}.values(), key=_id)
        if not fresh:
            return
        complete = self._without_gaps(fresh)
        try:
            self._transaction(complete)
        except HandlerFailed:
            self._apply_one_by_one(complete)

    def _without_gaps(self, fresh: list[Notification]) -> list[Notification]:
        expected = range(self.position + 1, fresh[-1].id + 1)
        if len(fresh) == len(expected):
            return fresh
        # Something is missing: the store says what exists between here and there.
        stored = self.store.read_all(self.position, fresh[-1].id - self.position)
        return [n for n in stored if n.id <= fresh[-1].id]

    def _follow_switch(self) -> None:
        self.version = self.views.active_version(self.name)
        self.position = self.views.position(self.name, self.version)
        log.info("%s: following the switch to version %d at position %d",
                 self.name, self.version, self.position)

    def _transaction(self, notifications: Sequence[Notification]) -> None:
        started = time.perf_counter()
        with self.views.batch(self.name, self.version, follow_active=self._follow_active) as batch:
            self.apply_within(batch, notifications)
        self.position = notifications[-1].id
        self._batch_done(notifications, started)

    def apply_within(self, batch: Batch, notifications: Sequence[Notification]) -> None:
        """Handle notifications inside an open batch and advance it past the last one."""
        event_time = None
        for notification in notifications:
            event_time = self._handle(batch, notification) or event_time
        batch.advance(notifications[-1].id, event_time)

    def _handle(self, batch: Batch, notification: Notification) -> datetime | None:
        if notification.topic not in self._names:
            return None  # not ours: only the position moves past it
        token = correlation_id.set(None)
        try:
            envelope = from_stored(notification)
            correlation_id.set(envelope.metadata.correlation_id)  # what the handler logs and issues
            with self._span(notification, envelope) as span:
                context = self.projector.context_for(envelope, batch)
                self.projector.apply(envelope, context)
                self._issue(context, span.carrier() or envelope.metadata.trace_context)
        except (StoreUnavailable, BusUnavailable):
            raise  # infrastructure, not this event: the whole batch is retried later
        except Exception as error:
            raise HandlerFailed(notification, error) from error
        finally:
            correlation_id.reset(token)
        return envelope.metadata.recorded_at

    def _span(self, notification: Notification, envelope: EventEnvelope) -> contextlib.AbstractContextManager[Span]:
        """The span of handling one event: the child of the bus's trace context, else of the stored one."""
        if not self.tracer.enabled:
            return contextlib.nullcontext(NULL_SPAN)
        return traced(
            self.tracer, f"project {self.name} {envelope.event_name}",
            parent=trace_context_of(notification) or envelope.metadata.trace_context, kind="consumer",
            attributes={"eventfold.projection": self.name, "eventfold.event": envelope.event_name,
                        "eventfold.position": notification.id, "eventfold.aggregate_id": str(envelope.aggregate_id),
                        "eventfold.version": envelope.version},
        )

    def _issue(self, context: HandlerContext, trace_context: TraceContext | None = None) -> None:
        for issued in context.issued:
            self._execute(issued, trace_context)

    def _execute(self, issued: IssuedCommand, trace_context: TraceContext | None = None) -> None:
        if self.commands is None:
            return  # a rebuild: the commands were issued the first time round
        meta = issued.envelope.metadata
        context = CommandContext(
            correlation_id=meta.correlation_id,
            causation_id=str(meta.event_id),
            actor=f"process-manager:{self.name}",
            idempotency_key=issued.idempotency_key,
            trace_context=trace_context,
        )
        try:
            self.commands.execute(issued.command, context)
        except CommandRejected as rejected:
            # Deterministic: re-running would be refused the same way. Log it, move on.
            log.warning("%s: %s was refused: %s", self.name, issued.command.command_name, rejected)

    def _apply_one_by_one(self, notifications: Sequence[Notification]) -> None:
        for notification in notifications:
            self._apply_with_retries(notification)

    def _apply_with_retries(self, notification: Notification) -> None:
        attempts = self.options.handler_attempts
        for attempt in range(1, attempts + 1):
            try:
                self._transaction([notification])
                return
            except HandlerFailed as failed:
                if attempt == attempts:
                    self._give_up(notification, failed.error)
                    return
                self._sleep(self.options.retry_backoff_seconds * 2 ** (attempt - 1))

    def _give_up(self, notification: Notification, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        if self.projector.on_error == "halt":
            self.views.set_state(self.name, self.version, "halted", f"position {notification.id}: {reason}")
            raise ProjectionHalted(f"{self.name} halted at position {notification.id}: {reason}")
        letter = DeadLetter(self.name, notification.id, notification.topic,
                            str(notification.originator_id), reason[:2000])
        with self.views.batch(self.name, self.version, follow_active=self._follow_active) as batch:
            batch.park(letter)
            batch.advance(notification.id, None)
        self.position = notification.id
        self.observer.dead_lettered(self.name)
        log.error("%s: parked %s at position %d after %d attempts: %s", self.name,
                  notification.topic, notification.id, self.options.handler_attempts, reason)

    def retry_dead_letters(self) -> int:
        """Run the parked events whose retry was requested; returns how many now succeeded."""
        succeeded = 0
        for letter in self.views.retry_requests(self.name):
            stored = self.store.read_all(letter.position - 1, 1)
            if not stored or stored[0].id != letter.position:
                continue
            try:
                with self.views.batch(self.name, self.version) as batch:
                    self._handle(batch, stored[0])
                    self.views.settle_dead_letter(batch, letter.id or 0)
                succeeded += 1
            except HandlerFailed as failed:
                log.warning("%s: retry of dead letter %s failed again: %s", self.name, letter.id, failed)
        return succeeded


def _id(notification: Notification) -> int:
    return notification.id


_gc_lock = threading.Lock()
_gc_users = 0
_gc_threshold = gc.get_threshold()


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Bulk catch-up allocates many short-lived rows next to long-lived cached ones; the cyclic
    collector would walk the cached ones over and over. Freeze what exists and collect less often
    while any worker of the process catches up (the setting is process-wide, hence the count)."""
    global _gc_users, _gc_threshold
    with _gc_lock:
        if _gc_users == 0:
            _gc_threshold = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(50_000, *_gc_threshold[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_threshold)
                gc.unfreeze()
