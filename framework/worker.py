"""The projection runtime: applies stored events to one projector's read models, exactly once.

Per batch, one view-store transaction holds the view changes, a process
manager's outbox entries and deadlines, and the new position, committed as a
compare-and-set on the position the batch started from (two workers never both
apply one stretch). Notifications at or below the position are dropped
(redelivery), and a gap before or inside a batch is filled from the event
store, which is the source of truth (a position missing there too was rolled
back: skipped). No event is fatal: a batch that fails (a handler, or a value
the read-model database refuses at commit) is split until the one event that
fails is alone, and that event halts the projection, is parked as a dead
letter or is retried later, per the projector's ``on_error``.

The worker is synchronous; ``framework.consumer_loop`` drives it from a bus.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from framework.bus import CommandBus
from framework.errors import (
    BusUnavailable,
    ConfigurationError,
    EventfoldError,
    RowRejected,
    StoreUnavailable,
    VersionSwitched,
)
from framework.events import EventEnvelope
from framework.faults import fault_point
from framework.mapper import from_stored
from framework.observe import NULL_OBSERVER, Observer, correlation_id
from framework.partitions import Partition, partition_of
from framework.projector import HandlerContext, ProcessManager, Projector, Refusal
from framework.shared_pages import SharedPages
from framework.store import EventLog, Notification
from framework.tracing import NULL_TRACER, Span, TraceContext, Tracer, trace_context_of, traced
from framework.views import Batch, DeadLetter, Deadline, OutboxEntry, PartitionedViews, RowCaching, ViewStore

__all__ = ["HandlerFailed", "ProjectionHalted", "ProjectionWorker", "RetryLater", "WorkerOptions"]

log = logging.getLogger(__name__)
T = TypeVar("T")


_MINE_CACHE_SIZE = 65_536
_PARTITION_SPAN = 2  # a partition's catch-up batch reads at most this many batches' worth of the log (memory)


@dataclass(frozen=True)
class WorkerOptions:
    catch_up_batch: int = 5000  # events per catch-up transaction
    catch_up_page: int = 5000  # events per read of the store within a batch
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


class RetryLater(EventfoldError):
    """An event keeps failing and the projection's policy is ``retry``: back off, then apply it again."""

    code = "projection_retrying"


class _Rejected(Exception):
    """A staged batch's commit was refused by the read-model database: settle it the careful way."""

    def __init__(self, notifications: Sequence[Notification]) -> None:
        self.notifications = notifications


@dataclass(frozen=True)
class _Page:
    rows: list[Notification]  # what the worker applies of the page (a partition: its own events)
    read: int  # events read
    end: int  # the page's last position (its start when empty)
    more: bool  # whether another page may follow before the target


@dataclass
class _Filling:
    """The catch-up batch being filled, page by page: it starts after ``since`` and ends at ``end``."""

    since: int
    end: int = -1
    staged: Batch | None = None
    event_time: datetime | None = None
    read: int = 0
    applied: int = 0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.end = max(self.end, self.since)


class _Helpers:
    """A catch-up's two helper threads (the next page read, the last batch committed, while this one's
    handlers run), started with the first call that overlaps: a catch-up of one page, a worker following
    the store closely, has nothing to overlap, and starting threads would cost more than its commit."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _Helpers:
        return self

    def __exit__(self, *_: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def submit(self, call: Callable[..., T], *args: Any) -> Future[T]:
        """``call`` in a helper thread, overlapping the caller's work."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix=self._name)
        return self._pool.submit(call, *args)

    @staticmethod
    def run(call: Callable[..., T], *args: Any) -> Future[T]:
        """``call`` now, in the caller's thread (its result is waited for at once): its outcome as a future."""
        done: Future[T] = Future()
        try:
            done.set_result(call(*args))
        except Exception as error:  # surfaces where the future's result is asked, as from a helper thread
            done.set_exception(error)
        return done


@dataclass(frozen=True)
class _Committing:
    future: Future[int]
    since: int
    end: int


