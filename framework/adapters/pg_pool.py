"""The PostgreSQL adapters' connection pools: ``psycopg_pool`` made to recover at once from a restart.

``PgPool`` (threads) and ``AsyncPgPool`` (an event loop: the write API's commands decided on the loop)
do the same, so both command paths answer an outage alike.

Three things keep a restarted server from costing more than the restart itself:

* **No dead connection is handed out.** When the server goes away (a restart, an administrator's
  ``pg_terminate_backend``, ``idle_session_timeout``) it closes every connection it had, and the
  client's socket becomes readable. A checkout looks for that with one ``poll(2)`` of the socket, no
  round trip (a ``SELECT 1`` per checkout would cost the write path a round trip per command); only a
  connection with something to read is asked with an empty query. One found gone is thrown away and
  the pool checks all its idle connections at once: they went with it. The same happens when a
  connection breaks while in use, the first error of an outage.
* **Connections are made when they are needed.** ``psycopg_pool`` retries a failed connection in the
  background with a backoff that reaches seconds, so a server back after a second could wait that
  long for it. Here a background attempt gives up at once (``reconnect_timeout=0``) and a request that
  finds no idle connection makes the pool try again immediately.
* **A request does not wait for a server that refuses.** When a connection attempt fails while a
  request waits for one, the request fails within ``_SLICE`` seconds with the server's reason
  (connection refused, starting up, a wrong password) instead of waiting out the whole pool timeout
  (the circuit breakers in front of the stores count it).
"""

from __future__ import annotations

import contextlib
import math
import select
import time
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import psycopg
from psycopg import AsyncConnection, Connection, pq
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from framework.adapters.pg_arrays import register_array_dumpers
from framework.settings import PostgresSettings

__all__ = ["AsyncPgPool", "NotAccepting", "PgPool", "went_away_async"]

_SLICE = 0.1  # seconds a request waits for a connection before looking again at how the pool fares
_KEPT_SECONDS = 60.0  # an async connection kept between checkouts goes back to the pool after this long


class NotAccepting(psycopg.OperationalError):
    """A connection attempt failed while the request waited: PostgreSQL is not accepting connections."""


class PgPool:
    """Connections to one database, each alive when handed out (see the module docstring)."""

    def __init__(self, settings: PostgresSettings, *, name: str, min_size: int, max_size: int) -> None:
        self._timeout = settings.connect_timeout
        self._failed_at = -math.inf  # when a connection attempt last failed (time.monotonic)
        self._kwargs = _connect_kwargs(settings, name)
        self._pool: ConnectionPool[Connection[DictRow]] = ConnectionPool(
            kwargs=self._kwargs, min_size=min_size, max_size=max_size, name=name, timeout=settings.connect_timeout,
            reconnect_timeout=0, reconnect_failed=self._connect_failed, configure=_with_arrays,
            open=False,  # opened on first use, so a process can start while PostgreSQL is down
        )

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection[DictRow]]:
        """A connection for one unit of work, committed (or rolled back on an error) and given back."""
        self._pool.open(wait=False)
        conn = self._live_connection()
        try:
            with conn:  # like ConnectionPool.connection(): the pool's connection stays open
                yield conn
        finally:
            self._pool.putconn(conn)  # a broken one is replaced by the pool
            if conn.broken:
                self._check_idle()

    def close(self) -> None:
        self._pool.close()

    def _live_connection(self) -> Connection[DictRow]:
        conn = self._checkout()
        if not _went_away(conn):
            return conn
        self._pool.putconn(conn)
        self._check_idle()
        return self._checkout()  # an idle one just checked, or a new one

    def _checkout(self) -> Connection[DictRow]:
        """Wait for a connection in slices: between two, see whether a connection attempt failed
        meanwhile (then fail now), and ask again, which makes the pool connect again if it lost
        connections meanwhile (it retries only when asked). An idle connection is handed out at once."""
        started = time.monotonic()
        deadline = started + self._timeout
        while True:
            try:
                return self._pool.getconn(timeout=max(0.001, min(_SLICE, deadline - time.monotonic())))
            except PoolTimeout:
                if self._failed_at >= started:
                    self._why_not_accepting()
                    started = time.monotonic()  # it accepts now: the pool connects at the next ask
                if time.monotonic() >= deadline:
                    raise

    def _why_not_accepting(self) -> None:
        """Raise ``NotAccepting`` with the server's own reason, learnt by connecting once more (the
        pool's attempts do not say why they failed, and ``eventsourcing`` silences the pool's log)."""
        try:
            Connection.connect(**self._kwargs).close()
        except psycopg.OperationalError as error:
            raise _not_accepting(error) from None

    def _check_idle(self) -> None:
        """Test every idle connection now (an empty query each): one that broke means the others did too."""
        if not self._pool.closed:
            self._pool.check()

    def _connect_failed(self, _: ConnectionPool[Any]) -> None:
        self._failed_at = time.monotonic()


