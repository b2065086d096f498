"""Fixtures of the unit suite: in-process stores only, no servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from example_app.handlers import router as example_router
from framework import CommandBus, EventStore
from framework.adapters.memory import MemoryEventStore
from framework.adapters.sqlite import SQLiteEventStore


@pytest.fixture
def memory_store() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    store = SQLiteEventStore(str(tmp_path / "events.sqlite3"))
    store.create_schema()
    yield store
    store.close()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> EventStore:
    """Each embedded adapter in turn: bus behaviour must not depend on which one."""
    fixture: EventStore = request.getfixturevalue(f"{request.param}_store")
    return fixture


@pytest.fixture
def example_bus(memory_store: MemoryEventStore) -> CommandBus:
    return CommandBus(example_router, memory_store)
