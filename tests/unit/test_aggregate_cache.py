"""The aggregate cache hands out detached copies: a command that changes its copy and then fails, or
runs beside another on the same aggregate, never changes what the cache holds or what others see."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from framework import (
    Aggregate,
    Command,
    CommandBus,
    CommandContext,
    CommandRouter,
    ConcurrencyConflict,
    Event,
    EventStore,
    RuleViolation,
    UnitOfWork,
    event,
)
from framework.cache import AggregateCache
from framework.errors import StoreUnavailable
from framework.mapper import from_stored
from framework.store import ClaimOutcome, IdempotencyCompletion, StoredEvent

from .domain import append_events


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Lot(BaseModel):
    isin: str
    quantities: list[int] = Field(default_factory=list)


class LedgerOpened(Event):
    event_name: ClassVar[str] = "eventfold-unit:LedgerOpened"
    name: str


class LedgerPosted(Event):
    event_name: ClassVar[str] = "eventfold-unit:LedgerPosted"
    isin: str
    quantity: int


class Ledger(Aggregate):
    """State of every shape a command could change in place: nested containers and models."""

    name: str = ""
    amount: Decimal = Decimal(0)
    opened_on: datetime.date | None = None
    colour: Colour = Colour.RED
    by_isin: dict[str, list[int]] = Field(default_factory=dict)
    lots: list[Lot] = Field(default_factory=list)
    tags: set[str] = Field(default_factory=set)
    pairs: tuple[list[int], ...] = ()
    nested: dict[str, dict[str, int]] = Field(default_factory=dict)

    @event(LedgerOpened)
    def _opened(self, name: str) -> None:
        self.name, self.opened_on = name, datetime.date(2026, 1, 2)

    @event(LedgerPosted)
    def _posted(self, isin: str, quantity: int) -> None:  # changes everything in place
        self.by_isin.setdefault(isin, []).append(quantity)
        lot = next((lot for lot in self.lots if lot.isin == isin), None)
        if lot is None:
            self.lots.append(Lot(isin=isin))
        else:
            lot.quantities.append(quantity)
        self.tags.add(isin)
        self.pairs = (*self.pairs, [quantity])
        if self.pairs:
            self.pairs[0].append(quantity)
        self.nested.setdefault(isin, {})[str(quantity)] = quantity
        self.amount += quantity
        self.colour = Colour.BLUE


class OpenLedger(Command):
    ledger_id: UUID


class Post(Command):
    ledger_id: UUID
    quantity: int
    fail: str = ""  # "rule", "error", "conflict": how the handler fails after changing the ledger


def ledger_router(store: EventStore, before_failing: Callable[[], None] = lambda: None) -> CommandRouter:
    router = CommandRouter()

    def open_ledger(command: OpenLedger, unit: UnitOfWork) -> Ledger:
        ledger = Ledger.blank(command.ledger_id)
        ledger._opened(name="main")
        return unit.add(ledger)

    def post(command: Post, unit: UnitOfWork) -> Ledger:
        ledger = unit.get(Ledger, command.ledger_id)
        ledger._posted(isin="X", quantity=command.quantity)
        ledger._posted(isin="Y", quantity=command.quantity)
        before_failing()
        if command.fail == "rule":
            raise RuleViolation("refused after changing the ledger", reason="test")
        if command.fail == "error":
            raise ValueError("a bug in the handler")
        if command.fail == "conflict":
            append_events(store, Ledger, ledger.id, LedgerPosted(isin="Z", quantity=1000))
        return ledger

    router.route(OpenLedger, open_ledger)
    router.route(Post, post)
    return router


def fresh(store: EventStore, ledger_id: UUID, version: int | None = None) -> Ledger:
    """The ledger replayed from the store (up to ``version``)."""
    stored = store.read_stream(ledger_id)[:version]
    return Ledger.from_events(ledger_id, [from_stored(s).event for s in stored])


def assert_cache_true(cache: AggregateCache, store: EventStore, ledger_id: UUID) -> None:
    """What the cache holds equals the store's state at its version: stale perhaps, never wrong."""
    cached = cache.get(Ledger, ledger_id)
    assert cached is not None
    assert cached.pending_events == ()
    assert cached == fresh(store, ledger_id, cached.version)


# --- the copy itself ----------------------------------------------------------------------------


def mutable_objects(value: Any, found: dict[int, Any]) -> dict[int, Any]:
    """Every mutable object reachable from ``value``, by id."""
    if isinstance(value, (dict, list, set, BaseModel)):
        found[id(value)] = value
    if isinstance(value, BaseModel):
        for item in value.__dict__.values():
            mutable_objects(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            mutable_objects(item, found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            mutable_objects(item, found)
    return found


postings = st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(-5, 5)), max_size=8)


