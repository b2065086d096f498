"""The command bus: results, metadata, idempotency keys, and bounded retries on conflicts."""

from __future__ import annotations

import json
import time
from uuid import uuid4

import pytest

from example_app.accounts import Account
from example_app.commands import CreditHoldings, DebitHoldings, OpenAccount, RegisterSecurity
from example_app.handlers import router as example_router
from framework import (
    AlreadyExists,
    CommandBus,
    CommandContext,
    CommandResult,
    ConcurrencyConflict,
    EventStore,
    Executed,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    RuleViolation,
    UnitOfWork,
)
from framework.bus import fingerprint
from framework.mapper import from_stored
from framework.store import Claimed

from .domain import (
    APPLE,
    Counter,
    CounterIncremented,
    CounterStarted,
    Explode,
    IncrementCounter,
    StartCounter,
    counter_router,
    exploding_router,
    interfering_router,
)

# --- results and metadata --------------------------------------------------------------------


def test_a_command_returns_its_aggregate_version_and_last_position(store: EventStore) -> None:
    bus = CommandBus(counter_router(), store)
    counter_id = uuid4()
    first = bus.execute(StartCounter(counter_id=counter_id))
    assert first == Executed(CommandResult(counter_id, 1, 1))
    second = bus.execute(IncrementCounter(counter_id=counter_id, times=3))
    assert second == Executed(CommandResult(counter_id, 4, 4))
    assert store.head() == 4


def test_the_context_is_copied_into_every_events_metadata(store: EventStore) -> None:
    bus = CommandBus(counter_router(), store)
    counter_id = uuid4()
    context = CommandContext(correlation_id="corr-1", causation_id="cause-1", actor="alice")
    bus.execute(StartCounter(counter_id=counter_id), context)
    bus.execute(IncrementCounter(counter_id=counter_id, times=2), context)
    envelopes = [from_stored(n) for n in store.read_all(0, 100)]
    assert [e.version for e in envelopes] == [1, 2, 3]
    assert [e.position for e in envelopes] == [1, 2, 3]
    assert {(e.metadata.correlation_id, e.metadata.causation_id, e.metadata.actor) for e in envelopes} == {
        ("corr-1", "cause-1", "alice")
    }
    assert len({e.metadata.event_id for e in envelopes}) == 3  # each event has its own id
    assert {e.aggregate_type for e in envelopes} == {"Counter"}


def test_a_command_that_changes_nothing_writes_nothing(store: EventStore) -> None:
    bus = CommandBus(counter_router(), store)
    counter_id = uuid4()
    bus.execute(StartCounter(counter_id=counter_id))
    executed = bus.execute(IncrementCounter(counter_id=counter_id, times=0))
    assert executed.result == CommandResult(counter_id, 1, None)
    assert store.head() == 1


def test_a_failing_command_writes_nothing(store: EventStore) -> None:
    bus = CommandBus(example_router, store)
    bus.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    bus.execute(OpenAccount(account_number="A-1", holder_name="Ada"))
    with pytest.raises(RuleViolation):
        bus.execute(DebitHoldings(account_number="A-1", isin=APPLE, quantity=1))
    assert store.head() == 2


# --- idempotency keys ------------------------------------------------------------------------


def keyed(key: str = "key-1") -> CommandContext:
    return CommandContext(idempotency_key=key)


def credit(quantity: int = 5) -> CreditHoldings:
    return CreditHoldings(account_number="A-1", isin=APPLE, quantity=quantity)


def example_bus(store: EventStore) -> CommandBus:
    bus = CommandBus(example_router, store)
    bus.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    bus.execute(OpenAccount(account_number="A-1", holder_name="Ada"))
    return bus


def holding(store: EventStore) -> int:
    return UnitOfWork(store).get(Account, Account.id_for("A-1")).holding(APPLE)


def test_same_key_same_command_replays_the_first_result_and_writes_nothing(store: EventStore) -> None:
    bus = example_bus(store)
    first = bus.execute(credit(), keyed())
    assert first.replayed is False
    head = store.head()
    again = bus.execute(credit(), keyed())
    assert again == Executed(first.result, replayed=True)
    assert store.head() == head
    assert holding(store) == 5


def test_the_replay_survives_later_writes_to_the_aggregate(store: EventStore) -> None:
    bus = example_bus(store)
    first = bus.execute(credit(), keyed())
    bus.execute(credit(7))
    assert bus.execute(credit(), keyed()).result == first.result  # the first result, not the current state
    assert holding(store) == 12


