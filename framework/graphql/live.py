"""Live queries: GraphQL subscriptions over WebSocket (``graphql-transport-ws``), fed by the position watch.

A subscription field is an async generator; the helpers here make one from what a user already has
(a projection and a blocking read of the view store), with no polling per subscriber:

    @strawberry.type
    class Subscription:
        @strawberry.subscription
        async def notifications(self, info: Info, account_number: str, since: int | None = None
                                ) -> AsyncGenerator[Notification, None]:
            read = lambda after: views.query("notifications", NotificationRow,
                                             [Condition("account_number", "eq", account_number),
                                              Condition("position", "gt", after)], Sort("position"))
            async for row in changed_rows(info, "notifications", since, read):
                yield Notification.from_row(row)

``changed_rows`` yields the rows whose ``position`` column (the position of the event that last
changed the row) is past ``since``, in position order, then every row changed later, as its batch
commits. Each update carries the position it reflects, so a client that reconnects with the last
position it got misses nothing and gets nothing twice (a row changed several times while a client
was away, or slower than the changes, is sent once, as it is now: a subscriber gets the latest
state, never a queue that grows). ``since`` None starts from now.

Connections authenticate like queries: ``{"Authorization": "Bearer <token>"}`` in ``connection_init``'s
payload (a bad or missing token closes the socket with 4403); field permissions, document limits and
error codes are the queries' own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from graphql import GraphQLError
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import SchemaExtension
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult, Info

from framework.errors import ConfigurationError, EventfoldError, RateLimited, Unauthenticated
from framework.positions import Interest, PositionWatch, key_text
from framework.readmodel import ReadModel

if TYPE_CHECKING:
    from framework.graphql.app import QueryContext
    from framework.http.gate import Gate

__all__ = ["LIVE_PROTOCOLS", "Batch", "LiveConnections", "changed_rows", "moved_positions", "stream_extensions"]

T = TypeVar("T")
LIVE_PROTOCOLS = (GRAPHQL_TRANSPORT_WS_PROTOCOL,)  # not the legacy graphql-ws


class LiveConnections:
    """The query API's WebSocket side: ``connection_init`` authenticates the connection."""

    _gate: Gate

    async def on_ws_connect(self, context: Any) -> None:
        params = getattr(context, "connection_params", None) or {}
        header = params.get("Authorization", params.get("authorization"))
        if header is not None and not isinstance(header, str):
            raise ConnectionRejectionError({"message": "Authorization must be a string"})
        try:
            context.principal = await self._gate.admit_header(context.request, header)
        except (Unauthenticated, RateLimited) as error:
            raise ConnectionRejectionError({"message": error.message, "code": error.code.upper()}) from None


def stream_extensions(formatted: Callable[[GraphQLError], dict[str, Any]]) -> list[Any]:
    """An extension giving the errors of streamed results (subscriptions) the queries' messages and codes."""

    class CodedStreamErrors(SchemaExtension):
        def on_stream_result(self, result: Any) -> Iterator[None]:
            if isinstance(result, ExecutionResult) and result.errors:
                result.errors = [_coded(e, formatted(e)) for e in result.errors]
            yield

    return [CodedStreamErrors]


def _coded(error: GraphQLError, shown: dict[str, Any]) -> GraphQLError:
    return GraphQLError(shown["message"], error.nodes, error.source, error.positions, error.path,
                        extensions=shown.get("extensions"))


class _Positioned(Protocol):
    position: int


R = TypeVar("R", bound=_Positioned)


async def changed_rows(info: Info[Any, Any], projection: str, since: int | None,
                       read: Callable[[int], Sequence[R]], *, page_size: int | None = None,
                       rows_of: tuple[type[ReadModel], str, Any] | None = None,
                       share: Hashable | None = None, batch: Batch[R] | None = None) -> AsyncIterator[R]:
    """Rows of ``projection`` changed after position ``since`` (``read(after)`` returns them, run off the
    event loop), in position order; then, each time the projection commits, the rows it changed.

    ``page_size``: the most rows ``read`` returns at once (its ``limit``); a full page is followed by
    another read at once, since more rows may lie beyond it. ``rows_of``: ``(model, key column,
    value)`` when ``read`` returns only rows of ``model`` with that value in that column of their key:
    then a commit reads again only when it changed such a row (or cannot say which rows it changed),
    not at every commit of the projection. ``share``: a key naming what ``read`` returns (e.g.
    ``("card", action_id)``): subscribers of the process giving the same key and reading after the same
    position share one read of the view store per commit instead of one each."""
    context = _live_context(info)
    watch = _watch(context)
    with watch.subscribed(), watch.interest(_interest(projection, rows_of)) as changed:
        heard = (await watch.positions([projection]))[projection]  # and the watch follows it from now on
        last = heard if since is None else since
        while True:
            changed.clear()  # before the read: a commit during it or after it sets it again
            rows = await _read_shared(watch, context, projection, share, read, last,
                                      None if batch is None or rows_of is None else (batch, rows_of[2]))
            for row in sorted(rows, key=_position_of):
                if row.position > last:
                    last = row.position
                    yield row
            if page_size is None or len(rows) < page_size:
                await changed.wait()


