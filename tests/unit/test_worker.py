"""The projection worker on the in-process adapters: exactly-once effects under redelivery, gaps,
rolled-back positions, failing handlers (halt or park, dead-letter retries), blue-green switches,
and a process manager whose commands are issued once, with stable idempotency keys.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    OpenAccount,
    RegisterSecurity,
    ValidateCorporateAction,
)
from example_app.handlers import router as example_router
from framework import CommandBus, CommandContext, Event, Executed
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
from framework.adapters.memory_views import MemoryViewStore
from framework.commands import Command
from framework.dispatcher import Dispatcher
from framework.events import EventEnvelope, EventMetadata
from framework.mapper import from_stored, to_stored
from framework.projector import HandlerContext, Projector, on
from framework.readmodel import ReadModel
from framework.replay import rebuild
from framework.runner import run_projection, run_relay
from framework.store import Notification
from framework.views import Batch
from framework.worker import ProjectionHalted, ProjectionWorker, WorkerOptions
from projections.process import CorporateActionProcess

NO_WAIT = WorkerOptions(retry_backoff_seconds=0)


# --- a small projection to watch ------------------------------------------------------------


class Ticked(Event):
    label: str


class Tick(ReadModel):
    table = "ticks"
    key = ("position",)

    position: int
    label: str


class Total(ReadModel):
    table = "totals"
    key = ("name",)

    name: str
    count: int


class Ticks(Projector):
    """One row per event and a running total: a doubled event shows in the total, a lost one in both."""

    name = "ticks"
    read_models = (Tick, Total)
    poisoned: ClassVar[set[str]] = set()

    @on(Ticked)
    def ticked(self, event: Ticked, context: HandlerContext) -> None:
        if event.label in self.poisoned:
            raise RuntimeError(f"cannot handle {event.label}")
        assert context.envelope.position is not None
        context.views.put(Tick(position=context.envelope.position, label=event.label))
        total = context.views.get(Total, "all") or Total(name="all", count=0)
        context.views.put(total.model_copy(update={"count": total.count + 1}))


class ParkingTicks(Ticks):
    name = "parking_ticks"
    on_error = "park"


@pytest.fixture(autouse=True)
def _no_poison() -> Iterator[None]:
    Ticks.poisoned = set()
    yield
    Ticks.poisoned = set()


def tick(store: MemoryEventStore, *labels: str) -> list[Notification]:
    """Append one event per label (each its own aggregate); return them as stored notifications."""
    positions = store.append([
        to_stored(EventEnvelope("Clock", uuid4(), 1, Ticked(label=label), EventMetadata())) for label in labels
    ])
    return [n for n in store.read_all(positions[0] - 1, len(positions))]


def labels(views: MemoryViewStore, name: str = "ticks") -> list[str]:
    return [row.label for row in sorted(views.query(name, Tick), key=lambda r: r.position)]


def total(views: MemoryViewStore, name: str = "ticks") -> int:
    row = views.get_many(name, Total, [("all",)])[0]
    return row.count if row else 0


class HoledStore:
    """A store in which some positions were consumed by transactions that rolled back."""

    def __init__(self, store: MemoryEventStore, holes: set[int]) -> None:
        self._store, self.holes = store, holes
        self.reads: list[tuple[int, int]] = []

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        self.reads.append((after_position, limit))
        return [n for n in self._store.read_all(after_position, limit + len(self.holes)) if n.id not in self.holes][
            :limit]

    def head(self) -> int:
        return self._store.head()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# --- redelivery, gaps, holes ----------------------------------------------------------------


def test_redelivered_events_are_dropped() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    first = tick(store, "a", "b", "c")
    worker = ProjectionWorker(Ticks(), views, store)
    worker.apply(first)
    worker.apply(first)  # the whole delivery again
    worker.apply(first[1:])  # part of it
    more = tick(store, "d")
    worker.apply([*first, *more, *more])  # old and new mixed, a duplicate inside the delivery
    assert labels(views) == ["a", "b", "c", "d"]
    assert total(views) == 4
    assert worker.position == views.position("ticks", 1) == 4


def test_a_gap_is_back_filled_from_the_store() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    delivered = tick(store, "a", "b", "c", "d", "e")
    worker = ProjectionWorker(Ticks(), views, store)
    worker.apply(delivered[:1])
    worker.apply([delivered[3]])  # 2 and 3 never arrived (lost in transport, or retention)
    assert labels(views) == ["a", "b", "c", "d"]
    worker.apply([delivered[4], delivered[2]])  # late and out of order: the late one is dropped
    assert labels(views) == ["a", "b", "c", "d", "e"]
    assert total(views) == 5


def test_rolled_back_positions_are_skipped_without_waiting() -> None:
    memory = MemoryEventStore()
    notifications = tick(memory, "a", "hole-1", "hole-2", "d", "e", "hole-3")
    store = HoledStore(memory, {2, 3, 6})
    views = MemoryViewStore()
    worker = ProjectionWorker(Ticks(), views, store)  # type: ignore[arg-type]
    worker.apply([notifications[0]])
    worker.apply([notifications[4]])  # 2, 3 rolled back, 4 missing from the delivery: read from the store
    assert labels(views) == ["a", "d", "e"]
    assert worker.position == 5
    assert store.reads == [(1, 4)]  # one read of the stretch in between, no waiting for the holes
    # Catching up over a trailing hole moves to the head's last real event.
    catching = ProjectionWorker(Ticks(), MemoryViewStore(), store)  # type: ignore[arg-type]
    catching.catch_up()
    assert catching.position == 5


def test_events_of_other_types_only_move_the_position() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    store.append([to_stored(EventEnvelope("Account", uuid4(), 1, _opened(), EventMetadata()))])
    worker = ProjectionWorker(Ticks(), views, store)
    worker.apply(store.read_all(0, 10))
    assert worker.position == 1 and labels(views) == []


def _opened() -> Event:
    from example_app.accounts import AccountOpened

    return AccountOpened(account_number="X-1", holder_name="X")


# --- failing handlers -----------------------------------------------------------------------


def test_halt_stops_at_the_failing_event_after_committing_the_ones_before() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    delivered = tick(store, "a", "b", "poison", "d")
    Ticks.poisoned = {"poison"}
    pauses: list[float] = []
    worker = ProjectionWorker(Ticks(), views, store, options=WorkerOptions(retry_backoff_seconds=0.2),
                              sleep=pauses.append)
    with pytest.raises(ProjectionHalted, match="ticks halted at position 3"):
        worker.apply(delivered)
    assert pauses == [0.2, 0.4]  # three attempts, backing off
    assert labels(views) == ["a", "b"]
    assert worker.position == views.position("ticks", 1) == 2
    (state,) = views.states()
    assert state.state == "halted" and "position 3" in (state.error or "") and "cannot handle poison" in (
        state.error or "")
    assert views.dead_letters() == []
    with pytest.raises(ProjectionHalted):  # still failing: it stays where it is
        worker.apply(delivered)
    assert worker.position == 2


def test_park_keeps_a_dead_letter_and_carries_on() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    delivered = tick(store, "a", "poison", "c")
    Ticks.poisoned = {"poison"}
    worker = ProjectionWorker(ParkingTicks(), views, store, options=NO_WAIT, sleep=lambda _: None)
    worker.apply(delivered)
    worker.apply(tick(store, "d"))
    assert labels(views, "parking_ticks") == ["a", "c", "d"]
    assert worker.position == 4
    (letter,) = views.dead_letters("parking_ticks")
    assert (letter.position, letter.event_name, letter.aggregate_id) == (
        2, "Ticked", str(delivered[1].originator_id))
    assert "RuntimeError: cannot handle poison" in letter.error
    assert views.states()[0].state != "halted"


def test_a_parked_event_catching_up_is_parked_too() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    tick(store, "a", "poison", "c", "d")
    Ticks.poisoned = {"poison"}
    worker = ProjectionWorker(ParkingTicks(), views, store, options=WorkerOptions(catch_up_batch=2,
                                                                                  retry_backoff_seconds=0))
    assert worker.catch_up() == 4
    assert labels(views, "parking_ticks") == ["a", "c", "d"]
    assert [d.position for d in views.dead_letters()] == [2]


def test_a_dead_letter_retry_is_applied_by_the_live_worker_once_the_fault_is_gone() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    Ticks.poisoned = {"poison", "poison-too"}
    worker = ProjectionWorker(ParkingTicks(), views, store, options=NO_WAIT, sleep=lambda _: None)
    worker.apply(tick(store, "a", "poison", "c", "poison-too"))
    first, second = views.dead_letters()
    assert worker.retry_dead_letters() == 0  # nothing requested yet

    assert views.request_retry(first.id or 0)
    assert worker.retry_dead_letters() == 0  # requested, but still failing: kept, still requested
    assert [d.id for d in views.retry_requests("parking_ticks")] == [first.id]

    Ticks.poisoned = {"poison-too"}
    assert worker.retry_dead_letters() == 1
    assert labels(views, "parking_ticks") == ["a", "poison", "c"]
    assert total(views, "parking_ticks") == 3
    assert [d.id for d in views.dead_letters()] == [second.id]
    assert worker.retry_dead_letters() == 0  # done once, not again
    assert worker.position == 4  # a retry does not move the position

    assert views.discard_dead_letter(second.id or 0)
    assert views.dead_letters() == [] and not views.discard_dead_letter(second.id or 0)
    assert not views.request_retry(second.id or 0)


# --- versions -------------------------------------------------------------------------------


def test_a_live_worker_follows_a_version_switch() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    live = ProjectionWorker(Ticks(), views, store)
    live.apply(tick(store, "a", "b"))
    assert rebuild(Ticks(), views, store) == 2
    assert views.active_version("ticks") == 2 and live.version == 1

    live.apply(tick(store, "c", "d"))
    assert live.version == 2 and live.position == 4
    assert labels(views) == ["a", "b", "c", "d"] and total(views) == 4  # the active version, v2
    assert views.position("ticks", 1) == 2  # the old version no longer moves
    # A delivery the new version already holds is dropped after the switch too.
    live.apply(store.read_all(0, 10))
    assert total(views) == 4


def test_a_rebuild_applies_what_arrived_during_it_in_the_switch() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    tick(store, "a", "b", "c")
    seen: list[tuple[int, int]] = []

    class Progress:
        def __call__(self, position: int, head: int) -> None:
            seen.append((position, head))
            if len(seen) == 1:
                tick(store, "late")  # written while the rebuild runs

    version = rebuild(Ticks(), views, store, progress=Progress(), options=WorkerOptions(catch_up_batch=2))
    assert version == 2
    assert labels(views) == ["a", "b", "c", "late"]
    assert views.position("ticks", 2) == 4 and seen[-1] == (4, 4)


def test_a_worker_catching_up_follows_a_switch_made_meanwhile() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    tick(store, "a", "b")
    worker = ProjectionWorker(Ticks(), views, store)  # started (version 1) ...
    rebuild(Ticks(), views, store)  # ... while a replay switched to version 2
    tick(store, "c")
    assert worker.catch_up() == 3
    assert worker.version == 2 and labels(views) == ["a", "b", "c"]


# --- staged catch-up -----------------------------------------------------------------------


class SlowCommits(MemoryViewStore):
    """Commits that take a while, as they do on a real database."""

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        time.sleep(0.01)
        super().commit_staged(name, version, batch, follow_active=follow_active)


def test_catching_up_in_overlapping_batches_sees_every_earlier_batch() -> None:
    store = MemoryEventStore()
    tick(store, *(f"t{i}" for i in range(60)))
    views = SlowCommits()
    ProjectionWorker(Ticks(), views, store, options=WorkerOptions(catch_up_batch=5)).catch_up()
    assert total(views) == 60  # the running total reads the row the previous batch wrote


class CountingCommits(MemoryViewStore):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[int] = []  # each committed batch's new position

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        super().commit_staged(name, version, batch, follow_active=follow_active)
        self.commits.append(getattr(batch, "position", -1))


def test_a_catch_up_batch_is_read_in_pages_and_committed_once() -> None:
    """catch_up_page: the store is read a page at a time (the next page while this one's handlers run),
    and a batch commits once it holds catch_up_batch events or the log ends."""
    store = MemoryEventStore()
    tick(store, *(f"t{i}" for i in range(25)))
    holed = HoledStore(store, holes={7})
    views = CountingCommits()
    worker = ProjectionWorker(Ticks(), views, holed, options=WorkerOptions(catch_up_batch=10, catch_up_page=4))
    assert worker.catch_up() == 25
    assert {limit for _, limit in holed.reads} == {4}
    assert views.commits == [13, 25]  # 12 events (three pages, past the batch's 10), then the rest
    assert labels(views) == [f"t{i}" for i in range(25) if i != 6] and total(views) == 24


class ThreadNoting(CountingCommits):
    """Notes the thread each batch commits in."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        self.threads.append(threading.current_thread().name)
        super().commit_staged(name, version, batch, follow_active=follow_active)


@pytest.mark.parametrize("events, threads", [(3, 0), (25, 2)])
def test_a_catch_up_of_one_page_starts_no_helper_thread(events: int, threads: int) -> None:
    """A worker following the store closely catches up one page at a time: nothing to overlap, so no
    helper thread is started for it (it used to start two per catch-up); several pages still overlap."""
    store = MemoryEventStore()
    tick(store, *(f"t{i}" for i in range(events)))
    views = ThreadNoting()
    before = threading.enumerate()
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def noted(thread: threading.Thread) -> None:
        started.append(thread)
        real_start(thread)

    worker = ProjectionWorker(Ticks(), views, store, options=WorkerOptions(catch_up_batch=10, catch_up_page=4))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Thread, "start", noted)
        assert worker.catch_up() == events
    assert len([t for t in started if t not in before and t.name.startswith("catch-up-ticks")]) == threads
    assert labels(views) == [f"t{i}" for i in range(events)] and total(views) == events
    if not threads:
        assert views.threads == [threading.current_thread().name]


