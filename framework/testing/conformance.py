"""The conformance suite of the ``EventStore`` port: every adapter must pass it.

Subclass ``EventStoreConformance`` in a pytest module and say how to build the
adapter, either with ``make_store()`` or by overriding the ``store`` fixture::

    from framework.adapters.memory import MemoryEventStore
    from framework.testing.conformance import EventStoreConformance

    class TestMemoryEventStore(EventStoreConformance):
        def make_store(self) -> EventStore:
            return MemoryEventStore()

Each test gets a fresh, empty store; the base fixture calls ``create_schema()``
before the test and ``close()`` after it. The suite needs pytest but no driver:
it imports nothing from any adapter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

import pytest

from framework.aggregate import Aggregate, event
from framework.errors import AggregateNotFound, ConcurrencyConflict, IdempotencyKeyInFlight
from framework.events import Event, EventEnvelope, EventMetadata
from framework.history import History
from framework.mapper import to_stored
from framework.store import (
    Claimed,
    CommandResult,
    EventStore,
    IdempotencyCompletion,
    InFlight,
    Replay,
    StoredEvent,
)

__all__ = ["EventStoreConformance", "stored_event"]

T = TypeVar("T")

LONG_LEASE = 3600.0


def stored_event(aggregate_id: UUID, version: int, topic: str = "Thing", state: bytes | None = None
                 ) -> StoredEvent:
    """An opaque stored event: stores never look inside ``state``."""
    if state is None:
        state = f'{{"aggregate":"{aggregate_id}","version":{version}}}'.encode()
    return StoredEvent(originator_id=aggregate_id, originator_version=version, topic=topic, state=state)


class _Tallied(Event):
    """The event of the aggregate the history tests load (a name no application uses)."""

    event_name: ClassVar[str] = "eventfold.conformance.Tallied"
    amount: int


class _Tally(Aggregate):
    aggregate_name: ClassVar[str] = "eventfold.conformance.Tally"
    total: int = 0

    @event(_Tallied)
    def add(self, amount: int) -> None:
        self.total += amount


_MOMENT = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


def _tallied(aggregate_id: UUID, version: int, amount: int, at: datetime) -> StoredEvent:
    metadata = EventMetadata(recorded_at=at)
    return to_stored(EventEnvelope(_Tally.aggregate_name, aggregate_id, version, _Tallied(amount=amount), metadata))


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _run_together(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``work(i)`` in ``count`` threads released at once; results (or errors) by index."""
    barrier = threading.Barrier(count)
    results: list[T | BaseException] = [RuntimeError("did not run")] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as error:  # collected and inspected by the caller
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


