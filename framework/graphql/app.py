"""The query API: Strawberry over the read models, with limits, stable error codes and read-your-writes.

- Parsing and validation are cached by document text; before graphql-core's
  own validation, limits on tokens, depth, nesting, aliases, cost and repeated
  selections refuse hostile documents in time linear in the document
  (``framework.graphql.limits``); bodies over the limit get 413, JSON that is
  not UTF-8 or nests too deep gets 400 (``framework.graphql.inputs``).
- Introspection and "Did you mean ...?" suggestions only when enabled.
- Every error carries ``extensions.code``; anything unexpected is logged and
  answered as ``INTERNAL_SERVER_ERROR`` without detail.
- Read-your-writes: a request with header ``Eventfold-Position: N`` waits
  (bounded) until every projection its fields read (``@reads``, in
  ``framework.graphql.reads``) has applied position N; the response's
  ``extensions.consistency`` says whether it did. With a ``PositionWatch``
  (``framework.positions``; the CLI always gives one) the wait is woken by
  the projections' commits; without one it reads the positions every
  ``poll_seconds``.
- Subscriptions over WebSocket when the spec has a subscription type
  (``framework.graphql.live``).
- Answers are kept while the positions of the read models they came from have not moved
  (``framework.graphql.responses``); a kept answer is served without executing anything.
- With ``explorer``, a browser explorer of our own at ``/graphql/explorer`` that loads nothing from
  the internet (``framework.graphql.explorer``). No mutations: the write path is the write API.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar, cast

import strawberry
from cross_web import HTTPException
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    parse,
    specified_rules,
    validate,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.dataloader import DataLoader
from strawberry.extensions import SchemaExtension
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.name_converter import NameConverter
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError

from framework.breaker import CircuitBreaker
from framework.errors import EventfoldError, RateLimited, TooManyWaiting, Unauthenticated, Unavailable
from framework.graphql.execution import PlainLeavesExecutor
from framework.graphql.explorer import explorer_routes
from framework.graphql.inputs import BadJson, parse_json, unstorable_text
from framework.graphql.limits import DocumentLimits, check_document
from framework.graphql.live import LIVE_PROTOCOLS, LiveConnections, stream_extensions
from framework.graphql.reads import ReadMap
from framework.graphql.responses import (
    Cached,
    PositionClock,
    Positions,
    Reads,
    RecordingViews,
    ResponseCache,
    answer_body,
    async_positions_reader,
    cache_key,
    orders_text_by_code_point,
    positions_reader,
    with_extensions,
)
from framework.graphql.tracing import ReadSpans, tracing_extensions
from framework.http.edge import EdgeApp
from framework.http.gate import Gate, admitted
from framework.http.health import Check, metrics_route, projections_check, ready_route, store_check, views_check
from framework.metrics import Metrics
from framework.positions import PositionChange, PositionWatch
from framework.query import Condition, InvalidQuery, paginate, paginate_async
from framework.readmodel import ReadModel
from framework.security import ANONYMOUS, Authenticator, Principal
from framework.store import EventLog
from framework.tracing import Tracer
from framework.views import ActiveVersionCache, ViewStore

__all__ = [
    "GRAPHQL_RESPONSE",
    "POSITION_HEADER",
    "GraphQLSpec",
    "QueryApiOptions",
    "QueryContext",
    "build_schema",
    "create_query_app",
    "query_routes",
]

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")
R = TypeVar("R", bound=ReadModel)

POSITION_HEADER = "eventfold-position"
GRAPHQL_RESPONSE = "application/graphql-response+json"  # GraphQL over HTTP's own media type


@dataclass(frozen=True)
class GraphQLSpec:
    """An application's query side: its root Query type. Its fields declare the projections they
    read with ``@reads(...)`` (what read-your-writes waits for); ``projections_by_field`` adds
    projections to top-level fields by name, for a field whose resolver cannot carry ``@reads``."""

    query: type
    projections_by_field: Mapping[str, Sequence[str]] = field(default_factory=dict)
    subscription: type | None = None  # live queries over WebSocket (``framework.graphql.live``)


@dataclass(frozen=True)
class QueryApiOptions:
    """Limits and behaviour of the query API (``docs/graphql.md`` says what each limit counts)."""

    max_depth: int = 10
    max_tokens: int = 2_000
    max_aliases: int = 15
    max_cost: int = 5_000
    max_overlaps: int = 1_000
    max_nesting: int = 32  # selection sets, list/object values and JSON in the body
    introspection: bool = False  # introspection, and "Did you mean ...?" in error messages
    max_body_bytes: int = 65_536
    consistency_timeout: float = 5.0
    poll_seconds: float = 0.005
    ready_max_lag_seconds: float = 60.0
    ready_timeout_seconds: float = 2.0
    rate_limit_per_second: float | None = None  # per token subject, else per client address (as the write API)
    auth_failures_per_minute: float | None = None  # failed authentications per client address
    response_cache_entries: int = 1_024  # answers kept while their read models stand still; 0: off
    explorer: bool = False  # the browser explorer at /graphql/explorer (framework.graphql.explorer)

    def document_limits(self) -> DocumentLimits:
        return DocumentLimits(self.max_depth, self.max_aliases, self.max_cost, self.max_overlaps,
                              self.max_nesting, self.introspection)


@dataclass
class QueryContext:
    """What resolvers get as ``info.context``."""

    request: Request
    views: ViewStore
    store: EventLog | None
    options: QueryApiOptions
    min_position: int | None = None
    consistency: dict[str, Any] | None = None
    principal: Principal = ANONYMOUS
    breaker: CircuitBreaker | None = None
    spans: ReadSpans | None = None  # set by the tracing extension when a tracer records spans
    clock: PositionClock | None = None  # fresh positions, for answers the response cache may keep
    watch: PositionWatch | None = None  # the process's position listener: waits without polling
    connection_params: dict[str, Any] | None = None  # a WebSocket's connection_init payload
    _loaders: dict[Hashable, DataLoader[Any, Any]] = field(default_factory=dict)
    _rows: dict[tuple[str, type[Any]], dict[tuple[Any, ...], Any]] = field(default_factory=dict)  # read by key
    _waiting: bool = field(default=False, init=False)  # the wait reads positions: its own span covers those reads

    async def read(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a (blocking) view-store call off the event loop, through the breaker when there is one.

        ``paginate`` and the store's ``query`` run on the event loop instead (no thread hop) when the
        store reads asynchronously (``query_async``): the same rows, the same errors."""
        on_loop = self._on_loop(call, args)
        if self.spans is None or self._waiting:
            return await (self._read_async(on_loop, *args, **kwargs) if on_loop else self._read(call, *args, **kwargs))
        with self.spans.read(call, args):
            return await (self._read_async(on_loop, *args, **kwargs) if on_loop else self._read(call, *args, **kwargs))

    def _on_loop(self, call: Callable[..., Any], args: tuple[Any, ...]) -> Callable[..., Awaitable[Any]] | None:
        """The asynchronous twin of ``call`` (a page or a query of this request's views), if the views have one."""
        if call is paginate:
            return paginate_async if args and hasattr(args[0], "query_async") else None
        if getattr(call, "__self__", None) is self.views and getattr(call, "__name__", None) == "query":
            return cast(Callable[..., Awaitable[Any]] | None, getattr(self.views, "query_async", None))
        return None

    async def _read(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.breaker is None:
            return await asyncio.to_thread(call, *args, **kwargs)
        return await asyncio.to_thread(self.breaker.call, functools.partial(call, *args, **kwargs))

    async def _get_many(self, projection: str, model: type[R], keys: list[tuple[Any, ...]]) -> Sequence[R | None]:
        """Rows by key: on the event loop when the store reads asynchronously (no thread hop), else ``read``."""
        read_async = getattr(self.views, "get_many_async", None)
        if read_async is None:
            return cast(Sequence[R | None], await self.read(self.views.get_many, projection, model, keys))
        if self.spans is None or self._waiting:
            return await self._read_async(read_async, projection, model, keys)
        with self.spans.read(self.views.get_many, (projection, model, keys)):
            return await self._read_async(read_async, projection, model, keys)

    async def _read_async(self, call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self.breaker is None:
            return await call(*args, **kwargs)
        return await self.breaker.call_async(functools.partial(call, *args, **kwargs))

    def dataloader(self, name: Hashable, load: Callable[[list[K]], Awaitable[Sequence[V]]]) -> DataLoader[K, V]:
        """The request's DataLoader called ``name``, made with ``load`` the first time it is asked for.

        Every key asked for in one tick reaches ``load`` at once; ``load`` returns one value per key,
        in the keys' order (read the views through ``context.read``). One request, one cache."""
        if name not in self._loaders:
            self._loaders[name] = DataLoader(load_fn=load)
        return cast(DataLoader[K, V], self._loaders[name])

    def loader(self, projection: str, model: type[R]) -> DataLoader[tuple[Any, ...], R | None]:
        """Rows by key (a tuple of the key's values), all asked in one tick fetched in one query."""
        found = self._loaders.get(("rows", projection, model))  # asked once per row of a page: no closure unless new
        if found is not None:
            return cast(DataLoader[tuple[Any, ...], R | None], found)

        async def load(keys: list[tuple[Any, ...]]) -> list[R | None]:
            rows = list(await self._get_many(projection, model, keys))
            self._rows.setdefault((projection, model), {}).update(zip(keys, rows, strict=True))
            return rows

        made = self._loaders[("rows", projection, model)] = DataLoader(load_fn=load)
        return made

    async def prefetch(self, projection: str, model: type[R], keys: Iterable[tuple[Any, ...]]) -> None:
        """Read the rows of ``keys`` this request has not read yet, in one query, so that ``row`` answers
        them at once: a parent that knows its children's keys (a page of cards, their securities) calls it."""
        known = self._rows.get((projection, model), {})
        missing = [key for key in dict.fromkeys(keys) if key not in known]
        if not missing:
            return
        try:  # through the loader: keys another field is loading already are not read twice
            await self.loader(projection, model).load_many(missing)
        except Exception:  # the loader keeps the failure: each child meets it, as if unprefetched
            log.debug("a prefetch failed; the fields asking for its rows report it", exc_info=True)

    def row(self, projection: str, model: type[R], key: tuple[Any, ...], convert: Callable[[R], T]
            ) -> T | Awaitable[T | None] | None:
        """The row of ``key`` as ``convert`` makes it, or None: at once when this request has read it
        (prefetched, or loaded earlier), so graphql-core makes no coroutine for it; else an awaitable
        through ``loader`` (batched with the others asked in the same tick). For a resolver that is a
        plain ``def``."""
        known = self._rows.get((projection, model))
        if known is not None and key in known:
            found = known[key]
            return None if found is None else convert(found)
        return self._load(projection, model, key, convert)

    async def _load(self, projection: str, model: type[R], key: tuple[Any, ...], convert: Callable[[R], T]
                    ) -> T | None:
        found = await self.loader(projection, model).load(key)
        return None if found is None else convert(found)

    def rows_by(self, projection: str, model: type[R], column: str) -> DataLoader[Any, list[R]]:
        """Rows whose ``column`` equals the key, in key order, for all keys of one tick in one query
        (``column in (...)``): the children of many parents at once."""
        async def load(values: list[Any]) -> list[list[R]]:
            rows = await self.read(self.views.query, projection, model, [Condition(column, "in", values)])
            grouped: dict[Any, list[R]] = {}
            for row in rows:
                grouped.setdefault(_plain(getattr(row, column)), []).append(row)
            return [grouped.get(_plain(value), []) for value in values]

        return self.dataloader(("rows_by", projection, model, column), load)

    async def wait_for(self, projections: Sequence[str], position: int) -> dict[str, Any]:
        """Wait (bounded) until every one of ``projections`` has applied ``position``; say whether they did."""
        if self.spans is None:
            return await self._poll(projections, position)
        self._waiting = True
        try:
            with self.spans.wait(projections, position) as describe:
                outcome = await self._poll(projections, position)
                describe(outcome)
                return outcome
        finally:
            self._waiting = False

    async def _poll(self, projections: Sequence[str], position: int) -> dict[str, Any]:
        if self.watch is not None:
            return await self.watch.wait_for(projections, position, self.options.consistency_timeout)
        deadline = time.monotonic() + self.options.consistency_timeout
        while True:
            positions = {p: await self.read(self.views.active_position, p) for p in projections}
            reached = all(v >= position for v in positions.values())
            if reached or time.monotonic() >= deadline:
                return {"requested": position, "reached": reached, "positions": positions}
            await asyncio.sleep(self.options.poll_seconds)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


class ReadYourWrites(SchemaExtension):
    """Waits for the projections the operation reads; reports the outcome in ``extensions``."""

    projections_by_field: Mapping[str, Sequence[str]] = {}
    read_map: ReadMap | None = None

    async def on_execute(self) -> Any:
        context = self.execution_context.context
        if not isinstance(context, QueryContext):
            yield
            return
        scope, minimum = context.request.scope, context.min_position
        needed = sorted(self._needed()) if minimum is not None else []
        seen = None
        if context.clock is not None and _KEEP in scope and _heard_at(context.watch, needed, minimum):
            # Read before executing (or by the request before, after it arrived: _NOW): the rows read next
            # are at these positions or later (see responses.py). A claim the watch has not heard waits
            # for it without reading positions.
            seen = scope.pop(_NOW, None) or await _fresh(context.clock)
        if minimum is not None:
            if seen is not None and all(p in seen and seen[p][1] >= minimum for p in needed):
                # Already there: these positions are what it claims (no wait; the answer may be kept).
                context.consistency = {"requested": minimum, "reached": True,
                                       "positions": {p: seen[p][1] for p in needed}}
            else:  # after a wait, many wake at once: none reads positions again, none is kept
                seen = None
                context.consistency = await context.wait_for(needed, minimum)
        if seen is not None:
            scope[_SEEN] = seen
        yield

    def _needed(self) -> set[str]:
        document, operation = self.execution_context.graphql_document, self.execution_context.operation_name
        declared = self.read_map.projections(document, operation) if self.read_map else set()
        named = {p for f in _top_level_fields(document, operation) for p in self.projections_by_field.get(f, ())}
        return declared | named

    def get_results(self) -> dict[str, Any]:
        context = self.execution_context.context
        if isinstance(context, QueryContext) and context.consistency is not None:
            return {"consistency": context.consistency}
        return {}


def _heard_at(watch: PositionWatch | None, projections: Sequence[str], minimum: int | None) -> bool:
    """No position claimed, no watch, or the watch has heard every one of ``projections`` at ``minimum``."""
    if minimum is None or watch is None:
        return True
    heard = watch.positions_known()
    return all(heard.get(p, -1) >= minimum for p in projections)


async def _fresh(clock: PositionClock) -> Positions | None:
    """Fresh positions, or None when they cannot be read: then nothing is kept or served from the cache,
    and the request runs as if there were no cache (its own reads report the failure)."""
    try:
        return await clock.now()
    except Exception:  # the read models are down: the request's own reads say so, in the usual way
        log.debug("positions for the response cache could not be read", exc_info=True)
        return None


def _top_level_fields(document: Any, operation_name: str | None) -> set[str]:
    if document is None:
        return set()
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    chosen = [o for o in operations if operation_name is None or (o.name and o.name.value == operation_name)]
    return {name for o in chosen[:1] for name in _field_names(o.selection_set, fragments)}


def _field_names(selections: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]) -> Iterator[str]:
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            yield selection.name.value
        elif isinstance(selection, InlineFragmentNode):
            yield from _field_names(selection.selection_set, fragments)
        elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
            yield from _field_names(fragments[selection.name.value].selection_set, fragments)


class CountedRequests(SchemaExtension):
    """Counts each operation in ``metrics``, by operation name and outcome (``ok`` or the first error's code)."""

    metrics: Metrics

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except GraphQLError as error:  # a syntax error surfaces through the extensions
            self._count([error], started)
            raise
        context = self.execution_context
        result_errors = (context.result.errors if context.result else None) or []
        self._count([*(context.pre_execution_errors or []), *result_errors], started)

    def _count(self, errors: list[GraphQLError], started: float) -> None:
        outcome = _code(errors[0]) if errors else "ok"
        self.metrics.graphql_request(self.execution_context.operation_name, outcome, time.perf_counter() - started)


def _code(error: GraphQLError) -> str:
    """The ``extensions.code`` that ``_formatted`` gives an error."""
    original = error.original_error
    if isinstance(original, InvalidQuery):
        return "BAD_USER_INPUT"
    if isinstance(original, Unavailable):
        return "SERVICE_UNAVAILABLE"
    if isinstance(original, EventfoldError):
        return original.code.upper()
    if isinstance(original, GraphQLError):
        return str((original.extensions or {}).get("code", "BAD_USER_INPUT"))
    if original is not None:
        return "INTERNAL_SERVER_ERROR"
    own = (error.extensions or {}).get("code")  # our own limits name their code
    if own:
        return str(own)
    lowered = error.message.lower()
    return next((c for text, c in _CODES if text in lowered), "GRAPHQL_VALIDATION_FAILED")


class _Schema(strawberry.Schema):
    """Strawberry's schema, with what the query API plans documents with."""

    documents: _Documents
    read_map: ReadMap
    projections_by_field: Mapping[str, Sequence[str]]
    traced: bool  # operations are traced: each runs (its span, and its reads' spans, are what a trace shows)

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Errors are logged once, by the response formatting (with their tracebacks when unexpected)."""

    async def _stream(self, execution_context: Any, extensions_runner: Any, middleware_manager: Any,
                      execution_context_class: Any = None, operation_extensions: dict[str, Any] | None = None,
                      ) -> AsyncGenerator[Any, None]:
        """Strawberry's stream (subscriptions over WebSocket), with a document our parsing refused
        (a syntax error, too many tokens) answered as an error, as over HTTP: Strawberry's streams catch
        only its own parser's errors, and the socket got ``complete`` with a traceback in the log."""
        results = super()._stream(execution_context, extensions_runner, middleware_manager,
                                  execution_context_class, operation_extensions)
        started = False
        try:
            async with contextlib.aclosing(results):
                async for result in results:
                    started = True
                    yield result
        except GraphQLError as error:
            if started:  # not a refused document: Strawberry catches errors once results flow
                raise
            refused = await self._handle_execution_result(
                execution_context, PreExecutionError(data=None, errors=[error]), extensions_runner)
            async with extensions_runner.on_stream_result(refused):
                yield refused


def build_schema(
    query: type, options: QueryApiOptions, projections_by_field: Mapping[str, Sequence[str]] | None = None,
    metrics: Metrics | None = None, *, tracer: Tracer | None = None, subscription: type | None = None,
) -> strawberry.Schema:
    """The schema with Eventfold's extensions: caches, limits, read-your-writes and request metrics."""
    named = {"projections_by_field": projections_by_field or {}}
    consistency: Any = type("ReadYourWritesFor", (ReadYourWrites,), named)
    counted: list[Any] = [type("CountedIn", (CountedRequests,), {"metrics": metrics})] if metrics else []
    documents = _Documents(options)
    traced = tracing_extensions(tracer, _code)
    schema = _Schema(
        query=query,
        subscription=subscription,
        config=StrawberryConfig(name_converter=_CachedNames()),
        execution_context_class=PlainLeavesExecutor,  # plain leaf fields completed directly (same answers)
        # Factories, not instances: an extension instance holds the current
        # request's execution context, so sharing one between requests races.
        extensions=[
            *traced,  # first: its span encloses the other extensions' work
            lambda: _Checked(documents),
            consistency,
            *counted,
            *stream_extensions(_formatted),
        ],
    )
    consistency.read_map = schema.read_map = ReadMap.of(schema)  # the fields' declarations, once it has its types
    schema.documents, schema.projections_by_field = documents, named["projections_by_field"]
    schema.traced = bool(traced)
    return schema


_RULES = (*specified_rules, MaybeNullValidationRule, OneOfInputValidationRule)  # Strawberry's set
# Up to 256 documents of up to 4,096 characters are kept (a parsed document takes ~100 times its text):
# about 120 MB at worst. Longer ones are parsed and checked each time, which the limits keep cheap.
_CACHED_TEXT = 4_096


class _Documents:
    """Parsing and validation for one schema, cached by the document's text.

    The limits (``check_document``) run before graphql-core's rules, and in time linear in the
    document, so the protection does not depend on the cache: a comment or a space makes a new text."""

    def __init__(self, options: QueryApiOptions, maxsize: int = 256) -> None:
        self._options, self._limits = options, options.document_limits()
        self._parsed = functools.lru_cache(maxsize)(self._parse)
        self._checked = functools.lru_cache(maxsize)(self._check_text)

    def document(self, text: str) -> DocumentNode:
        return self._parsed(text) if len(text) <= _CACHED_TEXT else self._parse(text)

    def errors(self, schema: GraphQLSchema, text: str, document: DocumentNode) -> list[GraphQLError]:
        """``document`` is ``text`` parsed: the cache is keyed by the text (hashing a document walks all of it)."""
        return list(self._checked(schema, text) if len(text) <= _CACHED_TEXT else self._check(schema, document))

    def _parse(self, text: str) -> DocumentNode:
        return parse(text, max_tokens=self._options.max_tokens)  # counts comments too

    def _check_text(self, schema: GraphQLSchema, text: str) -> tuple[GraphQLError, ...]:
        return self._check(schema, self._parsed(text))

    def _check(self, schema: GraphQLSchema, document: DocumentNode) -> tuple[GraphQLError, ...]:
        refused = check_document(schema, document, self._limits)
        if refused:
            return tuple(refused)
        return tuple(validate(schema, document, _RULES, hide_suggestions=not self._options.introspection))


class _Checked(SchemaExtension):
    """Parse and validate through ``_Documents``; refuse variables holding text PostgreSQL cannot store."""

    def __init__(self, documents: _Documents) -> None:
        self._documents = documents

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        context.graphql_document = self._documents.document(cast(str, context.query))
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        # The graphql-core schema: Strawberry has no public accessor; its own validation extensions read it so.
        schema: GraphQLSchema = context.schema._schema
        document = context.graphql_document
        assert document is not None  # on_parse set it
        errors = self._documents.errors(schema, cast(str, context.query), document)
        if not errors and unstorable_text(context.variables):
            errors = [GraphQLError("variables must not contain NUL (\\u0000) characters or lone surrogates",
                                   extensions={"code": "BAD_USER_INPUT"})]
        context.pre_execution_errors = errors  # set, so Strawberry does not validate again
        yield


class _CachedNames(NameConverter):
    """Strawberry converts argument names on every request; the answer never changes."""

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one converter per schema, kept for its life
    def apply_naming_config(self, name: str) -> str:
        return str(super().apply_naming_config(name))


_CODES = [
    ("exceeds maximum operation depth", "QUERY_TOO_DEEP"),
    ("maximum introspection depth exceeded", "QUERY_TOO_DEEP"),  # graphql-core's rule: the limiter skips "__" fields
    ("number of tokens", "QUERY_TOO_LARGE"),
    ("token limit", "QUERY_TOO_LARGE"),
    ("tokens. parsing aborted", "QUERY_TOO_LARGE"),  # the parser's max_tokens, before "syntax error"
    ("nested too deeply", "QUERY_TOO_DEEP"),  # the parser ran out of stack, before "syntax error"
    ("aliases found", "QUERY_TOO_LARGE"),
    ("syntax error", "GRAPHQL_PARSE_FAILED"),
]


_SUGGESTION = re.compile(r"\s*Did you mean .*$", re.S)


def _formatted(error: GraphQLError, *, suggestions: bool = True) -> dict[str, Any]:
    """The error as the client sees it; without "Did you mean ...?" (which names schema members) unless
    ``suggestions``: graphql-core hides them in validation when asked, not when coercing variables."""
    formatted = _formatted_with_suggestions(error)
    if not suggestions:
        formatted["message"] = _SUGGESTION.sub("", formatted["message"])
    return formatted


def _formatted_with_suggestions(error: GraphQLError) -> dict[str, Any]:
    original = error.original_error
    if isinstance(original, InvalidQuery):
        return _error(original.message, "BAD_USER_INPUT", error)
    if isinstance(original, Unavailable):
        return _error("the read models are unavailable, retry shortly", "SERVICE_UNAVAILABLE", error)
    if isinstance(original, EventfoldError):
        return _error(original.message, original.code.upper(), error)
    if isinstance(original, GraphQLError):  # a client's input that cannot be coerced (variables)
        return _error(error.message, str((original.extensions or {}).get("code", "BAD_USER_INPUT")), error)
    if original is not None:
        log.error("query failed: %s", error.message, exc_info=original)
        return _error("internal error", "INTERNAL_SERVER_ERROR", error)
    return _error(error.message, _code(error), error)


def _error(message: str, code: str, error: GraphQLError) -> dict[str, Any]:
    formatted: dict[str, Any] = {"message": message, "extensions": {"code": code}}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        formatted["path"] = error.path
    return formatted


_UNAVAILABLE = "eventfold.unavailable"  # set when nothing could be read: the answer becomes a 503
_TOO_MANY_WAITING = "eventfold.too_many_waiting"  # the read-your-writes wait was refused: a 503 too
_MEDIA = "eventfold.graphql_response"  # the client asked for application/graphql-response+json
_REQUEST_ERROR = "eventfold.request_error"  # ... and its request was not executed: a 400
_POSITION = "eventfold.position"  # the request's Eventfold-Position (None: none), checked by _Guard
_OPERATION = "eventfold.operation"  # the operation name of a request answered from the cache
_HEARING_SECONDS = 0.02  # how long a kept answer waits for the notifications of commits a fresh read saw
_SHARING_SECONDS = 1.0  # how long a request waits for the same answer being computed, before computing its own
_SHARING_ROUNDS = 3  # computations of the same answer a request waits for, each found stale, before computing
_KEEP = "eventfold.keep"  # (cache key, plan): the answer may be kept
_SEEN = "eventfold.seen"  # the positions read just before it was executed
_KEPT = "eventfold.kept"  # its answer was kept
_NOW = "eventfold.now"  # positions read after it arrived, for the response cache: its execution reuses them
_REMEMBERED_BODY = 4_096  # bodies up to this many bytes are parsed once for many requests
_READS = "eventfold.reads"  # what its resolvers read (framework.graphql.responses.Reads)
_SHARING = "eventfold.sharing"  # it waited for another request's computation of its answer
_EPOCH = "eventfold.epoch"  # the response cache's listening session before those positions were read


@dataclass(frozen=True)
class _Plan:
    """What is known of one operation before running it: the projections it reads (it may be kept)."""

    projections: tuple[str, ...]


class _Plans:
    """Per document text and operation name, cached with the parse and validation: whether the
    answer may be kept (a valid query whose every top-level field declares what it reads), and what
    it reads. ``None``: run it every time."""

    def __init__(self, schema: _Schema) -> None:
        self._schema = schema
        self._planned = functools.lru_cache(maxsize=256)(self._plan)

    def plan(self, text: str, operation: str | None) -> _Plan | None:
        return self._planned(text, operation) if len(text) <= _CACHED_TEXT else None

    def _plan(self, text: str, operation: str | None) -> _Plan | None:
        schema = self._schema
        try:
            document = schema.documents.document(text)
        except GraphQLError:
            return None
        if schema.documents.errors(schema._schema, text, document):  # graphql-core's schema (see on_validate)
            return None
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) != 1 or operations[0].operation is not OperationType.QUERY:
            return None  # several operations: cheap enough to run (and their choice to check) each time
        top = _top_level_fields(document, operation) - {"__typename"}
        declared = [schema.read_map.root_projections(f) | set(schema.projections_by_field.get(f, ())) for f in top]
        if not top or not all(declared):
            return None
        found = schema.read_map.projections(document, operation).union(*declared)
        return _Plan(tuple(sorted(found)))


