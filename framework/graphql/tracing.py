"""Spans on the query path: one per GraphQL operation, with children for what takes time in it.

``build_schema`` installs ``TracedOperations`` only when its tracer is enabled: with
tracing off the schema has no tracing extension, and a request costs nothing more.

- ``query`` (kind server; ``GraphQL Operation`` when the document does not parse):
  the child of the caller's ``traceparent``/``tracestate``, else the root of a new
  trace. Named by the operation's type, as the OpenTelemetry GraphQL conventions
  ask: the operation name is chosen by clients, so it is an attribute, not part of
  the name. Attributes ``graphql.operation.type``, ``graphql.operation.name`` and
  ``graphql.document`` with every literal value replaced by ``?`` (values may be
  personal data; variables are never recorded). A failed parse or validation, or a
  resolver's error, is recorded (the first one) with its code in
  ``eventfold.graphql.error_code``.
- ``read-your-writes wait``: the wait for ``Eventfold-Position``, with
  ``eventfold.consistency.requested``, ``.reached``, ``.projections`` and ``.lowest``.
- ``read <function>``: each read-model read a resolver or a DataLoader batch makes
  (not the wait's polls), with ``eventfold.projection`` when the read names one.

No span per resolver: that would cost more than most resolvers do. The operation's
span starts once the document is parsed, when its type is known (a ``Span`` cannot
be renamed), so parsing, which is cached for repeated documents, is outside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from graphql import (
    DocumentNode,
    EnumValueNode,
    FloatValueNode,
    GraphQLError,
    IntValueNode,
    OperationDefinitionNode,
    StringValueNode,
    Visitor,
    parse,
    print_ast,
    visit,
)
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from framework.tracing import AttributeValue, Span, TraceContext, Tracer, trace_context_from_headers, traced

__all__ = ["ErrorCode", "ReadSpans", "TracedOperations", "hide_literals", "tracing_extensions"]

ErrorCode = Callable[[GraphQLError], str]
"""The ``extensions.code`` a client sees for an error."""

_UNNAMED = "GraphQL Operation"  # the conventions' name when the type is unknown
_DOCUMENT_MAX = 8192
# Strawberry answers these with a 400 before there is any GraphQL result.
_REQUEST_ERRORS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)


def tracing_extensions(tracer: Tracer | None, error_code: ErrorCode) -> list[Callable[[], SchemaExtension]]:
    """What a schema needs for tracing: nothing unless ``tracer`` records spans."""
    if tracer is None or not tracer.enabled:
        return []
    return [functools.partial(TracedOperations, tracer, error_code)]


class TracedOperations(SchemaExtension):
    """The span of one operation. First among the schema's extensions, so that it encloses theirs."""

    def __init__(self, tracer: Tracer, error_code: ErrorCode) -> None:
        super().__init__()
        self._tracer, self._error_code = tracer, error_code
        self._span: Span | None = None

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except (Exception, asyncio.CancelledError) as error:  # a syntax error, a refused request, a caller gone
            self._fail(error, self._code_of(error))
            raise
        else:
            errors = self._errors()
            if errors:
                self._fail(errors[0].original_error or errors[0], self._error_code(errors[0]))
        finally:
            self._started().end()

    def on_validate(self) -> Iterator[None]:
        self._started()  # parsed: the operation's type names the span
        yield

    def on_execute(self) -> Iterator[None]:
        from framework.graphql.app import QueryContext  # the app module builds schemas with this one

        context = self.execution_context.context
        if self._span is not None and isinstance(context, QueryContext):
            context.spans = ReadSpans(self._tracer, self._span.carrier())
        yield

    def _started(self) -> Span:
        if self._span is None:
            context = self.execution_context
            attributes = _operation_attributes(context.graphql_document, context.query, context.operation_name)
            kind = attributes.get("graphql.operation.type")
            self._span = self._tracer.start_span(
                str(kind or _UNNAMED), parent=_caller(context.context), kind="server", attributes=attributes)
        return self._span

    def _errors(self) -> Sequence[GraphQLError]:
        context = self.execution_context
        return context.pre_execution_errors or (context.result.errors if context.result else None) or []

    def _fail(self, error: BaseException, code: str | None) -> None:
        span = self._started()
        span.record_error(error)
        if code is not None:
            span.set_attribute("eventfold.graphql.error_code", code)

    def _code_of(self, error: BaseException) -> str | None:
        if isinstance(error, GraphQLError):
            return self._error_code(error)
        if isinstance(error, _REQUEST_ERRORS):
            return "BAD_REQUEST"
        if isinstance(error, Exception):
            return self._error_code(GraphQLError(str(error), original_error=error))
        return None  # cancelled: the caller went away, nothing was answered


