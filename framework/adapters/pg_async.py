"""The PostgreSQL event store's command-side writes on an event loop (``EVENTFOLD_WRITE_ASYNC``).

Same statements, same server-side functions and the same answers as ``PostgresEventStore``'s
``append``, ``claim_idempotency_key`` and ``release_idempotency_key``, through psycopg's async
connections (``psycopg_pool.AsyncConnectionPool``): group commit with ``AsyncGroupCommit``, no
thread per command. The pool recovers from a server restart like ``PgPool``: an idle connection
whose socket has something to say is checked before use, one found broken makes the pool check its
idle connections, and a request does not wait out the pool timeout for a server that refuses.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from framework.adapters.group_commit import AsyncGroupCommit
from framework.adapters.idempotency import KeyRecord, outcome_for_existing
from framework.adapters.pg_pool import NotAccepting, _readable
from framework.adapters.postgres import (
    _EVENTS_TABLE,
    _NO_KEY,
    _Append,
    _group_outcome,
    _key_record,
    _Statements,
    _translation,
)
from framework.errors import EventfoldError
from framework.settings import PostgresSettings
from framework.store import Claimed, ClaimOutcome, IdempotencyCompletion

__all__ = ["AsyncPostgresAppender"]

_SLICE = 0.1


class AsyncPostgresAppender:
    """``framework.store.AsyncAppender`` over the PostgreSQL event store of ``settings``.

    Bound to the event loop that first uses it (its pool and group committer live there)."""

    def __init__(self, settings: PostgresSettings) -> None:
        self._timeout = settings.connect_timeout
        self._failed_at = -math.inf
        self._kwargs: dict[str, Any] = {
            "host": settings.host, "port": settings.port, "dbname": settings.dbname,
            "user": settings.user, "password": settings.password, "row_factory": dict_row,
            "autocommit": True, "connect_timeout": max(1, round(settings.connect_timeout)),
            "application_name": "eventfold-events-async",
        }
        self._pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
            kwargs=self._kwargs, min_size=settings.pool_size, max_size=settings.pool_size,
            name="eventfold-events-async", timeout=settings.connect_timeout, reconnect_timeout=0,
            reconnect_failed=self._connect_failed, open=False,
        )
        self._opened = False
        self._sql = _Statements(settings.schema.strip() or "public", _EVENTS_TABLE)
        self._group: AsyncGroupCommit[_Append, list[int]] = AsyncGroupCommit(self._append_group)
        self._grouping = settings.group_commit  # EVENTFOLD_GROUP_COMMIT=false: one transaction per append

    @property
    def group_commit(self) -> AsyncGroupCommit[_Append, list[int]]:
        return self._group

    async def append(self, events: Sequence[StoredEvent],
                     completion: IdempotencyCompletion | None = None) -> list[int]:
        if not self._grouping:
            return await self._append_one(_Append(events, completion))
        return await self._group.submit(_Append(events, completion))

    async def claim_idempotency_key(self, key: str, request_hash: str, owner: UUID,
                                    lease_seconds: float) -> ClaimOutcome:
        params = {"key": key, "hash": request_hash, "owner": owner, "lease": lease_seconds}
        while True:
            rows = await self._lease_statement(self._sql.claim_key, params)
            if rows:  # none: a concurrent claim committed after our snapshot; look again
                break
        if rows[0]["ours"]:
            return Claimed()
        record: KeyRecord = _key_record(rows[0])
        return outcome_for_existing(record)

    async def release_idempotency_key(self, key: str, owner: UUID) -> None:
        await self._lease_statement(self._sql.release_key, {"key": key, "owner": owner})

    async def close(self) -> None:
        await self._pool.close()

    async def _lease_statement(self, statement: str, params: dict[str, Any]) -> list[DictRow]:
        """As ``PostgresEventStore._lease_statement``: one pipelined round trip, no WAL flush wait."""
        async with self._connection() as conn, conn.pipeline() as pipeline, conn.cursor() as cursor:
            await conn.execute("BEGIN")
            await conn.execute("SET LOCAL synchronous_commit TO OFF")
            await cursor.execute(statement, params, prepare=True)
            await conn.execute("COMMIT")
            await pipeline.sync()
            return await cursor.fetchall() if cursor.description else []

    async def _append_group(self, group: Sequence[_Append]) -> Sequence[list[int] | BaseException]:
        try:
            if len(group) == 1:
                return [await self._append_one(group[0])]
            rows = await self._fetch(self._sql.append_group, _group_params(group))
        except EventfoldError as error:
            return [error] + [_fresh(error) for _ in group[1:]]
        return [_group_outcome(outcome, positions) for outcome, positions in rows]

    async def _append_one(self, append: _Append) -> list[int]:
        events, key = append.events, append.completion or _NO_KEY
        params = ([e.originator_id for e in events], [e.originator_version for e in events],
                  [e.topic for e in events], [e.state for e in events],
                  key.key or None, key.owner, key.aggregate_id, key.version)
        return [row[0] for row in await self._fetch(self._sql.append, params)]

    async def _fetch(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(statement, params, prepare=True)
            return await cursor.fetchall()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[DictRow]]:
        """A live connection, errors translated into ``framework.errors``; broken ones are replaced."""
        try:
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True
            conn = await self._live_connection()
            try:
                async with conn:  # a transaction block per use (autocommit: none), like ``PgPool``
                    yield conn
            finally:
                await self._pool.putconn(conn)
                if conn.broken:
                    await self._pool.check()
        except psycopg.Error as error:
            raise _translation(error) from error

    async def _live_connection(self) -> AsyncConnection[DictRow]:
        conn = await self._checkout()
        if not await _went_away(conn):
            return conn
        await self._pool.putconn(conn)
        await self._pool.check()
        return await self._checkout()

    async def _checkout(self) -> AsyncConnection[DictRow]:
        started = time.monotonic()
        deadline = started + self._timeout
        while True:
            try:
                return await self._pool.getconn(timeout=max(0.001, min(_SLICE, deadline - time.monotonic())))
            except PoolTimeout:
                if self._failed_at >= started:
                    await self._why_not_accepting()
                    started = time.monotonic()
                if time.monotonic() >= deadline:
                    raise

    async def _why_not_accepting(self) -> None:
        try:
            await (await AsyncConnection.connect(**self._kwargs)).close()
        except psycopg.OperationalError as error:
            lines = str(error).strip().splitlines() or ["PostgreSQL is not accepting connections"]
            raise NotAccepting(lines[0]) from None

    def _connect_failed(self, _: AsyncConnectionPool[Any]) -> None:
        self._failed_at = time.monotonic()


def _group_params(group: Sequence[_Append]) -> tuple[list[Any], ...]:
    ends, count = [], 0
    for append in group:
        count += len(append.events)
        ends.append(count)
    events = [e for append in group for e in append.events]
    keys = [append.completion or _NO_KEY for append in group]
    return (
        ends, [e.originator_id for e in events], [e.originator_version for e in events],
        [e.topic for e in events], [e.state for e in events],
        [k.key or None for k in keys], [k.owner for k in keys], [k.aggregate_id for k in keys],
        [k.version for k in keys],
    )


def _fresh(error: EventfoldError) -> EventfoldError:
    cause = error.__cause__
    return _translation(cause) if isinstance(cause, Exception) else type(error)(str(error))


async def _went_away(conn: AsyncConnection[Any]) -> bool:
    if conn.closed:
        return True
    if not _readable(conn.fileno()):
        return False
    try:
        await AsyncConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False