class _QueryApi(LiveConnections, GraphQL[QueryContext, None]):
    def __init__(self, schema: strawberry.Schema, views: ViewStore, store: EventLog | None,
                 options: QueryApiOptions, authenticator: Authenticator | None = None,
                 breaker: CircuitBreaker | None = None, watch: PositionWatch | None = None,
                 metrics: Metrics | None = None) -> None:
        super().__init__(schema, graphql_ide=None, allow_queries_via_get=True,
                         subscription_protocols=LIVE_PROTOCOLS)
        self._views, self._store, self._options = views, store, options
        self._breaker, self._watch, self._metrics = breaker, watch, metrics
        self._gate = Gate(authenticator, rate_per_second=options.rate_limit_per_second,
                          failures_per_minute=options.auth_failures_per_minute)
        self._plans: _Plans | None = None
        self._clock: PositionClock | None = None
        # Answers being computed, by cache key; each ends with whether its sharers may share the next one.
        self._computing: dict[Hashable, asyncio.Future[bool]] = {}
        self._code_point_text: bool | None = None  # orders_text_by_code_point(views), asked once
        self._bodies = functools.lru_cache(maxsize=256)(self._parse_body)  # small bodies, by their bytes
        self._responses = ResponseCache(options.response_cache_entries)
        if watch is not None and isinstance(views, ActiveVersionCache):
            watch.observers.append(_switches_noted(views))
        if isinstance(schema, _Schema) and options.response_cache_entries > 0 and not schema.traced:
            named = {p for ps in schema.projections_by_field.values() for p in ps}
            declared = sorted(schema.read_map.declared() | named)
            self._read_positions = positions_reader(views, declared)
            self._read_positions_async = async_positions_reader(views, declared)
            self._plans, self._clock = _Plans(schema), PositionClock(self._positions)
            if watch is not None:  # commits heard vouch for kept answers whose rows they did not touch
                watch.observers.append(self._responses.hear)

    async def _positions(self) -> Positions:
        if self._read_positions_async is not None:  # on the loop: no thread hop (a failure: no cache this time)
            if self._breaker is None:
                return await self._read_positions_async()
            return await self._breaker.call_async(self._read_positions_async)  # it may be the probe that closes it
        if self._breaker is None:
            return await asyncio.to_thread(self._read_positions)
        return await asyncio.to_thread(self._breaker.call, self._read_positions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Request-level failures (bad JSON, no query, wrong method) answered in the GraphQL error shape."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        open_for = self._breaker.refuse() if self._breaker else None
        if open_for is not None:  # the read models are known to be down: answer now, read nothing
            await _unavailable(open_for, f"the read models are unavailable; retry in {math.ceil(open_for)}s")(
                scope, receive, send)
            return
        try:
            await self._gate.admit(Request(scope=scope))  # get_context reads the principal back
            request = Request(scope=scope, receive=receive)
            response = await self._kept(request) if self._plans is not None else None
            if response is None:
                response = await self._computed(request)
            if scope.get(_UNAVAILABLE):
                _make_unavailable(response, self._breaker)
            elif scope.get(_TOO_MANY_WAITING):
                response.status_code = 503
                response.headers["Retry-After"] = str(scope[_TOO_MANY_WAITING])
        except Unauthenticated as error:
            response = _graphql_error(401, error.message, "UNAUTHENTICATED")
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        except RateLimited as error:
            response = _graphql_error(429, error.message, "RATE_LIMITED")
            response.headers["Retry-After"] = str(error.retry_after)
        except TooManyWaiting as error:
            response = _graphql_error(503, error.message, "TOO_MANY_WAITING")
            response.headers["Retry-After"] = str(error.retry_after)
        except Unavailable as error:  # e.g. the token keys cannot be fetched
            response = _unavailable(1.0, error.message)
        except HTTPException as error:
            response = _graphql_error(error.status_code, error.reason, _request_code(error.status_code))
        except (AttributeError, TypeError):  # a JSON body that is not an object trips Strawberry up
            response = _graphql_error(400, "the body must be a JSON object with a `query`", "BAD_REQUEST")
        await response(scope, receive, send)

    async def _kept(self, request: Request, now: Positions | None = None) -> Response | None:
        """The kept answer to this request, if its read models have not moved since (else None, and
        the request is marked so that its answer is kept). ``now``: positions read after the request
        arrived (while it waited for another's computation), else read here when there is a kept answer.
        Positions read are noted in the request (``_NOW``): its execution, if it comes to that, reuses them."""
        keep = request.scope.get(_KEEP) or await self._keepable(request)
        if keep is None:
            return None
        if _KEEP not in request.scope:
            request.scope[_KEEP] = keep
            if self._watch is not None:
                await self._watch.start()  # idempotent: the listener the cache hears commits from
            request.scope[_EPOCH] = self._responses.epoch  # before the positions the answer will be computed at
            if self._code_point_text is None:
                await self._learn_text_order()
        key, plan = keep
        kept = self._responses.get(key)
        if kept is None:
            if now is not None:
                request.scope[_NOW] = now
            return None
        started = time.perf_counter()
        assert self._clock is not None  # set with the plans
        minimum = _min_position(request)
        if self._watch is not None and not self._claim_heard(minimum, plan):
            return None  # not there yet as far as the watch has heard: it waits, woken by the watch
        if now is None:
            now = await _fresh(self._clock)
        if now is None:
            return None
        request.scope[_NOW] = now
        if not (self._responses.valid(kept, now) or await self._heard_up_to(kept, now)):
            return None
        if minimum is not None and any(now[p][1] < minimum for p in plan.projections):
            return None  # it waits, or answers reached: false
        request.scope.pop(_NOW, None)
        if self._metrics is not None:
            self._metrics.graphql_request(request.scope.get(_OPERATION), "ok", time.perf_counter() - started)
            self._metrics.graphql_answer("shared" if request.scope.get(_SHARING) else "kept")
        if minimum is None:
            return Response(kept.body, media_type="application/json")
        positions = {p: now[p][1] for p in plan.projections}
        consistency = {"requested": minimum, "reached": True, "positions": positions}
        return Response(with_extensions(kept.body, {"consistency": consistency}), media_type="application/json")

    def _claim_heard(self, minimum: int | None, plan: _Plan) -> bool:
        """No position claimed, or the watch has heard every projection of ``plan`` at it (without a
        watch: not known, and a claim does not share another's computation: it might have to wait)."""
        return minimum is None or (self._watch is not None and _heard_at(self._watch, plan.projections, minimum))

    async def _learn_text_order(self) -> None:
        """``orders_text_by_code_point`` of the views, once for the API (it may ask the database: off the
        loop). A failure leaves it unknown: each request's ``RecordingViews`` asks then, as before."""
        try:
            self._code_point_text = await asyncio.to_thread(orders_text_by_code_point, self._views)
        except Exception:
            log.debug("the view store's text order could not be read", exc_info=True)

    async def _computed(self, request: Request) -> Response:
        """The request run; when the same keepable answer is being computed already, that one is awaited
        first and then checked like any kept answer (fresh positions, read after this request arrived and
        while it waited, the commits since heard): only when it does not hold for this request does it run
        on its own. Under writes, the requests arriving after a commit dropped an answer share one
        computation, those claiming a position the watch has heard too. A sharer gets nothing from the
        computation it waited for but the kept answer: the leader's failure, or its cancellation (a client
        gone), leaves nothing kept, and the sharer computes its own."""
        keep = request.scope.get(_KEEP)
        if keep is None or not self._claim_heard(_min_position(request), keep[1]):
            return await self.run(request)
        key = keep[0]
        waited: asyncio.Future[bool] | None = None
        for _ in range(_SHARING_ROUNDS):  # a commit during the computation: the next one, led by a sharer
            running = self._computing.get(key)
            if running is None or running is waited:  # (one still running after _SHARING_SECONDS: not again)
                break
            waited = running
            request.scope[_SHARING] = True
            assert self._clock is not None  # set with the plans
            reading = asyncio.ensure_future(_fresh(self._clock))  # starts now: after this request arrived
            try:
                await self._share(running)
                now = await reading
            finally:
                reading.cancel()
            shared = await self._kept(request, now)
            if shared is not None:
                return shared
            if running.done() and not running.result():
                break  # computed and not kept (errors, too large, just after a switch): the next one would not be
        if waited is not None:  # its positions, read as it began to wait, would be older than its rows by the
            request.scope.pop(_NOW, None)  # commits of that wait: its answer stale for those who share it now
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._computing[key] = done
        again = True  # failed or cancelled: its sharers share the next computation (it may succeed)
        try:
            response = await self._run_counted(request)
            scope = request.scope
            again = bool(scope.get(_KEPT) or scope.get(_UNAVAILABLE) or scope.get(_TOO_MANY_WAITING))
            return response
        finally:
            if self._computing.get(key) is done:
                del self._computing[key]
            done.set_result(again)

    async def _share(self, running: asyncio.Future[bool]) -> None:
        """Wait (a moment at most) for another request's computation of the same answer."""
        if self._metrics is not None:
            self._metrics.graphql_sharing.inc()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running), _SHARING_SECONDS)
        finally:
            if self._metrics is not None:
                self._metrics.graphql_sharing.dec()

    async def _run_counted(self, request: Request) -> Response:
        if self._metrics is not None:
            self._metrics.graphql_answer("computed")
        return await self.run(request)

    async def _heard_up_to(self, kept: Cached, now: Positions) -> bool:
        """Whether ``kept`` is valid at ``now`` once the commits the fresh read saw, not heard yet, are
        heard: their notifications are most often on their way (a commit notifies as it becomes visible),
        so they are waited for a moment (``_HEARING_SECONDS``) rather than the answer computed again."""
        behind = self._responses.behind(kept, now)
        if not behind or self._watch is None:
            return False
        with contextlib.suppress(TimeoutError, TooManyWaiting, EventfoldError):
            for projection, position in behind.items():
                await self._watch.until([projection], position, _HEARING_SECONDS, counted=False)
        return self._responses.valid(kept, now)

    async def _keepable(self, request: Request) -> tuple[Hashable, _Plan] | None:
        """The cache key and plan of a plain JSON POST of one query the cache may keep."""
        if request.method != "POST" or not request.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            data = self._body(await request.body())
        except BadJson:
            return None  # Strawberry answers it
        if not isinstance(data, dict) or data.get("extensions") is not None:
            return None
        query, variables, operation = data.get("query"), data.get("variables"), data.get("operationName")
        if not (isinstance(query, str) and isinstance(variables, dict | None) and isinstance(operation, str | None)):
            return None
        assert self._plans is not None
        plan = self._plans.plan(query, operation)
        if plan is None:
            return None
        request.scope[_OPERATION] = operation
        return cache_key(query, variables, operation, admitted(request)), plan

    def decode_json(self, data: str | bytes) -> object:
        """Strawberry's hook for the body and JSON query parameters: UTF-8, bounded nesting, or a 400."""
        try:
            return self._body(data)
        except BadJson as error:
            raise HTTPException(400, str(error)) from None

    def _body(self, data: str | bytes) -> object:
        """``data`` parsed; a small body from the ones parsed lately (a client asks the same again and
        again), as a copy of their top level (Strawberry takes its members out, nothing changes them)."""
        if len(data) > _REMEMBERED_BODY or isinstance(data, str):
            return parse_json(data, self._options.max_nesting)
        found = self._bodies(data)
        return dict(found) if isinstance(found, dict) else found

    def _parse_body(self, data: bytes) -> object:
        return parse_json(data, self._options.max_nesting)

    def encode_json(self, data: object) -> str | bytes:
        """An answer whose ``data`` was encoded for the response cache already is not encoded again."""
        if isinstance(data, _Encoded):
            return data.body
        return super().encode_json(data)

    async def parse_http_body(self, request: Any) -> GraphQLRequestData | list[GraphQLRequestData]:
        data = await super().parse_http_body(request)
        if isinstance(data, GraphQLRequestData) and not isinstance(data.operation_name, str | None):
            raise HTTPException(400, "the GraphQL operation's `operationName` must be a string or null, if provided")
        return data

    async def get_context(self, request: Any, response: Any) -> QueryContext:
        if self.is_websocket_request(request):  # its principal comes with connection_init (on_ws_connect)
            # A WebSocket: a Request's connection part (headers, client); it has no body to read.
            return QueryContext(cast(Request, request), self._views, self._store, self._options,
                                breaker=self._breaker, watch=self._watch)
        views = self._views
        if _KEEP in request.scope:  # its answer may be kept: note what it reads
            views = cast(ViewStore, RecordingViews(views, request.scope.setdefault(_READS, Reads()),
                                                   self._code_point_text))
        return QueryContext(request, views, self._store, self._options,
                            min_position=_min_position(request),
                            principal=admitted(request), breaker=self._breaker, watch=self._watch,
                            clock=self._clock)

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        response: GraphQLHTTPResponse = {"data": result.data}
        if result.errors:
            response["errors"] = [_formatted(e, suggestions=self._options.introspection) for e in result.errors]
            if _nothing_read(result):
                request.scope[_UNAVAILABLE] = True
            waits = [e.original_error for e in result.errors if isinstance(e.original_error, TooManyWaiting)]
            if waits:  # refused before anything was read: a 503, as for an unavailable read model
                request.scope[_TOO_MANY_WAITING] = waits[0].retry_after
        if result.extensions:
            response["extensions"] = result.extensions
        if request.scope.get(_MEDIA) and _not_executed(result):  # GraphQL over HTTP: a 400 without `data`
            request.scope[_REQUEST_ERROR] = True
            response.pop("data", None)
        body = self._keep(request, result)
        if body is None:
            return response
        encoded = with_extensions(body, result.extensions) if result.extensions else body
        return cast(GraphQLHTTPResponse, _Encoded(response, body=encoded))

    def _keep(self, request: Any, result: ExecutionResult) -> bytes | None:
        """Keep the answer when it may be kept: its ``data`` encoded (``answer_body``), or None."""
        keep, seen = request.scope.get(_KEEP), request.scope.get(_SEEN)
        if keep is None or seen is None or result.errors or result.data is None:
            return None
        key, plan = keep
        if not (all(p in seen for p in plan.projections) and self._clock is not None and self._clock.settled(
                plan.projections)):
            return None
        body = answer_body(result.data)
        if self._responses.put(key, seen, plan.projections, result.data, request.scope.get(_READS),
                               request.scope.get(_EPOCH, 0), body=body):
            request.scope[_KEPT] = True
        return body


