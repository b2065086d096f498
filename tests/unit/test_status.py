"""``eventfold status`` tells the truth (issue 9), on the in-process adapters with a clock the test moves.

* a version queries no longer read is ``retired``: no lag, outside the readiness check; a version
  being rebuilt stays ``rebuilding``;
* ``stalled`` means the worker holding the lease made no progress for ``STALL_SECONDS`` while
  behind: a worker busy on one long batch reports progress with its heartbeat and stays ``running``;
* the state belongs to the lease holder: ``running`` with no live lease is ``stopped``, and a worker
  that lost the lease changes nothing (``set_state_if_owner``), not even when it stops;
* the outbox depth, the age of its oldest command and the pending deadlines come from the store.

The clock: ``MemoryViewStore(clock)`` stamps leases and outbox entries with it, and status reads
"now" from ``framework.status.datetime``, which the ``clock`` fixture points at the same clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import framework.status as status_module
from example_app.commands import OpenAccount
from example_app.handlers import router as example_router
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_bus import MemoryBus, MemoryConsumer
from framework.adapters.memory_views import MemoryViewStore
from framework.bus import CommandBus
from framework.dispatcher import Dispatcher
from framework.http.health import projections_check
from framework.projector import HandlerContext, ProcessManager, on
from framework.replay import rebuild
from framework.runner import LeaseOptions, run_projection
from framework.status import STALL_SECONDS, ProjectionStatus, projection_statuses
from framework.views import Deadline
from framework.worker import ProjectionWorker, WorkerOptions

from .test_worker import Tick, Ticked, Ticks, labels, tick, total

WAIT = 10.0  # an upper bound against hanging, never a timing that is asserted
TTL = 600.0  # leases in these tests outlive every jump of the clock unless a test lets one expire


class Clock:
    """Aware UTC time that moves only when the test says so (starts at the real now)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()

    class StatusDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return clock.now if tz is not None else clock.now.replace(tzinfo=None)

    monkeypatch.setattr(status_module, "datetime", StatusDatetime)
    return clock


def statuses(store: MemoryEventStore, views: MemoryViewStore) -> dict[tuple[str, int], ProjectionStatus]:
    return {(s.name, s.version): s for s in projection_statuses(store, views)}


def status_of(store: MemoryEventStore, views: MemoryViewStore, name: str) -> ProjectionStatus:
    (found,) = [s for s in projection_statuses(store, views) if s.name == name and s.active]
    return found


def poll(condition: Callable[[], Any], message: str) -> Any:
    """Wait (polling) until ``condition`` is truthy; fail after ``WAIT`` seconds."""
    deadline = time.monotonic() + WAIT
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(0.005)
    return result


async def apoll(condition: Callable[[], Any], message: str) -> Any:
    deadline = time.monotonic() + WAIT
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        await asyncio.sleep(0.005)
    return result


# --- 5. retired and rebuilding versions -------------------------------------------------------


def test_a_superseded_version_is_retired_without_lag_and_outside_readiness(clock: Clock) -> None:
    store, views = MemoryEventStore(), MemoryViewStore(clock)
    tick(store, "a", "b", "c")
    live = ProjectionWorker(Ticks(), views, store)
    live.catch_up()
    assert views.acquire_lease("ticks", "live", TTL)
    assert views.set_state_if_owner("ticks", 1, "live", "running")

    assert rebuild(Ticks(), views, store) == 2
    tick(store, "d", "e")
    live.apply(store.read_all(0, 100))  # follows the switch: version 2 gets d and e, version 1 never will
    assert live.version == 2 and views.position("ticks", 1) == 3 and views.active_position("ticks") == 5
    clock.advance(3600)  # version 1 has been behind, "running" and quiet for an hour
    assert views.acquire_lease("ticks", "live", TTL)  # the live worker's heartbeat (nothing new to apply)

    found = statuses(store, views)
    old, new = found[("ticks", 1)], found[("ticks", 2)]
    assert (old.active, old.state, old.position, old.lag_events, old.lag_seconds, old.owner) == (
        False, "retired", 3, 0, 0.0, None), old
    assert (new.active, new.state, new.position, new.lag_events, new.owner) == (True, "running", 5, 0, "live"), new
    assert projections_check(store, views, max_lag_seconds=1.0)() is None
    assert projections_check(store, views, max_lag_seconds=1.0, names=["ticks"])() is None


