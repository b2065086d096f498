"""Group commit on real PostgreSQL: concurrent commands share a transaction, each keeps its own answer.

To make a group certain (not a matter of thread timing), the tests hold the events table's lock
from another connection: the first append leads and waits for the lock inside its commit, the
others queue behind it, and they all commit as the next group when the lock is released.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from uuid import UUID, uuid4

import pytest
from support.loop_writes import (
    events_locked,
    group_commit_store,
)
from support.postgres import PgDatabase
from support.writers import open_accounts, replayed_holding

from example_app.commands import CreditHoldings, DebitHoldings, OpenAccount, RegisterSecurity
from example_app.handlers import router
from framework.adapters.group_commit import GroupCommit
from framework.adapters.postgres import PostgresEventStore
from framework.bus import CommandBus, CommandContext, Executed
from framework.commands import Command
from framework.errors import ConcurrencyConflict, IdempotencyKeyInFlight, IdempotencyKeyReused, RuleViolation
from framework.store import Claimed, IdempotencyCompletion, Notification, StoredEvent

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresEventStore]:
    yield from group_commit_store(pg_database, pg_schema)

ISIN = "US0378331005"


def _committer(store: PostgresEventStore) -> GroupCommit[object, list[int]]:
    committer = store.group_commit
    assert committer is not None
    return committer  # type: ignore[return-value]


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def _in_threads(calls: dict[str, Callable[[], object]]) -> tuple[dict[str, object], list[threading.Thread]]:
    """Each call in its own thread; its result or error lands in the returned dict."""
    answers: dict[str, object] = {}

    def run(name: str, call: Callable[[], object]) -> None:
        try:
            answers[name] = call()
        except Exception as error:  # the test compares errors too
            answers[name] = error

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    return answers, threads


def _event(aggregate_id: UUID, version: int) -> StoredEvent:
    return StoredEvent(aggregate_id, version, "tests.Happened", b"{}")


def _relay_order(store: PostgresEventStore, after: int) -> list[int]:
    """Positions as the relay reads them: batches after the last position seen, never looking back."""
    seen: list[int] = []
    while batch := store.read_all(after, 3):
        seen += [n.id for n in batch]
        after = batch[-1].id
    return seen


def test_a_lone_command_commits_at_once_in_a_group_of_one(store: PostgresEventStore) -> None:
    bus = CommandBus(router, store)
    bus.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"))
    committer = _committer(store)
    assert committer.group_sizes == {1: 1}
    assert committer.waited == 0  # it did not wait for company, nor for anyone
    bus.execute(OpenAccount(account_number="ALONE-1", holder_name="Alone"))
    assert committer.group_sizes == {1: 2}
    assert committer.waited == 0


def test_in_one_group_a_conflict_or_a_lost_key_fails_alone_and_the_neighbours_commit(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    taken, lost, kept = uuid4(), uuid4(), uuid4()
    store.append([_event(taken, 1)])
    assert store.claim_idempotency_key("lost", "h", uuid4(), 60) == Claimed()  # someone else's claim
    assert store.claim_idempotency_key("kept", "h", kept, 60) == Claimed()
    head = store.head()
    lead, fresh, with_key, without_key = uuid4(), uuid4(), uuid4(), uuid4()
    committer = _committer(store)
    with events_locked(pg_database, pg_schema):
        answers, threads = _in_threads({"lead": lambda: store.append([_event(lead, 1), _event(lead, 2)])})
        _wait_until(lambda: sum(committer.group_sizes.values()) == 2, "the leader is committing")
        more, followers = _in_threads({
            "fresh": lambda: store.append([_event(fresh, 1)]),
            "conflict": lambda: store.append([_event(fresh, 2), _event(taken, 1)]),  # (taken, 1) exists
            "lost key": lambda: store.append([_event(without_key, 1)],
                                             IdempotencyCompletion("lost", lost, without_key, 1)),
            "kept key": lambda: store.append([_event(with_key, 1)],
                                             IdempotencyCompletion("kept", kept, with_key, 1)),
        })
        _wait_until(lambda: committer.waiting() == 4, "four appends queue behind the leader")
    for thread in threads + followers:
        thread.join(10)
    answers |= more
    assert committer.group_sizes[4] == 1  # the four shared one transaction
    assert isinstance(answers["conflict"], ConcurrencyConflict)
    assert isinstance(answers["lost key"], IdempotencyKeyInFlight)
    stored = store.read_all(head, 100)
    by_aggregate = {(n.originator_id, n.originator_version): n.id for n in stored}
    assert set(by_aggregate) == {(lead, 1), (lead, 2), (fresh, 1), (with_key, 1)}  # nothing of the failed two
    assert answers["lead"] == [by_aggregate[(lead, 1)], by_aggregate[(lead, 2)]]
    assert answers["fresh"] == [by_aggregate[(fresh, 1)]]
    assert answers["kept key"] == [by_aggregate[(with_key, 1)]]
    replay = store.claim_idempotency_key("kept", "h", uuid4(), 60)  # completed with its events
    assert getattr(replay, "result", None) is not None and replay.result.position == by_aggregate[(with_key, 1)]
    assert _relay_order(store, head) == sorted(by_aggregate.values())


def test_a_group_without_idempotency_keys_keeps_each_append_s_own_outcome(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    taken, first, second = uuid4(), uuid4(), uuid4()
    store.append([_event(taken, 1)])
    head = store.head()
    committer = _committer(store)
    with events_locked(pg_database, pg_schema):
        answers, threads = _in_threads({"lead": lambda: store.append([_event(first, 1)])})
        _wait_until(lambda: sum(committer.group_sizes.values()) == 2, "the leader is committing")
        more, followers = _in_threads({
            "second": lambda: store.append([_event(second, 1), _event(second, 2)]),
            "conflict": lambda: store.append([_event(taken, 1)]),
            "first again": lambda: store.append([_event(first, 2)]),
        })
        _wait_until(lambda: committer.waiting() == 3, "three appends queue behind the leader")
    for thread in threads + followers:
        thread.join(10)
    answers |= more
    assert committer.group_sizes[3] == 1
    assert isinstance(answers["conflict"], ConcurrencyConflict)
    stored = {(n.originator_id, n.originator_version): n.id for n in store.read_all(head, 100)}
    assert set(stored) == {(first, 1), (first, 2), (second, 1), (second, 2)}
    assert answers["second"] == [stored[(second, 1)], stored[(second, 2)]]
    assert answers["first again"] == [stored[(first, 2)]]


def test_concurrent_commands_through_the_bus_each_get_the_answer_they_would_get_alone(
    store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str
) -> None:
    bus = CommandBus(router, store)
    distinct = [f"DIST-{n}" for n in range(4)]
    open_accounts(bus, ["HOT-1", "KEYS-1", "KEYS-2", *distinct], "Group Commit")
    first_same = bus.execute(CreditHoldings(account_number="KEYS-1", isin=ISIN, quantity=5),
                             CommandContext(idempotency_key="same"))
    bus.execute(CreditHoldings(account_number="KEYS-2", isin=ISIN, quantity=7), CommandContext(idempotency_key="diff"))
    head = store.head()

    def run(command: Command, key: str | None = None) -> Callable[[], Executed]:
        return lambda: bus.execute(command, CommandContext(idempotency_key=key))

    calls: dict[str, Callable[[], object]] = {
        **{f"hot {n}": run(CreditHoldings(account_number="HOT-1", isin=ISIN, quantity=1)) for n in range(8)},
        **{n: run(CreditHoldings(account_number=n, isin=ISIN, quantity=2)) for n in distinct},
        "same key, same body": run(CreditHoldings(account_number="KEYS-1", isin=ISIN, quantity=5), "same"),
        "same key, other body": run(CreditHoldings(account_number="KEYS-2", isin=ISIN, quantity=1), "diff"),
        **{f"new key {n}": run(CreditHoldings(account_number="KEYS-2", isin=ISIN, quantity=3), "new")
           for n in range(2)},
        "too much": run(DebitHoldings(account_number="DIST-0", isin=ISIN, quantity=1_000)),
    }
    relay_seen: list[int] = []
    stop = threading.Event()
    relay = threading.Thread(target=_follow_like_the_relay, args=(store, head, relay_seen, stop))
    relay.start()
    committer = _committer(store)
    with events_locked(pg_database, pg_schema):
        answers, threads = _in_threads(calls)
        # 8 hot + 4 distinct + the new key's one execution reach the store: one leads, 12 queue.
        _wait_until(lambda: committer.waiting() == 12, "the commands queue for one group")
    for thread in threads:
        thread.join(30)
    assert committer.group_sizes[12] >= 1

    hot = [answers[f"hot {n}"] for n in range(8)]
    assert all(isinstance(a, Executed) and not a.replayed for a in hot)  # conflicts in the group were retried
    assert sorted(a.result.version for a in hot if isinstance(a, Executed)) == list(range(2, 10))
    assert all(isinstance(answers[n], Executed) for n in distinct)
    same = answers["same key, same body"]
    assert isinstance(same, Executed) and same.replayed and same.result == first_same.result
    assert isinstance(answers["same key, other body"], IdempotencyKeyReused)
    assert isinstance(answers["too much"], RuleViolation)
    new_key = [answers[f"new key {n}"] for n in range(2)]
    executed = [a for a in new_key if isinstance(a, Executed) and not a.replayed]
    assert len(executed) == 1  # one execution per key; the other was told it is in flight or replayed
    other = next(a for a in new_key if a is not executed[0])
    assert isinstance(other, IdempotencyKeyInFlight) or (isinstance(other, Executed) and other.replayed)

    # The store holds exactly the accepted events, and a replay agrees with every answer.
    accepted = 8 + len(distinct) + 1
    stored = store.read_all(head, 1_000)
    assert len(stored) == accepted
    assert replayed_holding(store, "HOT-1") == 8
    assert [replayed_holding(store, n) for n in distinct] == [2] * len(distinct)
    assert replayed_holding(store, "KEYS-1") == 5
    assert replayed_holding(store, "KEYS-2") == 7 + 3
    # Every position is readable by the relay, in order, also by one that was reading all along.
    _wait_until(lambda: len(relay_seen) == accepted, "the relay has seen every event")
    stop.set()
    relay.join(10)
    assert relay_seen == [n.id for n in stored] == _relay_order(store, head)


def _follow_like_the_relay(store: PostgresEventStore, after: int, seen: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        batch: list[Notification] = store.read_all(after, 1_000)
        if batch:
            seen += [n.id for n in batch]
            after = batch[-1].id
        else:
            store.wait_for_append(after, 0.05)
