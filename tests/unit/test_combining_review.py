"""Adversarial review of framework.combining / LoopTurns: random cancellations at every await point, batches
and lone holders of a turn mixed on a few aggregates. Whatever is cancelled when, a turn is held by one at
a time (two batches never overlap on one aggregate), each item is decided at most once and every caller that
was not cancelled gets its own answer, and no turn is left behind."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Sequence
from uuid import UUID, uuid4

import pytest

from framework.combining import Queued, decided_in_batch
from framework.contention import LoopTurns


class Exclusive:
    """Records who holds each aggregate; fails loudly if two overlap."""

    def __init__(self, rng: random.Random) -> None:
        self.inside: dict[UUID, int] = Counter()
        self.decided: Counter[int] = Counter()
        self.overlaps = 0
        self.rng = rng

    async def hold(self, aggregate: UUID) -> None:
        self.inside[aggregate] += 1
        if self.inside[aggregate] > 1:
            self.overlaps += 1
        try:
            for _ in range(self.rng.randint(0, 3)):
                await asyncio.sleep(0 if self.rng.random() < 0.5 else 0.0005)
        finally:
            self.inside[aggregate] -= 1

    def runner(self, aggregate: UUID):  # type: ignore[no-untyped-def]
        async def run(batch: Sequence[Queued[int]]) -> None:
            for queued in batch:
                self.decided[queued.item] += 1
            await self.hold(aggregate)
            for queued in batch:
                queued.answer.set_result(queued.item)
        return run


@pytest.mark.parametrize("seed", range(12))
def test_random_cancellations_never_overlap_a_turn_decide_twice_or_leave_a_turn_behind(seed: int) -> None:
    rng = random.Random(seed)
    turns = LoopTurns()
    aggregates = [uuid4() for _ in range(3)]
    seen = Exclusive(rng)

    async def batched(n: int, aggregate: UUID) -> object:
        return await decided_in_batch(turns, aggregate, n, seen.runner(aggregate))

    async def alone(n: int, chosen: list[UUID]) -> object:
        async with turns.turns(chosen):
            seen.decided[n] += 1
            for aggregate in chosen:
                await seen.hold(aggregate)
        return n

    async def main() -> tuple[list[object], list[bool]]:
        tasks: list[asyncio.Task[object]] = []
        cancelled: list[bool] = []
        for n in range(300):
            if rng.random() < 0.7:
                tasks.append(asyncio.ensure_future(batched(n, rng.choice(aggregates))))
            else:
                tasks.append(asyncio.ensure_future(alone(n, rng.sample(aggregates, rng.randint(1, 2)))))
            cancelled.append(False)
            if rng.random() < 0.5:
                await asyncio.sleep(0 if rng.random() < 0.7 else 0.0003)
            if rng.random() < 0.3:
                victim = rng.randrange(len(tasks))
                if not tasks[victim].done():
                    tasks[victim].cancel()
                    cancelled[victim] = True
        answers = list(await asyncio.gather(*tasks, return_exceptions=True))
        return answers, cancelled

    answers, cancelled = asyncio.run(asyncio.wait_for(main(), 30))
    assert seen.overlaps == 0
    assert all(count == 1 for count in seen.decided.values()), seen.decided.most_common(3)
    for n, (answer, was_cancelled) in enumerate(zip(answers, cancelled, strict=True)):
        if isinstance(answer, asyncio.CancelledError):
            assert was_cancelled
        else:
            assert answer == n and seen.decided[n] == 1
    assert len(turns) == 0


def test_a_batch_logs_in_a_context_of_its_own_not_in_its_first_caller_s() -> None:
    """A batch works for all its members: its log lines do not carry the correlation id of the request that
    happened to start it (framework.logs reads the context variable of the task that logs)."""
    from framework.observe import correlation_id

    seen: list[str | None] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(correlation_id.get())

    async def failing(batch: Sequence[Queued[int]]) -> None:
        raise ValueError("a bug in the batch")

    async def caller(n: int, turns: LoopTurns, aggregate: UUID) -> object:
        correlation_id.set(f"req-{n}")
        return await decided_in_batch(turns, aggregate, n, failing)

    async def main() -> list[object]:
        turns, aggregate = LoopTurns(), uuid4()
        return list(await asyncio.gather(*(caller(n, turns, aggregate) for n in range(3)), return_exceptions=True))

    handler = Seen(logging.ERROR)
    logging.getLogger("framework.combining").addHandler(handler)
    try:
        answers = asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        logging.getLogger("framework.combining").removeHandler(handler)
    assert all(isinstance(a, RuntimeError) for a in answers)
    assert seen == [None]


def test_a_caller_that_stopped_waiting_leaves_no_unretrieved_error_behind(caplog: pytest.LogCaptureFixture) -> None:
    """A caller cancelled (its client gone) while its batch runs, and the batch then fails: nobody reads the
    answer's error, and asyncio logs 'Future exception was never retrieved' at ERROR for each such caller
    (on a failing store, one error line per disconnected client). Its answer is consumed instead."""
    import gc

    async def failing(batch: Sequence[Queued[int]]) -> None:
        await asyncio.sleep(0.01)
        for queued in batch:
            queued.answer.set_exception(OSError("the connection was lost"))

    async def main() -> None:
        turns, aggregate = LoopTurns(), uuid4()
        callers = [asyncio.ensure_future(decided_in_batch(turns, aggregate, n, failing)) for n in range(3)]
        await asyncio.sleep(0.001)  # the batch runs
        for caller in callers[1:]:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await asyncio.sleep(0.02)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(asyncio.wait_for(main(), 10))
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()], caplog.text


def test_a_batch_task_cancelled_before_it_ever_ran_neither_spins_its_waiters_nor_keeps_the_turn() -> None:
    """A task cancelled before its first step never runs its body, so a ``finally`` there never runs: the
    turn kept the dead batch as the one under way, and every waiter went round ``asyncio.wait`` on a done
    task for ever (a busy loop), the turn never given back."""
    turns, aggregate = LoopTurns(), uuid4()
    rounds = 0

    async def answering(batch: Sequence[Queued[int]]) -> None:
        for queued in batch:
            queued.answer.set_result(queued.item)

    async def main() -> object:
        nonlocal rounds
        waiter = asyncio.ensure_future(decided_in_batch(turns, aggregate, 7, answering))
        await asyncio.sleep(0)  # the waiter queued its command and made the batch's task, not run yet
        (turn,) = turns._turns.values()
        assert turn.combining is not None
        turn.combining.cancel()  # as a loop's end cancels every task, before the batch's first step
        while not waiter.done() and rounds < 1000:
            rounds += 1
            await asyncio.sleep(0)
        return await asyncio.wait_for(waiter, 1)

    assert asyncio.run(main()) == 7
    assert rounds < 20
    assert len(turns) == 0