class _Encoded(dict[str, Any]):
    """An answer (``GraphQLHTTPResponse``) with its JSON encoding already made (``body``)."""

    def __init__(self, response: Mapping[str, Any], *, body: bytes) -> None:
        super().__init__(response)
        self.body = body


def _switches_noted(views: ActiveVersionCache) -> Callable[[PositionChange | None], None]:
    """An observer of the watch telling ``views`` of every version heard switched in, before the watch
    wakes the requests waiting for it: they read that version, not the one ``views`` remembered."""
    def note(change: PositionChange | None) -> None:
        if change is not None and change.switched:
            views.note_active_version(change.projection, change.version)
    return note


def _not_executed(result: ExecutionResult) -> bool:
    """The document failed to parse or validate, or its variables to coerce: errors without a path, no data."""
    return result.data is None and bool(result.errors) and all(e.path is None for e in result.errors or [])


def _nothing_read(result: ExecutionResult) -> bool:
    """Every error is an unavailable dependency and no field has a value: a 503, not a partial answer."""
    unavailable = all(isinstance(e.original_error, Unavailable) for e in result.errors or [])
    return unavailable and not any(v is not None for v in (result.data or {}).values())


def _unavailable(retry_after: float, message: str) -> Response:
    response = _graphql_error(503, message, "SERVICE_UNAVAILABLE")
    response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def _make_unavailable(response: Response, breaker: CircuitBreaker | None) -> None:
    response.status_code = 503
    response.headers["Retry-After"] = str(max(1, math.ceil((breaker and breaker.refusing_for()) or 1.0)))


