"""Conformance suite of the position-signals port (``framework.positions.PositionSignals``).

Subclass ``PositionSignalsConformance`` and provide two fixtures: ``views``, a fresh schema-created
view store, and ``signals``, the adapter listening to that store's commits; every test below then
runs against them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from framework.positions import PositionChange, PositionSignals
from framework.readmodel import ReadModel
from framework.views import ViewStore

__all__ = ["PositionSignalsConformance", "listen_while"]


class Tick(ReadModel):
    table = "ticks"
    key = ("name",)

    name: str
    count: int


Heard = list[PositionChange | None]


def listen_while(signals: PositionSignals, act: Callable[[], None], enough: Callable[[Heard], bool],
                 *, timeout: float = 20.0) -> Heard:
    """What ``signals`` delivers from the start of listening until ``enough`` of it was heard, ``act``
    (run on a thread, as a projection worker commits) having been done once listening began."""

    async def run() -> Heard:
        heard: Heard = []
        stop, done = asyncio.Event(), asyncio.Event()

        def deliver(change: PositionChange | None) -> None:
            heard.append(change)
            if heard.count(None) and enough(heard):
                done.set()

        task = asyncio.create_task(signals.listen(deliver, stop))
        try:
            async with asyncio.timeout(timeout):
                while None not in heard:  # listening began
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(act)
                await done.wait()
        finally:
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, timeout)
        return heard

    return asyncio.run(run())


def commit(views: ViewStore, name: str, position: int, version: int = 1) -> None:
    with views.batch(name, version) as batch:
        batch.put(Tick(name=name, count=position))
        batch.advance(position, None)


def changes(heard: Heard, name: str) -> list[PositionChange]:
    return [c for c in heard if c is not None and c.projection == name]


class PositionSignalsConformance:
    @pytest.fixture
    def views(self) -> ViewStore:
        raise NotImplementedError

    @pytest.fixture
    def signals(self, views: ViewStore) -> PositionSignals:
        raise NotImplementedError

    def test_listening_begins_by_saying_changes_may_have_been_missed(
            self, views: ViewStore, signals: PositionSignals) -> None:
        views.ensure_tables("ticks", 1, [Tick])
        heard = listen_while(signals, lambda: commit(views, "ticks", 3), lambda h: bool(changes(h, "ticks")))
        assert heard[0] is None

    def test_each_commit_is_heard_with_its_version_and_position_in_order(
            self, views: ViewStore, signals: PositionSignals) -> None:
        views.ensure_tables("ticks", 1, [Tick])

        def act() -> None:
            for position in (2, 5, 9):
                commit(views, "ticks", position)

        heard = listen_while(signals, act, lambda h: len(changes(h, "ticks")) == 3)
        assert changes(heard, "ticks") == [PositionChange("ticks", 1, p) for p in (2, 5, 9)]

    def test_a_rolled_back_batch_is_not_heard(self, views: ViewStore, signals: PositionSignals) -> None:
        views.ensure_tables("ticks", 1, [Tick])

        def act() -> None:
            with contextlib.suppress(RuntimeError), views.batch("ticks", 1) as batch:
                batch.advance(4, None)
                raise RuntimeError("the handler failed")
            commit(views, "ticks", 6)

        heard = listen_while(signals, act, lambda h: bool(changes(h, "ticks")))
        assert changes(heard, "ticks") == [PositionChange("ticks", 1, 6)]

    def test_a_switch_of_the_active_version_is_heard(self, views: ViewStore, signals: PositionSignals) -> None:
        views.ensure_tables("ticks", 1, [Tick])
        views.ensure_tables("ticks", 2, [Tick])

        def act() -> None:
            with views.switch("ticks", 2) as batch:
                batch.advance(8, None)

        heard = listen_while(signals, act, lambda h: any(c.switched for c in changes(h, "ticks")))
        switched = [c for c in changes(heard, "ticks") if c.switched]
        assert switched[0].version == 2 and switched[0].position in (0, 8)

    def test_a_commit_says_which_rows_it_changed(self, views: ViewStore, signals: PositionSignals) -> None:
        views.ensure_tables("ticks", 1, [Tick])

        def act() -> None:
            with views.batch("ticks", 1) as batch:
                batch.put(Tick(name="one", count=1))
                batch.put(Tick(name="two", count=2))
                batch.delete(Tick, "gone")
                batch.advance(5, None)

        heard = listen_while(signals, act, lambda h: bool(changes(h, "ticks")))
        touched = changes(heard, "ticks")[0].touched
        assert touched == {"ticks": frozenset({("one",), ("two",), ("gone",)})}
        rows = changes(heard, "ticks")[0].rows  # their new values: a kept page can tell what they reach
        assert rows == {"ticks": {("one",): {"name": "one", "count": 1}, ("two",): {"name": "two", "count": 2},
                                  ("gone",): None}}