def test_a_version_being_rebuilt_stays_rebuilding_and_outside_readiness(clock: Clock) -> None:
    store, views = MemoryEventStore(), MemoryViewStore(clock)
    tick(store, *(f"t{i}" for i in range(12)))
    live = ProjectionWorker(Ticks(), views, store)
    live.catch_up()
    assert views.acquire_lease("ticks", "live", TTL)
    assert views.set_state_if_owner("ticks", 1, "live", "running")
    seen: list[ProjectionStatus] = []
    checks: list[str | None] = []

    def progress(position: int, head: int) -> None:
        clock.advance(600)  # a slow rebuild: ten minutes per batch ...
        assert views.acquire_lease("ticks", "live", TTL)  # ... while the live worker keeps its lease
        seen.append(statuses(store, views)[("ticks", 2)])
        checks.append(projections_check(store, views, max_lag_seconds=1.0)())

    assert rebuild(Ticks(), views, store, progress=progress, options=WorkerOptions(catch_up_batch=4)) == 2
    during, after = seen[:-1], seen[-1]
    assert len(during) >= 2, seen
    for status in during:
        assert (status.active, status.state) == (False, "rebuilding"), status
        assert status.lag_events == 12 - status.position  # its lag is shown while it catches up
    assert during[0].position < 12
    assert checks[:-1] == [None] * len(during)  # the live version is caught up: ready while rebuilding
    assert (after.active, after.state, after.position) == (True, "running", 12), after
    assert statuses(store, views)[("ticks", 1)].state == "retired"
    assert labels(views) == [f"t{i}" for i in range(12)] and total(views) == 12


# --- 6. stalled means no progress -------------------------------------------------------------


def test_stalled_only_when_the_lease_holder_made_no_progress_for_a_minute_while_behind(clock: Clock) -> None:
    store, views = MemoryEventStore(), MemoryViewStore(clock)
    tick(store, "a", "b", "c", "d")
    worker = ProjectionWorker(Ticks(), views, store)
    worker.catch_up(until=2)
    assert views.acquire_lease("ticks", "w", TTL)
    assert views.set_state_if_owner("ticks", 1, "w", "running")
    assert status_of(store, views, "ticks").state == "running"

    for _ in range(5):  # five minutes busy on one batch, renewing with progress
        clock.advance(STALL_SECONDS)
        assert views.acquire_lease("ticks", "w", TTL, progressed=True)
        assert status_of(store, views, "ticks").state == "running"
    clock.advance(STALL_SECONDS - 1)
    assert views.acquire_lease("ticks", "w", TTL)  # a heartbeat without progress, within the minute
    assert status_of(store, views, "ticks").state == "running"
    clock.advance(2)  # just over a minute since the last progress
    assert views.acquire_lease("ticks", "w", TTL)  # still alive, still no progress
    stalled = status_of(store, views, "ticks")
    assert (stalled.state, stalled.owner, stalled.lag_events) == ("stalled", "w", 2), stalled

    assert views.acquire_lease("ticks", "w", TTL, progressed=True)
    assert status_of(store, views, "ticks").state == "running"
    clock.advance(STALL_SECONDS + 1)
    assert status_of(store, views, "ticks").state == "stalled"
    worker.catch_up()  # caught up: quiet is not stalled
    clock.advance(3600)
    assert views.acquire_lease("ticks", "w", TTL)
    caught_up = status_of(store, views, "ticks")
    assert (caught_up.state, caught_up.lag_events) == ("running", 0), caught_up