def _request_code(status: int) -> str:
    return {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}.get(status, "BAD_REQUEST")


def _min_position(request: Request) -> int | None:
    """The request's ``Eventfold-Position`` (checked by ``_Guard``, which answers a bad one 400)."""
    scope = request.scope
    if _POSITION not in scope:
        claimed = position_claimed(scope.get("headers", []))
        if isinstance(claimed, str):
            raise _BadHeader(claimed)
        scope[_POSITION] = claimed
    return cast(int | None, scope[_POSITION])


MAX_POSITION = 2**63 - 1  # PostgreSQL's bigint: a position is compared with the store's in SQL


def position_claimed(headers: Iterable[tuple[bytes, bytes]]) -> int | str | None:
    """The position every ``Eventfold-Position`` header of ``headers`` names (None: no such header), or
    why they are refused: each must be a non-negative integer (ASCII digits, leading zeros allowed) at most
    ``MAX_POSITION``, and several must agree."""
    found: set[int] = set()
    name = POSITION_HEADER.encode()
    for key, raw in headers:
        if key.lower() != name:
            continue
        text = raw.strip(b" \t")
        digits = text.lstrip(b"0") or b"0"
        if not text.isdigit() or len(digits) > 19 or int(digits) > MAX_POSITION:
            shown = raw[:40].decode("latin-1")
            return (f"{POSITION_HEADER} must be a non-negative integer at most {MAX_POSITION}, not "
                    f"{shown!r}{'...' if len(raw) > 40 else ''}")
        found.add(int(digits))
    if len(found) > 1:
        return f"{POSITION_HEADER} is given more than once, with different values"
    return next(iter(found), None)


