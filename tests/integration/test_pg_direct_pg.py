"""``pg_direct.fetch_all`` on real PostgreSQL: appends sent through libpq directly, on connections that
psycopg also uses (idempotency claims through its cursors), keep working whatever psycopg does to them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from uuid import uuid4

import pytest
from support.loop_writes import run_with_appender
from support.postgres import PgDatabase

from framework.adapters.pg_async import AsyncPostgresAppender
from framework.adapters.postgres import PostgresEventStore
from framework.errors import StoreUnavailable
from framework.store import Claimed, IdempotencyCompletion, StoredEvent

pytestmark = pytest.mark.postgres


def _event() -> StoredEvent:
    return StoredEvent(uuid4(), 1, "tests.Happened", b"{}")


def test_an_append_after_psycopg_deallocated_the_connection_s_statements_succeeds(
    pg_database: PgDatabase, pg_schema: str
) -> None:
    """A claim that fails inside its transaction is rolled back by psycopg, which then sends DEALLOCATE
    ALL (it clears its prepared statements on a rollback): the appends' statements prepared on that
    connection went with them."""
    settings = pg_database.settings(pg_schema, pool_size=1)
    setup = PostgresEventStore(settings)
    setup.create_schema()
    setup.close()

    async def main(appender: AsyncPostgresAppender) -> None:
        assert len(await appender.append([_event()])) == 1
        owner = uuid4()
        assert isinstance(await appender.claim_idempotency_key("first", "h", owner, 60), Claimed)
        event = _event()
        await appender.append([event], IdempotencyCompletion("first", owner, event.originator_id, 1))
        with pg_database.connect() as locker, locker.transaction():
            locker.execute(f'LOCK TABLE "{pg_schema}".idempotency_keys IN ACCESS EXCLUSIVE MODE')
            claim = asyncio.ensure_future(appender.claim_idempotency_key("second", "h", uuid4(), 60))
            await asyncio.to_thread(_cancel_waiting_backend, pg_database)
            with pytest.raises(StoreUnavailable, match="canceling statement"):
                await claim
        # the same statement with the same parameter types as the first append, on the same connection
        assert len(await appender.append([_event()])) == 1
        assert len(await appender.append([_event()])) == 1

    run_with_appender(main, settings)


def test_a_terminated_backend_s_append_fails_with_the_server_s_words_and_the_next_one_succeeds(
    pg_database: PgDatabase, pg_schema: str
) -> None:
    """The server says why before it hangs up: that is the error (as through a psycopg cursor), not
    "consuming input failed" about the lost connection after it."""
    settings = pg_database.settings(pg_schema, pool_size=1)
    setup = PostgresEventStore(settings)
    setup.create_schema()
    setup.close()

    async def main(appender: AsyncPostgresAppender) -> None:
        assert len(await appender.append([_event()])) == 1
        with pg_database.connect() as locker, locker.transaction():
            locker.execute(f'LOCK TABLE "{pg_schema}".stored_events IN EXCLUSIVE MODE')
            append = asyncio.ensure_future(appender.append([_event()]))
            await asyncio.to_thread(_cancel_waiting_backend, pg_database, "pg_terminate_backend")
            with pytest.raises(StoreUnavailable) as refused:
                await append
        assert str(refused.value) == (
            "the PostgreSQL event store is unavailable (terminating connection due to administrator command)")
        assert len(await appender.append([_event()])) == 1

    run_with_appender(main, settings)


def _cancel_waiting_backend(pg_database: PgDatabase, how: str = "pg_cancel_backend") -> None:
    """``how`` (pg_cancel_backend, pg_terminate_backend) on the appender's backend once it waits for a lock."""
    with pg_database.connect() as conn:
        for _ in range(2000):
            row = conn.execute(
                f"SELECT {how}(pid) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'eventfold-events-async' AND wait_event_type = 'Lock'").fetchone()
            if row:
                return
            threading.Event().wait(0.005)
    raise AssertionError("the claim never waited for the lock")


def test_connections_closed_are_not_kept_alive_by_their_prepared_statements(pg_database: PgDatabase) -> None:
    """What fetch_all keeps per connection (its transformer holds the connection) goes with the
    connection: a server that replaces connections (restarts, lifetimes) must not keep every one it had."""
    import gc
    import weakref

    from psycopg import AsyncConnection

    from framework.adapters.pg_direct import fetch_all

    async def main() -> list[weakref.ref[AsyncConnection[Any]]]:
        gone = []
        for _ in range(3):
            conn = await AsyncConnection.connect(pg_database.url(), autocommit=True)
            assert await fetch_all(conn, "SELECT %s::int", [1]) == [(1,)]
            await conn.close()
            gone.append(weakref.ref(conn))
            del conn
        async with await AsyncConnection.connect(pg_database.url(), autocommit=True) as conn:
            assert await fetch_all(conn, "SELECT %s::int", [2]) == [(2,)]
        return gone

    gone = asyncio.run(main())
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


@pytest.mark.parametrize("schema", ["ef%x", "ef%%x"])
def test_a_schema_name_with_a_percent_sign_is_refused_as_on_the_threaded_path(
    pg_database: PgDatabase, schema: str
) -> None:
    """The statements carry the schema's name, and psycopg reads ``%`` in them as a placeholder: the loop's
    appends say what the threaded path's say (a 503 naming the refusal), not a ValueError (a 500)."""
    settings = pg_database.settings(schema, pool_size=1)
    threads = PostgresEventStore(settings)
    try:
        with pytest.raises(StoreUnavailable) as on_threads:
            threads.append([_event()])
    finally:
        threads.close()

    async def main(appender: AsyncPostgresAppender) -> None:
        with pytest.raises(StoreUnavailable) as on_loop:
            await appender.append([_event()])
        assert str(on_loop.value) == str(on_threads.value)

    run_with_appender(main, settings)


def test_a_cancelled_append_is_cancelled_on_the_server_and_never_commits_later(
    pg_database: PgDatabase, pg_schema: str
) -> None:
    """Without group commit a caller's cancellation reaches its statement (as through a psycopg cursor):
    the server cancels it, so it does not commit unseen once the lock it waits for is released, and the
    connection serves the next append."""
    from dataclasses import replace

    settings = replace(pg_database.settings(pg_schema, pool_size=1), group_commit=False)
    store = PostgresEventStore(settings)
    store.create_schema()
    cancelled = _event()

    async def main(appender: AsyncPostgresAppender) -> None:
        assert len(await appender.append([_event()])) == 1
        with pg_database.connect() as locker, locker.transaction():
            locker.execute(f'LOCK TABLE "{pg_schema}".stored_events IN EXCLUSIVE MODE')
            append = asyncio.ensure_future(appender.append([cancelled]))
            await asyncio.to_thread(_backend_waits_for_a_lock, pg_database)
            append.cancel()
            with pytest.raises(asyncio.CancelledError):
                await append
        assert len(await appender.append([_event()])) == 1

    try:
        run_with_appender(main, settings)
        assert store.read_stream(cancelled.originator_id) == []
    finally:
        store.close()


def _backend_waits_for_a_lock(pg_database: PgDatabase) -> None:
    with pg_database.connect() as conn:
        for _ in range(2000):
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                            " AND application_name = 'eventfold-events-async' AND wait_event_type = 'Lock'"
                            ).fetchone():
                return
            threading.Event().wait(0.005)
    raise AssertionError("the append never waited for the lock")