class Turnstile:
    """A handler that lets one event through at a time, when the test says so."""

    def __init__(self, *, open_: bool = False) -> None:
        self.entered = 0
        self.open = open_
        self._lock = threading.Lock()
        self._go = threading.Semaphore(0)

    def enter(self) -> None:
        with self._lock:
            self.entered += 1
        if not self.open and not self._go.acquire(timeout=WAIT):
            raise RuntimeError("the test never let this event through")

    def let_through(self) -> None:
        self._go.release()


class SlowTicks(Ticks):
    name = "slow_ticks"
    turnstile: Turnstile

    @on(Ticked)
    def ticked(self, event: Ticked, context: HandlerContext) -> None:
        self.turnstile.enter()
        super().ticked(event, context)


def test_a_worker_busy_on_a_long_batch_reports_progress_and_is_running_not_stalled(clock: Clock) -> None:
    """The real runner and heartbeat: one catch-up batch of five events, each taking 25 s (clock)."""
    store, views, bus = MemoryEventStore(), MemoryViewStore(clock), MemoryBus()
    tick(store, *(f"e{i}" for i in range(5)))
    projector = SlowTicks()
    projector.turnstile = turnstile = Turnstile()
    worker = ProjectionWorker(projector, views, store)
    lease = LeaseOptions(ttl_seconds=TTL, renew_seconds=0.005, standby_poll_seconds=0.005)
    name = projector.name
    seen: list[tuple[float, str]] = []

    def renewed_at_now() -> bool:
        leases = views.leases()
        return bool(leases) and leases[0].expires_at == clock.now + timedelta(seconds=TTL)

    async def heartbeat_after(seconds: float) -> None:
        clock.advance(seconds)
        await apoll(renewed_at_now, "a heartbeat at the new time")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_projection(worker, MemoryConsumer(bus, name), stop, fetch_seconds=0.02,
                                                  lease=lease, owner="busy"))
        try:
            started = clock.now
            for k in range(1, 6):
                await apoll(lambda k=k: turnstile.entered >= k, f"event {k} being handled")
                await heartbeat_after(25)
                status = status_of(store, views, name)
                seen.append(((clock.now - started).total_seconds(), status.state))
                assert (status.position, status.lag_events, status.owner) == (0, 5, "busy"), status
                if k < 5:
                    turnstile.let_through()
            # The fifth event takes long: heartbeats go on, without progress.
            await heartbeat_after(1)
            await heartbeat_after(1)  # (this one's progress count was taken after the fifth event began)
            await heartbeat_after(STALL_SECONDS + 1)
            stalled = status_of(store, views, name)
            assert (stalled.state, stalled.position, stalled.owner) == ("stalled", 0, "busy"), stalled
            turnstile.let_through()
            await apoll(lambda: views.position(name, 1) == 5, "the batch to commit")
            assert status_of(store, views, name).state == "running"
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)

    asyncio.run(scenario())
    # 125 s of clock on one uncommitted batch, running throughout (without the heartbeat's progress
    # it would have been stalled from the third event on).
    assert [state for _, state in seen] == ["running"] * 5 and seen[-1][0] == 125, seen
    assert labels(views, name) == [f"e{i}" for i in range(5)] and total(views, name) == 5
    assert views.leases() == [] and status_of(store, views, name).state == "stopped"


class Stuck(Ticks):
    """``retry``: an event that always fails is tried again and again; the projection waits."""

    name = "stuck"
    on_error = "retry"
    attempts = 0

    @on(Ticked)
    def ticked(self, event: Ticked, context: HandlerContext) -> None:
        self.attempts += event.label in self.poisoned
        super().ticked(event, context)


