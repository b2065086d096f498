"""What the CLI commands share: opening adapters from settings, loading the app, running loops."""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from framework.adapters.factory import load_router, open_store
from framework.bus import CommandBus
from framework.errors import ConfigurationError
from framework.observe import Observer
from framework.projector import Projector
from framework.security import Authenticator
from framework.settings import PostgresSettings, Settings
from framework.store import EventStore
from framework.tracing import Tracer
from framework.views import ViewStore

__all__ = [
    "authenticator",
    "command_bus",
    "load_graphql",
    "load_projectors",
    "load_router",
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


def open_views(postgres: PostgresSettings) -> ViewStore:
    from framework.adapters.postgres_views import PostgresViewStore

    return PostgresViewStore(postgres)


def authenticator(settings: Settings, role: str) -> Authenticator:
    """Bearer-token checks from the settings (``framework.http.auth.jwt_settings`` says who a caller
    without a token is). A missing key source without anonymous roles, an unreadable key, or
    algorithms that do not match the keys fail here, at start-up."""
    from framework.http.auth import authenticator_from_settings, jwt_settings

    return authenticator_from_settings(jwt_settings(settings, role))


def tracing(role: str) -> Tracer:
    """Tracing for this process from the ``OTEL_*`` variables; the service is ``eventfold-<role>`` unless named."""
    from framework.adapters.otel import configure_tracing

    return configure_tracing(f"eventfold-{role}")


def command_bus(settings: Settings, store: EventStore, observer: Observer | None = None,
                tracer: Tracer | None = None) -> CommandBus:
    return CommandBus(
        load_router(settings.app),
        store,
        max_attempts=settings.command_max_attempts,
        idempotency_lease_seconds=settings.idempotency_lease_seconds,
        observer=observer,
        tracer=tracer,
    )


def load_projectors(spec: str) -> list[Projector]:
    """Import ``module:function`` and call it for the projectors (EVENTFOLD_PROJECTIONS)."""
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigurationError(f"EVENTFOLD_PROJECTIONS={spec!r} cannot be loaded: {e}") from None
    projectors = list(factory())
    if not all(isinstance(p, Projector) for p in projectors):
        raise ConfigurationError(f"EVENTFOLD_PROJECTIONS={spec!r} must return Projector instances")
    return projectors


def load_graphql(spec: str) -> Any:
    """Import ``module:function`` returning the application's ``GraphQLSpec`` (EVENTFOLD_GRAPHQL)."""
    from framework.graphql import GraphQLSpec

    module_name, _, attribute = spec.partition(":")
    try:
        built = getattr(importlib.import_module(module_name), attribute)()
    except (ImportError, AttributeError, ValueError, TypeError) as e:
        raise ConfigurationError(f"EVENTFOLD_GRAPHQL={spec!r} cannot be loaded: {e}") from None
    if not isinstance(built, GraphQLSpec):
        raise ConfigurationError(f"EVENTFOLD_GRAPHQL={spec!r} must return a GraphQLSpec")
    return built


def select_projectors(projectors: list[Projector], names: list[str]) -> list[Projector]:
    known = {p.name: p for p in projectors}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigurationError(f"unknown projection {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return [known[n] for n in names] if names else projectors


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[Any]]) -> None:
    """Run ``main(stop)`` until it returns or SIGINT/SIGTERM sets ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    asyncio.run(runner())

