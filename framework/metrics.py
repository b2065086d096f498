"""Prometheus metrics: every metric Eventfold exports is defined here, on one registry per ``Metrics``.

An edge module (it imports ``prometheus_client``): the core reports through
``framework.observe.Observer`` and ``Metrics`` implements it. Positions and lags
are read when scraped (``watch_projections``, ``watch_relay``), from the same
bookkeeping ``eventfold status`` prints, so every process that can see the
store reports them alike.

| metric | type | labels |
|---|---|---|
| ``eventfold_commands_total`` | counter | ``command``, ``outcome`` |
| ``eventfold_command_duration_seconds`` | histogram | ``command`` |
| ``eventfold_events_appended_total`` | counter | |
| ``eventfold_relay_position`` / ``eventfold_relay_lag_events`` | gauge | ``relay`` |
| ``eventfold_projection_position`` / ``_lag_events`` / ``_lag_seconds`` | gauge | ``projection`` |
| ``eventfold_projection_dead_letters`` / ``_stalled`` | gauge | ``projection`` |
| ``eventfold_projection_outbox_pending`` / ``_outbox_oldest_seconds`` | gauge | ``projection`` |
| ``eventfold_projection_deadlines_pending`` | gauge | ``projection`` |
| ``eventfold_projection_batch_size`` / ``_batch_duration_seconds`` | histogram | ``projection`` |
| ``eventfold_projection_dead_lettered_total`` | counter | ``projection`` |
| ``eventfold_graphql_requests_total`` | counter | ``operation``, ``outcome`` |
| ``eventfold_graphql_request_duration_seconds`` | histogram | ``operation`` |
| ``eventfold_metrics_collect_errors_total`` | counter | ``source`` |
| ``eventfold_circuit_breaker_state`` | gauge (1 for the current state) | ``dependency``, ``state`` |
| ``eventfold_circuit_breaker_opened_total`` / ``_refused_total`` | counter | ``dependency`` |
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from framework.breaker import CircuitBreaker
from framework.status import projection_statuses
from framework.store import EventLog, RelaySource
from framework.views import ViewStore

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

log = logging.getLogger(__name__)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_SIZES = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_MAX_OPERATIONS = 100  # distinct GraphQL operation names kept as labels; the rest count as "other"


class Metrics:
    """Eventfold's metrics on their own registry; also the core's ``Observer``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.commands = Counter("eventfold_commands", "Commands executed, by type and outcome",
                                ["command", "outcome"], registry=r)
        self.command_duration = Histogram("eventfold_command_duration_seconds", "Command latency",
                                          ["command"], buckets=_LATENCY, registry=r)
        self.appended = Counter("eventfold_events_appended", "Events committed to the store",
                                       registry=r)
        self.batch_size = Histogram("eventfold_projection_batch_size", "Events per committed projection batch",
                                    ["projection"], buckets=_BATCH_SIZES, registry=r)
        self.batch_duration = Histogram("eventfold_projection_batch_duration_seconds",
                                        "Time to apply and commit a projection batch", ["projection"],
                                        buckets=_LATENCY, registry=r)
        self.parked = Counter("eventfold_projection_dead_lettered", "Events parked as dead letters",
                                     ["projection"], registry=r)
        self.graphql_requests = Counter("eventfold_graphql_requests", "GraphQL requests, by operation and outcome",
                                        ["operation", "outcome"], registry=r)
        self.graphql_duration = Histogram("eventfold_graphql_request_duration_seconds", "GraphQL request latency",
                                          ["operation"], buckets=_LATENCY, registry=r)
        self.graphql_answers = Counter(
            "eventfold_graphql_response_cache", "Answers to requests the response cache may keep, by where they came"
            " from: kept (the cache), shared (another request's computation of the same answer), computed",
            ["outcome"], registry=r)
        self.graphql_sharing = Gauge("eventfold_graphql_response_cache_waiting",
                                     "Requests waiting for the same answer, being computed by another request",
                                     registry=r)
        self.collect_errors = Counter("eventfold_metrics_collect_errors",
                                      "Scrapes that could not read positions from the store", ["source"],
                                      registry=r)
        self._operations: set[str] = set()
        self._lock = threading.Lock()
        self._per_outcome: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._per_operation: dict[tuple[str, str], tuple[Counter, Histogram]] = {}  # GraphQL's, as _per_outcome
        self._answers: dict[str, Counter] = {}

    # --- framework.observe.Observer --------------------------------------------------------------

    def command_finished(self, command: str, outcome: str, seconds: float) -> None:
        counted = self._per_outcome.get((command, outcome))
        if counted is None:  # the labelled children once per command and outcome: ``labels`` costs more than both
            counted = (self.commands.labels(command, outcome), self.command_duration.labels(command))
            self._per_outcome[(command, outcome)] = counted
        counted[0].inc()
        counted[1].observe(seconds)

    def events_appended(self, count: int) -> None:
        self.appended.inc(count)

    def batch_applied(self, projection: str, size: int, seconds: float) -> None:
        self.batch_size.labels(projection).observe(size)
        self.batch_duration.labels(projection).observe(seconds)

    def dead_lettered(self, projection: str) -> None:
        self.parked.labels(projection).inc()

    # --- GraphQL ---------------------------------------------------------------------------------

    def graphql_request(self, operation: str | None, outcome: str, seconds: float) -> None:
        name = self._operation_label(operation)
        counted = self._per_operation.get((name, outcome))
        if counted is None:  # as command_finished: the children once per (bounded) label and outcome
            counted = (self.graphql_requests.labels(name, outcome), self.graphql_duration.labels(name))
            self._per_operation[(name, outcome)] = counted
        counted[0].inc()
        counted[1].observe(seconds)

    def graphql_answer(self, outcome: str) -> None:
        """A keepable request answered: ``kept``, ``shared`` or ``computed``."""
        counter = self._answers.get(outcome)
        if counter is None:
            counter = self._answers[outcome] = self.graphql_answers.labels(outcome)
        counter.inc()

    def _operation_label(self, operation: str | None) -> str:
        """Operation names come from clients: bounded in length and in number."""
        name = (operation or "anonymous")[:64]
        with self._lock:
            if name in self._operations:
                return name
            if len(self._operations) < _MAX_OPERATIONS:
                self._operations.add(name)
                return name
        return "other"

    # --- positions, read when scraped ------------------------------------------------------------

    def watch_projections(self, store: EventLog, views: ViewStore, names: Collection[str] | None = None) -> None:
        """Export the active projections' positions, lags and dead letters (``names``: only these)."""
        self.registry.register(_ProjectionCollector(self, store, views, names))

    def watch_relay(self, store: RelaySource, name: str = "relay") -> None:
        """Export the relay's checkpoint and how far the store's head is ahead of it."""
        self.registry.register(_RelayCollector(self, store, name))

    def watch_breakers(self, breakers: Collection[CircuitBreaker]) -> None:
        """Export each circuit breaker's state and counts (labelled by its dependency)."""
        self.registry.register(_BreakerCollector(list(breakers)))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)