def _caller(context: object) -> dict[str, str] | None:
    request = getattr(context, "request", None)
    return trace_context_from_headers(request.headers) if request is not None else None


def _operation_attributes(document: DocumentNode | None, query: str | None,
                          name: str | None) -> dict[str, AttributeValue]:
    if document is None:
        return {}
    attributes: dict[str, AttributeValue] = {}
    kind = _operation_type(document, name)
    if kind is not None:
        attributes["graphql.operation.type"] = kind
    if name:
        attributes["graphql.operation.name"] = name
    if query:
        attributes["graphql.document"] = _HIDDEN.of(query, document)
    return attributes


def _operation_type(document: DocumentNode, name: str | None) -> str | None:
    """The type of the operation that runs: the named one, else the first (None: no such operation)."""
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and (
                name is None or (definition.name is not None and definition.name.value == name)):
            return definition.operation.value
    return None


class _HideLiterals(Visitor):
    def enter_string_value(self, node: StringValueNode, *_: Any) -> EnumValueNode:
        return EnumValueNode(value="?")

    def enter_int_value(self, node: IntValueNode, *_: Any) -> EnumValueNode:
        return EnumValueNode(value="?")

    def enter_float_value(self, node: FloatValueNode, *_: Any) -> EnumValueNode:
        return EnumValueNode(value="?")


def hide_literals(query: str) -> str:
    """``query`` printed with every string and number literal as ``?`` (at most 8 KiB of it)."""
    return _hidden(parse(query, no_location=True))


def _hidden(document: DocumentNode) -> str:
    hidden = print_ast(visit(document, _HideLiterals()))  # visit returns an edited copy: ``document`` is unchanged
    return hidden if len(hidden) <= _DOCUMENT_MAX else hidden[:_DOCUMENT_MAX] + "…"


class _HiddenDocuments:
    """``hide_literals`` of the documents recently seen, by their text, from the document the operation
    already parsed (the schema's parse cache): a new document is parsed once, not once more for its span."""

    def __init__(self, maxsize: int = 128) -> None:  # clients send the same few documents over and over
        self._maxsize = maxsize
        self._by_text: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._lock = threading.Lock()  # a schema may also run operations in threads (execute_sync)

    def of(self, query: str, document: DocumentNode) -> str:
        """``document`` is ``query`` parsed (keyed by the text: hashing a document walks all of it)."""
        with self._lock:
            hidden = self._by_text.get(query)
            if hidden is not None:
                self._by_text.move_to_end(query)
                return hidden
        hidden = _hidden(document)
        with self._lock:
            self._by_text[query] = hidden
            if len(self._by_text) > self._maxsize:
                self._by_text.popitem(last=False)
        return hidden


_HIDDEN = _HiddenDocuments()


class ReadSpans:
    """Spans for one request's read-your-writes wait and read-model reads, children of its operation's
    span: ``QueryContext`` opens them around its reads and its wait when it has this."""

    def __init__(self, tracer: Tracer, parent: TraceContext | None) -> None:
        self._tracer, self._parent = tracer, parent

    def read(self, call: Callable[..., Any], args: tuple[Any, ...]) -> contextlib.AbstractContextManager[Span]:
        return traced(self._tracer, f"read {getattr(call, '__name__', 'call')}", parent=self._parent,
                      attributes=_read_attributes(args))

    @contextlib.contextmanager
    def wait(self, projections: Sequence[str], position: int) -> Iterator[Callable[[dict[str, Any]], None]]:
        """The wait's span; call what it yields with the wait's outcome."""
        with traced(self._tracer, "read-your-writes wait", parent=self._parent, attributes={
                "eventfold.consistency.requested": position,
                "eventfold.consistency.projections": ",".join(projections)}) as span:
            yield functools.partial(_describe_wait, span)


def _read_attributes(args: tuple[Any, ...]) -> dict[str, AttributeValue]:
    projection = next((a for a in args if isinstance(a, str)), None)  # reads name their projection first
    return {"eventfold.projection": projection} if projection is not None else {}


def _describe_wait(span: Span, outcome: dict[str, Any]) -> None:
    span.set_attribute("eventfold.consistency.reached", bool(outcome["reached"]))
    if outcome["positions"]:
        span.set_attribute("eventfold.consistency.lowest", min(outcome["positions"].values()))
