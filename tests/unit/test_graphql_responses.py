"""The response cache's parts: fresh positions shared by waiting requests, kept answers, their keys."""

from __future__ import annotations

import asyncio
from datetime import date

from framework.graphql.responses import PositionClock, Positions, RecordingViews, ResponseCache, cache_key
from framework.graphql.responses import Reads as Noted
from framework.positions import PositionChange
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


# --- commits heard vouch for kept answers whose rows they did not touch ---------------------------------


class _Card:
    table = "cards"


class _Security:
    table = "securities"


class _Views:
    """Just enough of a view store: answers nothing, so that only the notes matter."""

    def get_many(self, name: str, model: type, keys: list[tuple[object, ...]]) -> list[None]:
        return [None] * len(keys)

    def query(self, name: str, model: type, *args: object, **kwargs: object) -> list[object]:
        return []

    def active_position(self, name: str) -> int:
        return 0


def _card_reads(*ids: object) -> Noted:
    reads = Noted()
    RecordingViews(_Views(), reads).get_many("cards", _Card, [(i,) for i in ids])
    return reads


def _heard(cache: ResponseCache, position: int, *, touched: dict[str, set[tuple[str, ...]]] | None,
           name: str = "cards", version: int = 1, switched: bool = False) -> None:
    cache.hear(PositionChange(name, version, position, switched=switched,
                              touched=None if touched is None else {t: frozenset(k) for t, k in touched.items()}))


def _listening() -> ResponseCache:
    cache = ResponseCache(entries=8)
    cache.hear(None)  # the listener began: commits from now on are heard
    return cache


def test_a_commit_to_other_rows_leaves_a_kept_answer_valid_up_to_the_position_heard() -> None:
    cache = _listening()
    cache.put("a", {"cards": (1, 5, 5)}, ["cards"], {"card": "A"}, _card_reads("A"), cache.epoch)
    _heard(cache, 6, touched={"cards": {("B",)}})
    kept = cache.get("a")
    assert kept is not None
    assert cache.valid(kept, {"cards": (1, 6, 6)}), "B's commit did not touch A"
    assert not cache.valid(kept, {"cards": (1, 7, 7)}), "a position not heard yet: unknown, computed again"
    assert not cache.valid(kept, {"cards": (2, 6, 6)}), "another version"
    _heard(cache, 7, touched={"cards": {("A",)}})
    assert cache.get("a") is None, "A's commit drops it"


def test_a_page_is_dropped_by_any_change_to_its_table_only() -> None:
    cache = _listening()
    reads = Noted()
    RecordingViews(_Views(), reads).query("cards", _Card, [], limit=20)
    cache.put("page", {"cards": (1, 5, 5)}, ["cards"], {"page": []}, reads, cache.epoch)
    _heard(cache, 6, touched={"securities": {("US0378331005",)}})
    kept = cache.get("page")
    assert kept is not None and cache.valid(kept, {"cards": (1, 6, 6)}), "another table of the projection"
    _heard(cache, 7, touched={"cards": {("Z",)}})
    assert cache.get("page") is None, "any row of its table may enter or leave the page"


def test_a_commit_not_saying_what_it_changed_or_a_switch_drops_every_answer_of_its_projection() -> None:
    cache = _listening()
    for key, name in (("a", "cards"), ("h", "holdings")):
        reads = Noted()
        reads.rows(name, "rows", [("A",)])
        cache.put(key, {name: (1, 5, 5)}, [name], {}, reads, cache.epoch)
    _heard(cache, 6, touched=None)  # more than 256 rows: not announced
    assert cache.get("a") is None and cache.get("h") is not None
    _heard(cache, 6, touched={"rows": {("B",)}}, name="holdings", version=2, switched=True)
    assert cache.get("h") is None


def test_a_new_listening_session_forgets_everything() -> None:
    cache = _listening()
    cache.put("a", {"cards": (1, 5, 5)}, ["cards"], {}, _card_reads("A"), cache.epoch)
    epoch = cache.epoch
    cache.hear(None)  # reconnected: commits meanwhile were not heard
    assert cache.get("a") is None and cache.epoch == epoch + 1
    cache.put("b", {"cards": (1, 5, 5)}, ["cards"], {}, _card_reads("A"), epoch)
    _heard(cache, 6, touched={"cards": {("B",)}})
    kept = cache.get("b")
    assert kept is not None and kept.epoch == -1, "its positions were read in the old session"
    assert not cache.valid(kept, {"cards": (1, 6, 6)}) and cache.valid(kept, {"cards": (1, 5, 5)})


def test_an_answer_whose_rows_changed_while_it_was_computed_is_vouched_for_by_its_positions_only() -> None:
    cache = _listening()
    _heard(cache, 6, touched={"cards": {("A",)}})  # heard after its positions (5) were read, before it is kept
    cache.put("a", {"cards": (1, 5, 5)}, ["cards"], {}, _card_reads("A"), cache.epoch)
    kept = cache.get("a")
    assert kept is not None and kept.epoch == -1 and not cache.valid(kept, {"cards": (1, 6, 6)})
    cache.put("b", {"cards": (1, 5, 5)}, ["cards"], {}, _card_reads("B"), cache.epoch)
    kept = cache.get("b")
    assert kept is not None and cache.valid(kept, {"cards": (1, 6, 6)}), "A's commit is not B's"


