"""Blue-green rebuilds: a projection's next version is built from the event store, then switched in.

The active version keeps serving while the new one is filled from PostgreSQL
(never from the bus) in large batches. The last stretch is applied inside the
switch transaction, which holds the projection's lock, so the live worker
cannot interleave: its next batch sees the new version and continues from the
new version's position. The previous version's tables are kept (one step of
rollback); older ones are dropped.

A rebuild for one aggregate (``rebuild_aggregate``) is the same, except that the
new version starts as a copy of the active one in which that aggregate's rows are
rebuilt from its events: the copy is made in the database, and no other handler runs.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from framework.errors import AggregateNotFound, ConfigurationError
from framework.mapper import from_stored
from framework.partitions import Partition, partition_of
from framework.projector import Projector
from framework.readmodel import ReadModel
from framework.shared_pages import SharedPages
from framework.staging import StagedViews
from framework.store import EventLog, EventStore, EventStreams
from framework.views import PartitionedViews, RowCaching, ViewStore
from framework.worker import ProjectionHalted, ProjectionWorker, WorkerOptions

__all__ = ["REPLAY_OPTIONS", "AggregateRebuilt", "ReplayOpener", "default_processes", "rebuild", "rebuild_aggregate"]

R = TypeVar("R", bound=ReadModel)
RowChange = tuple[type[ReadModel], tuple[Any, ...], ReadModel | None]
ReplayOpener = Callable[[], tuple[Projector, ViewStore, EventLog]]
"""Opens, in a process of its own, the projector, view store and event log of a rebuild (picklable:
a module-level function or a ``functools.partial`` of one), for ``rebuild(processes=...)``."""


def rebuild(
    projector: Projector,
    views: ViewStore,
    store: EventLog,
    *,
    from_position: int = 0,
    progress: Callable[[int, int], None] | None = None,
    options: WorkerOptions | None = None,
    parallel: int = 4,
    processes: int = 1,
    opener: ReplayOpener | None = None,
) -> int:
    """Build and switch in a new version of ``projector``'s read models; return its number.

    A partitioned projector (on a view store that keeps partitions) is rebuilt partition by partition,
    ``parallel`` at a time, each from the event store into its own position; see ``_rebuild_partitions``.
    With ``processes`` > 1 and an ``opener``, its partitions are divided among that many processes
    (Python runs one thread at a time per process: processes are how a rebuild uses several cores),
    each rebuilding its share into the same new version; the switch is made here once all are done.
    Unless ``options`` say otherwise, a rebuild commits ``REPLAY_OPTIONS.catch_up_batch`` events per transaction.
    """
    options = options or REPLAY_OPTIONS
    if projector.partitions > 1 and isinstance(views, PartitionedViews):
        return _rebuild_partitions(projector, views, store, from_position, progress, options, parallel,
                                   _Processes(processes, opener))
    version = _new_version(projector, views)
    worker = ProjectionWorker(projector, views, store, None, options, version=version, follow_active=False)
    worker.skip_to(from_position)
    _catch_up_and_switch(worker, store, progress)
    return version


REPLAY_OPTIONS = WorkerOptions(catch_up_batch=10_000, catch_up_page=5_000)
"""A rebuild's batches: twice a live worker's catch-up (half as many commits, each with its position update and
flush statements; the example's holdings are upserted once per batch, so half as often per event), read from
the store in pages of 5,000. Measured (in-process rebuild of 200,000 events): 10,000 events per transaction
took about 1 us of the replaying process's CPU per event off 5,000's; 20,000 took no more off, and peak RSS
went from 107 to 144 MB."""


def default_processes(projector: Projector) -> int:
    """How many processes ``eventfold replay`` divides a projection's partitions among unless told:
    one per partition, at most one per core (threads of one process share one core's worth of Python;
    an unpartitioned projection is rebuilt in this process)."""
    return max(1, min(projector.partitions, os.cpu_count() or 1))


@dataclass(frozen=True)
class _Processes:
    count: int
    opener: ReplayOpener | None

    def check(self) -> None:
        if self.count < 1:
            raise ConfigurationError(f"processes must be at least 1, not {self.count}")
        if self.count > 1 and self.opener is None:
            raise ConfigurationError("rebuilding in several processes needs an opener (see ReplayOpener)")


def _rebuild_partitions(projector: Projector, views: ViewStore, store: EventLog, from_position: int,
                        progress: Callable[[int, int], None] | None, options: WorkerOptions | None,
                        parallel: int, processes: _Processes) -> int:
    """Each partition caught up on its own thread (``parallel`` at once) to the head, twice (the second
    pass takes what was stored during the first), then the version is switched in. What is stored
    after the second pass is applied by the live workers, which follow the switch and catch their
    partitions up from the store: until then read-your-writes waits for them, as it should."""
    if parallel < 1:
        raise ConfigurationError(f"parallel must be at least 1, not {parallel}")
    processes.check()
    version = _new_version(projector, views)
    workers = _partition_workers(projector, views, store, version, options)
    for worker in workers:
        worker.skip_to(from_position)
    if processes.count > 1 and processes.opener is not None and len(workers) > 1:
        _catch_up_in_processes(workers, store, progress, parallel, processes.count, processes.opener, options)
        for worker in workers:
            worker.reload()  # from where the processes left each partition
    else:
        workers[0].cache_fresh_partitions(workers)
    # Threads: the whole rebuild. After processes: what was stored while they ran (as their second
    # pass took what was stored during their first), so that little is left to the live workers.
    _catch_up_partitions(workers, store, progress, parallel=parallel)
    _switch_in(workers[0], store, progress)
    return version


def _catch_up_in_processes(workers: list[ProjectionWorker], store: EventLog,
                           progress: Callable[[int, int], None] | None, parallel: int, processes: int,
                           opener: ReplayOpener, options: WorkerOptions | None) -> None:
    """The partitions dealt round-robin to ``processes`` spawned processes (``parallel`` at once in
    all), each catching its share up as ``_catch_up_partitions`` does; progress is read from the
    partitions' committed positions meanwhile. A process that fails fails the rebuild (the version
    stays "rebuilding", never switched in)."""
    count, version = len(workers), workers[0].version
    shares = [list(range(first, count, processes)) for first in range(min(processes, count))]
    threads = max(1, -(-parallel // len(shares)))
    context = multiprocessing.get_context("spawn")  # never fork a process that holds connections and threads
    try:
        failed = context.Event()  # set when a share fails: the others stop at their next batch
        # Each share in a process of its own (one task per process): a pool hands a queued share to whichever
        # process is free, and one that finished a small share before the last had started took another (seen
        # under load). Not a start barrier: a process killed while the pool spawns the next one can go unseen
        # by the pool until another ends, and the others would wait for it.
        with ProcessPoolExecutor(len(shares), mp_context=context, initializer=_start_replay_process,
                                 initargs=(failed,), max_tasks_per_child=1) as pool:
            running = _submitted(pool, [(opener, version, share, count, threads, options) for share in shares])
            try:
                while True:
                    done, pending = wait(running, timeout=1.0, return_when=FIRST_EXCEPTION)
                    if any(future.exception() is not None for future in done):
                        failed.set()
                    for future in done:
                        future.result()  # a failed share: raised here, once the others have stopped
                    if progress:
                        progress(min(_committed(w) for w in workers), store.head())
                    if not pending:
                        return
            except BaseException:  # a failed share, or Ctrl-C here: the pool is waited for once they have stopped
                failed.set()
                raise
    except BrokenProcessPool as error:  # killed (kill -9, out of memory): no error of its own to show
        raise ProjectionHalted(f"{workers[0].name}: a replay process ended abruptly ({error}); version {version}"
                               " was not switched in: run the replay again") from error


def _submitted(pool: ProcessPoolExecutor, shares: list[tuple[Any, ...]]) -> list[Future[None]]:
    """Each share submitted to ``pool``. A process killed while the pool spawns the next one breaks the
    pool under the spawning (the pool closes its queue, and the spawn fails on it): that is the same
    ``BrokenProcessPool`` as a process killed later, not an ``OSError`` of its own."""
    try:
        return [pool.submit(_catch_up_share, *share) for share in shares]
    except OSError as error:
        if not getattr(pool, "_broken", False):
            raise
        raise BrokenProcessPool(f"a replay process ended while the next one was started ({error})") from error


_failed: Any = None  # in a replay process: the event set when another process's share failed
def _start_replay_process(failed: Any) -> None:
    """In a replay process, first: stop when another share fails, and end with the command's process."""
    global _failed
    _failed = failed
    _end_with_parent()


