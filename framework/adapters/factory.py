"""Chooses the event store adapter from settings: PostgreSQL when a URL is set, else embedded."""

from __future__ import annotations

import importlib
from pathlib import Path

from framework.commands import CommandRouter
from framework.errors import ConfigurationError
from framework.settings import Settings
from framework.store import EventStore

__all__ = ["load_router", "open_store"]

MEMORY = ":memory:"


def open_store(settings: Settings) -> EventStore:
    postgres = settings.postgres()
    if postgres is not None:
        from framework.adapters.postgres import PostgresEventStore

        return PostgresEventStore(postgres)
    if settings.sqlite_path == MEMORY:
        from framework.adapters.memory import MemoryEventStore

        return MemoryEventStore()
    from framework.adapters.sqlite import SQLiteEventStore

    Path(settings.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
    return SQLiteEventStore(settings.sqlite_path)


def load_router(spec: str) -> CommandRouter:
    """Import ``module:function`` and call it for the application's command router."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"EVENTFOLD_APP={spec!r} must look like 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"EVENTFOLD_APP={spec!r} cannot be loaded: {e}") from None
    router = factory()
    if not isinstance(router, CommandRouter):
        raise ConfigurationError(f"EVENTFOLD_APP={spec!r} did not return a CommandRouter")
    return router
