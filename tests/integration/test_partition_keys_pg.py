"""A projection partitioned by a key of its own (``Projector.partition_key``) whose key function knows only
the events it handles, and fails on one of them: the events it does not handle are passed over without
asking it, the one it fails on is parked once (in one partition, not in each), and every other event is
applied exactly once (counted), the rows equal to a replay's.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
from partition_helpers import HANDLED, PARTITIONS, Applied, AppliedLog
from streaming_helpers import Backlog, new_isin, write_backlog

from example_app.accounts import Account, AccountOpened, SecuritiesCredited, SecuritiesDebited
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.events import EventEnvelope
from framework.partitions import Partition
from framework.replay import rebuild
from framework.worker import ProjectionWorker

pytestmark = [pytest.mark.postgres]

UNKEYED = "no-key"


class KeyedLog(AppliedLog):
    name: ClassVar[str] = "keyed"
    on_error = "park"

    def partition_key(self, envelope: EventEnvelope) -> str:
        event = envelope.event
        if isinstance(event, AccountOpened):
            return event.account_number
        if isinstance(event, SecuritiesCredited | SecuritiesDebited):
            if event.reference == UNKEYED:
                raise ValueError("this credit has no key")
            return str(envelope.aggregate_id)
        raise TypeError(f"{type(event).__name__} is not this projection's")


def test_a_key_of_its_own_that_fails_on_one_event_parks_it_once_and_applies_the_rest_once(
        store: PostgresEventStore, views: PostgresViewStore) -> None:
    write_backlog(store, new_isin(), accounts=40, credits_each=2, actions=[("PK-CA-1", "validate")])  # + others' events
    backlog, account = Backlog(), Account.open("PK-UNKEYED", "Holder")
    account.credit(new_isin(), 5, reference=UNKEYED)
    backlog.take(account)
    poison = backlog.append_to(store)[-1]
    write_backlog(store, new_isin(), accounts=10, credits_each=1)

    for index in range(PARTITIONS):  # live, from scratch
        ProjectionWorker(KeyedLog(), views, store, partition=Partition(index, PARTITIONS)).catch_up()
    assert views.active_position("keyed") == store.head()
    _assert_applied_once_but(views, store, poison, version=1)

    assert rebuild(KeyedLog(), views, store, parallel=4) == 2  # and a replay
    _assert_applied_once_but(views, store, poison, version=2)


def _assert_applied_once_but(views: PostgresViewStore, store: PostgresEventStore, poison: int, *, version: int) -> None:
    rows = {row.position: row.times for row in views.query("keyed", Applied)}
    expected = {n.id for n in store.read_all(0, 1_000_000_000) if n.topic in HANDLED} - {poison}
    assert set(rows) == expected and set(rows.values()) == {1}
    letters = views.dead_letters("keyed")  # the live version's letter, then the replay's
    assert [letter.position for letter in letters] == [poison] * version, letters