def test_a_handler_failing_in_a_later_page_of_a_batch_parks_only_its_event() -> None:
    store = MemoryEventStore()
    tick(store, *(f"t{i}" for i in range(30)))
    ParkingTicks.poisoned = {"t22"}  # position 23: the second page of the second batch
    views = CountingCommits()
    worker = ProjectionWorker(ParkingTicks(), views, store,
                              options=WorkerOptions(catch_up_batch=12, catch_up_page=5, retry_backoff_seconds=0))
    assert worker.catch_up() == 30
    assert labels(views, "parking_ticks") == [f"t{i}" for i in range(30) if i != 22]
    assert total(views, "parking_ticks") == 29
    assert [letter.position for letter in views.dead_letters("parking_ticks")] == [23]


def test_a_rebuild_commits_replay_sized_batches_unless_told_otherwise() -> None:
    from framework.replay import REPLAY_OPTIONS

    assert REPLAY_OPTIONS.catch_up_batch == 2 * WorkerOptions().catch_up_batch
    assert REPLAY_OPTIONS.catch_up_page == WorkerOptions().catch_up_page
    store = MemoryEventStore()
    tick(store, *(f"t{i}" for i in range(7)))
    views = CountingCommits()
    rebuild(Ticks(), views, store, options=WorkerOptions(catch_up_batch=3))
    assert views.commits == [3, 6, 7]