def test_same_key_different_command_is_rejected(store: EventStore) -> None:
    bus = example_bus(store)
    bus.execute(credit(5), keyed())
    head = store.head()
    with pytest.raises(IdempotencyKeyReused, match="key-1"):
        bus.execute(credit(6), keyed())
    with pytest.raises(IdempotencyKeyReused):
        bus.execute(DebitHoldings(account_number="A-1", isin=APPLE, quantity=5), keyed())
    assert store.head() == head


def test_different_keys_are_independent(store: EventStore) -> None:
    bus = example_bus(store)
    bus.execute(credit(), keyed("key-1"))
    assert bus.execute(credit(), keyed("key-2")).replayed is False
    assert holding(store) == 10


def test_a_key_in_flight_elsewhere_is_reported(store: EventStore) -> None:
    bus = example_bus(store)
    other_owner = uuid4()
    assert store.claim_idempotency_key("key-1", fingerprint(credit()), other_owner, 60.0) == Claimed()
    head = store.head()
    with pytest.raises(IdempotencyKeyInFlight, match="key-1"):
        bus.execute(credit(), keyed())
    assert store.head() == head
    # our failed attempt must not have released someone else's claim
    store.release_idempotency_key("key-1", other_owner)
    assert bus.execute(credit(), keyed()).replayed is False


def test_a_key_in_flight_for_a_different_command_is_reported_as_reused(store: EventStore) -> None:
    bus = example_bus(store)
    store.claim_idempotency_key("key-1", fingerprint(credit(99)), uuid4(), 60.0)
    with pytest.raises(IdempotencyKeyReused):
        bus.execute(credit(), keyed())


def test_an_expired_claim_can_be_taken_over(store: EventStore) -> None:
    bus = CommandBus(example_router, store, idempotency_lease_seconds=0.0)
    bus.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    bus.execute(OpenAccount(account_number="A-1", holder_name="Ada"))
    store.claim_idempotency_key("key-1", fingerprint(credit()), uuid4(), 60.0)  # a crashed request's claim
    time.sleep(0.01)
    assert bus.execute(credit(), keyed()).replayed is False
    assert holding(store) == 5


def test_a_failed_command_releases_its_key(store: EventStore) -> None:
    bus = example_bus(store)
    debit = DebitHoldings(account_number="A-1", isin=APPLE, quantity=5)
    with pytest.raises(RuleViolation):
        bus.execute(debit, keyed())
    # the key is free again: for the same request once it can succeed...
    bus.execute(credit(), keyed("key-2"))
    assert bus.execute(debit, keyed()).replayed is False
    assert holding(store) == 0
    # ...and after it has succeeded it replays
    assert bus.execute(debit, keyed()).replayed is True


def test_a_failed_command_frees_its_key_for_a_different_request(store: EventStore) -> None:
    bus = example_bus(store)
    with pytest.raises(RuleViolation):
        bus.execute(DebitHoldings(account_number="A-1", isin=APPLE, quantity=5), keyed())
    assert bus.execute(credit(), keyed()).replayed is False


def test_an_unexpected_error_releases_the_key_too(store: EventStore) -> None:
    bus = CommandBus(exploding_router(lambda: RuntimeError("bug in a handler")), store)
    command = Explode(note="x")
    with pytest.raises(RuntimeError):
        bus.execute(command, keyed())
    assert store.claim_idempotency_key("key-1", fingerprint(command), uuid4(), 60.0) == Claimed()


def test_the_idempotency_record_commits_with_the_events(store: EventStore) -> None:
    """If another owner takes the key over while the command runs, the append is refused whole."""
    router = counter_router()
    original = router.handler_for(StartCounter(counter_id=uuid4()))
    thief = uuid4()

    def start_and_lose_the_key(command: StartCounter, unit: UnitOfWork) -> Counter | None:
        store.claim_idempotency_key("key-1", "someone else", thief, -1.0)  # takes over any claim
        result = original(command, unit)
        assert result is None or isinstance(result, Counter)
        return result

    stolen = type(router)()
    stolen.route(StartCounter, start_and_lose_the_key)
    counter_id = uuid4()
    with pytest.raises(IdempotencyKeyInFlight):
        CommandBus(stolen, store).execute(StartCounter(counter_id=counter_id), keyed())
    assert store.read_stream(counter_id) == []
    assert store.head() == 0


# --- fingerprints ----------------------------------------------------------------------------