@settings(max_examples=60, deadline=None)
@given(before=postings, after=postings)
def test_a_detached_copy_is_equal_and_shares_nothing_mutable(
    before: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    ledger = Ledger.blank(uuid4())
    ledger._opened(name="main")
    for isin, quantity in before:
        ledger._posted(isin=isin, quantity=quantity)
    ledger.collect_events()
    as_dumped = ledger.model_dump()
    copied = ledger.detached()
    assert copied == ledger and copied.pending_events == ()
    assert not set(mutable_objects(copied, {})) & set(mutable_objects(ledger, {}))
    for isin, quantity in after:
        copied._posted(isin=isin, quantity=quantity)
    assert ledger.model_dump() == as_dumped and ledger.pending_events == ()


def test_values_of_unknown_types_are_deep_copied() -> None:
    class Box:
        def __init__(self) -> None:
            self.items = [1]

    class Holder(Aggregate):
        model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
        box: Box = Field(default_factory=Box)

    holder = Holder(id=uuid4())
    copied = holder.detached()
    copied.box.items.append(2)
    assert holder.box.items == [1]


def test_extra_values_and_private_attributes_are_detached_too() -> None:
    class Loose(Aggregate):
        model_config = ConfigDict(extra="allow")

    class Scratch(Aggregate):
        _seen: list[int] = PrivateAttr(default_factory=list)

    loose = Loose(id=uuid4(), notes=[1])
    copied_loose = loose.detached()
    copied_loose.notes.append(2)  # type: ignore[attr-defined]
    assert loose.notes == [1]  # type: ignore[attr-defined]
    scratch = Scratch(id=uuid4())
    scratch._seen.append(1)
    copied_scratch = scratch.detached()
    copied_scratch._seen.append(2)
    assert scratch._seen == [1] and copied_scratch._seen == [1, 2]


# --- through the bus ------------------------------------------------------------------------------


@pytest.mark.parametrize("fail", ["rule", "error", "conflict"])
def test_a_command_that_changes_its_aggregate_then_fails_leaves_the_cache_true(
    store: EventStore, fail: str
) -> None:
    cache = AggregateCache()
    bus = CommandBus(ledger_router(store), store, cache=cache, max_attempts=1)
    ledger_id = uuid4()
    bus.execute(OpenLedger(ledger_id=ledger_id))
    bus.execute(Post(ledger_id=ledger_id, quantity=1))
    expected: type[BaseException] = {"rule": RuleViolation, "error": ValueError,
                                      "conflict": ConcurrencyConflict}[fail]
    with pytest.raises(expected):
        bus.execute(Post(ledger_id=ledger_id, quantity=7, fail=fail))
    assert_cache_true(cache, store, ledger_id)
    bus.execute(Post(ledger_id=ledger_id, quantity=2))
    assert_cache_true(cache, store, ledger_id)
    assert cache.get(Ledger, ledger_id) == fresh(store, ledger_id)


def test_a_conflict_retried_to_success_leaves_the_cache_true(store: EventStore) -> None:
    cache = AggregateCache()
    conflicts = iter([True])
    ledger_id = uuid4()
    CommandBus(ledger_router(store), store, cache=cache).execute(OpenLedger(ledger_id=ledger_id))

    def post_once_conflicting(command: Post, unit: UnitOfWork) -> Ledger:
        ledger = unit.get(Ledger, command.ledger_id)
        ledger._posted(isin="X", quantity=command.quantity)
        if next(conflicts, False):
            append_events(store, Ledger, ledger.id, LedgerPosted(isin="Z", quantity=1000))
        return ledger

    router = CommandRouter()
    router.route(Post, post_once_conflicting)
    bus = CommandBus(router, store, cache=cache)
    bus.execute(Post(ledger_id=ledger_id, quantity=3))
    assert cache.get(Ledger, ledger_id) == fresh(store, ledger_id)
    assert fresh(store, ledger_id).by_isin == {"X": [3], "Z": [1000]}


def test_concurrent_commands_on_one_aggregate_never_see_each_others_uncommitted_changes(
    store: EventStore,
) -> None:
    changed, seen_by_other = threading.Event(), threading.Event()
    waiting = threading.local()

    def hold_until_the_other_has_looked() -> None:
        if getattr(waiting, "hold", False):
            changed.set()
            assert seen_by_other.wait(10)

    cache = AggregateCache()
    router = ledger_router(store, hold_until_the_other_has_looked)
    looks: list[Ledger] = []

    class Look(Command):
        ledger_id: UUID

    def look(command: Look, unit: UnitOfWork) -> None:
        looks.append(unit.get(Ledger, command.ledger_id).detached())

    router.route(Look, look)
    bus = CommandBus(router, store, cache=cache, max_attempts=1)
    ledger_id = uuid4()
    bus.execute(OpenLedger(ledger_id=ledger_id))
    bus.execute(Post(ledger_id=ledger_id, quantity=1))
    committed = fresh(store, ledger_id)
    errors: list[BaseException] = []

    def failing_writer() -> None:
        waiting.hold = True
        try:
            bus.execute(Post(ledger_id=ledger_id, quantity=50, fail="rule"))
        except BaseException as error:  # collected, checked below
            errors.append(error)

    writer = threading.Thread(target=failing_writer)
    writer.start()
    assert changed.wait(10)  # the writer has changed its copy and not failed yet
    bus.execute(Look(ledger_id=ledger_id))
    seen_by_other.set()
    writer.join(10)
    assert looks == [committed]
    assert len(errors) == 1 and isinstance(errors[0], RuleViolation)
    assert cache.get(Ledger, ledger_id) == fresh(store, ledger_id) == committed


def test_many_threads_posting_to_one_aggregate_leave_the_cache_equal_to_the_store(store: EventStore) -> None:
    cache = AggregateCache()
    bus = CommandBus(ledger_router(store), store, cache=cache, max_attempts=50)
    ledger_id = uuid4()
    bus.execute(OpenLedger(ledger_id=ledger_id))

    def work(n: int) -> None:
        for i in range(10):
            fail = "rule" if (n + i) % 3 == 0 else ""
            with contextlib.suppress(RuleViolation):
                bus.execute(Post(ledger_id=ledger_id, quantity=n * 100 + i, fail=fail))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stored = fresh(store, ledger_id)
    assert cache.get(Ledger, ledger_id) == stored
    assert len(stored.by_isin["X"]) == sum(1 for n in range(4) for i in range(10) if (n + i) % 3)


class HeldAppender:
    """The store's writes awaited on the loop; the first append waits for ``release``, then fails."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.held = False

    async def append(self, events: Sequence[StoredEvent], completion: IdempotencyCompletion | None = None) -> list[int]:
        if not self.held:
            self.held = True
            self.holding.set()
            await self.release.wait()
            raise StoreUnavailable("the store went away mid-append")
        return self.store.append(events, completion)

    async def claim_idempotency_key(self, key: str, request_hash: str, owner: UUID,
                                    lease_seconds: float) -> ClaimOutcome:
        return self.store.claim_idempotency_key(key, request_hash, owner, lease_seconds)

    async def release_idempotency_key(self, key: str, owner: UUID) -> None:
        self.store.release_idempotency_key(key, owner)

    async def close(self) -> None:
        pass


def test_on_the_loop_a_command_awaiting_its_append_is_invisible_to_others_and_its_failure_leaves_no_trace(
    store: EventStore,
) -> None:
    cache = AggregateCache()
    router = ledger_router(store)
    looks: list[Ledger] = []

    class Look(Command):
        ledger_id: UUID

    def look(command: Look, unit: UnitOfWork) -> None:
        looks.append(unit.get(Ledger, command.ledger_id).detached())

    router.route(Look, look)
    bus = CommandBus(router, store, cache=cache)
    ledger_id = uuid4()
    bus.execute(OpenLedger(ledger_id=ledger_id))
    bus.execute(Post(ledger_id=ledger_id, quantity=1))
    committed = fresh(store, ledger_id)

    async def offload(function: Callable[..., Any], *args: object) -> Any:
        return await asyncio.to_thread(function, *args)

    async def main() -> None:
        appender = HeldAppender(store)
        writer = asyncio.ensure_future(
            bus.execute_async(Post(ledger_id=ledger_id, quantity=9), CommandContext(), appender, offload))
        await asyncio.wait_for(appender.holding.wait(), 10)  # decided on its copy, awaiting the append
        await bus.execute_async(Look(ledger_id=ledger_id), CommandContext(), appender, offload)
        appender.release.set()
        with pytest.raises(StoreUnavailable):
            await writer

    asyncio.run(main())
    assert looks == [committed]
    assert cache.get(Ledger, ledger_id) == fresh(store, ledger_id) == committed


class _Recorded(Event):
    name: str
    size: int = 1


class _Recorder(Aggregate):
    names: tuple[str, ...] = ()

    @event(_Recorded)
    def _recorded(self, name: str, size: int = 1) -> None:
        self.names = (*self.names, f"{name}:{size}")


def test_an_event_method_records_the_same_event_however_it_is_called() -> None:
    recorder = _Recorder.blank(uuid4())
    recorder._recorded("a")
    recorder._recorded("b", 2)
    recorder._recorded("c", size=3)
    recorder._recorded(name="d")
    assert recorder.names == ("a:1", "b:2", "c:3", "d:1")
    assert [e.model_dump() for e in recorder.collect_events()] == [
        {"name": "a", "size": 1}, {"name": "b", "size": 2}, {"name": "c", "size": 3}, {"name": "d", "size": 1}]
    with pytest.raises(TypeError):
        recorder._recorded()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        recorder._recorded("e", 1, 2)  # type: ignore[call-arg]
