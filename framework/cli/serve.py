"""``eventfold dev``, ``write-api`` and ``init-db``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from framework.cli.common import (
    command_bus,
    load_projectors,
    open_store,
    open_views,
    require_postgres,
)
from framework.settings import Settings

__all__ = ["register"]

log = logging.getLogger("eventfold")


def register(commands: Any) -> None:
    dev = commands.add_parser("dev", help="run the example app embedded: one process, no servers")
    _serve_options(dev)
    dev.add_argument("--store", help="SQLite file for events (default .eventfold/events.sqlite3), or :memory:")
    dev.set_defaults(run=run_dev)

    write_api = commands.add_parser("write-api", help="serve the write API on PostgreSQL")
    _serve_options(write_api)
    write_api.set_defaults(run=run_write_api)

    init_db = commands.add_parser("init-db", help="create the event store's and read models' tables (idempotent)")
    init_db.set_defaults(run=run_init_db)


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to listen on (EVENTFOLD_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (EVENTFOLD_PORT)")
    parser.add_argument("--access-log", action="store_true", help="log every request")


def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
    from framework.adapters.memory_views import MemoryViewStore
    from framework.http.write_api import WriteApiOptions, create_write_app
    from framework.runner import run_projection, run_relay
    from framework.worker import ProjectionWorker

    embedded = replace(settings, database_url=None)
    store = open_store(embedded)
    store.create_schema()  # an embedded file is private to this process: set it up in place
    bus = command_bus(embedded, store)
    views = MemoryViewStore()  # rebuilt from the stored events at every start
    events = MemoryBus()
    workers = [ProjectionWorker(p, views, store, bus) for p in load_projectors(embedded.projections)]

    @contextlib.asynccontextmanager
    async def background(_: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_relay(store, MemoryPublisher(events), stop, poll_seconds=0.2))]
        tasks += [
            asyncio.create_task(run_projection(w, MemoryConsumer(events, w.name), stop, fetch_seconds=0.2))
            for w in workers
        ]
        log.info("events are kept in %s; %d projections run in process", embedded.sqlite_path, len(workers))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    write_app = create_write_app(bus, WriteApiOptions(embedded.max_body_bytes, embedded.retry_after_seconds))
    app = Starlette(routes=[Mount("/", app=write_app)], lifespan=background)
    return _serve(embedded, app, args, store.close)


def run_write_api(settings: Settings, args: argparse.Namespace) -> int:
    from framework.http.write_api import WriteApiOptions, create_write_app

    require_postgres(settings, "write-api")
    store = open_store(settings)
    app = create_write_app(command_bus(settings, store),
                           WriteApiOptions(settings.max_body_bytes, settings.retry_after_seconds))
    return _serve(settings, app, args, store.close)


def run_init_db(settings: Settings, _: argparse.Namespace) -> int:
    store = open_store(settings)
    store.create_schema()
    postgres = settings.postgres()
    if postgres is None:
        print(f"eventfold: event store schema is ready ({settings.sqlite_path})")
        return 0
    views = open_views(postgres)
    views.create_schema()
    projectors = load_projectors(settings.projections)
    for projector in projectors:
        views.ensure_tables(projector.name, views.active_version(projector.name), projector.read_models)
    views.close()
    store.close()
    print(f"eventfold: PostgreSQL schema is ready (event store and {len(projectors)} projections)")
    return 0


def _serve(settings: Settings, app: Any, args: argparse.Namespace, close: Callable[[], None]) -> int:
    import uvicorn

    log.info("listening on http://%s:%d (POST /commands/{Name}, GET /openapi.json)",
             settings.host, settings.port)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, access_log=args.access_log,
                    log_level="info")
    finally:
        close()
    return 0
