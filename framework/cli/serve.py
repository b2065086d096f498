"""``eventfold dev``, ``write-api`` and ``init-db``."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from framework.app import App, Seeding
from framework.cli.common import (
    add_app_option,
    app_reference,
    application,
    authenticator,
    command_bus,
    graphql_of,
    open_store,
    open_views,
    require_postgres,
    tracing,
)
from framework.cli.startup import freeze_start_up_objects
from framework.errors import ConfigurationError, EventfoldError
from framework.loading import load_app
from framework.settings import Settings

if TYPE_CHECKING:
    from framework.breaker import CircuitBreaker
    from framework.store import AsyncAppender

__all__ = ["register", "write_api_worker"]

log = logging.getLogger("eventfold")


def register(commands: Any) -> None:
    dev = commands.add_parser("dev", help="run your application embedded: one process, no servers")
    _serve_options(dev)
    dev.add_argument("--store", help="SQLite file for events (default .eventfold/events.sqlite3), or :memory:")
    dev.add_argument("--seed", action="store_true",
                     help="run the application's seed function (App(seed=...)) once the server is up")
    dev.set_defaults(run=run_dev)

    query_api = commands.add_parser("query-api", help="serve GraphQL over the read models on PostgreSQL")
    _serve_options(query_api)
    query_api.set_defaults(run=run_query_api)

    write_api = commands.add_parser("write-api", help="serve the write API on PostgreSQL")
    _serve_options(write_api)
    write_api.add_argument("--workers", type=_positive, metavar="N",
                           help="worker processes sharing the port (EVENTFOLD_WRITE_WORKERS, default 1)")
    write_api.set_defaults(run=run_write_api)

    init_db = commands.add_parser("init-db", help="create the event store's and read models' tables (idempotent)")
    add_app_option(init_db)
    init_db.set_defaults(run=run_init_db)


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to listen on (EVENTFOLD_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (EVENTFOLD_PORT)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    add_app_option(parser)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (1 or more)")
    return value


def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
    from framework.adapters.memory_positions import MemoryPositionSignals
    from framework.adapters.memory_views import MemoryViewStore
    from framework.graphql.app import query_routes
    from framework.http.edge import EdgeApp
    from framework.http.write_api import create_write_app
    from framework.metrics import Metrics
    from framework.runner import run_projection, run_relay, worker_identity
    from framework.worker import ProjectionWorker

    embedded = replace(settings, database_url=None)
    application_ = application(embedded, args)
    if args.seed and application_.seed is None:
        raise ConfigurationError(f"--seed: application {application_.name!r} declares no seed function (App(seed=...))")
    auth = authenticator(embedded, "dev")
    store = open_store(embedded)
    store.create_schema()  # an embedded file is private to this process: set it up in place
    metrics = Metrics()
    tracer = tracing(settings, "dev")
    bus = command_bus(embedded, application_.commands, store, metrics, tracer)
    views = MemoryViewStore()  # rebuilt from the stored events at every start
    watch = _watch(embedded, MemoryPositionSignals(views), views, store)
    metrics.watch_relay(store)
    metrics.watch_projections(store, views)
    events = MemoryBus()
    workers = [ProjectionWorker(p, views, store, bus, observer=metrics, tracer=tracer)
               for p in application_.build_projectors()]
    graphql = graphql_of(application_)

    @contextlib.asynccontextmanager
    async def background(_: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_relay(store, MemoryPublisher(events), stop, poll_seconds=0.2,
                                                 tracer=tracer))]
        owner = worker_identity()
        tasks += [
            asyncio.create_task(run_projection(w, MemoryConsumer(events, w.name), stop, fetch_seconds=0.2,
                                               owner=owner))
            for w in workers
        ]
        log.info("events are kept in %s; %d projections run in process", embedded.sqlite_path, len(workers))
        if args.seed:
            tasks.append(asyncio.create_task(_seed(application_, bus, embedded)))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, watch.close(), return_exceptions=True)

    write_app = create_write_app(bus, _write_options(embedded), metrics=metrics, authenticator=auth)
    query_options = _query_options(embedded, introspection=True)
    routes = [*query_routes(graphql, views, store, options=query_options, metrics=metrics,
                            authenticator=auth, tracer=tracer, watch=watch),
              *_console(embedded, store, views, application_, auth),
              Mount("/", app=write_app)]
    app = EdgeApp(routes=routes, lifespan=background)
    app.router.redirect_slashes = False  # a redirect would be built from the Host header a client sent
    return _serve(embedded, app, args, store.close)


async def _seed(app: App, bus: Any, settings: Settings) -> None:
    """Run the application's seed function off the event loop; a failure is logged, the server goes on."""
    assert app.seed is not None  # checked before the server started
    seeding = Seeding(bus, f"http://{settings.host}:{settings.port}")
    try:
        await asyncio.to_thread(app.seed, seeding)
    except Exception:
        log.exception("the seed function of %r failed", app.name)


