"""The PostgreSQL event store's command-side writes on an event loop (``EVENTFOLD_WRITE_ASYNC``).

Same statements, same server-side functions and the same answers as ``PostgresEventStore``'s
``append``, ``claim_idempotency_key`` and ``release_idempotency_key``, through psycopg's async
connections (``AsyncPgPool``, which recovers from a server restart as ``PgPool`` does): group commit
with ``AsyncGroupCommit``, no thread per command. Statements, parameters and error translation are
``pg_appends``'s, shared with ``postgres.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from framework.adapters.group_commit import AsyncGroupCommit
from framework.adapters.idempotency import outcome_for_existing
from framework.adapters.pg_appends import (
    EVENTS_TABLE,
    PendingAppend,
    Statements,
    append_params,
    failed_again,
    group_outcome,
    group_params,
    key_record,
    translation,
)
from framework.adapters.pg_direct import fetch_all
from framework.adapters.pg_pool import AsyncPgPool
from framework.errors import EventfoldError
from framework.settings import PostgresSettings
from framework.store import Claimed, ClaimOutcome, IdempotencyCompletion

__all__ = ["AsyncPostgresAppender"]


class AsyncPostgresAppender:
    """``framework.store.AsyncAppender`` over the PostgreSQL event store of ``settings``.

    Bound to the event loop that first uses it (its pool and group committer live there)."""

    def __init__(self, settings: PostgresSettings) -> None:
        self._pool = AsyncPgPool(settings, name="eventfold-events-async", min_size=settings.pool_size,
                                 max_size=settings.pool_size)
        self._sql = Statements(settings.schema.strip() or "public", EVENTS_TABLE)
        self._group: AsyncGroupCommit[PendingAppend, list[int]] = AsyncGroupCommit(self._append_group)
        self._grouping = settings.group_commit  # EVENTFOLD_GROUP_COMMIT=false: one transaction per append

    @property
    def group_commit(self) -> AsyncGroupCommit[PendingAppend, list[int]]:
        return self._group

    async def append(self, events: Sequence[StoredEvent],
                     completion: IdempotencyCompletion | None = None) -> list[int]:
        if not self._grouping:
            return await self._append_one(PendingAppend(events, completion))
        return await self._group.submit(PendingAppend(events, completion))

    async def claim_idempotency_key(self, key: str, request_hash: str, owner: UUID,
                                    lease_seconds: float) -> ClaimOutcome:
        params = {"key": key, "hash": request_hash, "owner": owner, "lease": lease_seconds}
        while True:
            rows = await self._lease_statement(self._sql.claim_key, params)
            if rows:  # none: a concurrent claim committed after our snapshot; look again
                break
        if rows[0]["ours"]:
            return Claimed()
        return outcome_for_existing(key_record(rows[0]))

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

    async def _append_group(self, group: Sequence[PendingAppend]) -> Sequence[list[int] | BaseException]:
        try:
            if len(group) == 1:
                return [await self._append_one(group[0])]
            rows = await self._fetch(self._sql.append_group, group_params(group))
        except EventfoldError as error:
            return [error] + [failed_again(error) for _ in group[1:]]
        return [group_outcome(outcome, positions) for outcome, positions in rows]

    async def _append_one(self, append: PendingAppend) -> list[int]:
        return [row[0] for row in await self._fetch(self._sql.append, append_params(append))]

    async def _fetch(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:  # what self._connection() does, without a generator in between (once per group)
            async with self._pool.autocommit_connection() as conn:
                return await fetch_all(conn, statement, params)
        except psycopg.Error as error:
            raise translation(error) from error

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[DictRow]]:
        """A live connection from the pool, driver errors translated into ``framework.errors``."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as error:
            raise translation(error) from error
