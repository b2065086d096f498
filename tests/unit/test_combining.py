"""framework.combining: the queue of a hot aggregate's commands, decided in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import uuid4

import pytest

from framework.combining import MAX_BATCH, Queued, decided_in_batch
from framework.contention import LoopTurns


class Batches:
    """A batch runner that answers each member with (its item, its batch's number); can be made to fail."""

    def __init__(self, pause: float = 0.01) -> None:
        self.batches: list[list[int]] = []
        self.pause, self.fail = pause, False

    async def __call__(self, batch: Sequence[Queued[int]]) -> None:
        self.batches.append([q.item for q in batch])
        await asyncio.sleep(self.pause)
        if self.fail:
            self.fail = False
            raise ValueError("a bug in the batch")
        for queued in batch:
            queued.answer.set_result((queued.item, len(self.batches)))


def test_commands_queued_while_a_batch_runs_form_the_next_batch_in_arrival_order() -> None:
    turns, aggregate, batches = LoopTurns(), uuid4(), Batches()

    async def main() -> list[object]:
        return list(await asyncio.gather(*(decided_in_batch(turns, aggregate, n, batches) for n in range(20))))

    answers = asyncio.run(main())
    assert [item for item, _ in answers] == list(range(20))  # type: ignore[misc]
    assert sorted(n for batch in batches.batches for n in batch) == list(range(20))  # each once
    assert all(batch == sorted(batch) for batch in batches.batches)
    assert len(batches.batches) < 20
    assert len(turns) == 0


def test_a_batch_is_at_most_max_batch_commands() -> None:
    turns, aggregate, batches = LoopTurns(), uuid4(), Batches(pause=0)
    count = MAX_BATCH * 2 + 5

    async def main() -> None:
        await asyncio.gather(*(decided_in_batch(turns, aggregate, n, batches) for n in range(count)))

    asyncio.run(main())
    assert max(len(b) for b in batches.batches) <= MAX_BATCH
    assert sum(len(b) for b in batches.batches) == count


def test_a_failing_batch_fails_its_members_and_the_queue_goes_on() -> None:
    turns, aggregate, batches = LoopTurns(), uuid4(), Batches()
    batches.fail = True

    async def main() -> list[object]:
        first = [asyncio.ensure_future(decided_in_batch(turns, aggregate, n, batches)) for n in range(3)]
        await asyncio.sleep(0.001)  # the first batch is under way
        later = [asyncio.ensure_future(decided_in_batch(turns, aggregate, n, batches)) for n in range(3, 6)]
        return list(await asyncio.gather(*first, *later, return_exceptions=True))

    answers = asyncio.run(asyncio.wait_for(main(), 10))
    assert all(isinstance(a, RuntimeError) for a in answers[:3]), answers
    assert [a for a in answers[3:]] == [(3, 2), (4, 2), (5, 2)]
    assert len(turns) == 0


def test_a_caller_that_stops_waiting_before_a_batch_takes_it_is_never_decided() -> None:
    turns, aggregate, batches = LoopTurns(), uuid4(), Batches(pause=0.05)

    async def main() -> list[object]:
        running = asyncio.ensure_future(decided_in_batch(turns, aggregate, 0, batches))
        await asyncio.sleep(0.01)  # batch 1 (item 0) is under way
        queued = [asyncio.ensure_future(decided_in_batch(turns, aggregate, n, batches)) for n in (1, 2, 3)]
        await asyncio.sleep(0)
        queued[1].cancel()  # still queued: it leaves the queue
        running.cancel()  # in a batch: the batch goes on, only this caller stops waiting
        return list(await asyncio.gather(running, *queued, return_exceptions=True))

    answers = asyncio.run(asyncio.wait_for(main(), 10))
    assert isinstance(answers[0], asyncio.CancelledError) and isinstance(answers[2], asyncio.CancelledError)
    assert answers[1] == (1, 2) and answers[3] == (3, 2)
    assert batches.batches == [[0], [1, 3]]
    assert len(turns) == 0


@pytest.mark.parametrize("holders", [1, 3])
def test_a_batch_waits_for_commands_holding_the_turn_alone(holders: int) -> None:
    turns, aggregate, batches = LoopTurns(), uuid4(), Batches(pause=0)
    order: list[str] = []

    async def alone(n: int) -> None:
        async with turns.turns([aggregate]):
            order.append(f"alone {n} in")
            await asyncio.sleep(0.02)
            order.append(f"alone {n} out")

    async def batched(n: int) -> None:
        await decided_in_batch(turns, aggregate, n, batches)
        order.append(f"batched {n}")

    async def main() -> None:
        holding = [asyncio.ensure_future(alone(n)) for n in range(holders)]
        await asyncio.sleep(0.001)
        await asyncio.gather(*holding, batched(0), batched(1))

    asyncio.run(main())
    assert order.index(f"alone {holders - 1} out") < order.index("batched 0")  # they came first (FIFO)
