"""Live subscribers of one key share one read of the view store per commit (framework.graphql.live)."""

from __future__ import annotations

import asyncio
from typing import Any

from framework.graphql.live import _read_shared
from framework.positions import PositionWatch, _Known


class _Context:
    """A QueryContext's ``read``: runs the read off the loop's turn, counting the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()

    async def read(self, fn: Any, *args: Any) -> Any:
        self.reads += 1
        await self.gate.wait()
        return fn(*args)


def _watch(position: int) -> PositionWatch:
    watch = PositionWatch(signals=None, source=None)  # type: ignore[arg-type]  # nothing is listened to here
    watch._known["cards"] = _Known(1, position)
    return watch


def _rows(after: int) -> list[int]:
    return [after + 1]


def test_subscribers_of_one_key_reading_after_one_position_share_one_read() -> None:
    async def scenario() -> tuple[list[Any], int, int]:
        watch, context = _watch(10), _Context()
        reading = [asyncio.ensure_future(_read_shared(watch, context, "cards", ("card", "A"), _rows, 7))
                   for _ in range(5)]
        await asyncio.sleep(0)
        context.gate.set()
        got = await asyncio.gather(*reading)
        return got, context.reads, len(watch.shared_reads)

    got, reads, left = asyncio.run(scenario())
    assert got == [[8]] * 5
    assert reads == 1
    assert left == 0  # forgotten once done: the next commit reads again


def test_other_keys_other_positions_and_unshared_reads_are_their_own() -> None:
    async def scenario() -> int:
        watch, context = _watch(10), _Context()
        reading = [_read_shared(watch, context, "cards", ("card", "A"), _rows, 7),
                   _read_shared(watch, context, "cards", ("card", "B"), _rows, 7),
                   _read_shared(watch, context, "cards", ("card", "A"), _rows, 8),
                   _read_shared(watch, context, "cards", None, _rows, 7),
                   _read_shared(watch, context, "cards", None, _rows, 7)]
        tasks = [asyncio.ensure_future(r) for r in reading]
        await asyncio.sleep(0)
        context.gate.set()
        await asyncio.gather(*tasks)
        return context.reads

    assert asyncio.run(scenario()) == 5


def test_a_read_begun_before_a_commit_the_subscriber_heard_of_is_not_shared() -> None:
    """The first read may have missed a commit heard since: a later subscriber reads for itself."""

    async def scenario() -> int:
        watch, context = _watch(10), _Context()
        first = asyncio.ensure_future(_read_shared(watch, context, "cards", ("card", "A"), _rows, 7))
        await asyncio.sleep(0)
        watch._known["cards"].position = 11  # a commit heard while the first read is in flight
        second = asyncio.ensure_future(_read_shared(watch, context, "cards", ("card", "A"), _rows, 7))
        third = asyncio.ensure_future(_read_shared(watch, context, "cards", ("card", "A"), _rows, 7))
        await asyncio.sleep(0)
        context.gate.set()
        await asyncio.gather(first, second, third)
        return context.reads

    assert asyncio.run(scenario()) == 2  # the first, and one shared by the second and the third


def test_a_failed_shared_read_fails_each_subscriber_that_shared_it() -> None:
    def broken(after: int) -> list[int]:
        raise RuntimeError("the view store is away")

    async def scenario() -> list[Any]:
        watch, context = _watch(10), _Context()
        reading = [asyncio.ensure_future(_read_shared(watch, context, "cards", ("card", "A"), broken, 7))
                   for _ in range(3)]
        await asyncio.sleep(0)
        context.gate.set()
        return await asyncio.gather(*reading, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