def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class _ProjectionCollector(Collector):
    def __init__(self, metrics: Metrics, store: EventLog, views: ViewStore,
                 names: Collection[str] | None) -> None:
        self._metrics, self._store, self._views = metrics, store, views
        self._names = set(names) if names is not None else None

    def collect(self) -> Iterator[Metric]:
        try:
            statuses = projection_statuses(self._store, self._views)
        except Exception as error:  # a scrape must not fail because the database is away
            self._metrics.collect_errors.labels("projections").inc()
            log.warning("metrics: projection positions unavailable: %s", error)
            return
        families = {
            "position": _gauge("eventfold_projection_position", "Last position applied", ["projection"]),
            "lag_events": _gauge("eventfold_projection_lag_events", "Events stored but not yet applied",
                                 ["projection"]),
            "lag_seconds": _gauge("eventfold_projection_lag_seconds", "Age of the oldest event not yet applied",
                                  ["projection"]),
            "dead_letters": _gauge("eventfold_projection_dead_letters", "Dead letters parked now",
                                   ["projection"]),
            "stalled": _gauge("eventfold_projection_stalled", "1 when running but not moving while behind",
                              ["projection"]),
            "outbox_pending": _gauge("eventfold_projection_outbox_pending",
                                     "Commands a process manager issued, not yet executed", ["projection"]),
            "outbox_oldest_seconds": _gauge("eventfold_projection_outbox_oldest_seconds",
                                            "How long the oldest pending command has waited", ["projection"]),
            "deadlines_pending": _gauge("eventfold_projection_deadlines_pending",
                                        "Deadlines a process manager is waiting for", ["projection"]),
        }
        partition_position = _gauge("eventfold_projection_partition_position",
                                    "Last position a partition has passed", ["projection", "partition"])
        partition_lag = _gauge("eventfold_projection_partition_lag_events",
                               "Events stored after a partition's position", ["projection", "partition"])
        partition_owner = _gauge("eventfold_projection_partition_owner",
                                 "1 for the worker holding a partition's lease", ["projection", "partition", "owner"])
        for status in statuses:
            if not status.active or (self._names is not None and status.name not in self._names):
                continue
            values: dict[str, Any] = {**status.as_dict(), "stalled": int(status.state == "stalled")}
            for key, family in families.items():
                family.add_metric([status.name], float(values[key]))
            for part in status.partitions:
                labels = [status.name, str(part.index)]
                partition_position.add_metric(labels, float(part.position))
                partition_lag.add_metric(labels, float(part.lag_events))
                if part.owner:
                    partition_owner.add_metric([*labels, part.owner], 1.0)
        yield from families.values()
        yield from (partition_position, partition_lag, partition_owner)


