"""Partitioned projections shared by workers: a lease per partition, divided fairly.

Every ``eventfold project NAME`` process of a partitioned projection (``Projector.partitions > 1``)
runs one ``run_partitioned``: it heartbeats a membership lease (``NAME/member/OWNER``) so that the
others know how many workers are alive, and holds at most ``ceil(partitions / live workers)``
partition leases (``NAME/partition/I``). A worker that holds more than its share hands the extra
partitions over (it stops applying them, then releases their leases); one that holds fewer takes
partitions nobody holds. So a new worker gets its share within a few polls, a worker stopped
cleanly releases its partitions at once, and a killed worker's partitions are taken when their
leases expire.

A partition is applied by a ``ProjectionWorker`` for that partition (its own position, moved by a
compare-and-set: two workers never both apply one stretch, whatever the leases say) from a consumer
of that partition's events only. Each time a worker starts applying a partition it creates a fresh
consumer (deliver-new) *before* catching up from the event store, so every event of the partition
is either caught up from the store or delivered afterwards, in stream order; on any error it
deletes that consumer and starts over the same way. While idle, a partition moves its position up
to the newest event published (read before a fetch that came back empty): nothing before it is
the partition's, so read-your-writes waiting on every partition does not wait for quiet ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from framework.errors import BusUnavailable, ConcurrencyConflict, ConfigurationError, StoreUnavailable
from framework.partitions import Partition
from framework.projector import Projector
from framework.runner import Backoff, LeaseOptions, worker_identity
from framework.streaming import EventConsumer
from framework.views import PartitionedViews, ViewStore
from framework.worker import ProjectionHalted, ProjectionWorker

__all__ = ["PartitionConsumer", "ShareOptions", "member_lease", "partition_lease", "run_partitioned"]

log = logging.getLogger(__name__)
_UNAVAILABLE = (StoreUnavailable, BusUnavailable, OSError, asyncio.TimeoutError)


class PartitionConsumer(EventConsumer, Protocol):
    """A consumer of one partition's events that also says where the whole stream is."""

    async def published_head(self) -> int:
        """The position of the newest event on the bus, whatever partition it belongs to."""

    async def delete(self) -> None:
        """Close, and remove the consumer from the bus (it is never used again)."""


ConsumerFactory = Callable[[Partition, str], PartitionConsumer]
"""``(partition, session)`` → a fresh consumer of the partition's events, named after ``session``."""


@dataclass(frozen=True)
class ShareOptions:
    batch_size: int = 1000
    fetch_seconds: float = 1.0
    retry_letters_every: float = 5.0


def member_lease(name: str, owner: str = "") -> str:
    return f"{name}/member/{owner}"


def partition_lease(name: str, index: int | None = None) -> str:
    return f"{name}/partition/" if index is None else f"{name}/partition/{index}"


@dataclass
class _Running:
    worker: ProjectionWorker
    stop: asyncio.Event
    task: asyncio.Task[None]
    seen: int = -1  # worker.furthest at the last renewal: a renewal says whether it progressed


