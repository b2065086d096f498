"""The position watch over the in-process signals: the port's conformance, waits woken by commits
with no read per wake, positions past the head answered at once, and the bound on waiting requests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from framework.adapters.memory_positions import MemoryPositionSignals
from framework.adapters.memory_views import MemoryViewStore
from framework.errors import TooManyWaiting
from framework.positions import Interest, PositionSignals, PositionWatch, touched_by
from framework.testing.positions_conformance import PositionSignalsConformance, Tick, commit
from framework.views import ViewStore


class TestMemoryPositionSignals(PositionSignalsConformance):
    @pytest.fixture
    def views(self) -> ViewStore:
        return MemoryViewStore()

    @pytest.fixture
    def signals(self, views: ViewStore) -> PositionSignals:
        assert isinstance(views, MemoryViewStore)
        return MemoryPositionSignals(views)


class CountingSource:
    """The view store's position reads, counted."""

    def __init__(self, views: MemoryViewStore) -> None:
        self.views, self.reads = views, 0

    def active_version(self, name: str) -> int:
        self.reads += 1
        return self.views.active_version(name)

    def position(self, name: str, version: int) -> int:
        self.reads += 1
        return self.views.position(name, version)


def watched(head: int = 100, **options: Any) -> tuple[MemoryViewStore, CountingSource, PositionWatch]:
    views = MemoryViewStore()
    views.ensure_tables("a", 1, [Tick])
    views.ensure_tables("b", 1, [Tick])
    source = CountingSource(views)
    return views, source, PositionWatch(MemoryPositionSignals(views), source, lambda: head, **options)


def test_many_waits_are_woken_by_commits_without_reading_positions_again() -> None:
    views, source, watch = watched(recheck_seconds=3600)

    async def run() -> list[dict[str, Any]]:
        waits = [asyncio.create_task(watch.wait_for(["a", "b"], 10 + i % 3, timeout=30)) for i in range(50)]
        while watch.waiting < 50:
            await asyncio.sleep(0.01)
        reads = source.reads
        for position in (5, 11, 12):
            await asyncio.to_thread(commit, views, "a", position)
            await asyncio.to_thread(commit, views, "b", position)
        outcomes = await asyncio.gather(*waits)
        assert source.reads == reads  # woken by the signals alone
        await watch.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert all(o["reached"] and min(o["positions"].values()) >= o["requested"] for o in outcomes)
    assert source.reads <= 4  # each projection's position read once, when first asked for


def test_a_position_past_the_head_is_answered_at_once_with_the_head() -> None:
    _, _, watch = watched(head=7)

    async def run() -> dict[str, Any]:
        outcome = await watch.wait_for(["a"], 1_000, timeout=3600)
        await watch.close()
        return outcome

    assert asyncio.run(run()) == {"requested": 1_000, "reached": False, "positions": {"a": 0}, "head": 7}


def test_a_wait_that_times_out_says_it_was_not_reached() -> None:
    _, _, watch = watched(head=50)

    async def run() -> dict[str, Any]:
        outcome = await watch.wait_for(["a"], 20, timeout=0.05)
        await watch.close()
        return outcome

    assert asyncio.run(run()) == {"requested": 20, "reached": False, "positions": {"a": 0}}


def test_waits_past_the_bound_are_refused_with_a_clear_error() -> None:
    views, _, watch = watched(max_waiting=3)

    async def run() -> None:
        waits = [asyncio.create_task(watch.wait_for(["a"], 9, timeout=30)) for _ in range(3)]
        while watch.waiting < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(TooManyWaiting, match="3 requests waiting"):
            await watch.wait_for(["a"], 9, timeout=30)
        await asyncio.to_thread(commit, views, "a", 9)
        assert all(o["reached"] for o in await asyncio.gather(*waits))
        assert watch.waiting == 0
        assert (await watch.wait_for(["a"], 9, timeout=30))["reached"]  # room again
        await watch.close()

    asyncio.run(run())


