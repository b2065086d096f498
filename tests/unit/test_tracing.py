"""Tracing on the in-process adapters: command spans, trace context in event metadata, relay and
projection spans joined to the command's trace, and configuration from the ``OTEL_*`` variables."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from uuid import uuid4

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity
from example_app.handlers import router as example_router
from framework import CommandBus, CommandContext, ConfigurationError
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.nats import message_for, notification_from
from framework.adapters.otel import OtelTracer, exporter_names, tracer_from_env
from framework.events import EventMetadata
from framework.http.write_api import create_write_app
from framework.mapper import from_stored, stored_trace_context
from framework.runner import run_relay
from framework.store import Notification, StoredEvent
from framework.tracing import NULL_TRACER, TracedNotification, trace_context_of
from framework.worker import ProjectionWorker
from projections.holdings import Holding, HoldingsProjector

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[OtelTracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracer(provider)
    provider.shutdown()


def spans_named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def open_account(bus: CommandBus, number: str = "ACC-1", context: CommandContext | None = None) -> None:
    bus.execute(OpenAccount(account_number=number, holder_name="Ada"), context)


# --- metadata ------------------------------------------------------------------------------------


def test_events_stored_before_trace_context_existed_still_load(memory_store: MemoryEventStore) -> None:
    open_account(CommandBus(example_router, memory_store))
    stored = memory_store.read_all(0, 10)[0]
    document = json.loads(stored.state)
    assert "trace_context" not in document["meta"]  # absent, not null: old and new untraced events alike
    document["meta"] = {k: v for k, v in document["meta"].items() if k != "trace_context"}
    old = StoredEvent(stored.originator_id, stored.originator_version, stored.topic, json.dumps(document).encode())
    assert from_stored(old).metadata.trace_context is None
    assert stored_trace_context(old) is None


def test_trace_context_round_trips_through_the_stored_document() -> None:
    metadata = EventMetadata(trace_context={"traceparent": PARENT, "tracestate": "k=v"})
    assert EventMetadata.model_validate(metadata.model_dump(mode="json")) == metadata
    with pytest.raises(ValueError):
        EventMetadata.model_validate({"trace_context": {"traceparent": 1.5j}})


# --- the command span ---------------------------------------------------------------------------


def test_a_command_is_one_span_whose_context_every_event_stores(
    memory_store: MemoryEventStore, tracer: OtelTracer, exporter: InMemorySpanExporter
) -> None:
    bus = CommandBus(example_router, memory_store, tracer=tracer)
    open_account(bus)
    open_account(bus, "ACC-2")
    first, second = spans_named(exporter, "command ")
    assert first.name == second.name == "command OpenAccount"
    assert first.parent is None
    assert first.attributes is not None
    assert first.attributes["eventfold.command"] == "OpenAccount"
    assert first.attributes["eventfold.outcome"] == "ok"
    assert first.attributes["eventfold.version"] == 1
    assert first.attributes["eventfold.position"] == 1
    assert "eventfold.aggregate_id" in first.attributes
    stored = memory_store.read_all(0, 10)
    assert [from_stored(s).metadata.trace_context for s in stored] == [
        {"traceparent": traceparent_of(first)}, {"traceparent": traceparent_of(second)}]


def test_a_failed_command_span_records_the_outcome_and_error(
    memory_store: MemoryEventStore, tracer: OtelTracer, exporter: InMemorySpanExporter
) -> None:
    bus = CommandBus(example_router, memory_store, tracer=tracer)
    open_account(bus)
    with pytest.raises(Exception):  # noqa: B017 - whichever domain error, the span must say it failed
        open_account(bus)
    failed = spans_named(exporter, "command ")[-1]
    assert failed.attributes is not None and failed.attributes["eventfold.outcome"] != "ok"
    assert not failed.status.is_ok and failed.events[0].name == "exception"


def test_the_command_span_continues_the_callers_trace(
    memory_store: MemoryEventStore, tracer: OtelTracer, exporter: InMemorySpanExporter
) -> None:
    client = TestClient(create_write_app(CommandBus(example_router, memory_store, tracer=tracer)))
    response = client.post("/commands/OpenAccount", json={"account_number": "ACC-1", "holder_name": "Ada"},
                           headers={"traceparent": PARENT, "tracestate": "vendor=1"})
    assert response.status_code == 200
    (span,) = spans_named(exporter, "command ")
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    stored = from_stored(memory_store.read_all(0, 1)[0]).metadata.trace_context
    assert stored == {"traceparent": traceparent_of(span), "tracestate": "vendor=1"}


def test_with_tracing_off_a_callers_trace_context_is_still_stored(memory_store: MemoryEventStore) -> None:
    client = TestClient(create_write_app(CommandBus(example_router, memory_store)))
    client.post("/commands/OpenAccount", json={"account_number": "ACC-1", "holder_name": "Ada"},
                headers={"traceparent": PARENT})
    client.post("/commands/OpenAccount", json={"account_number": "ACC-2", "holder_name": "Bob"},
                headers={"traceparent": "not-a-traceparent"})  # invalid: ignored, as W3C says
    first, second = (from_stored(s).metadata.trace_context for s in memory_store.read_all(0, 10))
    assert first == {"traceparent": PARENT}
    assert second is None


# --- relay and projection ------------------------------------------------------------------------


def test_relay_and_projection_spans_join_the_command_trace(
    memory_store: MemoryEventStore, tracer: OtelTracer, exporter: InMemorySpanExporter
) -> None:
    bus = CommandBus(example_router, memory_store, tracer=tracer)
    open_account(bus)
    events = MemoryBus()

    async def relay_once() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_relay(memory_store, MemoryPublisher(events), stop, poll_seconds=0.05,
                                             tracer=tracer))
        while not spans_named(exporter, "relay publish"):
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(relay_once())
    views = MemoryViewStore()
    worker = ProjectionWorker(HoldingsProjector(), views, memory_store, tracer=tracer)

    async def deliver() -> None:
        consumer = MemoryConsumer(events, worker.name, deliver_all=True)
        delivery = await consumer.fetch(10, 1.0)
        assert delivery.notifications and trace_context_of(delivery.notifications[0]) is not None
        worker.apply(delivery.notifications)

    asyncio.run(deliver())
    (command,) = spans_named(exporter, "command ")
    (relay,) = spans_named(exporter, "relay publish")
    (project,) = spans_named(exporter, "project ")
    assert relay.name == "relay publish AccountOpened"
    assert project.name == "project holdings AccountOpened"
    assert relay.parent is not None and command.context is not None and relay.context is not None
    assert relay.parent.span_id == command.context.span_id
    assert project.parent is not None and project.parent.span_id == relay.context.span_id
    assert {s.context.trace_id for s in (command, relay, project) if s.context} == {command.context.trace_id}


def test_from_the_store_a_projection_span_is_the_child_of_the_command_span(
    memory_store: MemoryEventStore, tracer: OtelTracer, exporter: InMemorySpanExporter
) -> None:
    open_account(CommandBus(example_router, memory_store, tracer=tracer))
    worker = ProjectionWorker(HoldingsProjector(), MemoryViewStore(), memory_store, tracer=tracer)
    worker.catch_up()
    (command,) = spans_named(exporter, "command ")
    (project,) = spans_named(exporter, "project ")
    assert project.parent is not None and command.context is not None
    assert project.parent.span_id == command.context.span_id
    assert project.attributes is not None and project.attributes["eventfold.position"] == 1


def test_events_without_trace_context_project_fine(
    memory_store: MemoryEventStore, tracer: OtelTracer, exporter: InMemorySpanExporter
) -> None:
    bus = CommandBus(example_router, memory_store)  # written untraced
    bus.execute(RegisterSecurity(isin="US0378331005", name="Apple", currency="USD"))
    open_account(bus)
    bus.execute(CreditHoldings(account_number="ACC-1", isin="US0378331005", quantity=5))
    views = MemoryViewStore()
    worker = ProjectionWorker(HoldingsProjector(), views, memory_store, tracer=tracer)
    worker.apply(memory_store.read_all(0, 10))
    assert worker.position == 3
    (holding,) = views.get_many("holdings", Holding, [("ACC-1", "US0378331005")])
    assert holding is not None and holding.quantity == 5
    projected = spans_named(exporter, "project ")
    assert projected and all(s.parent is None and s.status.is_ok for s in projected)  # new roots, no error


def test_a_handler_error_is_recorded_on_its_projection_span(
    memory_store: MemoryEventStore, tracer: OtelTracer, exporter: InMemorySpanExporter
) -> None:
    open_account(CommandBus(example_router, memory_store, tracer=tracer))
    projector = HoldingsProjector()
    projector.on_error = "dead_letter"  # type: ignore[misc]
    worker = ProjectionWorker(projector, MemoryViewStore(), memory_store, tracer=tracer,
                              sleep=lambda _: None)

    def explode(*_: object) -> None:
        raise RuntimeError("boom")

    projector.apply = explode  # type: ignore[method-assign]
    worker.catch_up()
    failed = spans_named(exporter, "project ")
    assert failed and all(not s.status.is_ok for s in failed)


# --- NATS headers ---------------------------------------------------------------------------------


def _notification(trace: dict[str, str] | None) -> Notification:
    meta = {"event_id": str(uuid4()), "recorded_at": "2024-01-01T00:00:00Z"}
    if trace:
        meta["trace_context"] = trace  # type: ignore[assignment]
    state = json.dumps({"v": 1, "agg": "Account", "meta": meta, "data": {}}).encode()
    return Notification(id=7, originator_id=uuid4(), originator_version=1, topic="AccountOpened", state=state)


def test_nats_headers_carry_the_w3c_trace_context_both_ways() -> None:
    stored = _notification({"traceparent": PARENT, "tracestate": "a=b"})
    _, headers = message_for(stored, "p")
    assert headers["traceparent"] == PARENT and headers["tracestate"] == "a=b"
    back = notification_from(headers, stored.state)
    assert isinstance(back, TracedNotification)
    assert trace_context_of(back) == {"traceparent": PARENT, "tracestate": "a=b"}

    relayed = TracedNotification(originator_id=stored.originator_id, originator_version=1, topic=stored.topic,
                                 state=stored.state, id=7, trace_context={"traceparent": "00-" + "1" * 32 + "-"
                                                                          + "2" * 16 + "-01"})
    assert message_for(relayed, "p")[1]["traceparent"].startswith("00-111")  # the relay's span wins


def test_nats_messages_without_trace_context_stay_plain() -> None:
    plain = _notification(None)
    _, headers = message_for(plain, "p")
    assert "traceparent" not in headers
    back = notification_from(headers, plain.state)
    assert back is not None and not isinstance(back, TracedNotification) and trace_context_of(back) is None


# --- configuration --------------------------------------------------------------------------------


def test_without_otel_variables_tracing_is_off_and_records_nothing(memory_store: MemoryEventStore) -> None:
    tracer, provider = tracer_from_env({}, "eventfold-write-api")
    assert tracer is NULL_TRACER and provider is None and not tracer.enabled
    bus = CommandBus(example_router, memory_store, tracer=tracer)
    open_account(bus)
    worker = ProjectionWorker(HoldingsProjector(), MemoryViewStore(), memory_store, tracer=tracer)
    worker.catch_up()
    assert worker.position == 1
    assert from_stored(memory_store.read_all(0, 1)[0]).metadata.trace_context is None


@pytest.mark.parametrize(("env", "expected"), [
    ({}, []),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": "Console, otlp"}, ["console", "otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
])
def test_exporters_are_chosen_by_the_standard_variables(env: dict[str, str], expected: list[str]) -> None:
    assert exporter_names(env) == expected


def test_an_unknown_exporter_or_protocol_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        tracer_from_env({"OTEL_TRACES_EXPORTER": "zipkin"}, "eventfold-relay")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"):
        tracer_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "eventfold-relay")


def test_the_service_name_defaults_to_the_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    tracer, provider = tracer_from_env({"OTEL_TRACES_EXPORTER": "console"}, "eventfold-relay")
    assert tracer.enabled and provider is not None
    assert provider.resource.attributes["service.name"] == "eventfold-relay"
    provider.shutdown()
    _, named = tracer_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "billing"}, "eventfold-relay")
    assert named is not None and named.resource.attributes["service.name"] == "billing"
    named.shutdown()


def test_console_export_prints_spans(capsys: pytest.CaptureFixture[str], memory_store: MemoryEventStore) -> None:
    tracer, provider = tracer_from_env({"OTEL_TRACES_EXPORTER": "console"}, "eventfold-dev")
    assert provider is not None
    open_account(CommandBus(example_router, memory_store, tracer=tracer))
    provider.shutdown()
    assert '"name": "command OpenAccount"' in capsys.readouterr().out


def test_the_jetstream_settings_are_the_streams_part_of_settings() -> None:
    from framework.adapters.nats import JetStreamSettings
    from framework.settings import Settings

    env = {"EVENTFOLD_NATS_URL": "nats://a:4222", "EVENTFOLD_STREAM": "s", "EVENTFOLD_STREAM_STORAGE": "memory"}
    settings = JetStreamSettings.from_settings(Settings.from_env(env))
    assert (settings.servers, settings.stream, settings.storage) == (("nats://a:4222",), "s", "memory")
    assert JetStreamSettings.from_env(env) == settings
    assert JetStreamSettings.from_settings(Settings()) == JetStreamSettings()