@dataclass
class _Sharing:
    projector: Projector
    views: PartitionedViews
    store_views: ViewStore
    make_worker: Callable[[Partition], ProjectionWorker]
    make_consumer: ConsumerFactory
    stop: asyncio.Event
    lease: LeaseOptions
    owner: str
    options: ShareOptions
    running: dict[int, _Running] = field(default_factory=dict)
    renew_at: float = 0.0
    told: int = -1

    @property
    def name(self) -> str:
        return self.projector.name

    @property
    def count(self) -> int:
        return self.projector.partitions

    async def run(self) -> None:
        backoff = Backoff()
        try:
            with contextlib.suppress(*_UNAVAILABLE):  # workers started together see each other first
                await asyncio.to_thread(self.store_views.acquire_lease, member_lease(self.name, self.owner),
                                        self.owner, self.lease.ttl_seconds)
                await _pause(self.stop, self.lease.standby_poll_seconds)
            while not self.stop.is_set():
                try:
                    await self._tick()
                    backoff.reset()
                    delay = self.lease.standby_poll_seconds
                except (*_UNAVAILABLE, ConfigurationError) as error:  # e.g. a replay changed the count
                    delay = backoff.delay()
                    level = logging.ERROR if isinstance(error, ConfigurationError) else logging.WARNING
                    log.log(level, "projection %s: %s; retrying in %.1fs", self.name, _describe(error), delay)
                await _pause(self.stop, delay)
        finally:
            await self._leave()

    async def _tick(self) -> None:
        await self._renew()
        members = await asyncio.to_thread(self.views.live_leases, member_lease(self.name))
        share = math.ceil(self.count / max(1, len(members)))
        if share != self.told:
            log.info("%s: %d worker(s) alive, at most %d of %d partitions each", self.name, len(members),
                     share, self.count)
            self.told = share
        await self._reap()
        while len(self.running) > share:
            await self._hand_over(max(self.running))
        if len(self.running) < share:
            await self._take(share)

    async def _renew(self) -> None:
        """Heartbeat the membership and every held partition (every ``renew_seconds``); stop applying
        a partition whose lease another worker took (this one was too slow to renew it)."""
        now = time.monotonic()
        if now < self.renew_at:
            return
        ttl = self.lease.ttl_seconds
        await asyncio.to_thread(self.store_views.acquire_lease, member_lease(self.name, self.owner),
                                self.owner, ttl)
        for index, running in list(self.running.items()):
            progressed = running.worker.furthest != running.seen
            held = await asyncio.to_thread(self.store_views.acquire_lease, partition_lease(self.name, index),
                                           self.owner, ttl, progressed=progressed)
            running.seen = running.worker.furthest
            if not held:
                log.warning("%s: another worker took partition %d over; letting it go", self.name, index)
                await self._end(index)
        self.renew_at = now + self.lease.renew_seconds

    async def _reap(self) -> None:
        """A partition task that ended by itself (halted and stopped) gives its lease back."""
        for index, running in list(self.running.items()):
            if running.task.done():
                await self._end(index)
                await self._release(index)

    async def _take(self, share: int) -> None:
        held = {lease.name for lease in await asyncio.to_thread(
            self.views.live_leases, partition_lease(self.name))}
        for index in range(self.count):
            if len(self.running) >= share:
                return
            if index in self.running or partition_lease(self.name, index) in held:
                continue
            if await asyncio.to_thread(self.store_views.acquire_lease, partition_lease(self.name, index),
                                       self.owner, self.lease.ttl_seconds, progressed=True):
                await self._start(index)

    async def _start(self, index: int) -> None:
        try:
            worker = await asyncio.to_thread(self.make_worker, Partition(index, self.count))
        except BaseException:
            await self._release(index)
            raise
        stop = asyncio.Event()
        session = f"{self.owner}-{uuid.uuid4().hex[:6]}"
        task = asyncio.create_task(_run_partition(worker, self.make_consumer, stop, self.options, session))
        self.running[index] = _Running(worker, stop, task)
        log.info("%s: applying partition %d of %d (%s)", self.name, index, self.count, self.owner)

    async def _hand_over(self, index: int) -> None:
        log.info("%s: handing partition %d over (more workers are alive)", self.name, index)
        await self._end(index)
        await self._release(index)

    async def _end(self, index: int) -> None:
        running = self.running.pop(index, None)
        if running is None:
            return
        running.stop.set()
        with contextlib.suppress(Exception):
            await running.task

    async def _release(self, index: int) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await asyncio.to_thread(self.store_views.release_lease, partition_lease(self.name, index), self.owner)

    async def _leave(self) -> None:
        """A clean stop: finish what is being applied, then release every partition and the membership."""
        indexes = list(self.running)
        await asyncio.gather(*(self._end(index) for index in indexes))
        await asyncio.gather(*(self._release(index) for index in indexes))
        with contextlib.suppress(*_UNAVAILABLE):
            await asyncio.to_thread(self.store_views.release_lease, member_lease(self.name, self.owner),
                                    self.owner)
            await asyncio.to_thread(self._stopped_if_last)

    def _stopped_if_last(self) -> None:
        """The last worker to leave records ``stopped`` (a halted projection stays ``halted``)."""
        if self.views.live_leases(member_lease(self.name)):
            return
        version = self.store_views.active_version(self.name)
        if any(s.name == self.name and s.version == version and s.state == "running"
               for s in self.store_views.states()):
            self.store_views.set_state(self.name, version, "stopped")


