"""The unit of work: the aggregates one command loaded or created, and their new events."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from framework.aggregate import Aggregate
from framework.cache import AggregateCache
from framework.errors import AggregateNotFound, AlreadyExists, ConfigurationError, VersionMismatch
from framework.events import EventEnvelope, EventMetadata
from framework.ids import random_uuid
from framework.mapper import from_stored
from framework.snapshots import from_snapshot
from framework.store import EventStore

__all__ = ["StaleCache", "Touched", "UnitOfWork", "checked_expected_version"]

A = TypeVar("A", bound=Aggregate)


@dataclass
class Touched:
    """An aggregate in this unit of work and the version it was loaded at.

    ``verified`` is False when that version was taken on trust (a cached aggregate whose newer events
    were not read, a new one whose id was not looked up): the store may be further along."""

    aggregate: Aggregate
    loaded_version: int
    verified: bool = True


class StaleCache(Exception):
    """An expected version was checked on cached state the store has moved past: the command must run
    again on the store's state before its expectation can be answered (the bus does so)."""


class UnitOfWork:
    """Loads aggregates for one attempt at a command and collects what it changed.

    With ``trust_cache`` (a command's first attempt) cached aggregates are used
    without reading newer events and new aggregates are not looked up first:
    the append's version check rejects any decision made on stale state, and
    the bus then retries with ``trust_cache=False``, reading the store. This is
    optimistic concurrency doing its job, and saves reads on the common path.
    """

    def __init__(
        self, store: EventStore, cache: AggregateCache | None = None, *, trust_cache: bool = False,
        before_load: Callable[[UUID], None] | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._trust_cache = trust_cache and cache is not None
        self._touched: dict[UUID, Touched] = {}
        # Called with an aggregate's id before this unit loads it; may raise to stop the attempt early.
        self._before_load = before_load

    def find(self, aggregate_type: type[A], aggregate_id: UUID | None = None, *, key: str | None = None,
             expected_version: int | None = None) -> A | None:
        """The aggregate, or None if it has no events. Give its id, or the natural ``key`` it was
        created for (``Type.id_for(key)``).

        ``expected_version``: the version the caller decided on (0: it must not exist yet);
        ``VersionMismatch`` if the stored aggregate is at another one."""
        aggregate_id = _id_of(aggregate_type, aggregate_id, key)
        touched = self._touched.get(aggregate_id)
        found = _as(aggregate_type, touched.aggregate, key) if touched else self._load(aggregate_type, aggregate_id)
        if expected_version is not None:
            self.expect(aggregate_id, expected_version, describe(aggregate_type, aggregate_id, key or ""))
        return found

    def get(self, aggregate_type: type[A], aggregate_id: UUID | None = None, *, key: str | None = None,
            label: str = "", expected_version: int | None = None) -> A:
        """The aggregate, or ``AggregateNotFound`` naming it in the caller's words.

        ``unit.get(Account, key=command.account_number)`` loads ``Account.id_for(key)`` and, when there
        is none, says ``account 'ACC-1' does not exist`` (the key the command carried, not the derived
        id). Loading by id, ``label`` names it in that message instead of the id.

        ``expected_version``: the version the caller decided on; ``VersionMismatch`` (409) naming the
        current one if the stored aggregate is at another. ``unit.get(Account, key=..., expected_version=3)``
        """
        aggregate = self.find(aggregate_type, aggregate_id, key=key)
        if aggregate is None:
            raise AggregateNotFound(f"{describe(aggregate_type, aggregate_id, key or label)} does not exist")
        if expected_version is not None:
            self.expect(aggregate.id, expected_version, describe(aggregate_type, aggregate.id, key or label))
        return aggregate

    def expect(self, aggregate_id: UUID, expected_version: int, name: str) -> None:
        """``VersionMismatch`` unless the aggregate was loaded at ``expected_version`` (0: it was not
        found) and the store holds nothing newer. ``name`` says which aggregate in the message.

        A version taken on trust from the cache is confirmed with the store first: if the store has
        moved past it, ``StaleCache`` asks for the command to run again on fresh state, whichever way
        the comparison went (the cached state may have been what made it match, or not)."""
        expected_version = checked_expected_version(expected_version)
        touched = self._touched.get(aggregate_id)
        loaded = touched.loaded_version if touched else 0
        if touched is not None and not touched.verified:
            if self._store.read_stream(aggregate_id, loaded)[:1]:
                raise StaleCache(f"{name} is past version {loaded} in the store")
            touched.verified = True
        if loaded != expected_version:
            raise VersionMismatch(_mismatch(name, expected_version, loaded), expected_version=expected_version,
                                  current_version=loaded)

    def loaded_version(self, aggregate_id: UUID) -> int:
        """The version this unit loaded the aggregate at (0: new, or not in this unit)."""
        touched = self._touched.get(aggregate_id)
        return touched.loaded_version if touched else 0

    def add(self, aggregate: A, *, key: str | None = None, label: str = "") -> A:
        """Track a new aggregate; ``AlreadyExists`` if one with its id is stored, naming it by ``key``
        (the natural key its id derives from, checked) or ``label``, else by its id."""
        if key is not None and aggregate.id != type(aggregate).id_for(key):
            raise ConfigurationError(
                f"{describe(type(aggregate), aggregate.id, '')} was not created for the key {key!r}"
            )
        if aggregate.id in self._touched or self._stored(aggregate.id):
            raise AlreadyExists(f"{describe(type(aggregate), aggregate.id, key or label)} already exists")
        self._touched[aggregate.id] = Touched(aggregate, 0, verified=not self._trust_cache)
        return aggregate

    def _stored(self, aggregate_id: UUID) -> bool:
        if self._trust_cache:
            return False  # a duplicate fails the append; the retry reads and reports it
        return bool(self._store.read_stream(aggregate_id, 0)[:1])

    def _load(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        """The aggregate, now tracked by this unit (None, and not tracked: it has no events)."""
        if self._before_load is not None:
            self._before_load(aggregate_id)
        aggregate = self._from_cache(aggregate_type, aggregate_id)
        if aggregate is not None and self._trust_cache:
            self._touched[aggregate_id] = Touched(aggregate, aggregate.version, verified=False)
            return aggregate
        if aggregate is None:
            aggregate = self._from_latest_snapshot(aggregate_type, aggregate_id)
        after = aggregate.version if aggregate else 0
        envelopes = [from_stored(s) for s in self._store.read_stream(aggregate_id, after)]
        if aggregate is None:
            if not envelopes or envelopes[0].aggregate_type != aggregate_type.aggregate_name:
                return None
            aggregate = aggregate_type.blank(aggregate_id)
        aggregate.replay(e.event for e in envelopes)
        self._touched[aggregate_id] = Touched(aggregate, aggregate.version)
        return aggregate

    def _from_cache(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        return self._cache.get(aggregate_type, aggregate_id) if self._cache else None

    def remember(self) -> None:
        """After a successful save: keep the saved state for the next command."""
        if self._cache is not None:
            for touched in self._touched.values():
                self._cache.put(touched.aggregate)

    def _from_latest_snapshot(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        if not aggregate_type.snapshot_every:
            return None
        snapshot = self._store.latest_snapshot(aggregate_id)
        return from_snapshot(aggregate_type, snapshot) if snapshot else None

    @property
    def touched(self) -> list[Touched]:
        return list(self._touched.values())

    def collect(self, metadata: EventMetadata) -> list[EventEnvelope]:
        """Every new event, numbered per aggregate and stamped with metadata: the first takes ``metadata``
        itself (a fresh one per collect, its event id its own), each other a copy with an id of its own."""
        envelopes: list[EventEnvelope] = []
        for touched in self._touched.values():
            aggregate = touched.aggregate
            events = aggregate.collect_events()
            first = aggregate.version - len(events) + 1
            for offset, new_event in enumerate(events):
                stamped = metadata.model_copy(update={"event_id": random_uuid()}) if envelopes else metadata
                envelopes.append(
                    EventEnvelope(
                        aggregate_type=type(aggregate).aggregate_name,
                        aggregate_id=aggregate.id,
                        version=first + offset,
                        event=new_event,
                        metadata=stamped,
                    )
                )
        return envelopes


def checked_expected_version(value: int) -> int:
    """An expected version as given in code: a whole number, 0 or more (0: must not exist yet)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"an expected version is a whole number, 0 or more, not {value!r}")
    return value


def _mismatch(name: str, expected: int, current: int) -> str:
    if current == 0:
        return f"{name} does not exist; the command expected version {expected}"
    if expected == 0:
        return f"{name} exists already, at version {current}; the command expected it not to exist yet"
    return f"{name} is at version {current}; the command expected version {expected}"


def _as(aggregate_type: type[A], aggregate: Aggregate, key: str | None) -> A:
    if not isinstance(aggregate, aggregate_type):
        raise AggregateNotFound(f"{describe(aggregate_type, aggregate.id, key or '')} does not exist"
                                f" ({aggregate.id} is a {noun(type(aggregate))})")
    return aggregate


def _id_of(aggregate_type: type[Aggregate], aggregate_id: UUID | None, key: str | None) -> UUID:
    if (aggregate_id is None) == (key is None):
        raise ConfigurationError(f"give either the id or the key of the {noun(aggregate_type)} to load")
    return aggregate_id if aggregate_id is not None else aggregate_type.id_for(key or "")


def noun(aggregate_type: type[Aggregate]) -> str:
    """An aggregate type in words: ``CorporateAction`` is "corporate action"."""
    return _WORD_BOUNDARY.sub(" ", aggregate_type.aggregate_name).lower()


def describe(aggregate_type: type[Aggregate], aggregate_id: UUID | None, key: str) -> str:
    """An aggregate as a user knows it: by the key they sent (``account 'ACC-1'``), else by its id."""
    return f"{noun(aggregate_type)} {key!r}" if key else f"{noun(aggregate_type)} {aggregate_id}"


_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

