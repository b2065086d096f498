"""Position signals in process: the memory view store announces each commit to the watch's loop."""

from __future__ import annotations

import asyncio

from framework.adapters.memory_views import MemoryViewStore
from framework.positions import Deliver, PositionChange

__all__ = ["MemoryPositionSignals"]


class MemoryPositionSignals:
    """``PositionSignals`` for ``MemoryViewStore``: its commits (on any thread) reach the listening loop."""

    def __init__(self, views: MemoryViewStore) -> None:
        self._views = views

    async def listen(self, deliver: Deliver, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def hand_on(change: PositionChange) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(deliver, change)

        forget = self._views.observe(hand_on)
        try:
            deliver(None)
            await stop.wait()
        finally:
            forget()
