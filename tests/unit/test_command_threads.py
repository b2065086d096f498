"""The write API's command threads: jobs in parallel up to the count, outcomes back on the loop,
the request's context carried, a cancelled request waiting for its running command."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from framework.http.write_api import _CommandThreads

VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("VALUE", default="unset")


def test_jobs_that_need_each_other_run_at_once_up_to_the_count() -> None:
    barrier = threading.Barrier(8, timeout=10)  # every job waits for the other seven: all must run together

    async def main() -> list[int]:
        threads = _CommandThreads(8)
        return await asyncio.gather(*(threads.run(lambda i=i: barrier.wait() * 0 + i) for i in range(8)))

    assert asyncio.run(main()) == list(range(8))


def test_more_jobs_than_threads_queue_and_all_finish_in_few_threads() -> None:
    names: set[str] = set()

    def job(i: int) -> int:
        names.add(threading.current_thread().name)
        return i * 2

    async def main() -> list[int]:
        threads = _CommandThreads(3)
        first = await asyncio.gather(*(threads.run(job, i) for i in range(50)))
        return first + await asyncio.gather(*(threads.run(job, i) for i in range(50, 100)))

    assert asyncio.run(main()) == [i * 2 for i in range(100)]
    assert 1 <= len(names) <= 3


def test_errors_are_raised_to_the_caller_and_the_context_travels() -> None:
    def fails() -> None:
        raise KeyError(VALUE.get())

    async def main() -> str:
        threads = _CommandThreads(2)
        VALUE.set("request-1")
        with pytest.raises(KeyError, match="request-1"):
            await threads.run(fails)
        return await threads.run(VALUE.get)

    assert asyncio.run(main()) == "request-1"


def test_a_cancelled_request_waits_for_its_running_command_to_end() -> None:
    started, release = threading.Event(), threading.Event()
    ended: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        ended.append("committed")
        return "done"

    async def main() -> None:
        threads = _CommandThreads(1)
        task = asyncio.create_task(threads.run(slow))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the command, which may be committing
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended == ["committed"]

    asyncio.run(main())