# --- a process manager ----------------------------------------------------------------------


class RecordingBus(CommandBus):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.issued: list[tuple[str, str | None, bool]] = []

    def execute(self, command: Command, context: CommandContext | None = None) -> Executed:
        executed = super().execute(command, context)
        self.issued.append((command.command_name, context.idempotency_key if context else None,
                            executed.replayed))
        return executed


class SimulatedCrash(Exception):
    pass


class CrashBeforeCommit(MemoryViewStore):
    """Handlers run (and issue their commands), then the process dies before the batch commits."""

    @contextmanager
    def batch(self, name: str, version: int, *, follow_active: bool = True) -> Iterator[Batch]:
        with super().batch(name, version, follow_active=follow_active) as batch:
            yield batch
            raise SimulatedCrash

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        raise SimulatedCrash


def _domain(store: MemoryEventStore) -> CommandBus:
    bus = CommandBus(example_router, store)
    record = date.today() + timedelta(days=30)
    for command in [
        RegisterSecurity(isin="US0378331005", name="Apple", currency="USD"),
        OpenAccount(account_number="PM-1", holder_name="One"),
        OpenAccount(account_number="PM-2", holder_name="Two"),
        CreditHoldings(account_number="PM-1", isin="US0378331005", quantity=100),
        CreditHoldings(account_number="PM-2", isin="US0378331005", quantity=40),
        AnnounceCorporateAction.model_validate({
            "action_id": "PM-DIV", "isin": "US0378331005", "record_date": record,
            "terms": {"kind": "cash_dividend", "amount_per_unit": "0.5", "currency": "USD"}}),
        ValidateCorporateAction(action_id="PM-DIV"),
    ]:
        bus.execute(command)
    return bus


