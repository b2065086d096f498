"""``eventfold relay`` and ``eventfold project``: the distributed streaming roles.

With ``EVENTFOLD_METRICS_PORT`` set, each role also runs an ops server (``framework.http.ops``:
``/metrics``, ``/healthz``, ``/readyz``) in its event loop. A role keeps trying to reach NATS,
at start as later, and meanwhile its ``bus`` readiness check says why it is not ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from framework.cli.common import (
    add_app_option,
    application,
    command_bus,
    open_store,
    open_views,
    require_postgres,
    run_until_signalled,
    select_projectors,
    tracing,
)
from framework.errors import BusUnavailable, ConfigurationError
from framework.settings import Settings

if TYPE_CHECKING:
    from framework.adapters.nats import JetStreamConnection, JetStreamSettings
    from framework.breaker import CircuitBreaker
    from framework.http.ops import OpsServer
    from framework.metrics import Metrics
    from framework.partitions import Partition
    from framework.read import Projector
    from framework.runner import LeaseOptions
    from framework.sharing import ConsumerFactory, PartitionConsumer
    from framework.store import EventStore
    from framework.views import ViewStore

__all__ = ["register"]

log = logging.getLogger("eventfold")

RoleWork = Callable[["JetStreamConnection", asyncio.Event], Awaitable[None]]  # the relay, or the workers


def register(commands: Any) -> None:
    relay = commands.add_parser("relay", help="publish stored events, in order, to NATS JetStream")
    relay.set_defaults(run=run_relay_command)

    project = commands.add_parser("project", help="run projection workers (all, or the named ones)")
    project.add_argument("names", nargs="*", metavar="NAME", help="projections to run (default: all)")
    add_app_option(project)
    project.set_defaults(run=run_project_command)


def _jetstream(settings: Settings) -> JetStreamSettings:
    from framework.adapters.nats import JetStreamSettings

    if not settings.nats_url:
        raise ConfigurationError("this role needs EVENTFOLD_NATS_URL (nats://host:4222[,nats://...])")
    return JetStreamSettings.from_settings(settings)


class _Bus:
    """The role's NATS connection once made; ``check`` is the ops server's ``bus`` readiness check."""

    def __init__(self) -> None:
        self.connection: JetStreamConnection | None = None
        self.problem = "connecting to NATS"

    def check(self) -> str | None:
        if self.connection is None:
            return self.problem
        try:
            self.connection.check_connected()  # reads the client's state: no round trip
        except BusUnavailable as error:
            return error.message
        return None


def _bus_breaker(settings: Settings) -> CircuitBreaker:
    """One breaker for the role's NATS connection: its publisher or all its consumers."""
    from framework.breaker import FIRST_COOL_DOWN, bus_breaker

    return bus_breaker(settings.breaker_threshold, settings.breaker_cool_down_seconds,
                       first_cool_down=FIRST_COOL_DOWN)