class _BadHeader(Exception):
    pass


def _graphql_error(status: int, message: str, code: str) -> Response:
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=status)


class _Guard:
    """Body size limit and header checks in front of Strawberry, answered GraphQL-style."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self._app, self._limit = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if _wants_graphql_response(headers.get(b"accept")):
            scope[_MEDIA] = True
            send = _as_graphql_response(send, scope)
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self._limit:
            await _too_large(self._limit)(scope, receive, send)
            return
        claimed = position_claimed(scope.get("headers", []))
        if isinstance(claimed, str):
            await _graphql_error(400, claimed, "BAD_REQUEST_HEADER")(scope, receive, send)
            return
        scope[_POSITION] = claimed
        refused = _unsupported_body(scope)
        if refused is not None:
            await _graphql_error(400, refused, "BAD_REQUEST")(scope, receive, send)
            return
        try:
            await self._app(scope, _limited(receive, self._limit), send)
        except _BodyTooLarge:  # Strawberry reads the whole body before it answers
            await _too_large(self._limit)(scope, receive, send)


def _unsupported_body(scope: Scope) -> str | None:
    """Why a POST's body is refused for its content type (None: it is ``application/json``, the one
    GraphQL over HTTP asks servers to accept; Strawberry itself would take any type naming it). Media
    types are case-insensitive, and every one of several ``Content-Type`` headers must say it; the one
    accepted is left in ``scope`` alone, in lower case (Strawberry and the cache compare it as written,
    and read the first of several)."""
    if scope.get("method") != "POST":
        return None
    headers = list(scope.get("headers", []))
    given = [value for key, value in headers if key.lower() == b"content-type"]
    for value in given or [b""]:
        media = value.split(b";", 1)[0].strip().lower()
        if media != b"application/json":
            shown = media[:60].decode("latin-1") if media else "none"
            return f"the body of a POST must be application/json (a JSON object with a `query`), not {shown!r}"
    parameters = given[0].partition(b";")[2]
    accepted = b"application/json" + (b";" + parameters if parameters else b"")
    scope["headers"] = [(k, v) for k, v in headers if k.lower() != b"content-type"] + [(b"content-type", accepted)]
    return None


def _wants_graphql_response(accept: bytes | None) -> bool:
    """The Accept header prefers ``application/graphql-response+json`` (or ranks it as high as
    ``application/json``): GraphQL over HTTP's media type and status codes. Else ``application/json``."""
    if not accept:
        return False
    weights: dict[str, float] = {}
    for part in accept.decode("latin-1").lower().split(","):
        media, *parameters = part.split(";")
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[media.strip()] = max(weight, weights.get(media.strip(), 0.0))
    ours = weights.get(GRAPHQL_RESPONSE, 0.0)
    return ours > 0 and ours >= weights.get("application/json", 0.0)