class EventStoreConformance:
    """Abstract test case for ``framework.store.EventStore`` adapters."""

    #: how long to wait before taking over a claim made with ``expired_lease`` seconds of lease
    expired_lease: float = 0.05

    def make_store(self) -> EventStore:
        raise NotImplementedError("subclasses build the adapter here, or override the store fixture")

    @pytest.fixture
    def store(self) -> Iterator[EventStore]:
        store = self.make_store()
        store.create_schema()
        try:
            yield store
        finally:
            store.close()

    # --- helpers ---------------------------------------------------------------------------

    def _append_stream(self, store: EventStore, aggregate_id: UUID, versions: Sequence[int]) -> list[int]:
        return store.append([stored_event(aggregate_id, v) for v in versions])

    def _positions(self, store: EventStore) -> list[int]:
        return [n.id for n in store.read_all(0, 1_000_000)]

    def _claim(self, store: EventStore, key: str, request_hash: str = "h1", owner: UUID | None = None,
               lease: float = LONG_LEASE) -> tuple[UUID, Any]:
        owner = owner or uuid4()
        return owner, store.claim_idempotency_key(key, request_hash, owner, lease)

    # --- schema ----------------------------------------------------------------------------

    def test_create_schema_is_idempotent(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        self._append_stream(store, aggregate_id, [1])
        store.create_schema()
        store.create_schema()
        assert [e.originator_version for e in store.read_stream(aggregate_id)] == [1]
        assert self._append_stream(store, aggregate_id, [2])

    def test_a_new_store_is_empty(self, store: EventStore) -> None:
        assert store.head() == 0
        assert store.read_all(0, 10) == []
        assert store.read_stream(uuid4()) == []
        assert store.latest_snapshot(uuid4()) is None

    # --- append and read -------------------------------------------------------------------

    def test_append_returns_one_increasing_position_per_event(self, store: EventStore) -> None:
        first, second = uuid4(), uuid4()
        positions_a = self._append_stream(store, first, [1, 2, 3])
        positions_b = self._append_stream(store, second, [1, 2])
        positions = positions_a + positions_b
        assert len(positions_a) == 3 and len(positions_b) == 2
        assert all(isinstance(p, int) and p > 0 for p in positions)
        assert positions == sorted(positions) and len(set(positions)) == 5
        assert self._positions(store) == positions

    def test_append_of_nothing_writes_nothing(self, store: EventStore) -> None:
        self._append_stream(store, uuid4(), [1])
        head = store.head()
        assert store.append([]) == []
        assert store.head() == head

    def test_read_stream_returns_the_events_as_appended_after_a_version(self, store: EventStore) -> None:
        aggregate_id, other = uuid4(), uuid4()
        self._append_stream(store, aggregate_id, [1, 2])
        self._append_stream(store, other, [1])
        store.append([stored_event(aggregate_id, 3, topic="Special", state=b"\x00\xffbinary")])
        self._append_stream(store, aggregate_id, [4, 5])

        events = store.read_stream(aggregate_id)
        assert [e.originator_version for e in events] == [1, 2, 3, 4, 5]
        assert {_as_uuid(e.originator_id) for e in events} == {aggregate_id}
        third = events[2]
        assert (third.topic, bytes(third.state)) == ("Special", b"\x00\xffbinary")
        assert bytes(events[0].state) == stored_event(aggregate_id, 1).state

        assert [e.originator_version for e in store.read_stream(aggregate_id, after_version=2)] == [3, 4, 5]
        assert store.read_stream(aggregate_id, after_version=5) == []
        assert [e.originator_version for e in store.read_stream(other)] == [1]

    def test_read_stream_with_positions_numbers_a_stream_as_the_global_order_does(self, store: EventStore) -> None:
        aggregate_id, other = uuid4(), uuid4()
        mine = self._append_stream(store, aggregate_id, [1, 2])
        self._append_stream(store, other, [1])
        mine += store.append([stored_event(aggregate_id, 3, topic="Special", state=b"\x00\xffbinary")])

        events = store.read_stream_with_positions(aggregate_id)
        assert [(n.id, n.originator_version) for n in events] == list(zip(mine, [1, 2, 3], strict=True))
        assert {_as_uuid(n.originator_id) for n in events} == {aggregate_id}
        assert (events[2].topic, bytes(events[2].state)) == ("Special", b"\x00\xffbinary")
        assert [(n.id, n.originator_version, n.topic, bytes(n.state)) for n in events] == [
            (n.id, n.originator_version, n.topic, bytes(n.state)) for n in store.read_all(0, 100)
            if _as_uuid(n.originator_id) == aggregate_id]
        assert [n.id for n in store.read_stream_with_positions(aggregate_id, after_version=2)] == mine[2:]
        assert store.read_stream_with_positions(aggregate_id, after_version=3) == []
        assert store.read_stream_with_positions(uuid4()) == []

    # --- an aggregate's past (framework.history), on this adapter ---------------------------

    def _tally(self, store: EventStore, amounts: Sequence[int]) -> tuple[UUID, list[int]]:
        """A tally whose events were recorded an hour apart from ``_MOMENT`` on."""
        tally = uuid4()
        positions = store.append([_tallied(tally, version, amount, _MOMENT + timedelta(hours=version - 1))
                                  for version, amount in enumerate(amounts, start=1)])
        return tally, positions

    def test_history_loads_an_aggregate_at_a_version_at_a_moment_or_now(self, store: EventStore) -> None:
        tally, _ = self._tally(store, [1, 10, 100])
        self._tally(store, [5])  # another aggregate's events do not count
        history = History(store)
        assert [history.load(_Tally, tally, at_version=v).total for v in (1, 2, 3)] == [1, 11, 111]
        assert history.load(_Tally, tally, at_version=2).version == 2
        assert history.load(_Tally, tally).total == 111
        at = [_MOMENT, _MOMENT + timedelta(minutes=59), _MOMENT + timedelta(hours=1), _MOMENT + timedelta(days=9)]
        assert [history.load(_Tally, tally, as_of=moment).total for moment in at] == [1, 1, 11, 111]

    def test_history_says_when_an_aggregate_did_not_exist_then(self, store: EventStore) -> None:
        tally, _ = self._tally(store, [1, 10])
        history = History(store)
        with pytest.raises(AggregateNotFound, match="has no version 3: its latest is 2"):
            history.load(_Tally, tally, at_version=3)
        with pytest.raises(AggregateNotFound, match="did not exist yet at 2026-06-30T11:59:00"):
            history.load(_Tally, tally, as_of=_MOMENT - timedelta(minutes=1))
        with pytest.raises(AggregateNotFound, match="does not exist"):
            history.load(_Tally, uuid4())

    def test_history_lists_an_aggregate_s_events_with_versions_and_positions(self, store: EventStore) -> None:
        tally, positions = self._tally(store, [1, 10, 100])
        events = History(store).events(tally)
        assert [(e.version, e.position, e.event) for e in events] == [
            (1, positions[0], _Tallied(amount=1)), (2, positions[1], _Tallied(amount=10)),
            (3, positions[2], _Tallied(amount=100))]
        assert [e.metadata.recorded_at for e in events] == [_MOMENT + timedelta(hours=h) for h in range(3)]
        assert [e.version for e in History(store).events(tally, after_version=1)] == [2, 3]
        assert History(store).events(uuid4()) == []

    def test_read_all_pages_in_position_order(self, store: EventStore) -> None:
        first, second = uuid4(), uuid4()
        positions = self._append_stream(store, first, [1, 2])
        positions += self._append_stream(store, second, [1])
        positions += self._append_stream(store, first, [3])
        positions += self._append_stream(store, second, [2, 3])

        everything = store.read_all(0, 100)
        assert [n.id for n in everything] == positions
        expected = [(first, 1), (first, 2), (second, 1), (first, 3), (second, 2), (second, 3)]
        assert [(_as_uuid(n.originator_id), n.originator_version) for n in everything] == expected
        assert bytes(everything[2].state) == stored_event(second, 1).state
        assert everything[2].topic == "Thing"

        assert [n.id for n in store.read_all(0, 2)] == positions[:2]
        assert [n.id for n in store.read_all(positions[1], 3)] == positions[2:5]
        assert [n.id for n in store.read_all(positions[4], 10)] == positions[5:]
        assert store.read_all(positions[-1], 10) == []

    def test_head_is_the_last_position_written(self, store: EventStore) -> None:
        positions = self._append_stream(store, uuid4(), [1, 2])
        assert store.head() == positions[-1]
        more = self._append_stream(store, uuid4(), [1])
        assert store.head() == more[-1] > positions[-1]

    # --- optimistic concurrency and atomicity ----------------------------------------------

    def test_a_taken_version_is_a_conflict_and_nothing_of_the_batch_is_written(
        self, store: EventStore
    ) -> None:
        taken, bystander = uuid4(), uuid4()
        self._append_stream(store, taken, [1, 2])
        head = store.head()

        with pytest.raises(ConcurrencyConflict):
            store.append([stored_event(bystander, 1), stored_event(taken, 3), stored_event(taken, 2)])

        assert store.head() == head
        assert store.read_stream(bystander) == []
        assert [e.originator_version for e in store.read_stream(taken)] == [1, 2]
        assert [(_as_uuid(n.originator_id)) for n in store.read_all(0, 100)] == [taken, taken]
        assert self._append_stream(store, taken, [3])  # the store is still usable

    def test_a_version_repeated_within_one_batch_is_a_conflict(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        with pytest.raises(ConcurrencyConflict):
            store.append([stored_event(aggregate_id, 1), stored_event(aggregate_id, 1, state=b"other")])
        assert store.read_stream(aggregate_id) == []
        assert store.head() == 0

    def test_concurrent_appends_of_one_version_let_exactly_one_win(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        self._append_stream(store, aggregate_id, [1])

        def write(index: int) -> list[int]:
            return store.append([stored_event(aggregate_id, 2, state=f"writer {index}".encode())])

        results = _run_together(6, write)
        winners = [r for r in results if isinstance(r, list)]
        losers = [r for r in results if not isinstance(r, list)]
        assert len(winners) == 1, results
        assert all(isinstance(r, ConcurrencyConflict) for r in losers), losers
        assert [e.originator_version for e in store.read_stream(aggregate_id)] == [1, 2]
        assert store.head() == winners[0][0]

    def test_concurrent_appends_to_different_aggregates_get_distinct_ordered_positions(
        self, store: EventStore
    ) -> None:
        aggregates = [uuid4() for _ in range(6)]

        def write(index: int) -> list[int]:
            positions: list[int] = []
            for version in (1, 2, 3):
                positions += store.append([stored_event(aggregates[index], version)])
            return positions

        results = _run_together(len(aggregates), write)
        assert all(isinstance(r, list) for r in results), results
        positions = [p for r in results if isinstance(r, list) for p in r]
        assert len(set(positions)) == 18
        assert self._positions(store) == sorted(positions)
        for index, result in enumerate(results):
            assert isinstance(result, list) and result == sorted(result)
            stream = store.read_stream(aggregates[index])
            assert [e.originator_version for e in stream] == [1, 2, 3]

    # --- idempotency keys ------------------------------------------------------------------

    def test_a_new_key_is_claimed_and_a_second_claim_sees_it_in_flight(self, store: EventStore) -> None:
        _, outcome = self._claim(store, "key-1", "hash-a")
        assert isinstance(outcome, Claimed)
        _, second = self._claim(store, "key-1", "hash-b")
        assert second == InFlight("hash-a")
        _, other_key = self._claim(store, "key-2", "hash-a")
        assert isinstance(other_key, Claimed)

    def test_concurrent_claims_of_one_key_let_exactly_one_win(self, store: EventStore) -> None:
        results = _run_together(8, lambda i: store.claim_idempotency_key("race", "h", uuid4(), LONG_LEASE))
        assert sum(isinstance(r, Claimed) for r in results) == 1, results
        assert all(isinstance(r, Claimed | InFlight) for r in results), results

    def test_completing_a_claim_stores_its_result_for_replay(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        owner, _ = self._claim(store, "key", "hash-a")
        completion = IdempotencyCompletion("key", owner, aggregate_id, 2)
        positions = store.append([stored_event(aggregate_id, 1), stored_event(aggregate_id, 2)], completion)

        _, outcome = self._claim(store, "key", "hash-a")
        assert outcome == Replay("hash-a", CommandResult(aggregate_id, 2, positions[-1]))
        assert isinstance(outcome, Replay) and isinstance(outcome.result.aggregate_id, UUID)
        _, different = self._claim(store, "key", "hash-other")
        assert different == Replay("hash-a", CommandResult(aggregate_id, 2, positions[-1]))
        _, after_expiry = self._claim(store, "key", "hash-a", lease=0.0)  # completed: never taken over
        assert isinstance(after_expiry, Replay)

    def test_a_completed_key_cannot_be_completed_again(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        owner, _ = self._claim(store, "key")
        completion = IdempotencyCompletion("key", owner, aggregate_id, 1)
        store.append([stored_event(aggregate_id, 1)], completion)
        head = store.head()
        with pytest.raises(IdempotencyKeyInFlight):
            store.append([stored_event(aggregate_id, 2)], completion)
        assert store.head() == head
        assert [e.originator_version for e in store.read_stream(aggregate_id)] == [1]

    def test_completion_by_a_non_owner_is_refused_and_writes_nothing(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        owner, _ = self._claim(store, "key", "hash-a")
        stranger = IdempotencyCompletion("key", uuid4(), aggregate_id, 1)
        with pytest.raises(IdempotencyKeyInFlight):
            store.append([stored_event(aggregate_id, 1)], stranger)
        assert store.read_stream(aggregate_id) == []
        assert store.head() == 0
        _, outcome = self._claim(store, "key", "hash-a")
        assert outcome == InFlight("hash-a")  # the rightful owner still has it

        unclaimed = IdempotencyCompletion("never-claimed", uuid4(), aggregate_id, 1)
        with pytest.raises(IdempotencyKeyInFlight):
            store.append([stored_event(aggregate_id, 1)], unclaimed)
        assert store.read_stream(aggregate_id) == []

        store.append([stored_event(aggregate_id, 1)], IdempotencyCompletion("key", owner, aggregate_id, 1))
        assert [e.originator_version for e in store.read_stream(aggregate_id)] == [1]

    def test_a_conflicting_append_leaves_the_key_uncompleted(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        self._append_stream(store, aggregate_id, [1])
        owner, _ = self._claim(store, "key", "hash-a")
        completion = IdempotencyCompletion("key", owner, aggregate_id, 1)
        with pytest.raises(ConcurrencyConflict):
            store.append([stored_event(aggregate_id, 1)], completion)
        _, outcome = self._claim(store, "key", "hash-a")
        assert outcome == InFlight("hash-a")
        positions = store.append(
            [stored_event(aggregate_id, 2)], IdempotencyCompletion("key", owner, aggregate_id, 2)
        )
        _, replay = self._claim(store, "key", "hash-a")
        assert replay == Replay("hash-a", CommandResult(aggregate_id, 2, positions[-1]))

    def test_a_released_key_can_be_claimed_again(self, store: EventStore) -> None:
        owner, _ = self._claim(store, "key", "hash-a")
        store.release_idempotency_key("key", owner)
        _, outcome = self._claim(store, "key", "hash-b")
        assert isinstance(outcome, Claimed)
        _, seen = self._claim(store, "key", "hash-c")
        assert seen == InFlight("hash-b")
        # the first owner no longer owns it: neither its release nor its completion count
        store.release_idempotency_key("key", owner)
        _, still = self._claim(store, "key", "hash-c")
        assert still == InFlight("hash-b")
        with pytest.raises(IdempotencyKeyInFlight):
            store.append([], IdempotencyCompletion("key", owner, None, 0))

    def test_release_by_a_stranger_or_after_completion_changes_nothing(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        owner, _ = self._claim(store, "key", "hash-a")
        store.release_idempotency_key("key", uuid4())
        _, outcome = self._claim(store, "key", "hash-a")
        assert outcome == InFlight("hash-a")

        completion = IdempotencyCompletion("key", owner, aggregate_id, 1)
        positions = store.append([stored_event(aggregate_id, 1)], completion)
        store.release_idempotency_key("key", owner)
        _, replay = self._claim(store, "key", "hash-a")
        assert replay == Replay("hash-a", CommandResult(aggregate_id, 1, positions[-1]))
        store.release_idempotency_key("never-claimed", owner)  # harmless

    def test_an_expired_claim_can_be_taken_over(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        stale_owner, _ = self._claim(store, "key", "hash-a")
        _, within_lease = self._claim(store, "key", "hash-a", lease=LONG_LEASE)
        assert within_lease == InFlight("hash-a")

        time.sleep(self.expired_lease * 4)
        new_owner, outcome = self._claim(store, "key", "hash-b", lease=self.expired_lease)
        assert isinstance(outcome, Claimed)
        _, seen = self._claim(store, "key", "hash-c")
        assert seen == InFlight("hash-b")

        stale = IdempotencyCompletion("key", stale_owner, aggregate_id, 1)
        with pytest.raises(IdempotencyKeyInFlight):
            store.append([stored_event(aggregate_id, 1)], stale)
        assert store.read_stream(aggregate_id) == []

        positions = store.append(
            [stored_event(aggregate_id, 1)], IdempotencyCompletion("key", new_owner, aggregate_id, 1)
        )
        _, replay = self._claim(store, "key", "hash-b")
        assert replay == Replay("hash-b", CommandResult(aggregate_id, 1, positions[-1]))

    def test_an_empty_append_can_complete_a_key(self, store: EventStore) -> None:
        self._append_stream(store, uuid4(), [1])
        head = store.head()
        aggregate_id = uuid4()
        owner, _ = self._claim(store, "no-op", "hash-a")
        assert store.append([], IdempotencyCompletion("no-op", owner, aggregate_id, 7)) == []
        assert store.head() == head
        _, outcome = self._claim(store, "no-op", "hash-a")
        assert outcome == Replay("hash-a", CommandResult(aggregate_id, 7, None))

        owner, _ = self._claim(store, "nothing-at-all", "hash-z")
        store.append([], IdempotencyCompletion("nothing-at-all", owner, None, 0))
        _, outcome = self._claim(store, "nothing-at-all", "hash-z")
        assert outcome == Replay("hash-z", CommandResult(None, 0, None))

    # --- snapshots -------------------------------------------------------------------------

    def test_the_latest_snapshot_is_the_highest_version(self, store: EventStore) -> None:
        aggregate_id, other = uuid4(), uuid4()
        store.save_snapshot(stored_event(aggregate_id, 5, topic="Account", state=b'{"v":5}'))
        store.save_snapshot(stored_event(aggregate_id, 10, topic="Account", state=b'{"v":10}'))
        store.save_snapshot(stored_event(aggregate_id, 3, topic="Account", state=b'{"v":3}'))
        store.save_snapshot(stored_event(other, 1, topic="Other", state=b"other"))

        latest = store.latest_snapshot(aggregate_id)
        assert latest is not None
        assert (_as_uuid(latest.originator_id), latest.originator_version) == (aggregate_id, 10)
        assert (latest.topic, bytes(latest.state)) == ("Account", b'{"v":10}')
        other_latest = store.latest_snapshot(other)
        assert other_latest is not None and bytes(other_latest.state) == b"other"
        assert store.head() == 0  # snapshots are not events
        assert store.read_stream(aggregate_id) == []

    def test_saving_the_same_snapshot_twice_is_harmless(self, store: EventStore) -> None:
        aggregate_id = uuid4()
        snapshot = stored_event(aggregate_id, 50, topic="Account", state=b'{"v":50}')
        store.save_snapshot(snapshot)
        store.save_snapshot(snapshot)
        latest = store.latest_snapshot(aggregate_id)
        assert latest is not None
        assert (latest.originator_version, bytes(latest.state)) == (50, b'{"v":50}')

    # --- relay checkpoints -----------------------------------------------------------------

    def test_a_relay_checkpoint_starts_at_zero_and_never_moves_back(self, store: EventStore) -> None:
        assert store.relay_checkpoint("nats") == 0
        store.save_relay_checkpoint("nats", 5)
        assert store.relay_checkpoint("nats") == 5
        store.save_relay_checkpoint("nats", 3)
        assert store.relay_checkpoint("nats") == 5
        store.save_relay_checkpoint("nats", 9)
        assert store.relay_checkpoint("nats") == 9
        assert store.relay_checkpoint("other") == 0
        store.save_relay_checkpoint("other", 1)
        assert (store.relay_checkpoint("nats"), store.relay_checkpoint("other")) == (9, 1)

    # --- waiting for appends ---------------------------------------------------------------

    def test_waiting_for_an_append_already_made_returns_at_once(self, store: EventStore) -> None:
        positions = self._append_stream(store, uuid4(), [1, 2])
        assert store.wait_for_append(positions[0], timeout=30) is True
        assert store.wait_for_append(0, timeout=30) is True

    def test_waiting_with_nothing_appended_gives_up(self, store: EventStore) -> None:
        positions = self._append_stream(store, uuid4(), [1])
        assert store.wait_for_append(positions[-1], timeout=0.05) is False

    def test_an_append_from_another_thread_wakes_a_waiter(self, store: EventStore) -> None:
        head = store.head()
        writer = threading.Timer(0.1, lambda: self._append_stream(store, uuid4(), [1]))
        writer.start()
        try:
            assert store.wait_for_append(head, timeout=60) is True
        finally:
            writer.join()
        assert store.head() > head
