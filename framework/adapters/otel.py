"""The tracing port on OpenTelemetry: the only module of Eventfold that imports its SDK.

``tracer_from_env`` reads the standard variables. With neither
``OTEL_TRACES_EXPORTER`` nor an ``OTEL_EXPORTER_OTLP_*`` endpoint set, tracing
is off (``NULL_TRACER``: no SDK objects, no spans). ``OTEL_TRACES_EXPORTER`` is a
comma-separated list of ``console`` (spans printed as JSON on stdout), ``otlp``
(OTLP over HTTP/protobuf; the exporter reads ``OTEL_EXPORTER_OTLP_*`` itself) and
``none``. ``OTEL_SERVICE_NAME`` defaults to the role's name; ``OTEL_SDK_DISABLED=true``
turns tracing off; ``OTEL_TRACES_SAMPLER`` and ``OTEL_RESOURCE_ATTRIBUTES`` are
honoured by the SDK. Trace context is injected and extracted with the W3C
``traceparent``/``tracestate`` propagator.

    tracer = configure_tracing("eventfold-relay", dict(settings.otel))   # once per process, in the CLI
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind as OtelSpanKind
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from framework.errors import ConfigurationError
from framework.tracing import NULL_TRACER, AttributeValue, Span, SpanKind, TraceContext, Tracer

__all__ = ["OtelSpan", "OtelTracer", "configure_tracing", "exporter_names", "tracer_from_env"]

_PROPAGATOR = TraceContextTextMapPropagator()
_KINDS = {
    "internal": OtelSpanKind.INTERNAL,
    "server": OtelSpanKind.SERVER,
    "producer": OtelSpanKind.PRODUCER,
    "consumer": OtelSpanKind.CONSUMER,
}
_EXPORTERS = ("console", "otlp", "none")


class OtelSpan:
    """An OpenTelemetry span behind the core's ``Span`` protocol."""

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._carrier: dict[str, str] | None = None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def record_error(self, error: BaseException) -> None:
        self._span.record_exception(error)
        self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))

    def carrier(self) -> dict[str, str] | None:
        if self._carrier is None:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
            self._carrier = carrier or None
        return self._carrier

    def end(self) -> None:
        self._span.end()


class OtelTracer:
    """``Tracer`` on an OpenTelemetry tracer provider (the global one unless given)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer("eventfold")

    @property
    def enabled(self) -> bool:
        return True

    def start_span(
        self,
        name: str,
        *,
        parent: TraceContext | None = None,
        kind: SpanKind = "internal",
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Span:
        context = _PROPAGATOR.extract(parent) if parent else None
        return OtelSpan(self._tracer.start_span(name, context=context, kind=_KINDS[kind], attributes=attributes))


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The span exporters the variables ask for ([]: tracing off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in _EXPORTERS]
    if unknown:
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER={raw!r}: {unknown[0]!r} is not one of {', '.join(_EXPORTERS)}")
    return [n for n in names if n != "none"]


def tracer_from_env(env: Mapping[str, str], service_name: str) -> tuple[Tracer, TracerProvider | None]:
    """The tracer the ``OTEL_*`` variables describe, and its provider (None when tracing is off)."""
    names = exporter_names(env)
    if not names:
        return NULL_TRACER, None
    provider = TracerProvider(resource=_resource(env, service_name))
    for name in names:
        provider.add_span_processor(_processor(name, env))
    return OtelTracer(provider), provider


def configure_tracing(service_name: str, env: Mapping[str, str]) -> Tracer:
    """Set up tracing for this process from the ``OTEL_*`` variables (``Settings.otel``); call once, at start."""
    tracer, provider = tracer_from_env(env, service_name)
    if provider is not None:
        trace.set_tracer_provider(provider)  # what the application's own instrumentation uses too
    return tracer


def _resource(env: Mapping[str, str], service_name: str) -> Resource:
    named = env.get("OTEL_SERVICE_NAME", "").strip()
    if not named and "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        return Resource.create()
    return Resource.create({SERVICE_NAME: named or service_name})


def _processor(name: str, env: Mapping[str, str]) -> SpanProcessor:
    if name == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout))  # stdout as it is now
    return BatchSpanProcessor(_otlp_exporter(env))


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if protocol != "http/protobuf":
        key = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") \
            else "OTEL_EXPORTER_OTLP_PROTOCOL"
        raise ConfigurationError(f"{key}={protocol!r}: Eventfold exports traces over http/protobuf only")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