def test_a_projection_retrying_one_event_forever_is_stalled(clock: Clock) -> None:
    """Trying the same event again is not progress: a minute (clock) of retries with the position
    stuck while behind is ``stalled``, as a worker that tries nothing would be."""
    store, views, bus = MemoryEventStore(), MemoryViewStore(clock), MemoryBus()
    tick(store, "a", "bad", "c")
    Ticks.poisoned = {"bad"}
    stuck = Stuck()
    worker = ProjectionWorker(stuck, views, store, options=WorkerOptions(handler_attempts=1,
                                                                           retry_backoff_seconds=0))
    lease = LeaseOptions(ttl_seconds=TTL, renew_seconds=0.005, standby_poll_seconds=0.005)
    found: list[ProjectionStatus] = []

    def renewed_at_now() -> bool:
        leases = views.leases()
        return bool(leases) and leases[0].expires_at == clock.now + timedelta(seconds=TTL)

    async def heartbeats() -> None:
        """Two renewals, each at a new time: the second counted progress after the first was written."""
        for _ in range(2):
            clock.advance(1)
            await apoll(renewed_at_now, "a heartbeat")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_projection(worker, MemoryConsumer(bus, "stuck"), stop, fetch_seconds=0.02,
                                                  lease=lease, owner="stuck"))
        try:
            await apoll(lambda: views.position("stuck", 1) == 1 and stuck.attempts >= 1, "a, then bad failing")
            await heartbeats()  # they have seen a applied
            tried = stuck.attempts
            clock.advance(2 * STALL_SECONDS)  # (the memory store stamps updated_at with the real time)
            await apoll(lambda: stuck.attempts > tried, "bad to be tried again (after the runner's backoff)")
            await heartbeats()  # they have seen that attempt
            found.append(status_of(store, views, "stuck"))
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)

    asyncio.run(scenario())
    (status,) = found
    assert (status.position, status.lag_events, status.owner) == (1, 2, "stuck"), status
    assert "will retry position 2" in (status.error or ""), status
    assert status.state == "stalled", status


# --- 7. the state belongs to the lease holder -------------------------------------------------


def test_running_without_a_live_lease_is_stopped(clock: Clock) -> None:
    store, views = MemoryEventStore(), MemoryViewStore(clock)
    tick(store, "a")
    ProjectionWorker(Ticks(), views, store).catch_up()
    views.set_state("ticks", 1, "running")  # said by a worker that never held the lease
    assert (status_of(store, views, "ticks").state, status_of(store, views, "ticks").owner) == ("stopped", None)

    assert views.acquire_lease("ticks", "w", 3)
    assert (status_of(store, views, "ticks").state, status_of(store, views, "ticks").owner) == ("running", "w")
    clock.advance(4)  # the worker was killed: no heartbeat, the lease ran out
    killed = status_of(store, views, "ticks")
    assert (killed.state, killed.owner) == ("stopped", None), killed

    views.set_state("ticks", 1, "halted", "position 1: boom")
    assert status_of(store, views, "ticks").state == "halted"  # said by the worker, not derived


def test_a_worker_that_lost_the_lease_changes_no_state(clock: Clock) -> None:
    store, views = MemoryEventStore(), MemoryViewStore(clock)
    tick(store, "a")
    ProjectionWorker(Ticks(), views, store).catch_up()
    assert views.acquire_lease("ticks", "old", 3)
    assert views.set_state_if_owner("ticks", 1, "old", "running")
    assert not views.acquire_lease("ticks", "new", 3)  # a standby, while the old one lives
    clock.advance(5)  # the old one missed its heartbeats
    assert views.acquire_lease("ticks", "new", 3)
    assert views.set_state_if_owner("ticks", 1, "new", "running")

    assert not views.acquire_lease("ticks", "old", 3)  # its next heartbeat: lost
    assert not views.set_state_if_owner("ticks", 1, "old", "stopped")  # its clean stop ...
    assert not views.set_state_if_owner("ticks", 1, "old", "running", "late error")
    views.release_lease("ticks", "old")  # ... and its release change nothing
    found = status_of(store, views, "ticks")
    assert (found.state, found.owner, found.error) == ("running", "new", None), found
    assert [(lease.name, lease.owner) for lease in views.leases()] == [("ticks", "new")]


class FrozenHeartbeat:
    """One worker's view of the shared store whose lease calls can be held up: a process that
    stalls (a long GC pause, a frozen VM) while the other worker's calls go through."""

    def __init__(self, views: MemoryViewStore) -> None:
        self._views = views
        self.thawed = threading.Event()
        self.thawed.set()

    def acquire_lease(self, *args: Any, **kwargs: Any) -> bool:
        assert self.thawed.wait(WAIT), "never thawed"
        return self._views.acquire_lease(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._views, name)


