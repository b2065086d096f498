"""One statement on an async connection through libpq itself (``psycopg.pq``), for the write path's appends.

A lone command's append through an ``AsyncCursor`` cost about 400k instructions in the client, four times
what the same round trip costs sent directly: the cursor's execute, prepare and fetch generators, the
connection lock and its transaction bookkeeping are general machinery a prepared one-row statement on a
checked-out autocommit connection does not use. ``fetch_all`` keeps what matters of it:

- parameters are dumped by the connection's own adapters (psycopg's ``Transformer``), so values are sent,
  or refused with ``psycopg.DataError``, exactly as through a cursor;
- the statement is prepared once per connection and per parameter types, as psycopg's ``prepare=True``,
  and again if it was deallocated meanwhile (psycopg deallocates all of a connection's statements when it
  rolls back a transaction there);
- a failed statement raises the error psycopg would raise (``psycopg.errors.error_from_result``), a lost
  connection ``psycopg.OperationalError``, so the store translates them as before;
- rows come back as tuples, loaded by the connection's loaders.

The connection must be checked out (nobody else uses it meanwhile) and in autocommit mode. If the wait is
interrupted (a cancelled task) the statement is cancelled on the server, as psycopg cancels it, so it
never commits unseen; a connection not idle after that is closed, and the pool discards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, pq
from psycopg.abc import Buffer
from psycopg.adapt import PyFormat, Transformer
from psycopg.errors import error_from_result

__all__ = ["fetch_all"]

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_PERCENT = re.compile(r"%(.?)", re.DOTALL)
_UNDEFINED_STATEMENT = b"26000"  # invalid_sql_statement_name: no prepared statement of that name


class _Prepared:
    """A connection's statements prepared here (by SQL text and parameter types) and its transformer."""

    __slots__ = ("made", "names", "transformer")

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.transformer = Transformer(conn)
        self.names: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self.made = 0  # statements prepared so far: a name is never given twice, even after names are forgotten

    def new_name(self) -> bytes:
        self.made += 1
        return f"eventfold_direct_{self.made}".encode()


# Not a WeakKeyDictionary: each value's transformer holds its connection, which would never go. A closed
# connection's entry goes when another connection first comes here (the pool closes those it discards).
_CANCEL_SECONDS = 5.0  # what psycopg allows a cancellation after an interrupted wait

_PREPARED: dict[AsyncConnection[Any], _Prepared] = {}


async def fetch_all(conn: AsyncConnection[Any], statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``statement`` (``%s`` placeholders) run with ``params`` on ``conn``."""
    prepared = _PREPARED.get(conn)
    if prepared is None:
        prepared = _first_use(conn)
    tx = prepared.transformer
    values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
    types = tuple(tx.types or ())
    try:
        results = await _execute(conn, prepared, statement, types, values)
        if _deallocated(results):  # nothing ran: the statement was gone, prepare it again
            prepared.names.clear()
            results = await _execute(conn, prepared, statement, types, values)
    except psycopg.Error:
        raise
    except BaseException:  # interrupted (a cancelled task): the statement may still be running
        await _interrupted(conn)
        raise
    _raise_on_error(results, conn)
    rows: list[tuple[Any, ...]] = []
    for result in results:
        if result.ntuples:
            tx.set_pgresult(result)
            rows += tx.load_rows(0, result.ntuples, tuple)
    return rows


async def _interrupted(conn: AsyncConnection[Any]) -> None:
    """As psycopg after an interrupted wait: the server is asked to cancel the statement and its end is
    read, so it is rolled back rather than left to commit unseen; a connection that is not idle after
    that (no answer within seconds) is closed, and the pool discards it."""
    pgconn = conn.pgconn
    with contextlib.suppress(Exception):
        if pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            await conn.cancel_safe(timeout=_CANCEL_SECONDS)
            await asyncio.wait_for(_results(pgconn), _CANCEL_SECONDS)
    if pgconn.transaction_status != pq.TransactionStatus.IDLE:
        await conn.close()


def _first_use(conn: AsyncConnection[Any]) -> _Prepared:
    for closed in [known for known in _PREPARED if known.closed]:
        del _PREPARED[closed]
    prepared = _PREPARED[conn] = _Prepared(conn)
    return prepared


async def _execute(conn: AsyncConnection[Any], prepared: _Prepared, statement: str, types: tuple[int, ...],
                   values: Sequence[Buffer | None]) -> list[pq.abc.PGresult]:
    """The results of the prepared ``statement`` run with ``values`` (prepared first if need be)."""
    pgconn = conn.pgconn
    name = prepared.names.get((statement, types))
    if name is None:
        name = prepared.new_name()
        pgconn.send_prepare(name, numbered(statement).encode(conn.info.encoding), param_types=types)
        _raise_on_error(await _results(pgconn), conn)
        prepared.names[statement, types] = name
    pgconn.send_query_prepared(name, values, param_formats=prepared.transformer.formats,
                               result_format=pq.Format.BINARY)
    return await _results(pgconn)


def _deallocated(results: list[pq.abc.PGresult]) -> bool:
    """Whether the prepared statement named did not exist on the server. psycopg deallocates every
    prepared statement of its connection (``DEALLOCATE ALL``) when it rolls back a transaction there
    (an idempotency claim that failed) or runs a ``DROP`` or ``DISCARD ALL``: this module's went too."""
    return (len(results) == 1 and results[0].status == pq.ExecStatus.FATAL_ERROR
            and results[0].error_field(pq.DiagnosticField.SQLSTATE) == _UNDEFINED_STATEMENT)


def numbered(statement: str) -> str:
    """``statement`` with its ``%s`` placeholders as ``$1``, ``$2``, ... and ``%%`` as ``%``; any other ``%``
    (a schema's name can hold one) refused as a psycopg cursor refuses it, so the store says so alike."""
    count = 0

    def placeholder(found: re.Match[str]) -> str:
        nonlocal count
        if found[1] == "%":
            return "%"
        if found[1] != "s":
            raise psycopg.ProgrammingError(f"only '%s', '%b', '%t' are allowed as placeholders, got '{found[0]}'")
        count += 1
        return f"${count}"

    return _PERCENT.sub(placeholder, statement)


async def _results(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Send what libpq holds, then every result of the statement sent."""
    loop = asyncio.get_running_loop()
    while pgconn.flush():  # the socket's buffer is full: rare for a statement this size
        await _ready(loop, pgconn.socket, writing=True)
    results: list[pq.abc.PGresult] = []
    while True:
        try:
            while pgconn.is_busy():
                await _ready(loop, pgconn.socket)
                pgconn.consume_input()
        except psycopg.DatabaseError:
            # As psycopg: the server's error came first (a FATAL one, and then it hung up, as when its
            # backend is terminated): that error is the one to raise, not the lost connection after it.
            if any(result.status == pq.ExecStatus.FATAL_ERROR for result in results):
                return results
            raise
        result = pgconn.get_result()
        if result is None:
            return results
        results.append(result)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, writing: bool = False) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writing:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _raise_on_error(results: list[pq.abc.PGresult], conn: AsyncConnection[Any]) -> None:
    for result in results:
        if result.status not in _OK:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise error_from_result(result, encoding=conn.info.encoding)
            raise psycopg.InterfaceError(f"unexpected result from PostgreSQL: {pq.ExecStatus(result.status).name}")
    if conn.pgconn.status == pq.ConnStatus.BAD:
        raise psycopg.OperationalError("the connection to PostgreSQL was lost")