def _another_failed() -> bool:
    return _failed is not None and bool(_failed.is_set())


def _end_with_parent() -> None:
    """In a replay process: end when the command's process ends (``kill -9``), rather than go on
    rebuilding a version nothing will switch in, then wait for ever on a queue no one writes to."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_after, args=(parent,), name="replay-parent-watch", daemon=True).start()


def _exit_after(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # its sentinel: ready once the parent process is gone
    os._exit(1)  # an uncommitted batch is rolled back; the version stays "rebuilding"


def _committed(worker: ProjectionWorker) -> int:
    views = worker.views
    assert isinstance(views, PartitionedViews) and worker.partition is not None
    return views.partition_position(worker.name, worker.version, worker.partition.index)


def _catch_up_share(opener: ReplayOpener, version: int, indexes: list[int], count: int, threads: int,
                    options: WorkerOptions | None) -> None:
    """In a process of its own: catch partitions ``indexes`` (of ``count``) of ``version`` up."""
    if _another_failed():  # before it began: nothing to do for a version nothing will switch in
        return
    projector, views, store = opener()
    try:
        pages = SharedPages(store, readers=len(indexes))
        workers = [ProjectionWorker(projector, views, pages, None, options, version=version, follow_active=False,
                                    partition=Partition(index, count)) for index in indexes]
        workers[0].cache_fresh_partitions(workers)
        _catch_up_partitions(workers, store, None, parallel=threads, interrupted=_another_failed)
    finally:
        for closing in (views, store):
            close = getattr(closing, "close", None)
            if close is not None:
                close()


def _partition_workers(projector: Projector, views: ViewStore, store: EventLog, version: int,
                       options: WorkerOptions | None) -> list[ProjectionWorker]:
    count = projector.partitions
    if isinstance(views, PartitionedViews):
        count = views.partition_count(projector.name, version) or count
    pages = SharedPages(store, readers=count)  # the partitions read the same pages: read each once
    return [ProjectionWorker(projector, views, pages, None, options, version=version, follow_active=False,
                             partition=Partition(index, count)) for index in range(count)]


def _catch_up_partitions(workers: list[ProjectionWorker], store: EventLog,
                         progress: Callable[[int, int], None] | None, *, parallel: int,
                         interrupted: Callable[[], bool] | None = None) -> None:
    def report(_: int) -> None:
        if progress:
            progress(min(w.position for w in workers), store.head())

    stopping = threading.Event()

    def stop_asked() -> bool:
        return stopping.is_set() or (interrupted is not None and interrupted())

    name = workers[0].name
    with ThreadPoolExecutor(min(parallel, len(workers)), thread_name_prefix=f"replay-{name}") as pool:
        try:
            for _ in range(2):
                target = store.head()
                for done in [pool.submit(w.catch_up, target, report, interrupted=stop_asked) for w in workers]:
                    done.result()
        except BaseException:
            # A partition failed, or Ctrl-C: the others stop at their next batch before the pool is waited for,
            # rather than catch up to the end first.
            stopping.set()
            raise


@dataclass(frozen=True)
class AggregateRebuilt:
    """What ``rebuild_aggregate`` did: the version now active, and the aggregate's rows it wrote
    and deleted there (every other row is the previous version's)."""

    version: int
    written: int
    deleted: int


def rebuild_aggregate(
    projector: Projector,
    views: ViewStore,
    store: EventStore,
    aggregate_id: UUID,
    *,
    progress: Callable[[int, int], None] | None = None,
    options: WorkerOptions | None = None,
) -> AggregateRebuilt:
    """Build and switch in a new version of ``projector``'s read models in which ``aggregate_id``'s rows
    are rebuilt from its events and every other row is copied from the active version.

    Only for a projector that declares ``per_aggregate = True`` (``ConfigurationError`` otherwise):
    its rows of one aggregate are then exactly what that aggregate's events make of empty tables,
    as a full rebuild would make them. Rows the aggregate's events no longer touch (under a key an
    older handler used) are not found; a full ``rebuild`` removes those.
    """
    _require_per_aggregate(projector)
    options = options or REPLAY_OPTIONS
    if not store.read_stream_with_positions(aggregate_id)[:1]:
        raise AggregateNotFound(f"there are no events of aggregate {aggregate_id}")
    name, models = projector.name, projector.read_models
    active = views.active_version(name)
    views.ensure_tables(name, active, models)  # a projection that never ran has empty tables to copy
    version = _new_version(projector, views)
    try:
        position = _aggregate_position(projector, views, version, aggregate_id,
                                       views.copy_version(name, active, version, models))
        changes = list(_rows_of(projector, store, aggregate_id, until=position))
        _write(views, name, version, changes)
    except BaseException:
        views.drop_tables(name, version, models)  # nothing refers to it yet
        raise
    if isinstance(views, PartitionedViews) and views.partition_count(name, version):
        # Copied from a partitioned version: its partitions catch up (each from its copied position).
        workers = _partition_workers(projector, views, store, version, options)
        _catch_up_partitions(workers, store, progress, parallel=1)
        _switch_in(workers[0], store, progress)
    else:
        worker = ProjectionWorker(projector, views, store, None, options, version=version, follow_active=False)
        _catch_up_and_switch(worker, store, progress)
    deleted = sum(1 for _, _, row in changes if row is None)
    return AggregateRebuilt(version, len(changes) - deleted, deleted)


def _aggregate_position(projector: Projector, views: ViewStore, version: int, aggregate_id: UUID,
                        copied: int) -> int:
    """The position the copied rows of the aggregate stand at: its partition's, when partitioned."""
    if not isinstance(views, PartitionedViews):
        return copied
    count = views.partition_count(projector.name, version)
    if not count:
        return copied
    if not projector.keys_by_aggregate():
        raise ConfigurationError(f"{projector.name} is partitioned by a key of its own: one aggregate's events may"
                                 f" lie in several partitions; `eventfold replay {projector.name}` rebuilds it whole")
    return views.partition_position(projector.name, version, partition_of(str(aggregate_id), count))


def _require_per_aggregate(projector: Projector) -> None:
    if not projector.per_aggregate:
        raise ConfigurationError(
            f"{projector.name} cannot be rebuilt for one aggregate: it does not declare that each of its"
            f" rows comes from one aggregate's events (per_aggregate = True); `eventfold replay"
            f" {projector.name}` rebuilds it whole"
        )


def _new_version(projector: Projector, views: ViewStore) -> int:
    name = projector.name
    known = [s.version for s in views.states() if s.name == name]
    version = max([views.active_version(name), *known]) + 1
    views.ensure_tables(name, version, projector.read_models)
    views.set_state(name, version, "rebuilding")
    return version


def _catch_up_and_switch(worker: ProjectionWorker, store: EventLog,
                         progress: Callable[[int, int], None] | None) -> None:
    """Catch the new version up, apply the last stretch in the switch, and drop the versions before
    the one that was active (kept: one step of rollback)."""
    name, version, views = worker.name, worker.version, worker.views
    active = views.active_version(name)
    known = [s.version for s in views.states() if s.name == name and s.version != version]

    def report(position: int) -> None:
        if progress:
            progress(position, store.head())

    worker.catch_up(progress=report)
    with views.switch(name, version) as batch:
        remaining = store.read_all(worker.position, 1_000_000_000)
        if remaining:
            worker.apply_within(batch, remaining, since=worker.position)
    _switched(worker, known, active, report)


def _switch_in(worker: ProjectionWorker, store: EventLog, progress: Callable[[int, int], None] | None) -> None:
    """Make a partitioned version active (its partitions caught up already), then as ``_catch_up_and_switch``."""
    name, version, views = worker.name, worker.version, worker.views
    active = views.active_version(name)
    known = [s.version for s in views.states() if s.name == name and s.version != version]
    with views.switch(name, version):
        pass

    def report(position: int) -> None:
        if progress:
            progress(views.position(name, version), store.head())

    _switched(worker, known, active, report)


def _switched(worker: ProjectionWorker, known: list[int], active: int, report: Callable[[int], None]) -> None:
    name, version, views = worker.name, worker.version, worker.views
    if isinstance(views, RowCaching):  # a live worker (this process's or another's) writes next
        views.forget_cached(name, version)
    views.set_state(name, version, "running")
    for old in known:
        if old < active:
            views.drop_tables(name, old, worker.projector.read_models)
    report(views.position(name, version))


class _NoRows:
    """Empty tables: one aggregate's rows are rebuilt from nothing."""

    def load(self, model: type[R], key: tuple[Any, ...]) -> R | None:
        return None

    def load_where(self, model: type[R], equal: dict[str, Any]) -> list[R]:
        return []


def _rows_of(projector: Projector, store: EventStreams, aggregate_id: UUID, *, until: int) -> Iterator[RowChange]:
    """What the aggregate's events up to ``until`` make of empty tables: each row they touched, with its
    final state (None: deleted). A process manager's commands and deadlines are not kept: a rebuild
    issues none (they were recorded the first time round)."""
    scratch = StagedViews(_NoRows())
    names = projector.handled_event_names()
    for notification in store.read_stream_with_positions(aggregate_id):
        if notification.id > until:
            break
        if notification.topic not in names:
            continue
        try:
            envelope = from_stored(notification)
            projector.apply(envelope, projector.context_for(envelope, scratch))
        except Exception as error:
            raise ProjectionHalted(f"{projector.name}: {notification.topic} at position {notification.id}"
                                   f" failed: {type(error).__name__}: {error}") from error
    return scratch.changes()


def _write(views: ViewStore, name: str, version: int, changes: list[RowChange]) -> None:
    with views.batch(name, version, follow_active=False) as batch:
        for model, key, row in changes:
            if row is None:
                batch.delete(model, *key)
            else:
                batch.put(row)