class _RelayCollector(Collector):
    def __init__(self, metrics: Metrics, store: RelaySource, name: str) -> None:
        self._metrics, self._store, self._name = metrics, store, name

    def collect(self) -> Iterator[Metric]:
        try:
            position = self._store.relay_checkpoint(self._name)
            head = self._store.head()
        except Exception as error:
            self._metrics.collect_errors.labels("relay").inc()
            log.warning("metrics: relay position unavailable: %s", error)
            return
        position_family = _gauge("eventfold_relay_position", "Last position the relay published", ["relay"])
        position_family.add_metric([self._name], float(position))
        lag = _gauge("eventfold_relay_lag_events", "Events stored but not yet published", ["relay"])
        lag.add_metric([self._name], float(max(head - position, 0)))
        yield position_family
        yield lag


class _BreakerCollector(Collector):
    _STATES = ("closed", "open", "half-open")

    def __init__(self, breakers: list[CircuitBreaker]) -> None:
        self._breakers = breakers

    def collect(self) -> Iterator[Metric]:
        state = _gauge("eventfold_circuit_breaker_state", "1 for the breaker's current state",
                       ["dependency", "state"])
        opened = CounterMetricFamily("eventfold_circuit_breaker_opened", "Times the breaker opened",
                                     labels=["dependency"])
        refused = CounterMetricFamily("eventfold_circuit_breaker_refused",
                                      "Calls answered at once, without trying the dependency", labels=["dependency"])
        for breaker in self._breakers:
            current, dependency = breaker.state, breaker.dependency.replace(" ", "_")
            for name in self._STATES:
                state.add_metric([dependency, name], float(name == current))
            opened.add_metric([dependency], float(breaker.opened_total))
            refused.add_metric([dependency], float(breaker.refused_total))
        yield from (state, opened, refused)