def test_answers_not_followed_by_commits() -> None:
    cache = _listening()
    unknown = _card_reads("A")
    RecordingViews(_Views(), unknown).active_position("cards")  # a read the cache cannot follow
    dated = Noted()
    RecordingViews(_Views(), dated).get_many("cards", _Card, [(date(2026, 1, 1),)])  # another spelling may match
    undeclared = _card_reads("A")
    undeclared.rows("holdings", "rows", [("A",)])  # a projection whose positions it did not record
    cache.put("unknown", {"cards": (1, 5, 5)}, ["cards"], {}, unknown, cache.epoch)
    _heard(cache, 6, touched={"cards": {("B",)}})
    kept = cache.get("unknown")
    assert kept is not None and kept.epoch == -1, "kept, vouched for by equal positions only"
    cache.put("undeclared", {"cards": (1, 6, 6)}, ["cards"], {}, undeclared, cache.epoch)
    assert cache.get("undeclared") is None, "no position of its own vouches for what it read of `holdings`"
    assert dated.where == {("cards", "cards")}, "a date key is followed as its whole table"
    partitioned = ResponseCache(entries=8)
    partitioned.hear(None)
    partitioned.put("p", {"cards": (1, 5, 20)}, ["cards"], {}, _card_reads("A"), partitioned.epoch)
    _heard(partitioned, 5, touched={"cards": {("B",)}})  # another partition: the lowest stands still
    kept = partitioned.get("p")
    assert kept is not None and not partitioned.valid(kept, {"cards": (1, 5, 21)}), "partitioned: exact only"
    assert partitioned.valid(kept, {"cards": (1, 5, 20)})
    before = ResponseCache(entries=8)  # nothing heard yet: no session
    before.put("a", {"cards": (1, 5, 5)}, ["cards"], {}, _card_reads("A"), before.epoch)
    assert before.get("a") is not None and before.get("a").epoch == -1  # type: ignore[union-attr]


def test_a_kept_answer_older_than_the_commits_remembered_is_not_vouched_for() -> None:
    cache = _listening()
    for position in range(1, 400):
        _heard(cache, position, touched={"cards": {(f"X{position}",)}})
    cache.put("a", {"cards": (1, 10, 10)}, ["cards"], {}, _card_reads("A"), cache.epoch)
    kept = cache.get("a")
    assert kept is not None and kept.epoch == -1, "commits after 10 are no longer all remembered"


def test_an_answer_looked_up_before_a_commit_that_drops_it_is_not_served_after() -> None:
    cache = _listening()
    cache.put("a", {"cards": (1, 5, 5)}, ["cards"], {}, _card_reads("A"), cache.epoch)
    kept = cache.get("a")  # the request then waits for fresh positions; meanwhile A's commit is heard
    _heard(cache, 6, touched={"cards": {("A",)}})
    assert kept is not None and not cache.valid(kept, {"cards": (1, 6, 6)})
    assert cache.valid(kept, {"cards": (1, 5, 5)}), "at its own positions it is still right"


def test_behind_names_the_commits_a_fresh_read_saw_before_the_listener_heard_them() -> None:
    cache = _listening()
    cache.put("a", {"cards": (1, 5, 5)}, ["cards"], {}, _card_reads("A"), cache.epoch)
    kept = cache.get("a")
    assert kept is not None
    assert cache.behind(kept, {"cards": (1, 7, 7)}) == {"cards": 7}, "7 is not heard yet"
    _heard(cache, 7, touched={"cards": {("B",)}})
    assert cache.behind(kept, {"cards": (1, 7, 7)}) == {} and cache.valid(kept, {"cards": (1, 7, 7)})
    assert cache.behind(kept, {"cards": (1, 9, 30)}) == {}, "partitioned: hearing would not help"
    _heard(cache, 8, touched={"cards": {("A",)}})
    assert cache.behind(kept, {"cards": (1, 9, 9)}) == {}, "dropped"


def test_a_page_read_on_the_loop_asks_the_stores_text_order_off_it() -> None:
    """``orders_text_by_code_point`` is a blocking database read: on the event loop it would stop every
    request for a round trip (or a connect timeout, when the database just went away)."""
    import threading

    asked_on: list[threading.Thread] = []

    class Ordering(_Views):
        def orders_text_by_code_point(self) -> bool:
            asked_on.append(threading.current_thread())
            return True

        async def query_async(self, name: str, model: type, *args: object, **kwargs: object) -> list[object]:
            return []

    async def read() -> threading.Thread:
        await RecordingViews(Ordering(), Noted()).query_async("cards", _Card, [], limit=20)
        return threading.current_thread()

    loop_thread = asyncio.run(read())
    assert asked_on and asked_on[0] is not loop_thread


def test_a_kept_answer_holds_its_bytes_not_its_objects() -> None:
    """Kept answers are served from their JSON bytes only (with a claim's extensions spliced in): the
    answer's objects, kept beside them, held several times the bytes' memory for nothing (the size bound
    is on the bytes)."""
    import gc
    import tracemalloc

    cache = ResponseCache(entries=8)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = {"cards": {"nodes": [{"actionId": f"CA-{i}", "status": "announced", "n": i * 1_000_003}
                                    for i in range(2_000)]}}
        cache.put("a", {"cards": (1, 5)}, ["cards"], data)
        del data
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    kept = cache.get("a")
    assert kept is not None
    assert held < 2 * len(kept.body), f"{held} bytes held for an answer of {len(kept.body)}"