class AsyncPgPool:
    """``PgPool`` for an event loop (psycopg's async connections), with the same recovery: bound to the
    loop that first uses it."""

    def __init__(self, settings: PostgresSettings, *, name: str, min_size: int, max_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = settings.connect_timeout
        self._failed_at = -math.inf
        self._kwargs = _connect_kwargs(settings, name)
        self._pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
            kwargs=self._kwargs, min_size=min_size, max_size=max_size, name=name, timeout=settings.connect_timeout,
            reconnect_timeout=0, reconnect_failed=self._connect_failed, configure=_with_arrays_async, open=False,
        )
        self._opened = False
        # The last connection given back in good order, kept out of psycopg_pool for the next checkout:
        # the pool's bookkeeping both ways was a quarter of a lone command's round trip in the client.
        self._kept: AsyncConnection[DictRow] | None = None
        # when each connection out of the pool last came from it (its lifetime goes on), by ``clock``
        self._drawn: weakref.WeakKeyDictionary[AsyncConnection[DictRow], float] = weakref.WeakKeyDictionary()
        self._clock = clock
        self._waiting = 0  # checkouts waiting for the pool: a connection given back goes to them

    def connection(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection[DictRow]]:
        """As ``PgPool.connection``."""
        return _Lease(self, unit_of_work=True)

    def autocommit_connection(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection[DictRow]]:
        """A live connection for statements that each commit on their own (the pool's connections are in
        autocommit mode), given back as it is: no commit or rollback to wait for on return."""
        return _Lease(self, unit_of_work=False)

    async def _lend(self, unit_of_work: bool) -> AsyncConnection[DictRow]:
        if not self._opened:
            await self._pool.open(wait=False)
            self._opened = True
        conn = await self._live_connection()
        if unit_of_work:
            await conn.__aenter__()  # as ``async with conn``: committed, or rolled back on an error, on return
        return conn

    async def _take_back(self, conn: AsyncConnection[DictRow], error: BaseException | None, unit_of_work: bool) -> None:
        try:
            if unit_of_work:
                await conn.__aexit__(type(error) if error else None, error, error.__traceback__ if error else None)
        finally:
            if self._keeps(conn):
                self._kept = conn
            else:
                await self._pool.putconn(conn)
                if conn.broken:
                    await self._check_idle()

    def _keeps(self, conn: AsyncConnection[DictRow]) -> bool:
        """Whether ``conn`` waits for the next checkout here: nobody waits for the pool, it is idle and
        whole, and it has not been kept for longer than the pool would let it live unchecked."""
        return (self._kept is None and not self._waiting and not self._pool.closed and not conn.broken
                and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
                and self._clock() - self._drawn.get(conn, -math.inf) < _KEPT_SECONDS)

    async def close(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            await self._pool.putconn(kept)
        await self._pool.close()

    async def _live_connection(self) -> AsyncConnection[DictRow]:
        conn = await self._checkout()
        if not await went_away_async(conn):
            return conn
        await self._pool.putconn(conn)
        await self._check_idle()
        return await self._checkout()

    async def _checkout(self) -> AsyncConnection[DictRow]:
        """As ``PgPool._checkout``, the kept connection first: also between two waits, as one given back
        while this checkout was not waiting for the pool (asking the server why) was kept."""
        started = time.monotonic()
        deadline = started + self._timeout
        while True:
            kept, self._kept = self._kept, None
            if kept is not None:
                return kept
            try:
                self._waiting += 1
                try:
                    conn = await self._pool.getconn(timeout=max(0.001, min(_SLICE, deadline - time.monotonic())))
                finally:
                    self._waiting -= 1
                self._drawn[conn] = self._clock()
                return conn
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
            raise _not_accepting(error) from None

    async def _check_idle(self) -> None:
        if not self._pool.closed:
            await self._pool.check()

    def _connect_failed(self, _: AsyncConnectionPool[Any]) -> None:
        self._failed_at = time.monotonic()


class _Lease:
    """``AsyncPgPool.connection()``: a class rather than an ``asynccontextmanager`` generator, which
    cost a lone command a few percent of its CPU (the write path takes a connection per group)."""

    __slots__ = ("_conn", "_pool", "_unit_of_work")

    def __init__(self, pool: AsyncPgPool, *, unit_of_work: bool) -> None:
        self._pool = pool
        self._unit_of_work = unit_of_work
        self._conn: AsyncConnection[DictRow] | None = None

    async def __aenter__(self) -> AsyncConnection[DictRow]:
        self._conn = await self._pool._lend(self._unit_of_work)
        return self._conn

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool._take_back(conn, error, self._unit_of_work)


def _connect_kwargs(settings: PostgresSettings, name: str) -> dict[str, Any]:
    return {
        "host": settings.host, "port": settings.port, "dbname": settings.dbname,
        "user": settings.user, "password": settings.password, "row_factory": dict_row,
        "autocommit": True, "connect_timeout": max(1, round(settings.connect_timeout)),
        "application_name": name,  # which role's pool a backend serves, in pg_stat_activity
    }


# Appends' arrays in one pass (framework.adapters.pg_arrays), registered on each connection's own adapters
# rather than given as a shared context: a context is a copy of psycopg's global adapters made once, and
# adapters an application registers later would be missing from every connection.
def _with_arrays(conn: Connection[Any]) -> None:
    register_array_dumpers(conn.adapters)


async def _with_arrays_async(conn: AsyncConnection[Any]) -> None:
    register_array_dumpers(conn.adapters)


def _not_accepting(error: psycopg.OperationalError) -> NotAccepting:
    lines = str(error).strip().splitlines() or ["PostgreSQL is not accepting connections"]
    return NotAccepting(lines[0])


async def went_away_async(conn: AsyncConnection[Any]) -> bool:
    """``_went_away`` for an async connection."""
    if conn.closed:
        return True
    if not _readable(conn.fileno()):
        return False
    try:
        await AsyncConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False


def _went_away(conn: Connection[Any]) -> bool:
    """Whether the server closed this idle connection; a round trip only if the socket has something to say."""
    if conn.closed:
        return True
    if not _readable(conn.fileno()):
        return False  # nothing arrived while it was idle: the usual case
    try:  # the server's goodbye, or a stray notification: ask
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False


def _readable(fd: int) -> bool:
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([fd], [], [], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