async def _read_shared(watch: PositionWatch, context: QueryContext, projection: str, share: Hashable | None,
                       read: Callable[[int], Sequence[R]], after: int,
                       batched: tuple[Batch[R], Any] | None = None) -> Sequence[R]:
    """``read(after)``, or the same read already in flight for another subscriber when it is sure to see
    every commit this subscriber has heard of: it began when the watch knew the projection at least as
    far as it does now (commits heard later set the subscriber's event again, and it reads again)."""
    if share is None:
        rows: Sequence[R] = await _read_one(watch, context, projection, read, after, batched)
        return rows
    heard = watch.positions_known().get(projection, 0)
    key = (projection, share, after)
    pending = watch.shared_reads.get(key)
    if pending is None or pending[1] < heard:
        future: asyncio.Future[Sequence[R]] = asyncio.ensure_future(
            _read_one(watch, context, projection, read, after, batched))
        watch.shared_reads[key] = pending = (future, heard)
        future.add_done_callback(lambda done: _forget(watch.shared_reads, key, done))
    return cast("Sequence[R]", await asyncio.shield(pending[0]))


async def _read_one(watch: PositionWatch, context: QueryContext, projection: str, read: Callable[[int], Sequence[R]],
                    after: int, batched: tuple[Batch[R], Any] | None) -> Sequence[R]:
    if batched is None:
        rows: Sequence[R] = await context.read(read, after)
        return rows
    batch, value = batched
    batches = cast("dict[Hashable, _Batching[R]]", watch.batched_reads)
    batching = batches.get((projection, batch.name))
    if batching is None:
        batching = batches[(projection, batch.name)] = _Batching(batch)
    return await asyncio.shield(batching.load(context, value, after))  # other subscribers may share it


@dataclass(frozen=True)
class Batch(Generic[R]):
    """How to read many subscribers' rows at once: ``read_many(values, after)`` returns the rows holding
    one of ``values`` in the ``rows_of`` column, changed after position ``after`` (the lowest any of
    them asks for; each subscriber keeps its own rows past its own position); ``value_of(row)`` is a
    row's value in that column. ``name`` tells batches apart (reads of one name are batched together)."""

    name: Hashable
    read_many: Callable[[list[Any], int], Sequence[R]]
    value_of: Callable[[R], Any]
    most: int = 256  # values per read


class _Batching(Generic[R]):
    """The reads of one batch asked for in one turn of the event loop, read in one call when it ends."""

    def __init__(self, batch: Batch[R]) -> None:
        self._batch = batch
        self._asked: dict[tuple[Any, int], asyncio.Future[Sequence[R]]] = {}
        self._context: QueryContext | None = None

    def load(self, context: QueryContext, value: Any, after: int) -> asyncio.Future[Sequence[R]]:
        asked = self._asked.get((value, after))
        if asked is None:
            loop = asyncio.get_running_loop()
            if not self._asked:
                self._context = context
                loop.call_soon(self._start)
            asked = self._asked[(value, after)] = loop.create_future()
        return asked

    def _start(self) -> None:
        asked, self._asked = self._asked, {}
        assert self._context is not None
        items = list(asked.items())
        for at in range(0, len(items), self._batch.most):
            task = asyncio.ensure_future(self._read(self._context, dict(items[at:at + self._batch.most])))
            task.add_done_callback(_retrieved)
        self._context = None

    async def _read(self, context: QueryContext, asked: dict[tuple[Any, int], asyncio.Future[Sequence[R]]]) -> None:
        values = list(dict.fromkeys(value for value, _ in asked))
        try:
            rows: Sequence[R] = await context.read(self._batch.read_many, values, min(after for _, after in asked))
        except asyncio.CancelledError:
            for future in asked.values():
                future.cancel()
            raise
        except Exception as error:
            for future in asked.values():
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: raised to each subscriber still awaiting it
            raise
        by_value: dict[Any, list[R]] = {}
        for row in rows:
            by_value.setdefault(self._batch.value_of(row), []).append(row)
        for (value, after), future in asked.items():
            if not future.done():
                future.set_result([row for row in by_value.get(value, ()) if row.position > after])


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # raised to each subscriber that awaited the read


def _forget(reads: dict[Hashable, tuple[asyncio.Future[Any], int]], key: Hashable, done: asyncio.Future[Any]) -> None:
    if key in reads and reads[key][0] is done:
        del reads[key]
    if not done.cancelled():
        done.exception()  # retrieved: a failed shared read is raised to each subscriber that awaited it


def _interest(projection: str, rows_of: tuple[type[ReadModel], str, Any] | None) -> Interest:
    if rows_of is None:
        return Interest(projection)
    model, column, value = rows_of
    if column not in model.key:
        raise ConfigurationError(f"rows_of: {column!r} is not a column of {model.__name__}'s key {model.key}")
    return Interest(projection, model.table, model.key.index(column), key_text([value])[0])


async def moved_positions(info: Info[Any, Any], projections: Sequence[str], since: int | None
                          ) -> AsyncIterator[dict[str, int]]:
    """The positions of ``projections`` each time one of them moves past what was last sent (first at
    once unless ``since`` is given and none is past it)."""
    watch = _watch(_live_context(info))
    with watch.subscribed():
        sent: dict[str, int] | None = None
        while True:
            now = await watch.positions(projections)
            if now != sent and (since is None or sent is not None or max(now.values(), default=0) > since):
                sent = now
                yield now
            await watch.any_beyond(now)


def _position_of(row: _Positioned) -> int:
    return row.position


def _live_context(info: Info[Any, Any]) -> QueryContext:
    from framework.graphql.app import QueryContext

    context = info.context
    if not isinstance(context, QueryContext):
        raise ConfigurationError("subscriptions are served by the query API (framework.graphql)")
    return context


def _watch(context: QueryContext) -> PositionWatch:
    if context.watch is None:
        raise _LiveOff("live queries are not enabled on this server")
    return context.watch


class _LiveOff(EventfoldError):
    code = "live_queries_off"
