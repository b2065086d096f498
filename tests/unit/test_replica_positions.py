"""``ReplicaPositionSignals``: a commit heard on the primary is delivered only once the replica shows it.

The primary's signals and the replica's positions are fakes here: the replica lags until the test lets it
replay; the conformance suite and the real primary + hot standby are in the integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from framework.adapters.memory_positions import MemoryPositionSignals
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.replica_positions import ReplicaPositionSignals
from framework.positions import Deliver, PositionChange, PositionSignals
from framework.testing.positions_conformance import PositionSignalsConformance
from framework.views import ViewStore


class TestReplicaPositionSignals(PositionSignalsConformance):
    """A replica that is never behind: the decorated signals behave as the port says."""

    @pytest.fixture
    def views(self) -> Iterator[ViewStore]:
        store = MemoryViewStore()
        store.create_schema()
        yield store

    @pytest.fixture
    def signals(self, views: ViewStore) -> PositionSignals:
        assert isinstance(views, MemoryViewStore)
        return ReplicaPositionSignals(MemoryPositionSignals(views), views, poll_seconds=0.001)


class Primary:
    """Signals the test announces changes on, by hand."""

    def __init__(self) -> None:
        self.deliver: Deliver | None = None

    async def listen(self, deliver: Deliver, stop: asyncio.Event) -> None:
        self.deliver = deliver
        deliver(None)
        await stop.wait()


class LaggingReplica:
    """Positions as a replica that has replayed only what the test let it."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.positions: dict[tuple[str, int], int] = {}
        self.reads = 0

    def active_version(self, name: str) -> int:
        return self.versions.get(name, 1)

    def position(self, name: str, version: int) -> int:
        self.reads += 1
        return self.positions.get((name, version), 0)


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0.001)


def test_a_change_is_held_until_the_replica_replayed_it() -> None:
    primary, replica = Primary(), LaggingReplica()
    heard: list[PositionChange | None] = []

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ReplicaPositionSignals(primary, replica, poll_seconds=0.001)
                                   .listen(heard.append, stop))
        await settle()
        assert primary.deliver is not None and heard == [None]  # listening: read again
        first, second = PositionChange("cards", 1, 10), PositionChange("cards", 1, 20)
        primary.deliver(first)
        primary.deliver(second)
        await settle()
        assert heard == [None]  # committed on the primary, not on the replica: nothing delivered
        replica.positions[("cards", 1)] = 12
        await settle()
        assert heard == [None, first]
        replica.positions[("cards", 1)] = 20
        await settle()
        assert heard == [None, first, second]
        reads = replica.reads
        await settle()
        assert replica.reads == reads  # nothing held back: the replica is not polled
        stop.set()
        await task

    asyncio.run(run())


def test_a_switch_is_delivered_once_the_replica_has_the_new_version_active() -> None:
    primary, replica = Primary(), LaggingReplica()
    heard: list[PositionChange | None] = []

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ReplicaPositionSignals(primary, replica, poll_seconds=0.001)
                                   .listen(heard.append, stop))
        await settle()
        assert primary.deliver is not None
        switch = PositionChange("cards", 2, 30, switched=True)
        replica.positions[("cards", 2)] = 30  # the rebuilt version replayed, the switch not yet
        primary.deliver(switch)
        await settle()
        assert heard == [None]
        replica.versions["cards"] = 2
        await settle()
        assert heard == [None, switch]
        stop.set()
        await task

    asyncio.run(run())


def test_too_many_held_back_become_a_read_again() -> None:
    primary, replica = Primary(), LaggingReplica()
    heard: list[PositionChange | None] = []

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ReplicaPositionSignals(primary, replica, poll_seconds=0.001, max_pending=3)
                                   .listen(heard.append, stop))
        await settle()
        assert primary.deliver is not None
        for position in range(1, 5):
            primary.deliver(PositionChange("cards", 1, position))
        assert heard == [None, None]  # the fourth overflowed: the watch reads the replica again
        replica.positions[("cards", 1)] = 4
        await settle()
        assert heard == [None, None, PositionChange("cards", 1, 4)]
        stop.set()
        await task

    asyncio.run(run())