def _as_graphql_response(send: Send, scope: Scope) -> Send:
    """Answers in ``application/graphql-response+json``; 400 for a request that was not executed."""
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-type"]
            kind = dict(message.get("headers", [])).get(b"content-type", b"")
            if kind.startswith(b"application/json"):
                kind = GRAPHQL_RESPONSE.encode() + b"; charset=utf-8"
            status = 400 if scope.get(_REQUEST_ERROR) else message["status"]
            message = {**message, "status": status, "headers": [*headers, (b"content-type", kind)]}
        await send(message)

    return wrapped


def _too_large(limit: int) -> Response:
    return _graphql_error(413, f"the request body exceeds {limit} bytes", "BODY_TOO_LARGE")


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _BodyTooLarge()
        return message

    return wrapped


class _BodyTooLarge(Exception):
    pass


def query_routes(
    spec: GraphQLSpec,
    views: ViewStore,
    store: EventLog | None = None,
    *,
    options: QueryApiOptions | None = None,
    metrics: Metrics | None = None,
    authenticator: Authenticator | None = None,
    breaker: CircuitBreaker | None = None,
    tracer: Tracer | None = None,
    watch: PositionWatch | None = None,
) -> list[BaseRoute]:
    """``/graphql`` (GET and POST), and ``/graphql/explorer`` when enabled, to mount beside other routes
    (the embedded mode does).

    Without ``authenticator`` every caller is anonymous (and passes every ``requires``).
    With ``breaker``, every read-model call goes through it, and while it is open
    requests are answered 503 at once. With ``watch``, read-your-writes waits on it (no polling), and
    a spec with a ``subscription`` type is also served over WebSocket on ``/graphql``."""
    return _graphql_routes(spec, views, store, options=options, metrics=metrics, authenticator=authenticator,
                           breaker=breaker, tracer=tracer, watch=watch)[1]


