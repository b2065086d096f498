"""Position signals for a query API that reads a streaming replica of the read-model database.

A hot standby can neither ``LISTEN`` nor hear the primary's ``NOTIFY``; and a commit heard on the primary
is not yet on the replica. ``ReplicaPositionSignals`` hears commits where they are announced (``inner``:
the primary's signals) and delivers each only once the replica it answers from shows it: the replica
replays a worker's transaction, rows and position together, so a position read there holds the rows of
its commit. Read-your-writes stays honest however far the replica lags; it only waits longer.

    signals = ReplicaPositionSignals(PostgresPositionSignals(read_primary), replica_views)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from framework.errors import EventfoldError
from framework.positions import Deliver, PositionChange, PositionSignals, PositionSource

__all__ = ["ReplicaPositionSignals"]

log = logging.getLogger(__name__)

Seen = dict[tuple[str, int], tuple[int, int]]  # (projection, version) -> (replica's active version, its position)


class ReplicaPositionSignals:
    """``PositionSignals`` whose changes are true on ``replica``: heard on ``inner``, held back until then.

    While changes are held back, the replica's positions of their projections are read every
    ``poll_seconds`` (one short query per projection version). More than ``max_pending`` held back
    (a replica stuck far behind) are dropped for a ``deliver(None)``: the watch then reads again.
    """

    def __init__(self, inner: PositionSignals, replica: PositionSource, *, poll_seconds: float = 0.01,
                 max_pending: int = 10_000) -> None:
        self._inner, self._replica = inner, replica
        self._poll_seconds, self._max_pending = poll_seconds, max_pending

    async def listen(self, deliver: Deliver, stop: asyncio.Event) -> None:
        pending: list[PositionChange] = []
        wake = asyncio.Event()

        def heard(change: PositionChange | None) -> None:
            if change is None:  # listening (again): the watch reads the replica's positions itself
                pending.clear()
                deliver(None)
                return
            if len(pending) >= self._max_pending:
                pending.clear()
                deliver(None)
            pending.append(change)
            wake.set()

        follower = asyncio.create_task(self._follow(pending, wake, deliver, stop))
        try:
            await self._inner.listen(heard, stop)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _follow(self, pending: list[PositionChange], wake: asyncio.Event, deliver: Deliver,
                      stop: asyncio.Event) -> None:
        """Deliver the held-back changes the replica has replayed, in the order they were heard."""
        while not stop.is_set():
            if not pending:
                wake.clear()
                await wake.wait()
                continue
            try:
                seen = await asyncio.to_thread(self._read, {(c.projection, c.version) for c in pending})
            except EventfoldError as error:  # the replica is away: keep holding, try again
                log.warning("could not read the replica's projection positions: %s", error.message)
                seen = {}
            ready = [c for c in pending if _replayed(c, seen)]
            for change in ready:
                deliver(change)
            if ready:
                done = {id(c) for c in ready}
                pending[:] = [c for c in pending if id(c) not in done]
            if pending:
                await asyncio.sleep(self._poll_seconds)

    def _read(self, keys: Iterable[tuple[str, int]]) -> Seen:
        return {(name, version): (self._replica.active_version(name), self._replica.position(name, version))
                for name, version in keys}


def _replayed(change: PositionChange, seen: Seen) -> bool:
    found = seen.get((change.projection, change.version))
    if found is None:
        return False
    active, position = found
    return position >= change.position and (not change.switched or active == change.version)