def _console(settings: Settings, store: Any, views: Any, application_: App, auth: Any) -> list[Any]:
    """``/console/`` and the ``/ops/`` API it calls, unless ``EVENTFOLD_CONSOLE=off``."""
    if not settings.console:
        return []
    from framework.http.console import console_routes
    from framework.http.operator import operator_routes

    factories = dict(zip((p.name for p in application_.build_projectors()), application_.projections, strict=True))
    return [*console_routes(), *operator_routes(store, views, [], authenticator=auth, projector_factories=factories,
                                                auth_failures_per_minute=settings.auth_failures_per_minute or None,
                                                rate_limit_per_second=settings.rate_limit_per_second)]


def run_query_api(settings: Settings, args: argparse.Namespace) -> int:
    from framework.graphql import create_query_app
    from framework.metrics import Metrics

    require_postgres(settings, "query-api")
    auth = authenticator(settings, "query-api")
    tracer = tracing(settings, "query-api")  # a span per GraphQL operation (and the provider for the app's own spans)
    store, views = open_store(settings), open_views(settings, "query-api", for_queries=True)
    # On a replica (EVENTFOLD_QUERY_DATABASE_URL), what writes (the console's operations) goes to the primary.
    on_replica = settings.query_postgres() != settings.read_postgres()
    primary = open_views(settings, "query-api") if on_replica else views
    breaker = _breaker(settings, "read models")
    metrics = Metrics()
    metrics.watch_projections(store, views)
    metrics.watch_breakers([breaker])
    watch = _watch(settings, _position_signals(settings, views, on_replica=on_replica), views, store)
    application_ = application(settings, args)
    app = create_query_app(graphql_of(application_), views, store,
                           options=_query_options(settings, introspection=False),
                           metrics=metrics, authenticator=auth, breaker=breaker, tracer=tracer, watch=watch)
    app.router.routes[:0] = _console(settings, store, primary, application_, auth)  # before its catch-all errors

    def close() -> None:
        if primary is not views:
            primary.close()
        views.close()
        store.close()

    return _serve(settings, app, args, close)


def _position_signals(settings: Settings, views: Any, *, on_replica: bool) -> Any:
    """Commits heard on the read database; on a replica, each delivered once the replica replayed it."""
    from framework.adapters.pg_positions import PostgresPositionSignals

    read = settings.read_postgres()
    assert read is not None  # query-api runs on PostgreSQL
    signals = PostgresPositionSignals(read)
    if not on_replica:
        return signals
    from framework.adapters.replica_positions import ReplicaPositionSignals

    return ReplicaPositionSignals(signals, views)


def _watch(settings: Settings, signals: Any, views: Any, store: Any) -> Any:
    """The process's position watch: read-your-writes and subscriptions wait on it, not by polling."""
    from framework.positions import PositionWatch

    return PositionWatch(signals, views, store.head, max_waiting=settings.max_waiting_requests,
                         max_subscriptions=settings.max_subscriptions)


def _query_options(settings: Settings, *, introspection: bool) -> Any:
    """``introspection`` (and the explorer): the role's default (on for dev, off for query-api) unless the
    settings say."""
    from framework.graphql import QueryApiOptions

    chosen = introspection if settings.graphql_introspection is None else settings.graphql_introspection
    explorer = introspection if settings.graphql_explorer is None else settings.graphql_explorer
    return QueryApiOptions(consistency_timeout=settings.consistency_timeout_seconds,
                           ready_max_lag_seconds=settings.ready_max_lag_seconds,
                           rate_limit_per_second=settings.rate_limit_per_second,
                           auth_failures_per_minute=settings.auth_failures_per_minute or None,
                           max_depth=settings.graphql_max_depth, max_aliases=settings.graphql_max_aliases,
                           max_tokens=settings.graphql_max_tokens, max_cost=settings.graphql_max_cost,
                           introspection=chosen, response_cache_entries=settings.graphql_response_cache,
                           explorer=explorer)


def _write_options(settings: Settings) -> Any:
    from framework.http.write_api import WriteApiOptions

    return WriteApiOptions(settings.max_body_bytes, settings.retry_after_seconds,
                           rate_limit_per_second=settings.rate_limit_per_second,
                           auth_failures_per_minute=settings.auth_failures_per_minute or None)


def run_write_api(settings: Settings, args: argparse.Namespace) -> int:
    reference, source = app_reference(settings, args)
    app, close = _write_api(settings, load_app(reference, source=source))
    if settings.write_workers == 1:
        return _serve(settings, app, args, close)
    close()  # built here only so that what would fail in every worker fails once, in one line
    return _serve_workers(settings, args, reference)