def _graphql_routes(spec: GraphQLSpec, views: ViewStore, store: EventLog | None, *, options: QueryApiOptions | None,
                    metrics: Metrics | None, authenticator: Authenticator | None, breaker: CircuitBreaker | None,
                    tracer: Tracer | None, watch: PositionWatch | None) -> tuple[ASGIApp, list[BaseRoute]]:
    """``query_routes``, and the app answering ``GET`` and ``POST /graphql`` (routed there)."""
    options = options or QueryApiOptions()
    schema = build_schema(spec.query, options, spec.projections_by_field, metrics, tracer=tracer,
                          subscription=spec.subscription)
    api = _QueryApi(schema, views, store, options, authenticator, breaker, watch, metrics)
    graphql = _Guard(api, options.max_body_bytes)
    routes: list[BaseRoute] = [Route("/graphql", graphql, methods=["GET", "POST"])]
    if spec.subscription is not None:
        routes.append(WebSocketRoute("/graphql", api))
    if options.explorer:
        routes.extend(explorer_routes("/graphql"))
    return graphql, routes


class _GraphQLFront:
    """``GET`` and ``POST /graphql`` handed to the GraphQL app at once, ahead of Starlette's middleware and
    router (matching the route and wrapping ``send`` twice cost about a tenth of a kept answer's CPU); any
    other request goes to ``app``. An error nothing handled reaches the edge: logged, answered 500."""

    def __init__(self, graphql: ASGIApp, app: ASGIApp) -> None:
        self._graphql, self._app = graphql, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"] == "/graphql" and scope["method"] in _FRONT_METHODS
                and not scope.get("root_path")):
            await self._graphql(scope, receive, send)
        else:
            await self._app(scope, receive, send)


