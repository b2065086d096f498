"""Internal commands: no route for clients, yet the bus runs them for process managers, from their
events, their deadlines and a dead letter's retry, with idempotency keys and tracing as any other."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from uuid import UUID, uuid4

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from framework import Command, CommandBus, UnitOfWork
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.otel import OtelTracer
from framework.dispatcher import Dispatcher
from framework.http.write_api import create_write_app
from framework.projector import HandlerContext, ProcessManager, on
from framework.views import Deadline
from framework.worker import ProjectionWorker

from .domain import Counter, CounterStarted, append_events, counter_router

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


class Nudge(Command, internal=True):
    """Only the process below sends it."""

    counter_id: UUID
    by: int


def nudge(command: Nudge, unit: UnitOfWork) -> Counter:
    counter = unit.get(Counter, command.counter_id)
    counter.increment(command.by)
    return counter


class Nudger(ProcessManager):
    """A started counter is nudged by 1 at once and by 100 a minute later; ``ghost`` ones nudge a
    counter that does not exist (refused for good, parked)."""

    name = "nudger"
    now: ClassVar[datetime] = START

    @on(CounterStarted)
    def started(self, event: CounterStarted, context: HandlerContext) -> None:
        target = uuid4() if event.label == "ghost" else context.envelope.aggregate_id
        context.issue(Nudge(counter_id=target, by=1))
        context.schedule("later", self.now + timedelta(minutes=1), data={"target": str(target)})

    def on_deadline(self, deadline: Deadline, context: HandlerContext) -> None:
        context.issue(Nudge(counter_id=UUID(deadline.data["target"]), by=100))


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def bus(exporter: InMemorySpanExporter) -> Iterator[CommandBus]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    router = counter_router()
    router.handles(nudge)
    yield CommandBus(router, MemoryEventStore(), tracer=OtelTracer(provider))
    provider.shutdown()


def total(store: MemoryEventStore, counter_id: UUID) -> int:
    counter = UnitOfWork(store).get(Counter, counter_id)
    return counter.total


def test_the_write_api_has_no_route_for_it_but_the_process_runs_it_once(
    bus: CommandBus, exporter: InMemorySpanExporter
) -> None:
    store = bus.store
    assert isinstance(store, MemoryEventStore)
    with TestClient(create_write_app(bus), raise_server_exceptions=False) as client:
        refused = client.post("/commands/Nudge", json={"counter_id": str(uuid4()), "by": 1})
        assert (refused.status_code, refused.json()["code"]) == (404, "unknown_command")
        assert "/commands/Nudge" not in client.get("/openapi.json").json()["paths"]
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"))
    views = MemoryViewStore()
    worker = ProjectionWorker(Nudger(), views, store, bus)
    worker.catch_up()
    dispatcher = Dispatcher(worker, bus, clock=lambda: START)
    assert dispatcher.run_once() == 1
    assert total(store, counter_id) == 1

    # Redelivered from scratch: the same idempotency key, so the command is replayed, not run again.
    again = ProjectionWorker(Nudger(), MemoryViewStore(), store, bus)
    again.catch_up()
    assert Dispatcher(again, bus, clock=lambda: START).run_once() == 1
    assert total(store, counter_id) == 1
    spans = [s for s in exporter.get_finished_spans() if s.name == "command Nudge"]
    assert [s.attributes["eventfold.outcome"] for s in spans if s.attributes] == ["ok", "replayed"]


def test_a_deadline_issues_it_through_the_bus(bus: CommandBus) -> None:
    store = bus.store
    assert isinstance(store, MemoryEventStore)
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"))
    worker = ProjectionWorker(Nudger(), MemoryViewStore(), store, bus)
    worker.catch_up()
    assert Dispatcher(worker, bus, clock=lambda: START).run_once() == 1
    later = Dispatcher(worker, bus, clock=lambda: START + timedelta(minutes=2))
    assert later.run_once() == 2  # the deadline fired, then its command ran
    assert total(store, counter_id) == 101


def test_a_refused_one_is_parked_and_a_retry_sends_it_again(bus: CommandBus) -> None:
    store = bus.store
    assert isinstance(store, MemoryEventStore)
    append_events(store, Counter, uuid4(), CounterStarted(label="ghost"))
    views = MemoryViewStore()
    worker = ProjectionWorker(Nudger(), views, store, bus)
    worker.catch_up()
    dispatcher = Dispatcher(worker, bus, clock=lambda: START)
    assert dispatcher.run_once() == 1
    (letter,) = views.dead_letters("nudger")
    assert letter.event_name == "command Nudge" and "does not exist" in letter.error
    assert letter.command is not None
    target = UUID(letter.command["payload"]["counter_id"])
    append_events(store, Counter, target, CounterStarted(label="late"))  # what it was waiting for
    assert views.request_retry(letter.id or 0)
    assert worker.retry_dead_letters() == 1
    assert dispatcher.run_once() == 1
    assert views.dead_letters("nudger") == [] and total(store, target) == 1
