"""AsyncGroupCommit: requests queued while a group commits form the next group, each with its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from framework.adapters.group_commit import AsyncGroupCommit
from framework.errors import StoreUnavailable


class Gated:
    """A commit function that waits for ``release`` and records its groups."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail: BaseException | None = None

    async def __call__(self, group: Sequence[int]) -> Sequence[int | BaseException]:
        self.groups.append(list(group))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n in group]


def test_a_lone_request_commits_alone_and_requests_queued_meanwhile_form_the_next_group() -> None:
    async def main() -> None:
        commit = Gated()
        committer: AsyncGroupCommit[int, int] = AsyncGroupCommit(commit)
        first = asyncio.ensure_future(committer.submit(0))
        while not commit.groups:
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(committer.submit(n)) for n in (2, 3, 4)]
        while committer.waiting() < 3:
            await asyncio.sleep(0)
        commit.release.set()
        assert await first == 0
        assert await rest[0] == 20 and await rest[2] == 40
        with pytest.raises(ValueError, match="odd 3"):  # fails alone
            await rest[1]
        assert commit.groups == [[0], [2, 3, 4]]
        assert committer.group_sizes == {1: 1, 3: 1}

    asyncio.run(main())


def test_a_failed_group_gives_each_request_its_own_error_and_a_cancelled_caller_leaves_the_rest() -> None:
    async def main() -> None:
        commit = Gated()
        commit.fail = StoreUnavailable("down")
        committer: AsyncGroupCommit[int, int] = AsyncGroupCommit(commit)
        tasks = [asyncio.ensure_future(committer.submit(n)) for n in (0, 2, 4)]
        while not commit.groups:
            await asyncio.sleep(0)
        tasks[0].cancel()
        commit.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert all(isinstance(r, StoreUnavailable) for r in results[1:])
        assert results[1] is not results[2]

    asyncio.run(main())