def _events(store: MemoryEventStore, name: str) -> list[EventEnvelope]:
    return [e for e in (from_stored(n) for n in store.read_all(0, 10_000)) if e.event_name == name]


def _settle(worker: ProjectionWorker, store: MemoryEventStore, dispatcher: Dispatcher | None = None) -> None:
    """Apply and dispatch until the process has applied what it issued itself."""
    dispatcher = dispatcher or Dispatcher(worker, worker.commands)  # type: ignore[arg-type]
    while True:
        worker.apply(store.read_all(worker.position, 10_000))
        if not dispatcher.run_once() and worker.position == store.head():
            return


def test_process_manager_commands_are_issued_once_with_idempotency_keys() -> None:
    store = MemoryEventStore()
    _domain(store)
    bus = RecordingBus(example_router, store)
    views = MemoryViewStore()
    worker = ProjectionWorker(CorporateActionProcess(), views, store, bus)
    dispatcher = Dispatcher(worker, bus)
    delivery = store.read_all(0, 10_000)
    worker.apply(delivery)
    assert bus.issued == []  # recorded in the outbox with the position, not executed inside the batch
    (validated,) = _events(store, "CorporateActionValidated")
    key = f"pm:corporate_action_process:{validated.metadata.event_id}:entitlements"
    assert [e.key for e in views.outbox(worker.name, 10)] == [key]
    worker.apply(delivery)  # redelivered: nothing recorded again
    assert len(views.outbox(worker.name, 10)) == 1
    assert dispatcher.run_once() == 1
    assert bus.issued == [("RecordEntitlements", key, False)]
    assert views.outbox(worker.name, 10) == []

    _settle(worker, store, dispatcher)
    (calculated,) = _events(store, "EntitlementsCalculated")
    key = f"pm:corporate_action_process:{calculated.metadata.event_id}"
    assert sorted(bus.issued[1:]) == [("NotifyDepositor", f"{key}:notify:PM-1", False),
                                      ("NotifyDepositor", f"{key}:notify:PM-2", False)]
    entitlements = {e.account_number: e.cash_amount for e in calculated.event.entitlements}  # type: ignore[attr-defined]
    assert entitlements == {"PM-1": 50, "PM-2": 20}

    bus.execute(CancelCorporateAction(action_id="PM-DIV", reason="withdrawn"))
    _settle(worker, store, dispatcher)
    notified = sorted((e.event.account_number, e.event.kind) for e in _events(store, "DepositorNotified"))  # type: ignore[attr-defined]
    assert notified == [("PM-1", "cancellation"), ("PM-1", "entitlement"),
                        ("PM-2", "cancellation"), ("PM-2", "entitlement")]
    # The notices went through the bus with the triggering event as causation, the process as actor.
    for envelope in _events(store, "DepositorNotified"):
        assert envelope.metadata.actor == "process-manager:corporate_action_process"
        assert UUID(envelope.metadata.causation_id or "") in {calculated.metadata.event_id,
                                                              *(e.metadata.event_id for e in
                                                                _events(store, "CorporateActionCancelled"))}


