"""The tracing hook of the core: spans without a tracing library.

The command bus, the relay loop and the projection worker open spans through
the small ``Tracer`` protocol; ``framework.adapters.otel`` implements it with
OpenTelemetry and is chosen by the CLI from the ``OTEL_*`` variables.
``NULL_TRACER`` (the default) records nothing and costs a method call.

Trace context travels as a W3C carrier, a ``{"traceparent": ..., "tracestate": ...}``
dict: in ``CommandContext.trace_context`` (the context a command runs in), in
every event's ``EventMetadata.trace_context`` (the command span that wrote it),
and on the bus as a ``TracedNotification`` (the relay's span for that event,
sent as NATS headers). A projection's span is the child of the bus's context
when the delivery carries one, else of the event's stored one.

The HTTP APIs take the caller's context from its ``traceparent``/``tracestate``
headers with ``trace_context_from_headers``: the write API's command span and the
query API's GraphQL span (``framework.graphql.tracing``) are its children.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from framework.store import Notification

__all__ = [
    "NULL_SPAN",
    "NULL_TRACER",
    "AttributeValue",
    "NullSpan",
    "NullTracer",
    "Span",
    "SpanKind",
    "TraceContext",
    "TracedNotification",
    "Tracer",
    "trace_context_from_headers",
    "trace_context_of",
    "traced",
]

AttributeValue = str | int | float | bool
SpanKind = Literal["internal", "server", "producer", "consumer"]
TraceContext = Mapping[str, str]
"""A W3C trace-context carrier: ``traceparent`` and, optionally, ``tracestate``."""

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_TRACESTATE_MAX = 512


class Span(Protocol):
    """One timed operation of a trace."""

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Describe the operation (``eventfold.*`` keys)."""

    def record_error(self, error: BaseException) -> None:
        """Mark the span failed by ``error``."""

    def carrier(self) -> dict[str, str] | None:
        """This span's W3C trace context, to be stored or sent on (None: not traced)."""

    def end(self) -> None:
        """Finish the span (once)."""


class Tracer(Protocol):
    """Opens spans; ``enabled`` is False when nothing would be recorded."""

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded at all (callers skip preparing attributes when not)."""

    def start_span(
        self,
        name: str,
        *,
        parent: TraceContext | None = None,
        kind: SpanKind = "internal",
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Span:
        """Start a span, the child of ``parent`` (a W3C carrier) or else of the current span."""


class NullSpan:
    """Records nothing."""

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def record_error(self, error: BaseException) -> None:
        pass

    def carrier(self) -> dict[str, str] | None:
        return None

    def end(self) -> None:
        pass


NULL_SPAN: Span = NullSpan()


class NullTracer:
    """Tracing switched off: every span is ``NULL_SPAN``."""

    @property
    def enabled(self) -> bool:
        return False

    def start_span(
        self,
        name: str,
        *,
        parent: TraceContext | None = None,
        kind: SpanKind = "internal",
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Span:
        return NULL_SPAN


NULL_TRACER: Tracer = NullTracer()


@contextlib.contextmanager
def traced(
    tracer: Tracer,
    name: str,
    *,
    parent: TraceContext | None = None,
    kind: SpanKind = "internal",
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """A span around a block: an exception leaving the block is recorded on it, then re-raised."""
    span = tracer.start_span(name, parent=parent, kind=kind, attributes=attributes)
    try:
        yield span
    except BaseException as error:
        span.record_error(error)
        raise
    finally:
        span.end()


@dataclass(frozen=True)
class TracedNotification(Notification):
    """A notification on the bus with the trace context its publisher sent along."""

    trace_context: TraceContext | None = None


def trace_context_of(notification: Notification) -> TraceContext | None:
    """The trace context a delivered notification carries (None: a plain one)."""
    return notification.trace_context if isinstance(notification, TracedNotification) else None


def trace_context_from_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """A caller's W3C trace context from its request headers (lower-case names, or a case-insensitive
    mapping); None when ``traceparent`` is missing or malformed, so that a new trace starts."""
    parent = headers.get("traceparent", "").strip()
    if not _TRACEPARENT.match(parent) or not _valid_ids(parent):
        return None
    state = headers.get("tracestate", "").strip()
    if state and len(state) <= _TRACESTATE_MAX and state.isascii():
        return {"traceparent": parent, "tracestate": state}
    return {"traceparent": parent}


def _valid_ids(traceparent: str) -> bool:
    """W3C: version ff is invalid, and so are an all-zero trace id or parent id."""
    version, trace_id, parent_id, _ = traceparent.split("-")
    return version != "ff" and trace_id != "0" * 32 and parent_id != "0" * 16
