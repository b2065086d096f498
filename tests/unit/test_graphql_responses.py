"""The response cache's parts: fresh positions shared by waiting requests, kept answers, their keys."""

from __future__ import annotations

import asyncio

from framework.graphql.responses import PositionClock, Positions, ResponseCache, cache_key
from framework.security import Principal


class Reads:
    """A position read the test releases by hand; counts the reads started."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.position = 1

    async def __call__(self) -> Positions:
        self.started += 1
        seen = self.position  # what the statement sees: the state when it started
        await self.release.wait()
        self.release.clear()
        return {"cards": (1, seen)}


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_callers_waiting_together_share_one_read() -> None:
    async def main() -> None:
        reads = Reads()
        clock = PositionClock(reads)
        waiting = [asyncio.create_task(clock.now()) for _ in range(10)]
        await _settle()
        reads.release.set()
        assert [await w for w in waiting] == [{"cards": (1, 1)}] * 10
        assert reads.started == 1

    asyncio.run(main())


def test_a_caller_arriving_during_a_read_gets_a_later_one() -> None:
    async def main() -> None:
        reads = Reads()
        clock = PositionClock(reads)
        first = asyncio.create_task(clock.now())
        await _settle()  # the first read has started, and sees position 1
        reads.position = 2  # a projection commits while it runs
        second, third = asyncio.create_task(clock.now()), asyncio.create_task(clock.now())
        await _settle()
        reads.release.set()
        assert await first == {"cards": (1, 1)}
        await _settle()
        reads.release.set()
        assert await second == await third == {"cards": (1, 2)}, "never the read that began before they asked"
        assert reads.started == 2

    asyncio.run(main())


def test_a_failed_read_fails_its_callers_and_the_next_read_is_fresh() -> None:
    async def main() -> None:
        calls = []

        async def read() -> Positions:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("down")
            return {"cards": (1, 5)}

        clock = PositionClock(read)
        try:
            await clock.now()
        except OSError:
            pass
        else:
            raise AssertionError("the failure reaches the caller")
        assert await clock.now() == {"cards": (1, 5)}

    asyncio.run(main())


def test_answers_are_not_kept_just_after_a_version_switch() -> None:
    async def main() -> None:
        now = [100.0]
        version = [1]

        async def read() -> Positions:
            return {"cards": (version[0], 7)}

        clock = PositionClock(read, settle_seconds=2.0, monotonic=lambda: now[0])
        await clock.now()
        assert clock.settled(["cards"]), "the first version seen is no switch"
        version[0] = 2
        await clock.now()
        assert not clock.settled(["cards"])
        now[0] += 2.5
        assert clock.settled(["cards"])

    asyncio.run(main())


def test_a_kept_answer_is_valid_only_at_its_positions() -> None:
    cache = ResponseCache(entries=2)
    cache.put("a", {"cards": (1, 5), "holdings": (1, 9)}, ["cards"], {"x": 1})
    kept = cache.get("a")
    assert kept is not None and kept.body == b'{"data":{"x":1}}'
    assert kept.valid_at({"cards": (1, 5), "holdings": (1, 10)}), "only what it read counts"
    assert not kept.valid_at({"cards": (1, 6)})
    assert not kept.valid_at({"cards": (2, 5)}), "another version is other rows"
    assert not kept.valid_at({}), "unknown positions are never valid"


def test_the_least_recently_used_answer_goes_first_and_large_ones_are_not_kept() -> None:
    cache = ResponseCache(entries=2, max_bytes=100)
    for key in ("a", "b"):
        cache.put(key, {"p": (1, 1)}, ["p"], key)
    cache.get("a")
    cache.put("c", {"p": (1, 1)}, ["p"], "c")
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("big", {"p": (1, 1)}, ["p"], "x" * 200)
    assert cache.get("big") is None and len(cache) == 2


def test_keys_tell_callers_and_variables_apart() -> None:
    ops = Principal(subject="ann", roles=frozenset({"ops"}))
    public = Principal(subject=None, roles=frozenset(), anonymous=True)
    assert cache_key("q", {"a": 1, "b": 2}, None, ops) == cache_key("q", {"b": 2, "a": 1}, None, ops)
    assert cache_key("q", None, None, ops) != cache_key("q", None, None, public)
    assert cache_key("q", None, None, ops) != cache_key("q", None, None, Principal("bob", frozenset({"ops"})))
    assert cache_key("q", {"a": 1}, None, ops) != cache_key("q", {"a": 2}, None, ops)
    assert cache_key("q", None, "A", ops) != cache_key("q", None, "B", ops)