@pytest.mark.parametrize("catching_up", [False, True], ids=["live", "catching-up"])
def test_a_batch_that_never_commits_issues_nothing(catching_up: bool) -> None:
    store = MemoryEventStore()
    _domain(store)
    head = store.head()
    crashed_bus = RecordingBus(example_router, store)
    crashing = ProjectionWorker(CorporateActionProcess(), CrashBeforeCommit(), store, crashed_bus)
    with pytest.raises(SimulatedCrash):
        crashing.catch_up() if catching_up else crashing.apply(store.read_all(0, 10_000))
    assert crashed_bus.issued == [] and store.head() == head  # the commands died with the batch

    restarted_bus = RecordingBus(example_router, store)
    restarted = ProjectionWorker(CorporateActionProcess(), MemoryViewStore(), store, restarted_bus)
    restarted.catch_up() if catching_up else restarted.apply(store.read_all(0, head))
    _settle(restarted, store)
    assert [name for name, _, replayed in restarted_bus.issued if not replayed] == [
        "RecordEntitlements", "NotifyDepositor", "NotifyDepositor"]
    assert len(_events(store, "EntitlementsCalculated")) == 1
    assert len(_events(store, "DepositorNotified")) == 2


def test_a_rebuilt_process_manager_issues_nothing() -> None:
    store = MemoryEventStore()
    _domain(store)
    bus = RecordingBus(example_router, store)
    views = MemoryViewStore()
    live = ProjectionWorker(CorporateActionProcess(), views, store, bus)
    _settle(live, store)
    head, issued = store.head(), len(bus.issued)
    assert rebuild(CorporateActionProcess(), views, store) == 2
    assert store.head() == head and len(bus.issued) == issued


# --- the runner loops on the in-process bus ------------------------------------------------


def test_relay_and_projection_loops_deliver_everything_once() -> None:
    store, views, events = MemoryEventStore(), MemoryViewStore(), MemoryBus()
    tick(store, "before-1", "before-2")
    worker = ProjectionWorker(Ticks(), views, store)

    async def scenario() -> None:
        stop = asyncio.Event()
        consumer = MemoryConsumer(events, "ticks")
        tasks = [asyncio.create_task(run_relay(store, MemoryPublisher(events), stop, poll_seconds=0.05)),
                 asyncio.create_task(run_projection(worker, consumer, stop, fetch_seconds=0.05))]
        for round_ in range(5):
            await asyncio.to_thread(tick, store, *(f"r{round_}-{i}" for i in range(20)))
            await asyncio.sleep(0.01)
        events.set_available(False)  # the bus goes away for a moment
        await asyncio.to_thread(tick, store, "while-away")
        await asyncio.sleep(0.1)
        events.set_available(True)
        deadline = time.monotonic() + 10
        while views.position("ticks", 1) < store.head() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(scenario())
    assert total(views) == 103 and len(labels(views)) == 103
    assert len(events) == 103  # each stored event published once
    assert views.states()[0].state == "stopped"

