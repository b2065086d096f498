"""One trace from the write API over real HTTP, through the relay on real NATS JetStream, to a
projection worker: the spans share one trace id and the projection's parent chain reaches the command.

The write API (uvicorn in a thread) writes to PostgreSQL; the relay and the projection loop run on
their own asyncio loop in process, so one in-memory span exporter sees every role's spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.http import ServerThread
from support.postgres import PgDatabase

from example_app.handlers import router as example_router
from framework import CommandBus
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.nats import JetStreamConsumer, JetStreamPublisher, JetStreamSettings, connect
from framework.adapters.otel import OtelTracer
from framework.adapters.postgres import PostgresEventStore
from framework.http.write_api import create_write_app
from framework.runner import run_projection, run_relay
from framework.store import EventStore
from framework.tracing import Tracer
from framework.worker import ProjectionWorker
from projections.holdings import Holding, HoldingsProjector

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


@pytest.fixture
def store(pg_database: PgDatabase) -> Iterator[PostgresEventStore]:
    with pg_database.fresh_schema("tracing") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=4))
        store.create_schema()
        try:
            yield store
        finally:
            store.close()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracer(provider)
    provider.shutdown()


class Roles:
    """The relay and one projection loop on an asyncio loop in a thread."""

    def __init__(self, store: EventStore, worker: ProjectionWorker, jetstream: JetStreamSettings,
                 tracer: Tracer) -> None:
        self.store, self.worker, self.jetstream, self.tracer = store, worker, jetstream, tracer
        self.errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracing-roles", daemon=True)

    def __enter__(self) -> Roles:
        self._thread.start()
        assert self._ready.wait(30), "the roles did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()
        assert not self.errors, f"a role failed: {self.errors[0]!r}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            self.errors.append(error)
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        connection = await connect(self.jetstream)
        try:
            await connection.ensure_stream()
            consumer = JetStreamConsumer(connection, self.worker.name)
            await consumer.bind()  # before anything is published: the worker takes it from the stream
            self._ready.set()
            results = await asyncio.gather(
                run_relay(self.store, JetStreamPublisher(connection), self._stop, poll_seconds=0.1,
                          tracer=self.tracer),
                run_projection(self.worker, consumer, self._stop, fetch_seconds=0.1),
                return_exceptions=True,
            )
            self.errors += [r for r in results if isinstance(r, BaseException)]
        finally:
            await connection.close()


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def parent_chain(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """Names of the span and its ancestors among ``spans``, nearest first."""
    by_id = {s.context.span_id: s for s in spans if s.context}
    chain = [span.name]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span.name)
    return chain


def test_one_trace_spans_write_api_relay_and_projection(
    store: PostgresEventStore, jetstream_settings: JetStreamSettings, tracer: Tracer,
    exporter: InMemorySpanExporter,
) -> None:
    bus = CommandBus(example_router, store, tracer=tracer)
    views = MemoryViewStore()
    worker = ProjectionWorker(HoldingsProjector(), views, store, tracer=tracer)
    with ServerThread(create_write_app(bus)) as server, Roles(store, worker, jetstream_settings, tracer):
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            security = client.post("/commands/RegisterSecurity",
                                   json={"isin": "US0378331005", "name": "Apple", "currency": "USD"})
            assert security.status_code == 200, security.text
            opened = client.post("/commands/OpenAccount", json={"account_number": "ACC-1", "holder_name": "Ada"})
            credited = client.post("/commands/CreditHoldings",
                                   json={"account_number": "ACC-1", "isin": "US0378331005", "quantity": 7})
            assert opened.status_code == credited.status_code == 200, credited.text
        last = credited.json()["position"]
        wait_for(lambda: worker.position >= last)
        wait_for(lambda: len(named(exporter, "project holdings SecuritiesCredited")) == 1)

    (holding,) = views.get_many("holdings", Holding, [("ACC-1", "US0378331005")])
    assert holding is not None and holding.quantity == 7
    spans = list(exporter.get_finished_spans())
    (command,) = [s for s in spans if s.name == "command CreditHoldings"]
    (relayed,) = [s for s in spans if s.name == "relay publish SecuritiesCredited"]
    (projected,) = [s for s in spans if s.name == "project holdings SecuritiesCredited"]
    assert command.context is not None
    trace_id = command.context.trace_id
    assert {s.context.trace_id for s in (command, relayed, projected) if s.context} == {trace_id}
    assert parent_chain(projected, spans) == [
        "project holdings SecuritiesCredited", "relay publish SecuritiesCredited", "command CreditHoldings"]
    assert projected.attributes is not None and projected.attributes["eventfold.position"] == last
    # every command got its own trace, and each of its events was relayed and projected within it
    commands = [s for s in spans if s.name.startswith("command ")]
    assert len({s.context.trace_id for s in commands if s.context}) == 3
    for span in named(exporter, "project "):
        assert parent_chain(span, spans)[-1].startswith("command ")
