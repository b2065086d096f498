"""``framework.history.History``: the example's accounts as they were, by key, at a version or a moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import takewhile
from typing import Any

import pytest

from example_app.accounts import Account
from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity
from example_app.corporate_actions import CorporateAction
from example_app.handlers import router
from framework import AggregateNotFound, CommandBus, ConfigurationError, History
from framework.adapters.memory import MemoryEventStore

APPLE = "US0378331005"


@pytest.fixture
def store() -> MemoryEventStore:
    store = MemoryEventStore()
    bus = CommandBus(router, store)
    bus.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    bus.execute(OpenAccount(account_number="ACC-1", holder_name="Ada"))
    for quantity in range(1, 61):  # past a snapshot (every 50): the past is folded from the events
        bus.execute(CreditHoldings(account_number="ACC-1", isin=APPLE, quantity=quantity))
    return store


def test_an_account_at_each_version(store: MemoryEventStore) -> None:
    history = History(store)
    assert store.latest_snapshot(Account.id_for("ACC-1")) is not None
    assert history.load(Account, key="ACC-1", at_version=1).holdings == {}
    assert history.load(Account, key="ACC-1", at_version=4).holdings == {APPLE: 1 + 2 + 3}
    assert history.load(Account, key="ACC-1", at_version=61).holdings == {APPLE: sum(range(1, 61))}
    assert history.load(Account, Account.id_for("ACC-1"), at_version=2).version == 2
    assert history.load(Account, key="ACC-1").version == 61


def test_an_account_as_of_a_moment(store: MemoryEventStore) -> None:
    history = History(store)
    events = history.events(Account.id_for("ACC-1"))
    third = events[2].metadata.recorded_at
    expected = len(list(takewhile(lambda e: e.metadata.recorded_at <= third, events)))  # 3, unless a tie
    assert history.load(Account, key="ACC-1", as_of=third).version == expected >= 3
    assert history.load(Account, key="ACC-1", as_of=datetime.now(UTC) + timedelta(days=1)).version == 61
    with pytest.raises(AggregateNotFound) as before:
        history.load(Account, key="ACC-1", as_of=events[0].metadata.recorded_at - timedelta(seconds=1))
    assert before.value.message.startswith("account 'ACC-1' did not exist yet at ")


def test_its_events_carry_their_global_positions(store: MemoryEventStore) -> None:
    events = History(store).events(Account.id_for("ACC-1"))
    assert [e.version for e in events] == list(range(1, 62))
    assert [e.position for e in events] == list(range(2, 63))  # the security's event came first
    assert [e.event_name for e in events[:2]] == ["AccountOpened", "SecuritiesCredited"]


@pytest.mark.parametrize(("arguments", "message"), [
    ({"key": "ACC-404"}, "account 'ACC-404' does not exist"),
    ({"key": "ACC-1", "at_version": 62}, "account 'ACC-1' has no version 62: its latest is 61"),
])
def test_what_did_not_exist_is_not_found_in_the_caller_s_words(
    store: MemoryEventStore, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(AggregateNotFound) as missing:
        History(store).load(Account, **arguments)
    assert missing.value.message == message


def test_an_aggregate_of_another_type_is_not_found(store: MemoryEventStore) -> None:
    with pytest.raises(AggregateNotFound, match="does not exist"):
        History(store).load(CorporateAction, Account.id_for("ACC-1"))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"key": "ACC-1", "at_version": 2, "as_of": datetime.now(UTC)}, "not both"),
    ({"key": "ACC-1", "at_version": 0}, "at_version must be 1 or more"),
    ({"key": "ACC-1", "as_of": datetime(2026, 1, 1)}, "time zone"),  # naive: the point
    ({}, "either the id or the key of the account"),
])
def test_a_question_that_cannot_be_answered_is_a_clear_error(
    store: MemoryEventStore, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        History(store).load(Account, **arguments)