def _ops_server(settings: Settings, metrics: Metrics, store: EventStore, bus: _Bus,
                views: ViewStore | None = None, projections: Sequence[str] | None = None) -> OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on EVENTFOLD_METRICS_PORT (the EVENTFOLD_HOST interface)."""
    from framework.http.ops import OpsServer, create_ops_app

    assert settings.metrics_port is not None
    app = create_ops_app(metrics, store, views, checks={"bus": bus.check},
                         max_lag_seconds=settings.ready_max_lag_seconds, projections=projections)
    return OpsServer(app, settings.host, settings.metrics_port)


def run_relay_command(settings: Settings, _: argparse.Namespace) -> int:
    from framework.adapters.nats import JetStreamPublisher
    from framework.breaker import BreakingPublisher
    from framework.metrics import Metrics
    from framework.runner import run_relay

    require_postgres(settings, "relay")
    jetstream = _jetstream(settings)
    store = open_store(settings)
    bus, ops = _Bus(), None
    breaker = _bus_breaker(settings)
    try:
        if settings.metrics_port is not None:
            metrics = Metrics()
            metrics.watch_relay(store)
            metrics.watch_breakers([breaker])
            ops = _ops_server(settings, metrics, store, bus)
        tracer = tracing(settings, "relay")

        async def relay(connection: JetStreamConnection, stop: asyncio.Event) -> None:
            publisher = BreakingPublisher(JetStreamPublisher(connection), breaker)
            await run_relay(store, publisher, stop, tracer=tracer)

        run_until_signalled(lambda stop: _run_role(jetstream, bus, ops, stop, relay))
    finally:
        if ops is not None:
            ops.close()
        store.close()
    return 0


def run_project_command(settings: Settings, args: argparse.Namespace) -> int:
    from framework.adapters.nats import JetStreamConsumer
    from framework.breaker import BreakingConsumer
    from framework.dispatcher import DispatchOptions
    from framework.metrics import Metrics
    from framework.runner import LeaseOptions, run_projection, worker_identity
    from framework.sharing import run_partitioned
    from framework.worker import ProjectionWorker

    require_postgres(settings, "project")
    jetstream = _jetstream(settings)
    app = application(settings, args)
    projectors = select_projectors(app.build_projectors(), args.names, settings.partitions)
    store = open_store(settings)
    views = open_views(settings, "project")
    bus, ops = _Bus(), None
    breaker = _bus_breaker(settings)
    try:
        metrics = Metrics() if settings.metrics_port is not None else None
        if metrics is not None:
            names = [p.name for p in projectors]
            metrics.watch_projections(store, views, names)
            metrics.watch_breakers([breaker])
            ops = _ops_server(settings, metrics, store, bus, views, names)
        tracer = tracing(settings, "project")
        commands = command_bus(settings, app.commands, store, metrics, tracer)
        single = [p for p in projectors if p.partitions == 1]
        partitioned = [p for p in projectors if p.partitions > 1]
        workers = [ProjectionWorker(p, views, store, commands, observer=metrics, tracer=tracer) for p in single]

        lease, owner = LeaseOptions.for_ttl(settings.lease_seconds), worker_identity()
        dispatch = DispatchOptions(concurrency=settings.dispatch_concurrency)

        def partition_worker(projector: Projector) -> Callable[[Partition], ProjectionWorker]:
            def make(partition: Partition) -> ProjectionWorker:
                return ProjectionWorker(projector, views, store, None, observer=metrics, tracer=tracer,
                                        partition=partition)
            return make

        async def project(connection: JetStreamConnection, stop: asyncio.Event) -> None:
            consumers = [BreakingConsumer(JetStreamConsumer(connection, w.name), breaker) for w in workers]
            await asyncio.gather(
                *(run_projection(w, c, stop, lease=lease, owner=owner, dispatch=dispatch)
                  for w, c in zip(workers, consumers, strict=True)),
                *(run_partitioned(p, views, partition_worker(p), partition_consumers(connection, p, lease, breaker),
                                  stop, lease=lease, owner=owner) for p in partitioned))

        run_until_signalled(lambda stop: _run_role(jetstream, bus, ops, stop, project))
    finally:
        if ops is not None:
            ops.close()
        views.close()
        store.close()
    return 0


def partition_consumers(connection: JetStreamConnection, projector: Projector, lease: LeaseOptions,
                        breaker: CircuitBreaker) -> ConsumerFactory:
    """Fresh consumers of one partition's events: filtered by subject when the projector partitions by
    aggregate id (else every event, which the partition's worker sorts out); a consumer its worker
    could not delete (killed) is removed by the server once unused for a while."""
    from framework.adapters.nats import JetStreamConsumer, partition_filter
    from framework.breaker import BreakingPartitionConsumer

    prefix = connection.settings.subject_prefix

    def make(partition: Partition, session: str) -> PartitionConsumer:
        subject = partition_filter(prefix, partition) if projector.keys_by_aggregate() else None
        name = f"{projector.name}-p{partition.index}of{partition.count}-{session}"
        return BreakingPartitionConsumer(JetStreamConsumer(
            connection, name, filter_subject=subject, inactive_threshold=max(60.0, 10 * lease.ttl_seconds)), breaker)

    return make


async def _run_role(jetstream: JetStreamSettings, bus: _Bus, ops: OpsServer | None, stop: asyncio.Event,
                    work: RoleWork) -> None:
    """``work`` on a NATS connection (made first, retried until ``stop``), with the ops server beside it;
    however ``work`` ends, ``stop`` is set so the ops server ends with it."""
    serving = asyncio.create_task(ops.serve(stop)) if ops is not None else None
    try:
        connection = await _connect(jetstream, bus, stop)
        if connection is not None:
            try:
                await work(connection, stop)
            finally:
                await connection.close()
    finally:
        stop.set()
        if serving is not None:
            await serving


async def _connect(jetstream: JetStreamSettings, bus: _Bus, stop: asyncio.Event) -> JetStreamConnection | None:
    """Connect and ensure the stream, retrying with backoff while NATS is unavailable; None once stopped."""
    from framework.runner import Backoff

    backoff = Backoff()
    while not stop.is_set():
        try:
            connection = await _until_stopped(_open(jetstream), stop)
        except BusUnavailable as error:
            bus.problem = error.message
            delay = backoff.delay()
            log.warning("%s; retrying in %.1fs", error.message, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        bus.connection = connection
        return connection
    return None


async def _open(jetstream: JetStreamSettings) -> JetStreamConnection:
    from framework.adapters.nats import connect

    connection = await connect(jetstream)
    try:
        await connection.ensure_stream()
    except BaseException:
        await connection.close()
        raise
    return connection


async def _until_stopped(attempt: Coroutine[Any, Any, JetStreamConnection],
                         stop: asyncio.Event) -> JetStreamConnection | None:
    """``attempt``'s connection, or None when ``stop`` comes first (a connect can take seconds to fail)."""
    task = asyncio.create_task(attempt)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BusUnavailable):
            connection = await task  # it may have connected just now: do not leak it
            await connection.close()
        return None
    return task.result()