def test_a_switch_to_another_version_moves_the_waits_to_its_position() -> None:
    views, _, watch = watched()
    views.ensure_tables("a", 2, [Tick])

    async def run() -> dict[str, Any]:
        wait = asyncio.create_task(watch.wait_for(["a"], 4, timeout=30))
        while watch.waiting < 1:
            await asyncio.sleep(0.01)

        def rebuild_and_switch() -> None:
            with views.switch("a", 2) as batch:
                batch.advance(6, None)

        await asyncio.to_thread(rebuild_and_switch)
        outcome = await wait
        await watch.close()
        return outcome

    assert asyncio.run(run())["reached"]


def test_an_interest_in_some_rows_is_told_only_of_commits_changing_them() -> None:
    views, _, watch = watched()

    def put(name: str, position: int) -> None:
        with views.batch("a", 1) as batch:
            batch.put(Tick(name=name, count=position))
            batch.advance(position, None)

    async def run() -> tuple[list[bool], list[bool]]:
        await watch.positions(["a"])
        mine, every = Interest("a", "ticks", 0, "mine"), Interest("a")
        told_mine, told_every = [], []
        with watch.interest(mine), watch.interest(every):
            for name, position in (("other", 1), ("mine", 2), ("other", 3)):
                await asyncio.to_thread(put, name, position)
                while watch.positions_known()["a"] < position:
                    await asyncio.sleep(0.01)
                told_mine.append(mine.event.is_set())
                told_every.append(every.event.is_set())
                mine.event.clear()
                every.event.clear()
        await watch.close()
        return told_mine, told_every

    told_mine, told_every = asyncio.run(run())
    assert told_mine == [False, True, False]
    assert told_every == [True, True, True]


def test_subscriptions_past_the_bound_are_refused_with_a_clear_error() -> None:
    _, _, watch = watched(max_subscriptions=1)
    with watch.subscribed():
        with pytest.raises(TooManyWaiting, match="1 subscriptions"), watch.subscribed():
            pass
        assert watch.subscriptions == 1
    with watch.subscribed():  # room again
        assert watch.subscriptions == 1


def test_a_big_batch_is_not_described_row_by_row() -> None:
    changes = [(Tick, (f"t{i}",), None) for i in range(3)]
    assert touched_by(changes, limit=3) == {"ticks": frozenset({("t0",), ("t1",), ("t2",)})}
    assert touched_by(changes, limit=2) is None  # unknown: every interest in the projection is told


