"""``AsyncPgPool.connection()``: a block that ends well commits, one that raises rolls back and re-raises,
and either way the connection goes back to the pool (one connection serves any number of blocks)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest
from psycopg import pq
from support.postgres import PgDatabase

from framework.adapters.pg_pool import AsyncPgPool

pytestmark = [pytest.mark.postgres]


class Boom(Exception):
    pass


def test_a_lease_commits_or_rolls_back_and_gives_the_connection_back(pg_database: PgDatabase, pg_schema: str) -> None:
    table = f'"{pg_schema}".leased'

    async def scenario() -> list[int]:
        pool = AsyncPgPool(pg_database.settings(pg_schema, pool_size=1), name="lease-test", min_size=1, max_size=1)
        try:
            async with pool.connection() as conn:
                await conn.execute(f"CREATE TABLE {table} (n int)")
            for n in range(30):  # one connection: a lease not given back would block the next
                with pytest.raises(Boom):
                    async with pool.connection() as conn:
                        await conn.execute("BEGIN")
                        await conn.execute(f"INSERT INTO {table} VALUES (%s)", (-n,))
                        raise Boom()
                async with pool.connection() as conn:
                    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
                    await conn.execute("BEGIN")
                    await conn.execute(f"INSERT INTO {table} VALUES (%s)", (n,))
            async with pool.connection() as conn:
                cursor = await conn.execute(f"SELECT n FROM {table} ORDER BY n")
                return [row["n"] for row in await cursor.fetchall()]
        finally:
            await pool.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == list(range(30))


def test_a_cancelled_lease_rolls_back_and_gives_the_connection_back(pg_database: PgDatabase, pg_schema: str) -> None:
    async def scenario() -> str:
        pool = AsyncPgPool(pg_database.settings(pg_schema, pool_size=1), name="lease-test", min_size=1, max_size=1)
        try:
            async def slow() -> None:
                async with pool.connection() as conn:
                    await conn.execute("BEGIN")
                    await conn.execute("SELECT pg_sleep(10)")

            task = asyncio.ensure_future(slow())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT 'back' AS word")
                row = await cursor.fetchone()
                assert conn.info.transaction_status == pq.TransactionStatus.IDLE
                return str(row["word"]) if row else ""
        finally:
            await pool.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == "back"


def test_a_connection_kept_between_checkouts_goes_back_to_the_pool_a_minute_after_it_left_it(
    pg_database: PgDatabase, pg_schema: str
) -> None:
    """The connection kept aside for the next checkout skips psycopg_pool's own care (its lifetime) for at
    most a minute since *it* left the pool, even while other connections keep coming from the pool."""
    now = [0.0]

    async def scenario() -> None:
        pool = AsyncPgPool(pg_database.settings(pg_schema, pool_size=2), name="kept-test", min_size=2, max_size=2,
                           clock=lambda: now[0])
        try:
            async with pool.connection() as first, pool.connection() as kept:
                pass  # ``kept`` is given back first: it is kept, ``first`` goes to the pool
            for _ in range(2):
                now[0] += 30.0
                lease, other = pool.connection(), pool.connection()
                assert await lease.__aenter__() is kept
                assert await other.__aenter__() is first  # from the pool, just now
                await lease.__aexit__(None, None, None)  # out of the pool for 30 s, then 60 s
                await other.__aexit__(None, None, None)
            async with pool.connection() as conn:  # ``kept`` went back to the pool at 60 s; ``first`` is kept
                assert conn is first
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_connection_given_back_while_a_checkout_asks_why_the_server_refused_goes_to_that_checkout(
    pg_database: PgDatabase, pg_schema: str
) -> None:
    """A checkout that waits stops waiting for the pool to ask the server why a connection attempt failed;
    a connection given back meanwhile is kept aside (nobody waited for the pool), and the checkout must
    take it rather than wait for the pool until its deadline while that connection lies idle."""
    async def scenario() -> None:
        settings = replace(pg_database.settings(pg_schema, pool_size=1), connect_timeout=2.0)
        pool = AsyncPgPool(settings, name="kept-test", min_size=1, max_size=1)
        try:
            holder = pool.connection()
            held = await holder.__aenter__()

            async def asked() -> None:  # the server accepts again; meanwhile the holder gives its connection back
                await holder.__aexit__(None, None, None)

            pool._why_not_accepting = asked  # type: ignore[method-assign]
            pool._failed_at = math.inf  # a connection attempt failed, whenever the checkout looks
            async with pool.connection() as conn:
                assert conn is held
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
