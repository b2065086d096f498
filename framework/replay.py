"""Blue-green rebuilds: a projection's next version is built from the event store, then switched in.

The active version keeps serving while the new one is filled from PostgreSQL
(never from the bus) in large batches. The last stretch is applied inside the
switch transaction, which holds the projection's lock, so the live worker
cannot interleave: its next batch sees the new version and continues from the
new version's position. The previous version's tables are kept (one step of
rollback); older ones are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from framework.projector import Projector
from framework.store import EventLog
from framework.views import RowCaching, ViewStore
from framework.worker import ProjectionWorker, WorkerOptions

__all__ = ["rebuild"]


def rebuild(
    projector: Projector,
    views: ViewStore,
    store: EventLog,
    *,
    from_position: int = 0,
    progress: Callable[[int, int], None] | None = None,
    options: WorkerOptions | None = None,
) -> int:
    """Build and switch in a new version of ``projector``'s read models; return its number."""
    name = projector.name
    active = views.active_version(name)
    known = [s.version for s in views.states() if s.name == name]
    version = max([active, *known]) + 1
    views.ensure_tables(name, version, projector.read_models)
    views.set_state(name, version, "rebuilding")
    worker = ProjectionWorker(projector, views, store, None, options, version=version, follow_active=False)
    worker.skip_to(from_position)

    def report(position: int) -> None:
        if progress:
            progress(position, store.head())

    worker.catch_up(progress=report)
    with views.switch(name, version) as batch:
        remaining = store.read_all(worker.position, 1_000_000_000)
        if remaining:
            worker.apply_within(batch, remaining, since=worker.position)
    if isinstance(views, RowCaching):  # a live worker (this process's or another's) writes next
        views.forget_cached(name, version)
    views.set_state(name, version, "running")
    for old in known:
        if old < active:
            views.drop_tables(name, old, projector.read_models)
    report(store.head())
    return version
