"""Expected versions: a command carried out only on the version of its aggregate its sender decided on.

The version checked is that of the aggregate the command answers with (its handler's return); 0 means
it must not exist yet. A mismatch is ``VersionMismatch``, never retried by the bus, and only ever
reported on the store's state: a first attempt that trusted the aggregate cache is run again on fresh
state before its expectation is answered. An idempotency key's replay answers first, whatever is
expected. Process managers carry the expectation through their outbox; a mismatch is a refusal for good.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity, TransferHoldings
from example_app.handlers import router as example_router
from framework import (
    AlreadyExists,
    CommandBus,
    CommandContext,
    CommandRejected,
    CommandRouter,
    ConfigurationError,
    EventStore,
    UnitOfWork,
    VersionMismatch,
)
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.bus import fingerprint
from framework.commands import Command
from framework.dispatcher import Dispatcher
from framework.mapper import from_stored
from framework.projector import HandlerContext, ProcessManager, Refusal, on
from framework.readmodel import ReadModel
from framework.worker import ProjectionWorker

from .domain import (
    APPLE,
    Counter,
    CounterIncremented,
    CounterStarted,
    IncrementCounter,
    StartCounter,
    append_events,
    counter_router,
    interfering_router,
)


class IncrementAt(Command):
    """Increment, if the counter is at ``at`` (the handler says so to ``unit.get``)."""

    counter_id: UUID
    at: int


class StartUnlessStarted(Command):
    counter_id: UUID


def counting_router(calls: list[int]) -> CommandRouter:
    """The counter's commands, plus handler-level expectations; ``calls`` gets the version each
    IncrementCounter handler call loaded."""
    plain = counter_router()
    router = CommandRouter()
    router.route(StartCounter, plain.handler_for(StartCounter(counter_id=uuid4())))

    def increment(command: IncrementCounter, unit: UnitOfWork) -> Counter:
        counter = unit.get(Counter, command.counter_id)
        calls.append(counter.version)
        for _ in range(command.times):
            counter.increment(command.by)
        return counter

    def increment_at(command: IncrementAt, unit: UnitOfWork) -> Counter:
        counter = unit.get(Counter, command.counter_id, expected_version=command.at)
        counter.increment(1)
        return counter

    def start_unless_started(command: StartUnlessStarted, unit: UnitOfWork) -> Counter:
        unit.find(Counter, command.counter_id, expected_version=0)
        return unit.add(Counter.start(command.counter_id, "once"))

    router.route(IncrementCounter, increment)
    router.route(IncrementAt, increment_at)
    router.route(StartUnlessStarted, start_unless_started)
    return router


def expecting(version: int, key: str | None = None) -> CommandContext:
    return CommandContext(expected_version=version, idempotency_key=key)


def stored_events(store: EventStore, counter_id: UUID) -> list[object]:
    return [from_stored(s).event for s in store.read_stream(counter_id)]


def counter_at(store: EventStore, version: int) -> UUID:
    """A counter written straight into the store, at ``version``."""
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"),
                  *[CounterIncremented(by=1)] * (version - 1))
    return counter_id


# --- match and mismatch ------------------------------------------------------------------------------


def test_a_command_on_the_expected_version_runs(store: EventStore) -> None:
    bus = CommandBus(counting_router([]), store)
    counter_id = counter_at(store, 2)
    executed = bus.execute(IncrementCounter(counter_id=counter_id, by=5), expecting(2))
    assert executed.result.version == 3
    assert bus.execute(IncrementCounter(counter_id=counter_id), expecting(3)).result.version == 4


def test_a_mismatch_names_both_versions_writes_nothing_and_is_not_retried(store: EventStore) -> None:
    calls: list[int] = []
    bus = CommandBus(counting_router(calls), store)
    counter_id = counter_at(store, 2)
    head = store.head()
    with pytest.raises(VersionMismatch) as raised:
        bus.execute(IncrementCounter(counter_id=counter_id, by=5), expecting(1))
    error = raised.value
    assert (error.expected_version, error.current_version, error.code) == (1, 2, "version_mismatch")
    assert isinstance(error, CommandRejected)
    assert "is at version 2; the command expected version 1" in error.message
    assert calls == [2]  # decided once, on the store's state: no retry
    assert store.head() == head


def test_zero_means_the_aggregate_must_not_exist_yet(store: EventStore) -> None:
    bus = CommandBus(counting_router([]), store)
    counter_id = uuid4()
    assert bus.execute(StartCounter(counter_id=counter_id), expecting(0)).result.version == 1
    with pytest.raises(VersionMismatch, match="exists already, at version 1") as raised:
        bus.execute(StartUnlessStarted(counter_id=counter_id))  # the handler's own expectation of 0
    assert raised.value.current_version == 1
    with pytest.raises(AlreadyExists):  # unit.add refuses first: the handler's refusal is the answer
        bus.execute(StartCounter(counter_id=counter_id), expecting(0))


def test_expecting_a_version_of_an_aggregate_the_command_creates_is_a_mismatch_at_zero(store: EventStore) -> None:
    bus = CommandBus(counting_router([]), store)
    with pytest.raises(VersionMismatch, match="does not exist") as raised:
        bus.execute(StartCounter(counter_id=uuid4()), expecting(4))
    assert (raised.value.expected_version, raised.value.current_version) == (4, 0)
    assert store.head() == 0


def test_the_version_checked_is_that_of_the_aggregate_the_command_answers_with(store: EventStore) -> None:
    bus = CommandBus(example_router, store)
    bus.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    for number in ("SRC", "DST"):
        bus.execute(OpenAccount(account_number=number, holder_name="Ada"))
    bus.execute(CreditHoldings(account_number="SRC", isin=APPLE, quantity=10))  # SRC at 2, DST at 1
    transfer = TransferHoldings(from_account="SRC", to_account="DST", isin=APPLE, quantity=3)
    assert bus.execute(transfer, expecting(2)).result.version == 3  # the source's version; DST is now 2
    with pytest.raises(VersionMismatch) as raised:
        bus.execute(transfer, expecting(2))
    assert raised.value.current_version == 3


def test_a_handler_can_expect_a_version_of_what_it_loads(store: EventStore) -> None:
    bus = CommandBus(counting_router([]), store)
    counter_id = counter_at(store, 3)
    assert bus.execute(IncrementAt(counter_id=counter_id, at=3)).result.version == 4
    with pytest.raises(VersionMismatch) as raised:
        bus.execute(IncrementAt(counter_id=counter_id, at=3))
    assert (raised.value.expected_version, raised.value.current_version) == (3, 4)


@pytest.mark.parametrize("bad", [-1, True, "3", 2.0])
def test_an_expected_version_is_a_whole_number_of_zero_or_more(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="expected version"):
        CommandContext(expected_version=bad)
    with pytest.raises(ConfigurationError, match="expected version"):
        UnitOfWork(MemoryEventStore()).find(Counter, uuid4(), expected_version=bad)


# --- the cache is never the judge ------------------------------------------------------------------


def two_processes(store: EventStore, calls: list[int]) -> tuple[CommandBus, UUID]:
    """A bus whose cache holds a counter at version 1 while the store has it at 2 (another process wrote)."""
    stale, other = CommandBus(counting_router(calls), store), CommandBus(counting_router([]), store)
    counter_id = uuid4()
    stale.execute(StartCounter(counter_id=counter_id))
    other.execute(IncrementCounter(counter_id=counter_id))
    return stale, counter_id


def test_an_expectation_met_by_the_store_but_not_by_a_stale_cache_runs(store: EventStore) -> None:
    calls: list[int] = []
    stale, counter_id = two_processes(store, calls)
    assert stale.execute(IncrementCounter(counter_id=counter_id), expecting(2)).result.version == 3
    assert calls == [1, 2]  # decided on the cache, then again on the store's state


def test_an_expectation_met_only_by_a_stale_cache_is_a_mismatch_with_the_stored_version(store: EventStore) -> None:
    calls: list[int] = []
    stale, counter_id = two_processes(store, calls)
    with pytest.raises(VersionMismatch) as raised:
        stale.execute(IncrementCounter(counter_id=counter_id), expecting(1))
    assert raised.value.current_version == 2
    assert calls == [1, 2]
    assert stored_events(store, counter_id) == [CounterStarted(label="counter"), CounterIncremented(by=1)]


def test_a_command_that_changes_nothing_is_checked_against_the_store_too(store: EventStore) -> None:
    calls: list[int] = []
    stale, counter_id = two_processes(store, calls)
    with pytest.raises(VersionMismatch):  # no append would have noticed the stale cache
        stale.execute(IncrementCounter(counter_id=counter_id, times=0), expecting(1))
    assert stale.execute(IncrementCounter(counter_id=counter_id, times=0), expecting(2)).result.version == 2
    assert stale.execute(IncrementCounter(counter_id=counter_id, times=0), expecting(2)).result.version == 2


def test_a_handler_expectation_on_a_stale_cache_is_decided_on_the_store(store: EventStore) -> None:
    stale, counter_id = two_processes(store, [])
    assert stale.execute(IncrementAt(counter_id=counter_id, at=2)).result.version == 3
    stale, counter_id = two_processes(store, [])
    with pytest.raises(VersionMismatch) as raised:
        stale.execute(IncrementAt(counter_id=counter_id, at=1))
    assert raised.value.current_version == 2


def test_a_mismatch_on_a_fresh_cache_is_answered_without_running_again(store: EventStore) -> None:
    calls: list[int] = []
    bus = CommandBus(counting_router(calls), store)
    counter_id = uuid4()
    bus.execute(StartCounter(counter_id=counter_id))  # cached at 1, and the store agrees
    with pytest.raises(VersionMismatch):
        bus.execute(IncrementCounter(counter_id=counter_id), expecting(7))
    assert calls == [1]


def test_a_conflict_retried_on_fresh_state_checks_the_expectation_again(store: EventStore) -> None:
    counter_id = counter_at(store, 1)
    calls: list[int] = []
    bus = CommandBus(interfering_router(store, 1, calls), store, max_attempts=3)
    with pytest.raises(VersionMismatch) as raised:  # not ConcurrencyConflict, and not written
        bus.execute(IncrementCounter(counter_id=counter_id, by=7), expecting(1))
    assert (raised.value.expected_version, raised.value.current_version) == (1, 2)
    assert calls == [1, 2]
    assert stored_events(store, counter_id) == [CounterStarted(label="c"), CounterIncremented(by=1000)]


# --- idempotency keys: a replay answers first ------------------------------------------------------


def test_a_replay_returns_the_first_answer_whatever_is_expected(store: EventStore) -> None:
    bus = CommandBus(counting_router([]), store)
    counter_id = counter_at(store, 1)
    command = IncrementCounter(counter_id=counter_id, by=2)
    first = bus.execute(command, expecting(1, key="k-1"))
    assert first.result.version == 2
    for expected in (1, 2, 99):  # 1 is stale now, 99 never was: the key's answer stands
        again = bus.execute(command, expecting(expected, key="k-1"))
        assert again.replayed and again.result == first.result
    assert store.head() == 2
    assert fingerprint(command) == fingerprint(command.model_copy())  # the expectation is not the request


def test_a_mismatch_releases_its_key_for_a_corrected_expectation(store: EventStore) -> None:
    bus = CommandBus(counting_router([]), store)
    counter_id = counter_at(store, 2)
    command = IncrementCounter(counter_id=counter_id)
    with pytest.raises(VersionMismatch):
        bus.execute(command, expecting(1, key="k-2"))
    executed = bus.execute(command, expecting(2, key="k-2"))
    assert not executed.replayed and executed.result.version == 3


# --- process managers: carried through the outbox, refused for good ---------------------------------


class Seen(ReadModel):
    table = "seen"
    key = ("counter_id",)

    counter_id: UUID
    refused: str | None = None
    current_version: int | None = None


class IncrementOnStart(ProcessManager):
    """Each counter started gets one increment, only if nothing happened to it since it started."""

    name = "increment_on_start"
    read_models = (Seen,)

    @on(CounterStarted)
    def started(self, event: CounterStarted, context: HandlerContext) -> None:
        context.views.put(Seen(counter_id=context.envelope.aggregate_id))
        context.issue(IncrementCounter(counter_id=context.envelope.aggregate_id, by=10),
                      expected_version=context.envelope.version)

    def on_refused(self, refusal: Refusal, context: HandlerContext) -> bool:
        assert isinstance(refusal.error, VersionMismatch)
        context.views.put(Seen(counter_id=context.envelope.aggregate_id, refused=refusal.code,
                               current_version=refusal.error.current_version))
        return True


def process(store: MemoryEventStore) -> tuple[MemoryViewStore, ProjectionWorker, Dispatcher]:
    views = MemoryViewStore()
    bus = CommandBus(counter_router(), store)
    worker = ProjectionWorker(IncrementOnStart(), views, store, bus)
    return views, worker, Dispatcher(worker, bus, clock=lambda: datetime.now(UTC))


def test_a_process_manager_s_expectation_is_carried_through_the_outbox_and_met() -> None:
    store = MemoryEventStore()
    views, worker, dispatcher = process(store)
    counter_id = counter_at(store, 1)
    worker.catch_up()
    (entry,) = views.outbox("increment_on_start", 10)
    assert entry.context["expected_version"] == 1
    assert dispatcher.run_once() == 1
    assert stored_events(store, counter_id)[-1] == CounterIncremented(by=10)
    dispatcher.close()


def test_a_process_manager_s_command_on_a_moved_aggregate_is_refused_for_good() -> None:
    store = MemoryEventStore()
    views, worker, dispatcher = process(store)
    counter_id = counter_at(store, 1)
    worker.catch_up()
    append_events(store, Counter, counter_id, CounterIncremented(by=1))  # lands before the dispatch
    assert dispatcher.run_once() == 1  # settled: refused, handled, never postponed
    (seen,) = views.query("increment_on_start", Seen)
    assert (seen.refused, seen.current_version) == ("version_mismatch", 2)
    assert views.outbox("increment_on_start", 10) == [] and views.dead_letters() == []
    assert stored_events(store, counter_id)[-1] == CounterIncremented(by=1)
    dispatcher.close()
