"""What the tests of the write path on an event loop share: a group-committing PostgreSQL store, an
``offload`` that counts what went to a thread, the events table held locked so appends pile up, and a
coroutine run beside an ``AsyncPostgresAppender``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from framework.adapters.pg_async import AsyncPostgresAppender
from framework.adapters.postgres import PostgresEventStore
from support.postgres import PgDatabase

__all__ = ["Offload", "events_locked", "group_commit_store", "run_with_appender"]


def group_commit_store(pg_database: PgDatabase, schema: str) -> Iterator[PostgresEventStore]:
    """A PostgreSQL event store with group commit in ``schema``, closed after (for a fixture to yield from)."""
    store = PostgresEventStore(replace(pg_database.settings(schema, pool_size=8), group_commit=True))
    store.create_schema()
    try:
        yield store
    finally:
        store.close()


class Offload:
    """``asyncio.to_thread``, counting what went to a thread."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, function: Callable[..., Any], *args: object) -> Any:
        self.calls += 1
        return await asyncio.to_thread(function, *args)


@contextmanager
def events_locked(pg_database: PgDatabase, schema: str) -> Iterator[None]:
    """Hold the lock every append takes, so appends pile up until the block ends."""
    with pg_database.connect() as conn, conn.transaction():
        conn.execute(f'LOCK TABLE "{schema}".stored_events IN EXCLUSIVE MODE')
        yield


def run_with_appender(main: Callable[[AsyncPostgresAppender], Awaitable[Any]], settings: Any,
                      timeout: float = 120.0) -> Any:
    """``main(appender)`` on a new event loop, the appender closed after; a hang fails after ``timeout``."""
    async def with_appender() -> Any:
        appender = AsyncPostgresAppender(settings)
        try:
            return await main(appender)
        finally:
            await appender.close()
    return asyncio.run(asyncio.wait_for(with_appender(), timeout))
