"""``eventfold relay`` and ``eventfold project``: the distributed streaming roles."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from framework.cli.common import (
    command_bus,
    load_projectors,
    open_store,
    open_views,
    require_postgres,
    run_until_signalled,
    select_projectors,
    tracing,
)
from framework.errors import ConfigurationError
from framework.settings import Settings

__all__ = ["register"]


def register(commands: Any) -> None:
    relay = commands.add_parser("relay", help="publish stored events, in order, to NATS JetStream")
    relay.set_defaults(run=run_relay_command)

    project = commands.add_parser("project", help="run projection workers (all, or the named ones)")
    project.add_argument("names", nargs="*", metavar="NAME", help="projections to run (default: all)")
    project.set_defaults(run=run_project_command)


def _jetstream(settings: Settings) -> Any:
    from framework.adapters.nats import JetStreamSettings

    if not settings.nats_url:
        raise ConfigurationError("this role needs EVENTFOLD_NATS_URL (nats://host:4222[,nats://...])")
    return JetStreamSettings.from_env(os.environ)


def _metrics(settings: Settings) -> Any:
    """A registry served on EVENTFOLD_METRICS_PORT (on the EVENTFOLD_HOST interface)."""
    from framework.metrics import Metrics, serve_metrics

    metrics = Metrics()
    assert settings.metrics_port is not None
    serve_metrics(metrics, settings.metrics_port, settings.host)
    return metrics


def run_relay_command(settings: Settings, _: argparse.Namespace) -> int:
    from framework.adapters.nats import JetStreamPublisher, connect
    from framework.runner import run_relay

    require_postgres(settings, "relay")
    jetstream = _jetstream(settings)
    store = open_store(settings)
    if settings.metrics_port is not None:
        metrics = _metrics(settings)
        metrics.watch_relay(store)
    tracer = tracing("relay")

    async def main(stop: asyncio.Event) -> None:
        connection = await connect(jetstream)
        try:
            await connection.ensure_stream()
            await run_relay(store, JetStreamPublisher(connection), stop, tracer=tracer)
        finally:
            await connection.close()

    try:
        run_until_signalled(main)
    finally:
        store.close()
    return 0


def run_project_command(settings: Settings, args: argparse.Namespace) -> int:
    from framework.adapters.nats import JetStreamConsumer, connect
    from framework.runner import run_projection
    from framework.worker import ProjectionWorker

    postgres = require_postgres(settings, "project")
    jetstream = _jetstream(settings)
    projectors = select_projectors(load_projectors(settings.projections), args.names)
    store = open_store(settings)
    views = open_views(postgres)
    metrics = _metrics(settings) if settings.metrics_port is not None else None
    tracer = tracing("project")
    bus = command_bus(settings, store, metrics, tracer)
    workers = [ProjectionWorker(p, views, store, bus, observer=metrics, tracer=tracer) for p in projectors]
    if metrics is not None:
        metrics.watch_projections(store, views, [p.name for p in projectors])

    async def main(stop: asyncio.Event) -> None:
        connection = await connect(jetstream)
        try:
            await connection.ensure_stream()
            consumers = [JetStreamConsumer(connection, w.name) for w in workers]
            await asyncio.gather(*(run_projection(w, c, stop) for w, c in zip(workers, consumers, strict=True)))
        finally:
            await connection.close()

    try:
        run_until_signalled(main)
    finally:
        views.close()
        store.close()
    return 0