class ProjectionWorker:
    def __init__(
        self,
        projector: Projector,
        views: ViewStore,
        store: EventLog,
        commands: CommandBus | None = None,
        options: WorkerOptions | None = None,
        *,
        version: int | None = None,
        follow_active: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        observer: Observer | None = None,
        tracer: Tracer | None = None,
        partition: Partition | None = None,
    ) -> None:
        self.projector = projector
        self.partition = partition
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
        self._partitioned = _partitioned_views(views, projector, partition)
        self._aggregate_partitions: dict[Any, int] = {}  # aggregate id -> its partition (a hash each time else)
        self._check_partitioning()
        self.position = self._stored_position()
        self.handled = 0  # events handled so far (a retried batch counts its events again)
        self.furthest = 0  # the furthest position handled: a heartbeat reports progress when it moves
        self.on_outbox: Callable[[], None] | None = None  # called after a commit that issued commands
        # Called in the applying thread once a batch's handlers ran, before its commit (run_projection
        # starts the next fetch then: its messages are parsed while the commit waits on the database).
        self.on_handled: Callable[[], None] | None = None
        self._cache = views if isinstance(views, RowCaching) else None  # an optional, speed-only port
        if self.position == 0:  # from scratch: "no such row" needs no query while the cache knows them all
            self._cache_empty_tables()

    @property
    def name(self) -> str:
        return self.projector.name

    @property
    def label(self) -> str:
        """The projection, and the partition this worker applies if it applies one ("holdings[3/8]")."""
        return self.name if self.partition is None else f"{self.name}[{self.partition}]"

    # --- where this worker's position is kept: the version's row, or its partition's --------------

    def _check_partitioning(self) -> None:
        if self._partitioned is not None and self.partition is not None:
            self._partitioned.ensure_partitions(self.name, self.version, self.partition.count)
        elif self.partition is None and isinstance(self.views, PartitionedViews):
            count = self.views.partition_count(self.name, self.version)
            if count:
                raise ConfigurationError(
                    f"{self.name} v{self.version} is partitioned ({count} partitions): run it with its"
                    f" partitions (the projector's partitions = {count}), or replay it unpartitioned")

    def _stored_position(self) -> int:
        if self._partitioned is not None and self.partition is not None:
            return self._partitioned.partition_position(self.name, self.version, self.partition.index)
        return self.views.position(self.name, self.version)

    def _batch(self, *, follow_active: bool | None = None) -> contextlib.AbstractContextManager[Batch]:
        follow = self._follow_active if follow_active is None else follow_active
        if self._partitioned is not None and self.partition is not None:
            return self._partitioned.partition_batch(self.name, self.version, self.partition.index,
                                                     follow_active=follow)
        return self.views.batch(self.name, self.version, follow_active=follow)

    def _mine(self, notification: Notification) -> bool:
        """Whether the notification's event is this worker's to apply (always, unless partitioned)."""
        return self.partition is None or self._partition_index(notification) == self.partition.index

    def _partition_index(self, notification: Notification) -> int:
        assert self.partition is not None
        if self.projector.keys_by_aggregate():
            aggregate = notification.originator_id
            index = self._aggregate_partitions.get(aggregate)
            if index is None:
                if len(self._aggregate_partitions) >= _MINE_CACHE_SIZE:
                    self._aggregate_partitions.clear()
                index = self._aggregate_partitions[aggregate] = partition_of(str(aggregate), self.partition.count)
            return index
        return partition_of(self._key_of(notification), self.partition.count)

    def _split(self, notifications: list[Notification]) -> dict[int, list[Notification]]:
        """A page's events of the kinds this projection handles, by partition (``SharedPages.read_split``)."""
        parts: dict[int, list[Notification]] = {}
        names, index_of = self._names, self._partition_index
        for notification in notifications:
            if notification.topic in names:
                index = index_of(notification)
                part = parts.get(index)
                if part is None:
                    parts[index] = [notification]
                else:
                    part.append(notification)
        return parts

    def _key_of(self, notification: Notification) -> str:
        """The event's partition key (``partition_key``). An event that does not decode, or whose key the
        projector cannot tell, is the empty key's partition's: that one parks it (``_handled_at``), once."""
        try:
            return self.projector.partition_key(from_stored(notification))
        except Exception:
            return ""

    def catch_up(self, until: int | None = None, progress: Callable[[int], None] | None = None, *,
                 interrupted: Callable[[], bool] | None = None) -> int:
        """Apply stored events after the position, up to ``until`` (default: the head now).

        Three things overlap: reading the next batch from the store, running the
        handlers of this one, and committing the previous one. A batch reads
        through the previous batch's changes (``layer_over``) while that one is
        still committing; if a commit fails the cached rows are forgotten and the
        error surfaces (the position is the last commit). A commit the read-model
        database refuses is settled the careful way, then catching up goes on. ``interrupted`` is
        asked before each batch: when it says so, catching up ends there (what is committed stays).
        """
        target = self.store.head() if until is None else until
        while True:
            try:
                return self._catch_up(target, progress, interrupted)
            except VersionSwitched:  # a rebuild was switched in meanwhile: continue on it
                self._follow_switch()
            except _Rejected as rejected:
                self._settle(rejected.notifications)

    def _catch_up(self, target: int, progress: Callable[[int], None] | None,
                  interrupted: Callable[[], bool] | None = None) -> int:
        if self.position >= target:
            return self.position
        size = self.options.catch_up_batch
        page = max(1, min(self.options.catch_up_page, size))
        # A partition's batch: up to ``size`` of its own events, over at most a few batches' worth of the log
        # (its share of ``size`` events would mean as many more commits, each upserting its rows again).
        span = size if self.partition is None else size * min(self.partition.count, _PARTITION_SPAN)
        with _Helpers(f"catch-up-{self.name}") as pool:
            reading: Future[_Page] | None = pool.run(self._read_page, self.position, page, target)
            committing: _Committing | None = None
            filling = _Filling(self.position)
            previous: Batch | None = None
            try:
                while reading is not None:
                    if filling.staged is None and interrupted and interrupted():
                        break
                    got = reading.result()
                    reading = pool.submit(self._read_page, got.end, page, target) if got.more else None
                    filling.read += got.read
                    filling.end = max(filling.end, got.end)
                    if not got.rows:
                        self.furthest = max(self.furthest, got.end)  # passed over: progress all the same
                    else:
                        try:
                            self._fill(filling, got.rows, over=previous)
                        except HandlerFailed:  # settle this batch so far the careful way
                            self._confirm(committing, progress)
                            committing, previous = None, None
                            self._settle(self._stored_between(filling.since, filling.end))
                            filling = _Filling(self.position, end=filling.end)  # a partition's others: carried
                            continue
                    if filling.applied < size and filling.read < span and reading is not None:
                        continue  # the next page goes into this batch too
                    if filling.staged is None:
                        continue  # none of this partition's events: carried by the next batch, or the end
                    staged = self._seal(filling)
                    self._confirm(committing, progress)
                    commit = pool.submit if reading is not None else pool.run  # the last: confirmed at once
                    committing = _Committing(commit(self._commit_staged, staged, filling), filling.since,
                                             filling.end)
                    previous, filling = staged, _Filling(filling.end)
                self._confirm(committing, progress)
            except BaseException:
                self._forget_cached()
                raise
        if filling.staged is None and filling.end > self.position:  # the last pages held none of its events
            with self._batch() as batch:
                batch.advance(filling.end, None, since=self.position)
            self.position = filling.end
        return self.position

    def _read_page(self, after: int, limit: int, target: int) -> _Page:
        """The page after ``after`` (up to ``target``): the events this worker applies (a partition keeps
        its own events of the kinds it handles), how many were read, where the page ends, and whether
        more may follow. Read in the background while the previous page's handlers run."""
        parts: dict[int, list[Notification]] | None = None
        if self.partition is not None and isinstance(self.store, SharedPages):
            got, parts = self.store.read_split(after, limit, (self.name, self.partition.count), self._split)
        else:
            got = self.store.read_all(after, limit)
        more = len(got) == limit
        if got and got[-1].id >= target:
            got, more, parts = [n for n in got if n.id <= target], False, None
        if self.partition is None:
            own = got
        else:
            own = (self._split(got) if parts is None else parts).get(self.partition.index, [])
        return _Page(own, len(got), got[-1].id if got else after, more)

    def _stored_between(self, after: int, until: int) -> list[Notification]:
        """What this worker applies after ``after`` up to ``until``, read again from the store."""
        stored = [n for n in self.store.read_all(after, max(1, until - after)) if n.id <= until]
        return stored if self.partition is None else self._split(stored).get(self.partition.index, [])

    def _fill(self, filling: _Filling, rows: Sequence[Notification], *, over: Batch | None) -> None:
        """Run the handlers of a page into the batch being filled (staged over ``over``, which may still
        be committing: bulk catch-up reads through its changes)."""
        staged = filling.staged
        if staged is None:
            staged = filling.staged = self.views.stage(self.name, self.version)
            staged.layer_over(over)
        event_time, handle, own = filling.event_time, self._handle, self.partition is not None
        for notification in rows:  # a partition's pages hold only its own events (``_read_page``)
            event_time = handle(staged, notification, own=own) or event_time
        filling.event_time = event_time
        filling.applied += len(rows)

    def _seal(self, filling: _Filling) -> Batch:
        staged = filling.staged
        assert staged is not None
        staged.advance(filling.end, filling.event_time, since=filling.since)
        if filling.end > self.furthest:
            self.furthest = filling.end
        staged.publish()
        return staged

    def _commit_staged(self, staged: Batch, filling: _Filling) -> int:
        if self._partitioned is not None and self.partition is not None:
            self._partitioned.commit_staged_partition(self.name, self.version, self.partition.index, staged,
                                                      follow_active=self._follow_active)
        else:
            self.views.commit_staged(self.name, self.version, staged, follow_active=self._follow_active)
        self._report(filling.applied, filling.since + 1, filling.end, filling.started, staged)
        return filling.end

    def _batch_done(self, batch: Sequence[Notification], started: float, committed: Batch) -> None:
        # A partition passes over the other partitions' events: it applied only its own.
        size = len(batch) if self.partition is None else sum(
            1 for n in batch if n.topic in self._names and self._mine(n))  # a key is asked of its events only
        self._report(size, batch[0].id, batch[-1].id, started, committed)

    def _report(self, size: int, first: int, last: int, started: float, committed: Batch) -> None:
        """Report a committed batch to the observer, log one line, and wake the dispatcher if it issued."""
        fault_point("batch.committed")
        seconds = time.perf_counter() - started
        self.observer.batch_applied(self.name, size, seconds)
        log.info("%s: applied %d events (%d..%d) in %.1f ms", self.label, size, first,
                 last, seconds * 1000, extra={
                     "projection": self.name, "first_position": first, "last_position": last,
                     "size": size, "duration_ms": round(seconds * 1000, 3),
                     **({"partition": self.partition.index} if self.partition is not None else {})})
        if self.on_outbox is not None and getattr(committed, "outbox", None):
            self.on_outbox()

    def _confirm(self, committing: _Committing | None, progress: Callable[[int], None] | None) -> None:
        if committing is None:
            return
        try:
            self.position = committing.future.result()
        except RowRejected as error:
            log.warning("%s: a batch (%d..%d) was refused at commit (%s); isolating the event", self.name,
                        committing.since + 1, committing.end, error)
            self._forget_cached()
            notifications = self._stored_between(committing.since, committing.end)
            if not notifications:
                raise
            raise _Rejected(notifications) from error
        if progress:
            progress(self.position)

    def apply(self, notifications: Sequence[Notification]) -> None:
        """Apply a delivery: drop what is done, fill gaps from the store, one transaction."""
        try:
            self._apply_new(notifications)
        except VersionSwitched:
            self._follow_switch()
            if self.partition is not None:  # the new version's partition may be behind: from the store
                self.catch_up(until=max(n.id for n in notifications))
                return
            self._apply_new(notifications)

    def _apply_new(self, notifications: Sequence[Notification]) -> None:
        fresh = sorted({n.id: n for n in notifications if n.id > self.position}.values(), key=_id)
        if fresh:
            self._settle(self._without_gaps(fresh))

    def _without_gaps(self, fresh: list[Notification]) -> list[Notification]:
        if self.partition is not None:
            # A partition's consumer delivers only its own events, in stream order, from a consumer
            # created before the catch-up it follows (framework.sharing): its gaps are other partitions'.
            return fresh
        expected = range(self.position + 1, fresh[-1].id + 1)
        if len(fresh) == len(expected):
            return fresh
        # Something is missing: the store says what exists between here and there.
        stored = self.store.read_all(self.position, fresh[-1].id - self.position)
        return [n for n in stored if n.id <= fresh[-1].id]

    def _follow_switch(self) -> None:
        self.version = self.views.active_version(self.name)
        self._check_partitioning()  # a rebuild may have split (or re-split) it: this worker may not fit
        self.position = self._stored_position()
        log.info("%s: following the switch to version %d at position %d",
                 self.name, self.version, self.position)

    def reload(self) -> None:
        """Start again from what is committed: rows cached while another worker may have been writing
        (this one stood by, lost its lease, or lost a commit's compare-and-set) are forgotten."""
        self._forget_cached()
        self.version = self.views.active_version(self.name) if self._follow_active else self.version
        self._check_partitioning()
        self.position = self.furthest = self._stored_position()
        if self.position == 0:
            self._cache_empty_tables()

    def _forget_cached(self) -> None:
        if self._cache is not None:
            self._cache.forget_cached(self.name, self.version)

    def _cache_empty_tables(self) -> None:
        # Not for a partition: other processes write the other partitions' rows into the same tables.
        if self._cache is not None and self.partition is None:
            self._cache.cache_empty_tables(self.name, self.version, self.projector.read_models)

    def cache_fresh_partitions(self, workers: Sequence[ProjectionWorker]) -> None:
        """Partitions of this worker's version, sharing its row cache, that start from scratch: none of the
        rows they read exists yet (a handler reads only rows of the key it handles, docs/projections.md),
        so the cache answers "no such row" without a query, as it does for an unpartitioned rebuild. Only
        for partitions of a version nothing else applies in this process (a rebuild's)."""
        if self._cache is not None and all(w.position == 0 and w.version == self.version for w in workers):
            self._cache.cache_empty_tables(self.name, self.version, self.projector.read_models, fresh_keys=True)

    def skip_to(self, position: int) -> None:
        """Record that nothing before ``position`` is to be applied (a rebuild from a later position)."""
        if position > self.position:
            with self._batch() as batch:
                batch.advance(position, None, since=self.position)
            self.position = position

    def _settle(self, notifications: Sequence[Notification]) -> None:
        """Apply in one transaction; if that fails, isolate the failing event: the events before a
        handler's failure commit together, a batch the database refused is split in halves, and the
        one event left goes through the retries and the projection's ``on_error``."""
        try:
            self._transaction(notifications)
        except HandlerFailed as failed:
            at = failed.notification.id
            self._settle_part([n for n in notifications if n.id < at])
            self._apply_with_retries(failed.notification)
            self._settle_part([n for n in notifications if n.id > at])
        except RowRejected:
            if len(notifications) == 1:
                self._apply_with_retries(notifications[0])
                return
            middle = len(notifications) // 2
            self._settle(notifications[:middle])
            self._settle(notifications[middle:])

    def _settle_part(self, notifications: Sequence[Notification]) -> None:
        if notifications:
            self._settle(notifications)

    def _transaction(self, notifications: Sequence[Notification]) -> None:
        started = time.perf_counter()
        with self._batch() as batch:
            self.apply_within(batch, notifications, since=self.position)
            if self.on_handled is not None:
                self.on_handled()
        self.position = notifications[-1].id
        self._batch_done(notifications, started, batch)

    def apply_within(self, batch: Batch, notifications: Sequence[Notification], *, since: int | None = None) -> None:
        """Handle notifications inside an open batch and advance it past the last one (from ``since``)."""
        event_time = None
        for notification in notifications:
            event_time = self._handle(batch, notification) or event_time
        batch.advance(notifications[-1].id, event_time, since=since)

    def _handle(self, batch: Batch, notification: Notification, *, own: bool = False) -> datetime | None:
        """Handle one event (``own``: known to be one this worker applies, of a kind it handles)."""
        if own or (notification.topic in self._names and (self.partition is None or self._mine(notification))):
            recorded_at = self._handled_at(batch, notification)
        else:  # not ours (another kind, another partition): only the position moves past it
            recorded_at = None
        # Progress even inside a long batch (busy is not stalled); trying the same event again is not.
        self.handled += 1
        if notification.id > self.furthest:
            self.furthest = notification.id
        return recorded_at

    def _handled_at(self, batch: Batch, notification: Notification) -> datetime | None:
        try:
            envelope = from_stored(notification)
            if self.partition is not None and not self.projector.keys_by_aggregate():
                self.projector.partition_key(envelope)  # one it fails on was dealt here (``_key_of``): parked
        except Exception as error:
            raise HandlerFailed(notification, error) from error
        token = correlation_id.set(envelope.metadata.correlation_id)  # what the handler logs and issues
        try:
            if self.tracer.enabled:
                with self._span(notification, envelope) as span:
                    self._run_handler(batch, envelope, notification.id, span.carrier())
            else:
                self._run_handler(batch, envelope, notification.id, None)
        except (StoreUnavailable, BusUnavailable):
            raise  # infrastructure, not this event: the whole batch is retried later
        except Exception as error:
            raise HandlerFailed(notification, error) from error
        finally:
            correlation_id.reset(token)
        return envelope.metadata.recorded_at

    def _run_handler(self, batch: Batch, envelope: EventEnvelope, position: int,
                     trace_context: TraceContext | None) -> None:
        context = self.projector.context_for(envelope, batch)
        self.projector.apply(envelope, context)
        if self.commands is not None:
            self._record_effects(batch, context, position, trace_context)

    def _span(self, notification: Notification, envelope: EventEnvelope) -> contextlib.AbstractContextManager[Span]:
        """The span of handling one event: the child of the bus's trace context, else of the stored one."""
        return traced(
            self.tracer, f"project {self.name} {envelope.event_name}",
            parent=trace_context_of(notification) or envelope.metadata.trace_context, kind="consumer",
            attributes={"eventfold.projection": self.name, "eventfold.event": envelope.event_name,
                        "eventfold.position": notification.id, "eventfold.aggregate_id": str(envelope.aggregate_id),
                        "eventfold.version": envelope.version},
        )

    def _record_effects(self, batch: Batch, context: HandlerContext, position: int,
                        trace_context: TraceContext | None = None) -> None:
        """A process manager's commands and deadlines go into the batch (its outbox), never out of it:
        they take effect only if the batch commits. A rebuild (no command bus) records none: they were
        recorded the first time round."""
        if self.commands is None:
            return
        meta = context.envelope.metadata
        carried = trace_context or meta.trace_context
        origin: dict[str, Any] = {"correlation_id": meta.correlation_id, "causation_id": str(meta.event_id),
                                  "trace_context": dict(carried) if carried else None}
        for issued in context.issued:
            expected = {} if issued.expected_version is None else {"expected_version": issued.expected_version}
            batch.enqueue(OutboxEntry(self.name, issued.idempotency_key, issued.command.command_name,
                                      issued.command.model_dump(mode="json"), issued.ordering_key, position,
                                      {**origin, **expected}))
        for key in context.cancelled:
            batch.cancel_deadline(self.name, key)
        for request in context.scheduled:
            batch.schedule(Deadline(self.name, request.key, request.name, request.due_at, position, request.data))

    def _apply_with_retries(self, notification: Notification) -> None:
        attempts = self.options.handler_attempts
        for attempt in range(1, attempts + 1):
            try:
                self._transaction([notification])
                return
            except (HandlerFailed, RowRejected) as failed:
                if attempt == attempts:
                    self._give_up(notification, failed.error if isinstance(failed, HandlerFailed) else failed)
                    return
                self._sleep(self.options.retry_backoff_seconds * 2 ** (attempt - 1))

    def _give_up(self, notification: Notification, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        if self.projector.on_error == "halt":
            self.views.set_state(self.name, self.version, "halted", f"position {notification.id}: {reason}")
            raise ProjectionHalted(f"{self.name} halted at position {notification.id}: {reason}")
        if self.projector.on_error == "retry":
            raise RetryLater(f"{self.name} will retry position {notification.id}: {reason}")
        letter = DeadLetter(self.name, notification.id, notification.topic,
                            str(notification.originator_id), reason[:2000])
        with self._batch() as batch:
            batch.park(letter)
            batch.advance(notification.id, None, since=self.position)
        self.position = notification.id
        self.observer.dead_lettered(self.name)
        log.error("%s: parked %s at position %d after %d attempts: %s", self.name,
                  notification.topic, notification.id, self.options.handler_attempts, reason)

    def retry_dead_letters(self) -> int:
        """Run the parked events (or dispatch the parked commands) whose retry was requested;
        returns how many now succeeded."""
        succeeded = 0
        for letter in self.views.retry_requests(self.name):
            if letter.command is not None:
                succeeded += self._requeue(letter)
                continue
            stored = self.store.read_all(letter.position - 1, 1)
            if not stored or stored[0].id != letter.position or not self._mine(stored[0]):
                continue
            try:
                with self._batch(follow_active=True) as batch:
                    self._handle(batch, stored[0])
                    self.views.settle_dead_letter(batch, letter.id or 0)
                succeeded += 1
            except (HandlerFailed, RowRejected) as failed:
                log.warning("%s: retry of dead letter %s failed again: %s", self.name, letter.id, failed)
        return succeeded

    def _requeue(self, letter: DeadLetter) -> int:
        """A parked command goes back to the outbox (its key was released when it was refused)."""
        assert letter.command is not None
        entry = OutboxEntry(**{**letter.command, "projection": self.name})
        with self.views.batch(self.name, self.version) as batch:
            batch.enqueue(entry)
            self.views.settle_dead_letter(batch, letter.id or 0)
        if self.on_outbox is not None:
            self.on_outbox()
        return 1

    # --- what the dispatcher hands back: refusals and deadlines, each in one transaction -----

    def handle_refusal(self, entry: OutboxEntry, refusal: Refusal) -> None:
        """Give ``on_refused`` the refusal, in one transaction with the entry's removal; a process
        manager that does not handle it gets the command parked as a dead letter instead."""
        envelope = self._envelope_at(entry.position)
        with self.views.batch(self.name, self.version) as batch:
            self.views.settle_outbox(batch, entry.id or 0)
            handled = False
            if envelope is not None and isinstance(self.projector, ProcessManager):
                context = self.projector.context_for(envelope, batch, origin=f"refused:{entry.key}")
                handled = self.projector.on_refused(refusal, context)
                self._record_effects(batch, context, entry.position)
            if not handled:
                batch.park(_command_letter(entry, refusal))
        if not handled:
            self.observer.dead_lettered(self.name)
        if self.on_outbox is not None and getattr(batch, "outbox", None):
            self.on_outbox()

    def fire_deadline(self, deadline: Deadline) -> None:
        """Run ``on_deadline`` once, in one transaction with the deadline's removal."""
        envelope = self._envelope_at(deadline.position)
        assert isinstance(self.projector, ProcessManager) and envelope is not None
        with self.views.batch(self.name, self.version) as batch:
            self.views.settle_deadline(batch, deadline.id or 0)
            origin = f"deadline:{deadline.key}:{deadline.due_at.isoformat()}"
            context = self.projector.context_for(envelope, batch, origin=origin)
            self.projector.on_deadline(deadline, context)
            self._record_effects(batch, context, deadline.position)
        if self.on_outbox is not None and getattr(batch, "outbox", None):
            self.on_outbox()

    def _envelope_at(self, position: int) -> EventEnvelope | None:
        stored = self.store.read_all(position - 1, 1)
        return from_stored(stored[0]) if stored and stored[0].id == position else None


def _partitioned_views(views: ViewStore, projector: Projector, partition: Partition | None) -> PartitionedViews | None:
    if partition is None:
        return None
    if isinstance(projector, ProcessManager):
        raise ConfigurationError(f"{projector.name}: a process manager cannot be partitioned (its outbox is one)")
    if not isinstance(views, PartitionedViews):
        raise ConfigurationError(f"{projector.name}: partitioned projections need read models in PostgreSQL")
    return views


def _command_letter(entry: OutboxEntry, refusal: Refusal) -> DeadLetter:
    command = {"key": entry.key, "command_name": entry.command_name, "payload": entry.payload,
               "ordering_key": entry.ordering_key, "position": entry.position, "context": entry.context}
    return DeadLetter(entry.projection, entry.position, f"command {entry.command_name}", entry.ordering_key,
                      f"{type(refusal.error).__name__}: {refusal.error}"[:2000], command=command)


def _id(notification: Notification) -> int:
    return notification.id
