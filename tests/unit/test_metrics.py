"""Prometheus metrics fed by the bus's and the worker's observer hooks (in memory, no HTTP)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from example_app.commands import OpenAccount
from example_app.handlers import router as example_router
from framework import AlreadyExists, CommandBus, CommandContext, Event
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.breaker import CircuitBreaker
from framework.errors import ConcurrencyConflict, StoreUnavailable
from framework.events import EventMetadata
from framework.metrics import Metrics
from framework.observe import NULL_OBSERVER, command_outcome
from framework.projector import HandlerContext, Projector, on
from framework.worker import ProjectionWorker, WorkerOptions


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_commands_are_counted_by_type_and_outcome_with_latency() -> None:
    metrics = Metrics(process=False)
    bus = CommandBus(example_router, MemoryEventStore(), observer=metrics)
    bus.execute(OpenAccount(account_number="ACC-1", holder_name="Ada"))
    bus.execute(OpenAccount(account_number="ACC-2", holder_name="Bob"), CommandContext(idempotency_key="k"))
    bus.execute(OpenAccount(account_number="ACC-2", holder_name="Bob"), CommandContext(idempotency_key="k"))
    with pytest.raises(AlreadyExists):
        bus.execute(OpenAccount(account_number="ACC-1", holder_name="Ada"))

    assert sample(metrics, "eventfold_commands_total", command="OpenAccount", outcome="ok") == 2
    assert sample(metrics, "eventfold_commands_total", command="OpenAccount", outcome="replayed") == 1
    assert sample(metrics, "eventfold_commands_total", command="OpenAccount", outcome="already_exists") == 1
    assert sample(metrics, "eventfold_command_duration_seconds_count", command="OpenAccount") == 4
    assert sample(metrics, "eventfold_events_appended_total") == 2


def test_outcome_labels_are_a_bounded_vocabulary() -> None:
    assert command_outcome(None) == "ok"
    assert command_outcome(ConcurrencyConflict("x")) == "conflict"
    assert command_outcome(StoreUnavailable("x")) == "unavailable"
    assert command_outcome(AlreadyExists("x")) == "already_exists"
    assert command_outcome(RuntimeError("boom")) == "error"


def test_a_bus_without_observer_uses_the_null_one() -> None:
    assert CommandBus(example_router, MemoryEventStore()).observer is NULL_OBSERVER


class Ticked(Event):
    event_name: ClassVar[str] = "eventfold-unit:MetricsTicked"
    n: int


class Fragile(Projector):
    name = "fragile"
    on_error = "park"

    @on(Ticked)
    def ticked(self, event: Ticked, context: HandlerContext) -> None:
        if event.n == 3:
            raise ValueError("three is unlucky")


def _append_ticks(store: MemoryEventStore, count: int) -> None:
    from uuid import uuid4

    from framework.events import EventEnvelope
    from framework.mapper import to_stored

    envelopes = [
        EventEnvelope(aggregate_id=uuid4(), aggregate_type="Ticker", version=1, event=Ticked(n=n),
                      metadata=EventMetadata())
        for n in range(1, count + 1)
    ]
    store.append([to_stored(e) for e in envelopes])


def test_projection_batches_and_dead_letters_are_counted() -> None:
    store, views, metrics = MemoryEventStore(), MemoryViewStore(), Metrics(process=False)
    _append_ticks(store, 5)
    worker = ProjectionWorker(Fragile(), views, store, options=WorkerOptions(handler_attempts=1),
                              observer=metrics, sleep=lambda _: None)
    worker.catch_up()
    metrics.watch_projections(store, views)

    assert worker.position == 5
    assert sample(metrics, "eventfold_projection_dead_lettered_total", projection="fragile") == 1
    # the failing event is isolated: the events before it and after it commit as two batches,
    # and the parked event is a dead letter, not a batch
    assert sample(metrics, "eventfold_projection_batch_size_sum", projection="fragile") == 4
    assert sample(metrics, "eventfold_projection_batch_size_count", projection="fragile") == 2
    assert sample(metrics, "eventfold_projection_position", projection="fragile") == 5
    assert sample(metrics, "eventfold_projection_lag_events", projection="fragile") == 0
    assert sample(metrics, "eventfold_projection_dead_letters", projection="fragile") == 1


def test_graphql_operation_labels_are_bounded() -> None:
    metrics = Metrics(process=False)
    for index in range(150):
        metrics.graphql_request(f"Op{index}", "ok", 0.01)
    metrics.graphql_request(None, "ok", 0.01)
    assert sample(metrics, "eventfold_graphql_requests_total", operation="Op0", outcome="ok") == 1
    assert sample(metrics, "eventfold_graphql_requests_total", operation="other", outcome="ok") == 51


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    store = MemoryEventStore()
    _append_ticks(store, 2)
    metrics = Metrics(process=False)
    ProjectionWorker(Fragile(), MemoryViewStore(), store, observer=metrics)  # registers its state
    metrics.watch_relay(store)
    metrics.graphql_request("Q", "ok", 0.1)
    metrics.command_finished("C", "ok", 0.1)
    metrics.batch_applied("fragile", 1, 0.1)
    metrics.dead_lettered("fragile")
    metrics.watch_breakers([CircuitBreaker()])
    exported = set(re.findall(r"^(eventfold_\w+)", metrics.exposition().decode(), re.M))
    used = set(re.findall(r"eventfold_\w+", json.dumps(dashboard)))
    projection_gauges = {"eventfold_projection_position", "eventfold_projection_lag_events",
                         "eventfold_projection_lag_seconds", "eventfold_projection_dead_letters",
                         "eventfold_projection_stalled"}
    assert dashboard["panels"] and used - exported <= projection_gauges
    assert projection_gauges <= used


def test_readiness_of_projections_can_be_limited_to_the_ones_a_process_runs() -> None:
    from framework.http.health import projections_check

    store, views = MemoryEventStore(), MemoryViewStore()
    _append_ticks(store, 2)
    ProjectionWorker(Fragile(), views, store)  # registered and active; any lag is over a limit of -1 s
    assert "fragile lags" in (projections_check(store, views, max_lag_seconds=-1)() or "")
    assert projections_check(store, views, max_lag_seconds=-1, names=["fragile"])() is not None
    assert projections_check(store, views, max_lag_seconds=-1, names=["cards"])() is None
