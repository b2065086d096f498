"""The process-manager outbox on the in-process adapters: commands recorded with the position and
executed after the commit, exactly once; temporary refusals retried (in order per ordering key),
permanent ones handed to ``on_refused`` or parked; deadlines fired once; failing events isolated.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

from framework import CommandBus, CommandContext, Executed
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
from framework.adapters.memory_views import MemoryViewStore
from framework.bus import fingerprint
from framework.commands import Command
from framework.dispatcher import Dispatcher, DispatchOptions
from framework.errors import (
    ConcurrencyConflict,
    IdempotencyKeyInFlight,
    RowRejected,
    StoreUnavailable,
)
from framework.projector import HandlerContext, ProcessManager, Projector, Refusal, on
from framework.readmodel import ReadModel
from framework.runner import LeaseOptions, run_projection, run_relay
from framework.views import Batch, Deadline
from framework.worker import ProjectionWorker, RetryLater, WorkerOptions

from .domain import (
    Counter,
    CounterIncremented,
    CounterStarted,
    IncrementCounter,
    StartCounter,
    append_events,
    counter_router,
)

START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Echoed(ReadModel):
    table = "echoed"
    key = ("counter_id",)

    counter_id: UUID
    label: str
    refused: str | None = None


class Echo(ProcessManager):
    """Each counter started gets one increment; ``missing:`` ones target a counter that does not exist
    (refused for good); ``nudge:N`` ones schedule a deadline N seconds later, whose handler increments."""

    name = "echo"
    read_models = (Echoed,)
    handle_refusals: ClassVar[bool] = False
    clock: ClassVar[Clock] = Clock()

    @on(CounterStarted)
    def started(self, event: CounterStarted, context: HandlerContext) -> None:
        counter_id = context.envelope.aggregate_id
        context.views.put(Echoed(counter_id=counter_id, label=event.label))
        if event.label.startswith("nudge:"):
            context.schedule("nudge", self.clock() + timedelta(seconds=int(event.label[6:])))
            return
        target = uuid4() if event.label.startswith("missing:") else counter_id
        context.issue(_increment(target, 1), ordering_key=event.label.split("#")[0])

    def on_refused(self, refusal: Refusal, context: HandlerContext) -> bool:
        if not self.handle_refusals:
            return False
        row = context.views.get(Echoed, context.envelope.aggregate_id)
        assert row is not None
        context.views.put(row.model_copy(update={"refused": refusal.code}))
        context.issue(StartCounter(counter_id=uuid4(), label="compensation"), discriminator="compensate")
        return True

    def on_deadline(self, deadline: Deadline, context: HandlerContext) -> None:
        context.issue(_increment(context.envelope.aggregate_id, 100))


def _increment(counter_id: UUID, by: int) -> Command:
    return IncrementCounter(counter_id=counter_id, by=by)


class FlakyBus(CommandBus):
    """Refuses the first commands with the given temporary errors, then executes normally."""

    def __init__(self, store: MemoryEventStore, errors: list[Exception]) -> None:
        super().__init__(counter_router(), store)
        self.errors = errors
        self.executed: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()

    def execute(self, command: Command, context: CommandContext | None = None) -> Executed:
        with self._lock:
            if self.errors:
                raise self.errors.pop(0)
        executed = super().execute(command, context)
        with self._lock:
            self.executed.append((command.command_name, context.idempotency_key if context else None))
        return executed


@pytest.fixture(autouse=True)
def _fresh_echo() -> Iterator[None]:
    Echo.clock, Echo.handle_refusals = Clock(), False
    yield


def start(store: MemoryEventStore, *labels: str) -> list[UUID]:
    ids = []
    for label in labels:
        counter_id = uuid4()
        append_events(store, Counter, counter_id, CounterStarted(label=label))
        ids.append(counter_id)
    return ids


def totals(store: MemoryEventStore, counter_id: UUID) -> int:
    return sum(getattr(n, "by", 0) for n in _events(store, counter_id))


def _events(store: MemoryEventStore, counter_id: UUID) -> list[Any]:
    from framework.mapper import from_stored

    return [e.event for e in (from_stored(n) for n in store.read_all(0, 10_000)) if e.aggregate_id == counter_id]


def setup(errors: list[Exception] | None = None) -> tuple[MemoryEventStore, MemoryViewStore, ProjectionWorker,
                                                          FlakyBus, Dispatcher, Clock]:
    store, views, clock = MemoryEventStore(), MemoryViewStore(), Clock()
    Echo.clock = clock
    bus = FlakyBus(store, errors or [])
    worker = ProjectionWorker(Echo(), views, store, bus)
    return store, views, worker, bus, Dispatcher(worker, bus, clock=clock, jitter=lambda: 1.0), clock


def test_every_kind_of_temporary_refusal_is_retried_until_the_command_runs_once() -> None:
    errors: list[Exception] = [IdempotencyKeyInFlight("in flight"), ConcurrencyConflict("conflict"),
                               StoreUnavailable("the event store is unavailable")]
    store, views, worker, _bus, dispatcher, clock = setup(list(errors))
    (counter,) = start(store, "a")
    worker.catch_up()
    for expected_attempts, error in enumerate(errors, start=1):
        assert dispatcher.run_once() == 0
        (entry,) = views.outbox("echo", 10)
        assert entry.attempts == expected_attempts and type(error).__name__ in (entry.last_error or "")
        assert dispatcher.run_once() == 0  # not due yet: backoff
        clock.advance(60)
    assert dispatcher.run_once() == 1
    assert views.outbox("echo", 10) == [] and totals(store, counter) == 1
    clock.advance(60)
    assert dispatcher.run_once() == 0 and totals(store, counter) == 1  # once


def test_a_claim_left_by_a_dead_dispatcher_is_taken_over_when_its_lease_ends_never_skipped() -> None:
    store, views, worker, bus, dispatcher, clock = setup()
    (counter,) = start(store, "a")
    worker.catch_up()
    (entry,) = views.outbox("echo", 10)
    same_request = fingerprint(bus.router.parse(entry.command_name, entry.payload))
    store.claim_idempotency_key(entry.key, same_request, uuid4(), 60)  # a process that died mid-command
    assert dispatcher.run_once() == 0
    assert "IdempotencyKeyInFlight" in (views.outbox("echo", 10)[0].last_error or "")
    clock.advance(60)
    patient = CommandBus(counter_router(), store, idempotency_lease_seconds=0.000001)  # its lease has ended
    assert Dispatcher(worker, patient, clock=clock).run_once() == 1
    assert totals(store, counter) == 1 and views.outbox("echo", 10) == []


def test_a_command_executed_before_the_dispatcher_died_is_replayed_not_repeated() -> None:
    store, views, worker, bus, dispatcher, _clock = setup()
    (counter,) = start(store, "a")
    worker.catch_up()
    (entry,) = views.outbox("echo", 10)
    bus.execute(_increment(counter, 1), CommandContext(idempotency_key=entry.key))  # ran, then died
    assert dispatcher.run_once() == 1
    assert totals(store, counter) == 1 and views.outbox("echo", 10) == []


def test_one_ordering_key_runs_in_order_while_others_go_on() -> None:
    store, _views, worker, bus, dispatcher, clock = setup([StoreUnavailable("down")])
    first, second, other = start(store, "k#1", "k#2", "other")
    worker.catch_up()
    assert dispatcher.run_once() == 1  # the first of "k" was refused for now; "other" ran
    assert [totals(store, c) for c in (first, second, other)] == [0, 0, 1]  # k#2 waits for k#1
    clock.advance(60)
    assert dispatcher.run_once() == 2
    assert [totals(store, c) for c in (first, second, other)] == [1, 1, 1]
    executed = [key.split(":")[2] for _, key in bus.executed]  # the triggering event of each
    assert executed.index(_event_id(store, first)) < executed.index(_event_id(store, second))


def _event_id(store: MemoryEventStore, counter_id: UUID) -> str:
    from framework.mapper import from_stored

    return next(str(e.metadata.event_id) for e in (from_stored(n) for n in store.read_all(0, 100))
                if e.aggregate_id == counter_id and e.event_name == CounterStarted.event_name)


def test_commands_of_different_ordering_keys_run_concurrently() -> None:
    store, views = MemoryEventStore(), MemoryViewStore()
    both_running = threading.Barrier(2, timeout=10)

    class Meeting(FlakyBus):
        def execute(self, command: Command, context: CommandContext | None = None) -> Executed:
            both_running.wait()  # deadlocks (and times out) unless two commands run at once
            return super().execute(command, context)

    bus = Meeting(store, [])
    worker = ProjectionWorker(Echo(), views, store, bus)
    start(store, "x", "y")
    worker.catch_up()
    assert Dispatcher(worker, bus, DispatchOptions(concurrency=2)).run_once() == 2


def test_a_refusal_without_a_callback_is_parked_and_a_retry_sends_it_again() -> None:
    store, views, worker, _bus, dispatcher, _clock = setup()
    start(store, "missing:1")
    worker.catch_up()
    assert dispatcher.run_once() == 1
    (letter,) = views.dead_letters("echo")
    assert letter.command is not None and letter.command["command_name"] == "IncrementCounter"
    assert letter.event_name == "command IncrementCounter" and "AggregateNotFound" in letter.error
    assert views.outbox("echo", 10) == []
    assert views.request_retry(letter.id or 0)
    assert worker.retry_dead_letters() == 1
    assert views.dead_letters("echo") == [] and [e.key for e in views.outbox("echo", 10)] == [letter.command["key"]]
    assert dispatcher.run_once() == 1  # refused again: parked again, still not lost
    assert len(views.dead_letters("echo")) == 1


def test_a_refusal_reaches_on_refused_in_one_transaction_with_its_removal() -> None:
    Echo.handle_refusals = True
    store, views, worker, _bus, dispatcher, _clock = setup()
    (counter,) = start(store, "missing:1")
    worker.catch_up()
    assert dispatcher.run_once() == 1  # refused; the compensation is now in the outbox
    assert views.get_many("echo", Echoed, [(counter,)])[0].refused == "aggregate_not_found"  # type: ignore[union-attr]
    assert views.dead_letters("echo") == []
    assert [e.command_name for e in views.outbox("echo", 10)] == ["StartCounter"]
    assert dispatcher.run_once() == 1
    worker.catch_up()  # the compensating counter's start is an event the process manager sees too
    labels = [e.label for e in _all_started(store)]
    assert labels.count("compensation") == 1


def _all_started(store: MemoryEventStore) -> list[Any]:
    from framework.mapper import from_stored

    return [e.event for e in (from_stored(n) for n in store.read_all(0, 10_000))
            if e.event_name == CounterStarted.event_name]


def test_a_deadline_fires_once_when_due_and_survives_a_new_worker() -> None:
    store, views, worker, bus, dispatcher, clock = setup()
    (counter,) = start(store, "nudge:30")
    worker.catch_up()
    assert views.outbox("echo", 10) == [] and dispatcher.run_once() == 0
    clock.advance(29)
    assert dispatcher.run_once() == 0
    clock.advance(2)
    restarted = ProjectionWorker(Echo(), views, store, bus)  # another process, after a restart
    again = Dispatcher(restarted, bus, clock=clock)
    assert again.run_once() == 2  # fired (its command went to the outbox), and the command executed
    assert dispatcher.run_once() == 0 and again.run_once() == 0  # never twice
    assert totals(store, counter) == 100


def test_a_deadline_raced_by_two_dispatchers_fires_once() -> None:
    store, views, worker, bus, _dispatcher, clock = setup()
    (_counter,) = start(store, "nudge:1")
    worker.catch_up()
    clock.advance(5)
    (deadline,) = views.due_deadlines("echo", clock(), 10)
    worker.fire_deadline(deadline)
    with pytest.raises(ConcurrencyConflict):
        ProjectionWorker(Echo(), views, store, bus).fire_deadline(deadline)  # the other one, a moment later
    assert len(views.outbox("echo", 10)) == 1


# --- no event is fatal -------------------------------------------------------------------------


class Picky(Projector):
    """Stores each counter's label; the read-model store refuses labels containing "poison" at commit."""

    name = "picky"
    read_models = (Echoed,)
    on_error: ClassVar[Any] = "park"

    @on(CounterStarted)
    def started(self, event: CounterStarted, context: HandlerContext) -> None:
        context.views.put(Echoed(counter_id=context.envelope.aggregate_id, label=event.label))