PAYLOADS = [
    '{"account_number": "A-1", "isin": "US0378331005", "quantity": 5}',
    '{"quantity":5,"isin":"US0378331005","account_number":"A-1"}',
    '\n{ "isin" : "US0378331005",\t"quantity" : 5 , "account_number" : "A-1" }\n',
    '{"account_number": "A-1", "isin": "US0378331005", "quantity": 5, "reference": null}',  # the default
]


def parsed(name: str, payload: str) -> object:
    return example_router.parse(name, json.loads(payload))


def test_the_fingerprint_ignores_key_order_whitespace_and_explicit_defaults() -> None:
    prints = {fingerprint(parsed("CreditHoldings", p)) for p in PAYLOADS}  # type: ignore[arg-type]
    assert len(prints) == 1


@pytest.mark.parametrize(
    "payload",
    [
        '{"account_number": "A-1", "isin": "US0378331005", "quantity": 6}',
        '{"account_number": "A-2", "isin": "US0378331005", "quantity": 5}',
        '{"account_number": "A-1", "isin": "DE0007164600", "quantity": 5}',
        '{"account_number": "A-1", "isin": "US0378331005", "quantity": 5, "reference": "r"}',
    ],
)
def test_the_fingerprint_changes_with_any_value(payload: str) -> None:
    base = fingerprint(parsed("CreditHoldings", PAYLOADS[0]))  # type: ignore[arg-type]
    assert fingerprint(parsed("CreditHoldings", payload)) != base  # type: ignore[arg-type]


def test_the_fingerprint_includes_the_command_name() -> None:
    credit_print = fingerprint(parsed("CreditHoldings", PAYLOADS[0]))  # type: ignore[arg-type]
    debit_print = fingerprint(parsed("DebitHoldings", PAYLOADS[0]))  # type: ignore[arg-type]
    assert credit_print != debit_print


def test_reordered_json_with_the_same_key_is_a_replay(store: EventStore) -> None:
    bus = example_bus(store)
    commands = [parsed("CreditHoldings", p) for p in PAYLOADS]
    outcomes = [bus.execute(c, keyed()) for c in commands]  # type: ignore[arg-type]
    assert [o.replayed for o in outcomes] == [False, True, True, True]
    assert holding(store) == 5


# --- retries on concurrency conflicts --------------------------------------------------------


def started(store: EventStore) -> Counter:
    counter = Counter.start(uuid4(), "c")
    bus = CommandBus(counter_router(), store)
    bus.execute(StartCounter(counter_id=counter.id, label="c"))
    return counter


def events_of(store: EventStore, counter: Counter) -> list[object]:
    return [from_stored(s).event for s in store.read_stream(counter.id)]


@pytest.mark.parametrize("interfere", [1, 2])
def test_a_conflict_is_retried_on_fresh_state(store: EventStore, interfere: int) -> None:
    counter = started(store)
    calls: list[int] = []
    bus = CommandBus(interfering_router(store, interfere, calls), store, max_attempts=3)
    executed = bus.execute(IncrementCounter(counter_id=counter.id, by=7))
    assert calls == list(range(1, interfere + 2))  # each attempt saw the other writer's events
    assert executed.result.version == interfere + 2
    final = UnitOfWork(store).get(Counter, counter.id)
    assert final.increments == [1000] * interfere + [7]  # both writers' events, ours last
    assert final.total == 1000 * interfere + 7


@pytest.mark.parametrize("interfere", [3, 10])
def test_conflicts_beyond_max_attempts_are_reported_and_nothing_is_stored(
    store: EventStore, interfere: int
) -> None:
    counter = started(store)
    calls: list[int] = []
    bus = CommandBus(interfering_router(store, interfere, calls), store, max_attempts=3)
    with pytest.raises(ConcurrencyConflict, match="3 times"):
        bus.execute(IncrementCounter(counter_id=counter.id, by=7))
    assert len(calls) == 3
    assert events_of(store, counter) == [CounterStarted(label="c")] + [CounterIncremented(by=1000)] * 3


def test_max_attempts_of_one_means_no_retry(store: EventStore) -> None:
    counter = started(store)
    calls: list[int] = []
    bus = CommandBus(interfering_router(store, 1, calls), store, max_attempts=1)
    with pytest.raises(ConcurrencyConflict):
        bus.execute(IncrementCounter(counter_id=counter.id, by=7))
    assert calls == [1]


