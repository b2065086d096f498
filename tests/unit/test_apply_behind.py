"""``ProjectionWorker.apply_behind``: a delivery's commit runs while the next delivery's handlers do,
and whatever happens to that commit (refused, failed, overtaken by a switch) no event is applied
twice or skipped: every test compares the read model with a replay and counts applications."""

from __future__ import annotations

import threading
import time

import pytest

from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.errors import RowRejected, StoreUnavailable
from framework.replay import rebuild
from framework.store import Notification
from framework.views import Batch
from framework.worker import ProjectionWorker

from .test_worker import NO_WAIT, ParkingTicks, Tick, Ticks, Total, labels, tick, total

WAIT = 10.0  # an upper bound against hanging, never a timing that is asserted


class HeldCommits(MemoryViewStore):
    """A live worker's staged commits wait for ``release``; ``refuse``/``fail``: positions whose commit is refused
    (a row the database rejects) or fails (the database went away), once each."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.release.set()
        self.committing = threading.Event()
        self.refuse: set[int] = set()
        self.fail: set[int] = set()
        self.committed: list[int] = []

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        if follow_active:  # a live worker's (a rebuild commits with follow_active=False, never held)
            self.committing.set()
            assert self.release.wait(WAIT)
        position = batch.position  # type: ignore[attr-defined]
        if position in self.refuse:
            self.refuse.discard(position)
            raise RowRejected(f"refused at {position}")
        if position in self.fail:
            self.fail.discard(position)
            raise StoreUnavailable("the view store went away")
        super().commit_staged(name, version, batch, follow_active=follow_active)
        self.committed.append(position)


def _deliveries(store: MemoryEventStore, count: int, size: int) -> list[list[Notification]]:
    tick(store, *(f"e{i}" for i in range(count)))
    every = store.read_all(0, count)
    return [every[i:i + size] for i in range(0, count, size)]


def _assert_matches_replay(views: MemoryViewStore, store: MemoryEventStore, name: str = "ticks") -> None:
    replayed = MemoryViewStore()
    projector = ParkingTicks() if name == "parking_ticks" else Ticks()
    rebuild(projector, replayed, store)
    assert views.active_position(name) == store.head() == replayed.active_position(name)
    for model in (Tick, Total):
        got = sorted(r.model_dump_json() for r in views.query(name, model))
        want = sorted(r.model_dump_json() for r in replayed.query(name, model))
        assert got == want, model.table


def _wait_until(condition: object) -> None:
    deadline = time.monotonic() + WAIT
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.001)


def test_a_delivery_is_handled_while_the_one_before_commits() -> None:
    store, views = MemoryEventStore(), HeldCommits()
    first, second = _deliveries(store, 20, 10)
    worker = ProjectionWorker(Ticks(), views, store)
    views.release.clear()
    worker.apply_behind(first)  # returns with its commit running (held)
    assert views.committing.wait(WAIT) and views.position("ticks", 1) == 0
    applying = threading.Thread(target=worker.apply_behind, args=(second,))
    applying.start()
    _wait_until(lambda: worker.handled == 20)
    assert worker.handled == 20 and views.position("ticks", 1) == 0  # handled before the first committed
    views.release.set()
    applying.join(WAIT)
    assert worker.position == 10  # apply_behind returned: the first is committed
    worker.drain()
    assert worker.position == 20 and views.committed == [10, 20]
    assert total(views) == 20  # the running total read the first delivery's row while it committed
    _assert_matches_replay(views, store)


@pytest.mark.parametrize("refused_at", [10, 20, 30])
def test_a_commit_refused_behind_is_applied_the_careful_way_once(refused_at: int) -> None:
    store, views = MemoryEventStore(), HeldCommits()
    views.refuse = {refused_at}
    worker = ProjectionWorker(Ticks(), views, store)
    for delivery in _deliveries(store, 30, 10):
        worker.apply_behind(delivery)
    worker.drain()
    assert worker.position == 30 and total(views) == 30
    assert labels(views) == [f"e{i}" for i in range(30)]
    _assert_matches_replay(views, store)


def test_a_commit_that_fails_behind_leaves_nothing_running_and_the_redelivery_applies_it_once() -> None:
    store, views = MemoryEventStore(), HeldCommits()
    views.fail = {20}
    deliveries = _deliveries(store, 40, 10)
    worker = ProjectionWorker(Ticks(), views, store)
    worker.apply_behind(deliveries[0])
    worker.apply_behind(deliveries[1])
    with pytest.raises(StoreUnavailable):
        worker.apply_behind(deliveries[2])  # waits for the second's commit, which fails
    assert worker.position == 10 and views.position("ticks", 1) == 10
    for delivery in deliveries[1:]:  # unacknowledged: the bus delivers them again
        worker.apply_behind(delivery)
    worker.drain()
    assert total(views) == 40
    _assert_matches_replay(views, store)


def test_a_switch_while_committing_behind_is_followed_and_nothing_doubles() -> None:
    store, views = MemoryEventStore(), HeldCommits()
    deliveries = _deliveries(store, 30, 10)
    worker = ProjectionWorker(Ticks(), views, store)
    worker.apply_behind(deliveries[0])
    worker.drain()
    views.release.clear()
    worker.apply_behind(deliveries[1])  # its commit is held ...
    assert views.committing.wait(WAIT)
    rebuild(Ticks(), views, store, options=NO_WAIT)  # ... while a replay switches to version 2 (all 30)
    views.release.set()
    worker.apply_behind(deliveries[2])
    worker.drain()
    assert worker.version == 2 and worker.position == 30
    assert total(views) == 30 and views.position("ticks", 1) == 10
    _assert_matches_replay(views, store)


def test_a_handler_failing_behind_parks_that_event_and_applies_the_others_once() -> None:
    store, views = MemoryEventStore(), HeldCommits()
    deliveries = _deliveries(store, 30, 10)
    Ticks.poisoned = {"e15"}  # the class attribute both projectors read (test_worker's fixture resets it)
    try:
        worker = ProjectionWorker(ParkingTicks(), views, store, options=NO_WAIT)
        for delivery in deliveries:
            worker.apply_behind(delivery)
        worker.drain()
    finally:
        Ticks.poisoned = set()
    assert worker.position == 30 and total(views, "parking_ticks") == 29
    assert [letter.position for letter in views.dead_letters("parking_ticks")] == [16]


def test_redelivered_and_gapped_deliveries_take_the_plain_path() -> None:
    store, views = MemoryEventStore(), HeldCommits()
    deliveries = _deliveries(store, 30, 10)
    worker = ProjectionWorker(Ticks(), views, store)
    worker.apply_behind(deliveries[0])
    worker.apply_behind(deliveries[0])  # a redelivery while it commits: nothing new
    worker.apply_behind(deliveries[2])  # a gap (11..20 missing): filled from the store
    worker.apply_behind(deliveries[1])  # late: all done
    worker.drain()
    assert worker.position == 30 and total(views) == 30
    _assert_matches_replay(views, store)

