"""Many writers on one aggregate over real PostgreSQL: turns on hot aggregates, nothing lost or doubled."""

from __future__ import annotations

import pytest
from support.postgres import PgDatabase
from support.writers import credit, hammer, replayed_quantity, setup_one_account

from framework.adapters.postgres import PostgresEventStore
from framework.bus import CommandBus

pytestmark = pytest.mark.postgres


def test_one_process_of_many_threads_on_one_account_gets_no_409s(pg_database: PgDatabase, pg_schema: str) -> None:
    store = PostgresEventStore(pg_database.settings(pg_schema, pool_size=8))
    store.create_schema()
    try:
        bus = setup_one_account(store, max_attempts=3)
        head = store.head()
        failures = hammer(credit(bus), threads=8, each=25)
        assert failures == []
        assert len(store.read_all(head, 100_000)) == 8 * 25  # one event per credit (positions may have gaps)
        assert replayed_quantity(store) == 8 * 25
    finally:
        store.close()


def test_two_buses_on_one_postgres_store_agree_with_a_replay(pg_database: PgDatabase, pg_schema: str) -> None:
    store = PostgresEventStore(pg_database.settings(pg_schema, pool_size=8))
    store.create_schema()
    try:
        first = setup_one_account(store)
        second = CommandBus(first.router, store)  # another process: its own cache and hot aggregates
        head = store.head()
        failures = hammer(lambda n: credit(first if n % 2 else second)(n), threads=8, each=25)
        accepted = 8 * 25 - len(failures)
        assert len(store.read_all(head, 100_000)) == accepted
        assert replayed_quantity(store) == accepted
    finally:
        store.close()

