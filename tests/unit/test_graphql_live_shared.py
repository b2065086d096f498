"""Live subscribers of one key share one read of the view store per commit (framework.graphql.live)."""

from __future__ import annotations

import asyncio
from typing import Any

from framework.graphql.live import Batch, _read_shared
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


class _Row:
    def __init__(self, key: str, position: int) -> None:
        self.key, self.position = key, position

    def __repr__(self) -> str:
        return f"{self.key}@{self.position}"


def _batch(table: list[_Row], calls: list[tuple[list[str], int]]) -> Batch[_Row]:
    def read_many(values: list[str], after: int) -> list[_Row]:
        calls.append((sorted(values), after))
        return [row for row in table if row.key in values and row.position > after]

    return Batch("card", read_many, lambda row: row.key)


def test_subscribers_of_many_keys_due_in_one_turn_read_in_one_call_each_past_its_own_position() -> None:
    table = [_Row("A", 3), _Row("A", 9), _Row("B", 5), _Row("C", 8), _Row("D", 2)]
    calls: list[tuple[list[str], int]] = []
    batch = _batch(table, calls)

    async def scenario() -> tuple[list[Any], int]:
        watch, context = _watch(10), _Context()
        asks = [("A", 4), ("B", 1), ("C", 8), ("A", 4), ("E", 0)]
        reading = [asyncio.ensure_future(_read_shared(watch, context, "cards", None, _rows, after, (batch, key)))
                   for key, after in asks]
        await asyncio.sleep(0)
        context.gate.set()
        return await asyncio.gather(*reading), context.reads

    got, reads = asyncio.run(scenario())
    assert [[repr(r) for r in rows] for rows in got] == [["A@9"], ["B@5"], [], ["A@9"], []]
    assert (reads, calls) == (1, [(["A", "B", "C", "E"], 0)])


def test_a_batch_read_that_fails_fails_each_subscriber_in_it_and_the_next_turn_reads_again() -> None:
    calls: list[tuple[list[str], int]] = []

    def broken(values: list[str], after: int) -> list[_Row]:
        calls.append((sorted(values), after))
        raise RuntimeError("view store away")

    batch: Batch[_Row] = Batch("card", broken, lambda row: row.key)

    async def scenario() -> list[Any]:
        watch, context = _watch(10), _Context()
        context.gate.set()
        reading = [_read_shared(watch, context, "cards", ("card", key), _rows, 1, (batch, key)) for key in "AB"]
        first = await asyncio.gather(*reading, return_exceptions=True)
        again = await asyncio.gather(_read_shared(watch, context, "cards", None, _rows, 1, (batch, "A")),
                                     return_exceptions=True)
        return [*first, *again]

    outcomes = asyncio.run(scenario())
    assert [type(o).__name__ for o in outcomes] == ["RuntimeError"] * 3
    assert calls == [(["A", "B"], 1), (["A"], 1)]


def test_a_subscriber_leaving_during_a_batch_read_does_not_cancel_it_for_the_others() -> None:
    table = [_Row("A", 5), _Row("B", 6)]
    calls: list[tuple[list[str], int]] = []
    batch = _batch(table, calls)

    async def scenario() -> list[Any]:
        watch, context = _watch(10), _Context()
        leaving = asyncio.ensure_future(_read_shared(watch, context, "cards", None, _rows, 1, (batch, "A")))
        staying = [asyncio.ensure_future(_read_shared(watch, context, "cards", None, _rows, 1, (batch, key)))
                   for key in "AB"]
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        context.gate.set()
        return [[repr(r) for r in rows] for rows in await asyncio.gather(*staying)]

    assert asyncio.run(scenario()) == [["A@5"], ["B@6"]]
    assert calls == [(["A", "B"], 1)]