def test_the_runner_of_a_lost_lease_stands_by_and_its_stop_leaves_the_new_owner_running(
    clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    """Real runners: "old" misses its renewals and its lease runs out, "new" takes over; "old" goes
    back to standby (it never exits) and, stopped, leaves "new"'s state alone."""
    caplog.set_level(logging.INFO, logger="framework.runner")
    store, views, bus = MemoryEventStore(), MemoryViewStore(clock), MemoryBus()
    tick(store, "a", "b")
    frozen = FrozenHeartbeat(views)
    old = ProjectionWorker(Ticks(), frozen, store)  # type: ignore[arg-type]
    new = ProjectionWorker(Ticks(), views, store)
    lease = LeaseOptions(ttl_seconds=3, renew_seconds=0.01, standby_poll_seconds=0.01)

    def owners() -> list[str]:
        return [held.owner for held in views.leases()]

    def logged(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    def standing_by() -> int:
        return sum("standing by while another worker runs it" in r.getMessage() for r in caplog.records)

    async def scenario() -> None:
        stop_old, stop_new = asyncio.Event(), asyncio.Event()
        old_task = asyncio.create_task(run_projection(old, MemoryConsumer(bus, "ticks", deliver_all=True), stop_old,
                                                      fetch_seconds=0.02, lease=lease, owner="old"))
        await apoll(lambda: views.position("ticks", 1) == 2, "the old worker to catch up")
        new_task = asyncio.create_task(run_projection(new, MemoryConsumer(bus, "ticks", deliver_all=True), stop_new,
                                                      fetch_seconds=0.02, lease=lease, owner="new"))
        try:
            await apoll(lambda: logged("standing by while another worker runs it"), "the new worker to stand by")
            assert new.handled == 0 and owners() == ["old"]
            frozen.thawed.clear()  # "old" stalls ...
            clock.advance(10)  # ... long enough for its lease to run out
            await apoll(lambda: owners() == ["new"], "the new worker to take over")
            frozen.thawed.set()
            await apoll(lambda: logged("another worker took over the lease; standing by"), "the old one to notice")
            await apoll(lambda: standing_by() == 2, "the old one to stand by (its fetch has ended)")
            await apoll(lambda: status_of(store, views, "ticks").state == "running", "the new worker to run")
            tick(store, "c")
            bus.append(store.read_all(0, 100))
            await apoll(lambda: views.position("ticks", 1) == 3, "the new worker to apply c")
            assert new.handled >= 1 and owners() == ["new"]  # "old" stands by, does not take it back
            assert not old_task.done() and not new_task.done()
            stop_old.set()
            await asyncio.wait_for(old_task, WAIT)
            found = status_of(store, views, "ticks")
            assert (found.state, found.owner) == ("running", "new"), found
            assert not new_task.done()
        finally:
            frozen.thawed.set()
            stop_old.set()
            stop_new.set()
            await asyncio.wait_for(asyncio.gather(old_task, new_task), WAIT)

    asyncio.run(scenario())
    assert labels(views) == ["a", "b", "c"] and total(views) == 3
    assert status_of(store, views, "ticks").state == "stopped" and owners() == []


def test_a_worker_that_knows_it_lost_the_lease_applies_nothing_more(
    clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    """The old worker is waiting in a fetch when its heartbeat learns the lease is gone; what that
    fetch returns is the new owner's to apply (the compare-and-set would keep it correct either
    way: this is about one active worker, not exactly-once)."""
    caplog.set_level(logging.INFO, logger="framework.runner")
    store, views, bus = MemoryEventStore(), MemoryViewStore(clock), MemoryBus()
    tick(store, "a", "b")
    frozen = FrozenHeartbeat(views)
    old = ProjectionWorker(Ticks(), frozen, store)  # type: ignore[arg-type]
    new = ProjectionWorker(Ticks(), views, store)
    lease = LeaseOptions(ttl_seconds=3, renew_seconds=0.01, standby_poll_seconds=0.01)

    def logged(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    async def scenario() -> int:
        stop_old, stop_new = asyncio.Event(), asyncio.Event()
        old_task = asyncio.create_task(run_projection(old, MemoryConsumer(bus, "ticks", deliver_all=True), stop_old,
                                                      fetch_seconds=WAIT, lease=lease, owner="old"))
        await apoll(lambda: views.position("ticks", 1) == 2, "the old worker to catch up")
        new_task = asyncio.create_task(run_projection(new, MemoryConsumer(bus, "ticks", deliver_all=True), stop_new,
                                                      fetch_seconds=0.02, lease=lease, owner="new"))
        try:
            await apoll(lambda: logged("standing by while another worker runs it"), "the new worker to stand by")
            frozen.thawed.clear()
            clock.advance(10)
            await apoll(lambda: [held.owner for held in views.leases()] == ["new"], "the new worker to take over")
            frozen.thawed.set()
            await apoll(lambda: logged("another worker took over the lease; standing by"), "the old one to notice")
            handled_by_old = old.handled
            tick(store, "c")
            bus.append(store.read_all(0, 100))  # the old worker's fetch (up to WAIT s) is still waiting
            await apoll(lambda: views.position("ticks", 1) == 3, "c to be applied")
            return old.handled - handled_by_old
        finally:
            frozen.thawed.set()
            stop_old.set()
            stop_new.set()
            await asyncio.wait_for(asyncio.gather(old_task, new_task), 2 * WAIT)

    applied_by_old_after_losing = asyncio.run(scenario())
    assert labels(views) == ["a", "b", "c"] and total(views) == 3
    assert applied_by_old_after_losing == 0


def test_an_old_worker_stopping_after_its_lease_ran_out_leaves_the_new_owner_running(clock: Clock) -> None:
    """A rolling restart gone slow: the old worker is told to stop while stuck in its last batch, its
    lease runs out, the new one takes over and runs; the old batch's commit and its clean stop then
    change nothing (no double apply, no ``stopped`` over the new worker's ``running``)."""
    store, views, bus = MemoryEventStore(), MemoryViewStore(clock), MemoryBus()
    tick(store, "a", "b")
    old_projector, new_projector = SlowTicks(), SlowTicks()
    old_projector.turnstile, new_projector.turnstile = Turnstile(), Turnstile(open_=True)
    frozen = FrozenHeartbeat(views)
    old = ProjectionWorker(old_projector, frozen, store)  # type: ignore[arg-type]
    new = ProjectionWorker(new_projector, views, store)
    lease = LeaseOptions(ttl_seconds=3, renew_seconds=0.01, standby_poll_seconds=0.01)
    name = old_projector.name

    def owners() -> list[str]:
        return [held.owner for held in views.leases()]

    async def scenario() -> None:
        stop_old, stop_new = asyncio.Event(), asyncio.Event()
        old_task = asyncio.create_task(run_projection(old, MemoryConsumer(bus, name), stop_old,
                                                      fetch_seconds=0.02, lease=lease, owner="old"))
        await apoll(lambda: old_projector.turnstile.entered == 1, "the old worker's batch to start")
        new_task = asyncio.create_task(run_projection(new, MemoryConsumer(bus, name), stop_new,
                                                      fetch_seconds=0.02, lease=lease, owner="new"))
        try:
            stop_old.set()  # SIGTERM: the old worker finishes its batch first
            frozen.thawed.clear()
            clock.advance(10)  # its batch takes longer than its lease
            await apoll(lambda: owners() == ["new"], "the new worker to take over")
            await apoll(lambda: views.position(name, 1) == 2, "the new worker to apply a and b")
            assert status_of(store, views, name).state == "running"
            frozen.thawed.set()
            old_projector.turnstile.let_through()
            old_projector.turnstile.let_through()
            await asyncio.wait_for(old_task, WAIT)  # its commit was refused; it stopped as told
            found = status_of(store, views, name)
            assert (found.state, found.owner, found.position) == ("running", "new", 2), found
            assert owners() == ["new"] and not new_task.done()
        finally:
            frozen.thawed.set()
            for _ in range(2):
                old_projector.turnstile.let_through()
            stop_old.set()
            stop_new.set()
            await asyncio.wait_for(asyncio.gather(old_task, new_task), WAIT)

    asyncio.run(scenario())
    assert labels(views, name) == ["a", "b"] and total(views, name) == 2  # applied once


# --- 8. outbox and deadlines ------------------------------------------------------------------


class Welcome(ProcessManager):
    """Opens an account per tick and schedules a reminder an hour later (a process manager to count)."""

    name = "welcome"
    read_models = (Tick,)
    reminded: list[str]

    @on(Ticked)
    def ticked(self, event: Ticked, context: HandlerContext) -> None:
        assert context.envelope.position is not None
        context.views.put(Tick(position=context.envelope.position, label=event.label))
        context.issue(OpenAccount(account_number=f"WELCOME-{event.label}", holder_name="Welcome"),
                      discriminator="open", ordering_key=event.label)
        context.schedule("remind", context.envelope.metadata.recorded_at + timedelta(hours=1),
                         key=f"remind:{event.label}")

    def on_deadline(self, deadline: Deadline, context: HandlerContext) -> None:
        self.reminded.append(deadline.key)


def test_outbox_and_deadline_figures_come_from_the_store(clock: Clock) -> None:
    store, views = MemoryEventStore(), MemoryViewStore(clock)
    bus = CommandBus(example_router, store)
    tick(store, "a", "b")
    projector = Welcome()
    projector.reminded = []
    worker = ProjectionWorker(projector, views, store, bus)
    dispatcher = Dispatcher(worker, bus, clock=clock)
    quiet = status_of(store, views, "welcome")
    assert (quiet.outbox_pending, quiet.outbox_oldest_seconds, quiet.deadlines_pending) == (0, 0.0, 0)

    worker.catch_up()  # two commands issued, two reminders scheduled, at the clock's now
    clock.advance(30)
    tick(store, "c")
    worker.catch_up()  # one more, 30 s later
    clock.advance(12)
    found = status_of(store, views, "welcome")
    assert (found.outbox_pending, found.outbox_oldest_seconds, found.deadlines_pending) == (3, 42.0, 3), found
    assert len(views.outbox("welcome", 10)) == 3

    views.outbox_done([views.outbox("welcome", 1)[0].id or 0])  # the oldest one went out
    found = status_of(store, views, "welcome")
    assert (found.outbox_pending, found.outbox_oldest_seconds) == (2, 42.0), found  # "b" was issued with "a"

    assert dispatcher.dispatch() == 2
    found = status_of(store, views, "welcome")
    assert (found.outbox_pending, found.outbox_oldest_seconds, found.deadlines_pending) == (0, 0.0, 3), found
    assert {n.topic for n in store.read_all(3, 10)} == {"AccountOpened"}

    clock.advance(3600)  # every reminder is due
    assert dispatcher.fire_deadlines() == 3
    assert sorted(projector.reminded) == ["remind:a", "remind:b", "remind:c"]
    found = status_of(store, views, "welcome")
    assert (found.outbox_pending, found.deadlines_pending) == (0, 0), found


def test_a_retired_version_shows_no_outbox(clock: Clock) -> None:
    store, views = MemoryEventStore(), MemoryViewStore(clock)
    bus = CommandBus(example_router, store)
    tick(store, "a")
    projector = Welcome()
    projector.reminded = []
    ProjectionWorker(projector, views, store, bus).catch_up()
    assert rebuild(projector, views, store) == 2  # a rebuild issues nothing again
    found = statuses(store, views)
    assert (found[("welcome", 2)].outbox_pending, found[("welcome", 2)].deadlines_pending) == (1, 1)
    assert (found[("welcome", 1)].state, found[("welcome", 1)].outbox_pending,
            found[("welcome", 1)].deadlines_pending) == ("retired", 0, 0)