_FRONT_METHODS = frozenset({"GET", "POST"})  # the route's (HEAD goes the router's way, as before)


def create_query_app(
    spec: GraphQLSpec,
    views: ViewStore,
    store: EventLog | None = None,
    *,
    options: QueryApiOptions | None = None,
    metrics: Metrics | None = None,
    authenticator: Authenticator | None = None,
    breaker: CircuitBreaker | None = None,
    tracer: Tracer | None = None,
    watch: PositionWatch | None = None,
) -> Starlette:
    """The query API: ``/graphql``, ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.

    Without ``metrics``, a fresh registry that also exports the projections' positions and lags.
    Without ``authenticator``, every caller is anonymous (the library default; the CLI passes one).
    """
    options = options or QueryApiOptions()
    if metrics is None:
        metrics = Metrics()
        if store is not None:
            metrics.watch_projections(store, views)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    graphql, routes = _graphql_routes(spec, views, store, options=options, metrics=metrics,
                                      authenticator=authenticator, breaker=breaker, tracer=tracer, watch=watch)
    app = EdgeApp(lifespan=_closing(watch), routes=[  # correlation ids on every response (framework.http.edge)
        *routes,
        Route("/healthz", healthz),
        ready_route(readiness_checks(views, store, options), options.ready_timeout_seconds),
        metrics_route(metrics),
    ], exception_handlers={404: _routing_error, 405: _routing_error},
        front=lambda stack: _GraphQLFront(graphql, stack))
    # No redirect of `/graphql/` to `/graphql`: Starlette builds its location from the Host header.
    app.router.redirect_slashes = False
    return app


def _closing(watch: PositionWatch | None) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan stopping the watch's listener when the server stops."""
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if watch is not None:
                await watch.close()

    return lifespan


async def _routing_error(_: Request, error: Exception) -> Response:
    """An unknown path or method, answered in the GraphQL error shape (not Starlette's plain text)."""
    status = error.status_code if isinstance(error, StarletteHTTPException) else 404
    message = "no such path: the query API serves /graphql" if status == 404 else "method not allowed"
    response = _graphql_error(status, message, _request_code(status))
    if isinstance(error, StarletteHTTPException) and error.headers:
        response.headers.update(error.headers)  # Allow, for a 405
    return response


def readiness_checks(views: ViewStore, store: EventLog | None, options: QueryApiOptions) -> dict[str, Check]:
    """The read models answer; with the store, no active projection is stalled or lagging too far."""
    checks = {"read_models": views_check(views)}
    if store is not None:
        checks["event_store"] = store_check(store)
        checks["projections"] = projections_check(store, views, options.ready_max_lag_seconds)
    return checks