def test_an_exhausted_keyed_command_releases_its_key(store: EventStore) -> None:
    counter = started(store)
    calls: list[int] = []
    bus = CommandBus(interfering_router(store, 2, calls), store, max_attempts=2)
    command = IncrementCounter(counter_id=counter.id, by=7)
    with pytest.raises(ConcurrencyConflict):
        bus.execute(command, keyed())
    executed = bus.execute(command, keyed())  # the interference has stopped
    assert executed.replayed is False
    assert UnitOfWork(store).get(Counter, counter.id).total == 2007


def test_a_keyed_command_retried_after_a_conflict_replays_its_final_result(store: EventStore) -> None:
    counter = started(store)
    calls: list[int] = []
    bus = CommandBus(interfering_router(store, 1, calls), store, max_attempts=3)
    command = IncrementCounter(counter_id=counter.id, by=7)
    first = bus.execute(command, keyed())
    assert bus.execute(command, keyed()) == Executed(first.result, replayed=True)
    assert len(calls) == 2


# --- the aggregate cache: trusted on a first attempt, never wrong ------------------------------


def test_a_duplicate_is_already_exists_whatever_max_attempts_is(store: EventStore) -> None:
    for max_attempts in (1, 2, 5):
        bus = CommandBus(example_router, store, max_attempts=max_attempts)
        command = OpenAccount(account_number=f"A-{max_attempts}", holder_name="Ada")
        bus.execute(command)
        with pytest.raises(AlreadyExists, match=f"A-{max_attempts}"):
            bus.execute(command)


def two_processes(store: EventStore) -> tuple[CommandBus, CommandBus]:
    """Two buses on one store, each with its own aggregate cache, like two write-API processes."""
    first, second = CommandBus(example_router, store), CommandBus(example_router, store)
    first.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    first.execute(OpenAccount(account_number="A-1", holder_name="Ada"))
    first.execute(credit(10))  # the first process now has A-1 cached with 10
    second.execute(DebitHoldings(account_number="A-1", isin=APPLE, quantity=10))
    return first, second


def test_a_rule_decided_on_stale_cached_state_is_decided_again_on_fresh_state(store: EventStore) -> None:
    first, _ = two_processes(store)
    with pytest.raises(RuleViolation, match="holds 0"):
        first.execute(DebitHoldings(account_number="A-1", isin=APPLE, quantity=5))
    assert holding(store) == 0


def test_a_refusal_decided_on_stale_cached_state_is_decided_again_on_fresh_state(store: EventStore) -> None:
    """The first process has A-1 cached holding nothing; another process credited it meanwhile: the
    debit the stale copy would refuse is decided again on the store's state, and goes through."""
    first, second = CommandBus(example_router, store), CommandBus(example_router, store)
    first.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    first.execute(OpenAccount(account_number="A-1", holder_name="Ada"))  # cached by the first: holds 0
    second.execute(credit(10))
    executed = first.execute(DebitHoldings(account_number="A-1", isin=APPLE, quantity=5))
    assert executed.result.version == 3 and holding(store) == 5
    with pytest.raises(RuleViolation, match="holds 5"):  # a refusal on fresh state stays a refusal
        first.execute(DebitHoldings(account_number="A-1", isin=APPLE, quantity=50))


def test_a_command_on_a_stale_cached_aggregate_lands_on_fresh_state(store: EventStore) -> None:
    first, _ = two_processes(store)
    executed = first.execute(credit(3))
    assert executed.result.version == 4  # opened, credited, debited elsewhere, credited
    assert holding(store) == 3


def test_a_failed_command_leaves_no_trace_in_the_cache(store: EventStore) -> None:
    router = counter_router()
    greedy = type(router)()
    greedy.route(StartCounter, router.handler_for(StartCounter(counter_id=uuid4())))

    def increment_within_limit(command: IncrementCounter, unit: UnitOfWork) -> Counter:
        counter = unit.get(Counter, command.counter_id)
        counter.increment(command.by)  # changes the loaded copy first...
        if counter.total > 100:
            raise RuleViolation("too much", reason="limit")  # ...then refuses
        return counter

    greedy.route(IncrementCounter, increment_within_limit)
    bus = CommandBus(greedy, store)
    counter_id = uuid4()
    bus.execute(StartCounter(counter_id=counter_id))
    bus.execute(IncrementCounter(counter_id=counter_id, by=1))
    with pytest.raises(RuleViolation):
        bus.execute(IncrementCounter(counter_id=counter_id, by=500))
    assert bus.execute(IncrementCounter(counter_id=counter_id, by=1)).result.version == 3
    assert UnitOfWork(store).get(Counter, counter_id).total == 2
    assert bus.execute(IncrementCounter(counter_id=counter_id, by=0)).result.version == 4
