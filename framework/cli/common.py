"""What the CLI commands share: opening adapters from settings, loading the app, running loops."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from framework.adapters.factory import open_store
from framework.app import App
from framework.bus import CommandBus
from framework.commands import CommandRouter
from framework.errors import ConfigurationError
from framework.loading import find_app_reference, load_app
from framework.observe import Observer
from framework.projector import Projector, with_partitions
from framework.security import Authenticator
from framework.settings import PostgresSettings, Settings
from framework.store import EventStore
from framework.tracing import Tracer
from framework.views import ViewStore

__all__ = [
    "add_app_option",
    "app_reference",
    "application",
    "authenticator",
    "command_bus",
    "graphql_of",
    "open_store",
    "open_views",
    "require_postgres",
    "run_until_signalled",
    "select_projectors",
    "tracing",
]


def require_postgres(settings: Settings, role: str) -> PostgresSettings:
    postgres = settings.postgres()
    if postgres is None:
        raise ConfigurationError(
            f"{role} needs EVENTFOLD_DATABASE_URL (postgresql://...); `eventfold dev` runs embedded"
        )
    return postgres


def open_views(settings: Settings, role: str, *, for_queries: bool = False) -> ViewStore:
    """The read models' store: on ``EVENTFOLD_READ_DATABASE_URL`` (default: the event store's database),
    or for ``for_queries`` (query-api) on ``EVENTFOLD_QUERY_DATABASE_URL`` (e.g. a streaming replica)."""
    from framework.adapters.postgres_views import PostgresViewStore

    require_postgres(settings, role)
    postgres = settings.query_postgres() if for_queries else settings.read_postgres()
    assert postgres is not None  # set whenever the event store's URL is
    return PostgresViewStore(postgres)


def authenticator(settings: Settings, role: str) -> Authenticator:
    """Bearer-token checks from the settings (``framework.http.auth.jwt_settings`` says who a caller
    without a token is). A missing key source without anonymous roles, an unreadable key, or
    algorithms that do not match the keys fail here, at start-up."""
    from framework.http.auth import authenticator_from_settings, jwt_settings

    return authenticator_from_settings(jwt_settings(settings, role))


def tracing(settings: Settings, role: str) -> Tracer:
    """Tracing for this process from the ``OTEL_*`` variables; the service is ``eventfold-<role>`` unless named."""
    from framework.adapters.otel import configure_tracing

    return configure_tracing(f"eventfold-{role}", dict(settings.otel))


def add_app_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", metavar="MODULE:APP",
                        help="your application, e.g. shop.app:app (EVENTFOLD_APP, [tool.eventfold] app)")


def application(settings: Settings, args: argparse.Namespace) -> App:
    """The application named by ``--app``, ``EVENTFOLD_APP`` or pyproject.toml, loaded once."""
    reference, source = app_reference(settings, args)
    return load_app(reference, source=source)


def app_reference(settings: Settings, args: argparse.Namespace) -> tuple[str, str]:
    """The reference naming the application, and where it came from (``--app``, ``EVENTFOLD_APP``, ...)."""
    return find_app_reference(getattr(args, "app", None), settings.app, Path.cwd())


def graphql_of(app: App) -> Any:
    """The application's ``GraphQLSpec``, checked (the core's ``App`` cannot name the adapter's type)."""
    from framework.graphql import GraphQLSpec

    spec = app.build_graphql()
    if not isinstance(spec, GraphQLSpec):
        raise ConfigurationError(f"App(graphql=...) must return a GraphQLSpec, not {type(spec).__name__}")
    return spec


def command_bus(settings: Settings, router: CommandRouter, store: EventStore, observer: Observer | None = None,
                tracer: Tracer | None = None) -> CommandBus:
    return CommandBus(
        router,
        store,
        max_attempts=settings.command_max_attempts,
        idempotency_lease_seconds=settings.idempotency_lease_seconds,
        observer=observer,
        tracer=tracer,
    )


def select_projectors(projectors: list[Projector], names: list[str],
                      partitions: Sequence[tuple[str, int]] = ()) -> list[Projector]:
    """The projectors named (all when none is), with the partition counts ``EVENTFOLD_PARTITIONS`` sets."""
    known = {p.name: p for p in projectors}
    unknown = [n for n in [*names, *(name for name, _ in partitions)] if n not in known]
    if unknown:
        raise ConfigurationError(f"unknown projection {unknown[0]!r}; known: {', '.join(sorted(known))}")
    counts = dict(partitions)
    chosen = [known[n] for n in names] if names else projectors
    return [with_partitions(p, counts[p.name]) if p.name in counts else p for p in chosen]


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[Any]]) -> None:
    """Run ``main(stop)`` until it returns or SIGINT/SIGTERM sets ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    asyncio.run(runner())