def _write_api(settings: Settings, application_: App) -> tuple[Any, Callable[[], None]]:
    """The write API's ASGI app over PostgreSQL, and what closes its store."""
    from framework.breaker import BreakingEventStore
    from framework.http.write_api import create_write_app
    from framework.metrics import Metrics

    require_postgres(settings, "write-api")
    auth = authenticator(settings, "write-api")
    store = BreakingEventStore(open_store(settings), _breaker(settings, "event store"))
    metrics = Metrics()
    metrics.watch_breakers([store.breaker])
    bus = command_bus(settings, application_.commands, store, metrics, tracing(settings, "write-api"))
    app = create_write_app(bus, _write_options(settings), metrics=metrics, authenticator=auth,
                           appender=_async_appender(settings, store.breaker))
    return app, store.close


def _async_appender(settings: Settings, breaker: CircuitBreaker) -> AsyncAppender | None:
    """``EVENTFOLD_WRITE_ASYNC``: the event store's writes on the event loop, behind the store's breaker."""
    postgres = settings.postgres()
    if not settings.write_async or postgres is None:
        return None
    from framework.adapters.pg_async import AsyncPostgresAppender
    from framework.breaker import BreakingAsyncAppender

    return BreakingAsyncAppender(AsyncPostgresAppender(postgres), breaker)


def write_api_worker() -> Any:
    """The app of one ``write-api --workers N`` process: uvicorn calls this in each process it starts.

    A worker is a fresh interpreter (uvicorn spawns them): it reads the settings from the environment,
    where the parent left the application's resolved reference and the log format. The parent built
    the same app before starting any worker, so a failure here is rare (the database went away in
    between); it is one line, and the exit status that tells uvicorn not to restart the worker.
    """
    from uvicorn.config import STARTUP_FAILURE

    from framework.cli import worker_settings  # the package imports this module: import it once loaded

    try:
        settings = worker_settings()
        app, close = _write_api(settings, load_app(settings.app or "", source="EVENTFOLD_APP"))
    except EventfoldError as error:
        print(f"eventfold: {error.message}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    atexit.register(close)  # a spawned process runs its exit handlers once uvicorn has shut down
    freeze_start_up_objects()
    return app


def _serve_workers(settings: Settings, args: argparse.Namespace, reference: str) -> int:
    """Serve ``write_api_worker`` in ``settings.write_workers`` processes on one listening socket.

    uvicorn's supervisor binds the socket here, starts the workers, restarts one that dies, and on
    SIGTERM or SIGINT stops them all (each finishes its requests in flight) before returning.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from framework.cli import hand_to_workers

    # Workers read the environment: they must find the application this process found (--app or
    # pyproject.toml included) and log as it does.
    hand_to_workers({"EVENTFOLD_APP": reference, "EVENTFOLD_LOG_FORMAT": settings.log_format or "json",
                     "EVENTFOLD_HOST": settings.host, "EVENTFOLD_PORT": str(settings.port)})
    config = uvicorn.Config(f"{__name__}:write_api_worker", factory=True, workers=settings.write_workers,
                            host=settings.host, port=settings.port, **_uvicorn_keywords(settings, args))
    log.info("listening on http://%s:%d with %d write-api processes", settings.host, settings.port,
             settings.write_workers)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    return 2 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0


def _breaker(settings: Settings, dependency: str) -> Any:
    """A breaker in front of a PostgreSQL dependency, tuned by EVENTFOLD_BREAKER_*."""
    from framework.breaker import FIRST_COOL_DOWN, CircuitBreaker

    return CircuitBreaker(settings.breaker_threshold, settings.breaker_cool_down_seconds,
                          first_cool_down=FIRST_COOL_DOWN, dependency=dependency)


def run_init_db(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings)
    store.create_schema()
    if settings.postgres() is None:
        print(f"eventfold: event store schema is ready ({settings.sqlite_path})")
        return 0
    views = open_views(settings, "init-db")
    views.create_schema()
    projectors = application(settings, args).build_projectors()
    for projector in projectors:
        views.ensure_tables(projector.name, views.active_version(projector.name), projector.read_models)
    views.close()
    store.close()
    print(f"eventfold: PostgreSQL schema is ready (event store and {len(projectors)} projections)")
    return 0


def _serve(settings: Settings, app: Any, args: argparse.Namespace, close: Callable[[], None]) -> int:
    import uvicorn

    freeze_start_up_objects()
    log.info("listening on http://%s:%d", settings.host, settings.port)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, **_uvicorn_keywords(settings, args))
    finally:
        close()
    return 0


def _uvicorn_keywords(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Logging and the server's limits, the same for one process and for each of several."""
    import uvicorn

    from framework.http.server import ServerLimits, uvicorn_options

    limits = ServerLimits(max_header_bytes=settings.max_header_bytes,
                          header_timeout_seconds=settings.header_timeout_seconds,
                          body_timeout_seconds=settings.body_timeout_seconds,
                          max_connections=settings.max_connections)
    # JSON logs: uvicorn's records go through the root handler too (one format on stderr).
    log_config: Any = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    return {"access_log": args.access_log, "log_level": "info", "log_config": log_config,
            **uvicorn_options(limits)}