class PickyViews(MemoryViewStore):
    """Refuses, at commit, a batch holding a row PostgreSQL could not hold (here: a label with "poison")."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    @contextmanager
    def batch(self, name: str, version: int, *, follow_active: bool = True) -> Iterator[Batch]:
        with super().batch(name, version, follow_active=follow_active) as batch:
            yield batch
            self._check(batch)

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        self._check(batch)
        super().commit_staged(name, version, batch, follow_active=follow_active)

    def _check(self, batch: Batch) -> None:
        self.commits += 1
        for _, _, row in batch.changes():  # type: ignore[attr-defined]
            if row is not None and "poison" in row.label:
                raise RowRejected("picky: the read-model database refused a row: poison")


@pytest.mark.parametrize("catching_up", [False, True], ids=["live", "catching-up"])
def test_a_value_refused_at_commit_is_isolated_and_parked_and_the_rest_applies(catching_up: bool) -> None:
    store, views = MemoryEventStore(), PickyViews()
    labels = [f"ok-{i}" for i in range(40)]
    labels[23] = "poison"
    start(store, *labels)
    worker = ProjectionWorker(Picky(), views, store, options=WorkerOptions(catch_up_batch=16, retry_backoff_seconds=0),
                              sleep=lambda _: None)
    worker.catch_up() if catching_up else worker.apply(store.read_all(0, 100))
    assert worker.position == store.head()
    rows = views.query("picky", Echoed)
    assert sorted(r.label for r in rows) == sorted(label for label in labels if label != "poison")
    (letter,) = views.dead_letters("picky")
    assert letter.position == 24 and "RowRejected" in letter.error


def test_retry_policy_backs_off_and_the_projection_waits_without_dying() -> None:
    class Retrying(Picky):
        name = "retrying"
        on_error = "retry"

    store, views = MemoryEventStore(), PickyViews()
    start(store, "ok", "poison", "after")
    worker = ProjectionWorker(Retrying(), views, store, options=WorkerOptions(retry_backoff_seconds=0),
                              sleep=lambda _: None)
    with pytest.raises(RetryLater):
        worker.apply(store.read_all(0, 100))
    assert worker.position == 1 and views.dead_letters() == []  # waits at the poison, parks nothing


# --- one worker per projection, on the in-process bus -------------------------------------------


def test_a_second_worker_stands_by_and_takes_over_when_the_first_stops() -> None:
    store, views, events = MemoryEventStore(), MemoryViewStore(), MemoryBus()
    bus = CommandBus(counter_router(), store)
    first, second = (ProjectionWorker(Echo(), views, store, bus) for _ in range(2))
    lease = LeaseOptions(ttl_seconds=30, renew_seconds=0.05, standby_poll_seconds=0.02)

    async def scenario() -> None:
        stop_first, stop_second, stop_relay = asyncio.Event(), asyncio.Event(), asyncio.Event()
        relay = asyncio.create_task(run_relay(store, MemoryPublisher(events), stop_relay, poll_seconds=0.02))
        running = asyncio.create_task(run_projection(first, MemoryConsumer(events, "echo"), stop_first,
                                                     fetch_seconds=0.02, lease=lease, owner="first"))
        await _until(lambda: [lease.owner for lease in views.leases()] == ["first"])
        waiting = asyncio.create_task(run_projection(second, MemoryConsumer(events, "echo"), stop_second,
                                                     fetch_seconds=0.02, lease=lease, owner="second"))
        start(store, "a", "b")
        await _until(lambda: first.position == store.head() and not views.outbox("echo", 10))
        assert second.handled == 0 and not waiting.done()  # standing by: applies nothing, never exits
        stop_first.set()
        await running
        await _until(lambda: [lease.owner for lease in views.leases()] == ["second"])  # handed over at once
        start(store, "c")
        await _until(lambda: second.position == store.head() and not views.outbox("echo", 10))
        stop_second.set()
        stop_relay.set()
        await asyncio.wait_for(asyncio.gather(waiting, relay), 10)

    asyncio.run(scenario())
    assert [s.state for s in views.states()] == ["stopped"]
    counters = {e.aggregate_id for e in _started_envelopes(store)}
    assert all(totals(store, c) == 1 for c in counters)  # each counter incremented once, by one of them


def _started_envelopes(store: MemoryEventStore) -> list[Any]:
    from framework.mapper import from_stored

    return [e for e in (from_stored(n) for n in store.read_all(0, 10_000))
            if e.event_name == CounterStarted.event_name]


async def _until(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_counter_incremented_events_are_the_only_effects() -> None:
    """A guard for the helpers above: ``totals`` counts CounterIncremented only."""
    store = MemoryEventStore()
    counter = uuid4()
    append_events(store, Counter, counter, CounterStarted(label="x"), CounterIncremented(by=3))
    assert totals(store, counter) == 3
