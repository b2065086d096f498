"""Chooses the event store adapter from settings: PostgreSQL when a URL is set, else embedded."""

from __future__ import annotations

from pathlib import Path

from framework.settings import Settings
from framework.store import EventStore

__all__ = ["open_store"]

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