async def run_partitioned(
    projector: Projector,
    views: ViewStore,
    make_worker: Callable[[Partition], ProjectionWorker],
    make_consumer: ConsumerFactory,
    stop: asyncio.Event,
    *,
    lease: LeaseOptions | None = None,
    owner: str | None = None,
    options: ShareOptions | None = None,
) -> None:
    """Apply this worker's share of ``projector``'s partitions until ``stop``; see the module's docstring."""
    if not isinstance(views, PartitionedViews):
        raise ConfigurationError(f"{projector.name}: partitioned projections need read models in PostgreSQL")
    sharing = _Sharing(projector, views, views, make_worker, make_consumer, stop, lease or LeaseOptions(),
                       owner or worker_identity(), options or ShareOptions())
    await sharing.run()


async def _run_partition(worker: ProjectionWorker, make_consumer: ConsumerFactory, stop: asyncio.Event,
                         options: ShareOptions, session: str) -> None:
    """Apply one partition until ``stop``: a fresh consumer, a catch-up from the store, then the
    consumer's deliveries; after any error, the same again with a new consumer."""
    assert worker.partition is not None
    backoff, attempt = Backoff(), 0
    while not stop.is_set():
        attempt += 1
        consumer = make_consumer(worker.partition, f"{session}-{attempt}")
        try:
            await consumer.bind()
            await asyncio.to_thread(worker.reload)
            await asyncio.to_thread(worker.views.set_state, worker.name, worker.version, "running")
            await asyncio.to_thread(worker.catch_up, interrupted=stop.is_set)  # a handover need not wait
            await _follow(worker, consumer, stop, options)
            backoff.reset()
        except ProjectionHalted as error:
            log.error("%s", error)
            await stop.wait()  # halted: keep the lease (a standby would only halt again) until stopped
        except Exception as error:  # unavailable, a lost compare-and-set, the unexpected: start over
            delay = backoff.delay()
            level = logging.WARNING if isinstance(error, (*_UNAVAILABLE, ConcurrencyConflict)) else logging.ERROR
            log.log(level, "projection %s: %s; starting over in %.1fs", worker.label, _describe(error), delay)
            await _pause(stop, delay)
        finally:
            with contextlib.suppress(Exception):
                await consumer.delete()


async def _follow(worker: ProjectionWorker, consumer: PartitionConsumer, stop: asyncio.Event,
                  options: ShareOptions) -> None:
    idle, next_letters = True, 0.0
    while not stop.is_set():
        head = await consumer.published_head() if idle else None
        delivery = await consumer.fetch(options.batch_size, options.fetch_seconds)
        if delivery.notifications:
            await asyncio.to_thread(worker.apply, delivery.notifications)
            await delivery.ack()  # after the commit: a crash before it means a redelivery
            idle = False
        else:
            idle = True
            if head is not None and head > worker.position:  # nothing up to it is this partition's
                await asyncio.to_thread(worker.skip_to, head)
        if time.monotonic() >= next_letters:
            await asyncio.to_thread(worker.retry_dead_letters)
            next_letters = time.monotonic() + options.retry_letters_every


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