class Unreadable:
    """A row no one may describe: reading any of its columns fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a row of a batch past the limit was read ({name})")


def test_a_big_batch_is_counted_before_any_row_is_described() -> None:
    from framework.positions import described

    few = [(Tick, (f"t{i}",), None) for i in range(2)]
    assert described(iter(few), limit=2) == ({"ticks": frozenset({("t0",), ("t1",)})},
                                             {"ticks": {("t0",): None, ("t1",): None}})
    many = ((Tick, (f"t{i}",), Unreadable()) for i in range(1_000))
    assert described(many, limit=256) == (None, None), "neither keys nor values: listeners read again"


class Delaying:
    """Memory signals whose notifications of chosen positions are held back (``held``) until released,
    or dropped: a notification on its way, or lost."""

    def __init__(self, views: MemoryViewStore) -> None:
        self.inner, self.hold, self.drop = MemoryPositionSignals(views), set[int](), set[int]()
        self.held: list[Any] = []
        self._deliver: Any = None

    async def listen(self, deliver: Any, stop: asyncio.Event) -> None:
        self._deliver = deliver

        def filtered(change: Any) -> None:
            if change is not None and change.position in self.drop:
                return
            if change is not None and change.position in self.hold:
                self.held.append(change)
                return
            deliver(change)

        await self.inner.listen(filtered, stop)

    def release(self) -> None:
        for change in self.held:
            self._deliver(change)
        self.held.clear()


def _put(views: MemoryViewStore, name: str, position: int) -> None:
    with views.batch("a", 1) as batch:
        batch.put(Tick(name=name, count=position))
        batch.advance(position, None)


def test_a_recheck_racing_a_notification_on_its_way_wakes_only_the_subscribers_it_concerns() -> None:
    views = MemoryViewStore()
    views.ensure_tables("a", 1, [Tick])
    signals = Delaying(views)
    watch = PositionWatch(signals, CountingSource(views), recheck_seconds=3600)

    async def run() -> tuple[bool, int, int]:
        await watch.positions(["a"])
        mine = Interest("a", "ticks", 0, "mine")
        with watch.interest(mine):
            signals.hold.add(2)
            await asyncio.to_thread(_put, views, "other", 2)
            while not signals.held:
                await asyncio.sleep(0.01)
            await watch._refresh(["a"], recheck=True)  # reads 2 before the notification is heard
            before = watch.positions_known()["a"]
            signals.release()
            told = mine.event.is_set()
        await watch.close()
        return told, before, watch.positions_known()["a"]

    told, before, after = asyncio.run(run())
    assert (told, before, after) == (False, 0, 2)


def test_a_lost_notification_is_made_up_for_by_the_rechecks() -> None:
    views = MemoryViewStore()
    views.ensure_tables("a", 1, [Tick])
    signals = Delaying(views)
    signals.drop.add(2)
    watch = PositionWatch(signals, CountingSource(views), recheck_seconds=0.05)

    async def run() -> tuple[dict[str, Any], bool]:
        await watch.positions(["a"])
        mine = Interest("a", "ticks", 0, "mine")
        with watch.subscribed(), watch.interest(mine):
            await asyncio.to_thread(_put, views, "mine", 2)
            outcome = await watch.wait_for(["a"], 2, timeout=30)
            told = mine.event.is_set()
        await watch.close()
        return outcome, told

    outcome, told = asyncio.run(run())
    assert outcome["reached"] and outcome["positions"] == {"a": 2}
    assert told  # what changed is not known: every subscriber reads again


def test_a_commit_that_changed_no_row_says_so_and_one_that_does_not_say_is_unknown() -> None:
    from framework.adapters.postgres_views import parse_notice, position_notice

    nothing = parse_notice(position_notice("cards", 1, 7, touched={}))
    assert nothing is not None and nothing.touched == {}, "listeners keep what they hold"
    unknown = parse_notice(position_notice("cards", 1, 8, touched=None))
    assert unknown is not None and unknown.touched is None, "more rows than announced: anything may differ"
    some = parse_notice(position_notice("cards", 1, 9, touched={"cards": frozenset({("CA-1",)})}))
    assert some is not None and some.touched == {"cards": frozenset({("CA-1",)})}


def test_a_notice_carries_the_changed_rows_values_when_they_fit() -> None:
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from framework.adapters.postgres_views import parse_notice, position_notice
    from framework.positions import changed_values, touched_by
    from framework.readmodel import ReadModel

    class Dated(ReadModel):
        table = "dated"
        key = ("id",)
        id: str
        day: date | None = None
        at: datetime | None = None
        amount: Decimal | None = None
        score: float | None = None
        tags: list[str] | None = None

    changes = [(Dated, ("a",), Dated(id="a", day=date(2026, 1, 2), at=datetime(2026, 1, 2, 3, tzinfo=UTC),
                                     amount=Decimal("1.50"), score=float("inf"), tags=["x"])),
               (Dated, ("b",), None)]
    change = parse_notice(position_notice("p", 1, 9, touched=touched_by(changes), rows=changed_values(changes)))
    assert change is not None and change.rows is not None
    assert change.rows["dated"][("b",)] is None, "deleted"
    assert change.rows["dated"][("a",)] == {"id": "a", "day": "2026-01-02", "at": "2026-01-02T03:00:00+00:00",
                                           "amount": "1.50", "score": "inf"}, "scalar columns only, exact"
    many = [(Dated, (f"k{i:04d}",), Dated(id=f"k{i:04d}", day=date(2026, 1, 2))) for i in range(200)]
    crowded = parse_notice(position_notice("p", 1, 10, touched=touched_by(many), rows=changed_values(many)))
    assert crowded is not None and crowded.touched is not None and crowded.rows is None, (
        "keys that fit, values that do not: the keys alone (a page of the table is dropped)")
