"""An aggregate's past, read from the event store: its events and its state at any version or moment.

``UnitOfWork`` loads aggregates to change them now; ``History`` only reads, and can stop anywhere::

    history = History(store)
    history.load(Account, key="ACC-1", at_version=3)  # as it was after its third event
    history.load(Account, key="ACC-1", as_of=datetime(2026, 6, 30, tzinfo=UTC))  # as it stood then
    history.events(Account.id_for("ACC-1"))  # its events, each with its version and global position

It works on every ``EventStore`` adapter (the conformance suite checks it). Snapshots are not used:
the past is folded from the events, which are the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from framework.aggregate import Aggregate
from framework.errors import AggregateNotFound, ConfigurationError
from framework.events import EventEnvelope
from framework.mapper import from_stored
from framework.store import EventStore
from framework.unit_of_work import describe, noun

__all__ = ["History"]

A = TypeVar("A", bound=Aggregate)


class History:
    """Reads aggregates as they were: at a version, at a moment, or now."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    def events(self, aggregate_id: UUID, *, after_version: int = 0) -> list[EventEnvelope]:
        """One aggregate's events after ``after_version``, oldest first, each with its version,
        metadata and global ``position``; empty when it has none."""
        return [from_stored(n) for n in self._store.read_stream_with_positions(aggregate_id, after_version)]

    def load(
        self,
        aggregate_type: type[A],
        aggregate_id: UUID | None = None,
        *,
        key: str | None = None,
        at_version: int | None = None,
        as_of: datetime | None = None,
    ) -> A:
        """The aggregate (by id, or by the natural ``key`` its id derives from) as it was after its event
        number ``at_version``, or after the last of its events recorded at or before ``as_of`` (an aware
        datetime); without either, as it is now.

        ``AggregateNotFound`` when it did not exist then, or has no such version, in the caller's
        words (``account 'ACC-1' has no version 9: its latest is 4``).
        """
        _check_point(at_version, as_of)
        if (aggregate_id is None) == (key is None):
            raise ConfigurationError(f"give either the id or the key of the {noun(aggregate_type)} to load")
        aggregate_id = aggregate_id if aggregate_id is not None else aggregate_type.id_for(key or "")
        named = describe(aggregate_type, aggregate_id, key or "")
        envelopes = [from_stored(s) for s in self._store.read_stream(aggregate_id)]
        if not envelopes or envelopes[0].aggregate_type != aggregate_type.aggregate_name:
            raise AggregateNotFound(f"{named} does not exist")
        return aggregate_type.from_events(aggregate_id, (e.event for e in _until(envelopes, named, at_version, as_of)))


def _check_point(at_version: int | None, as_of: datetime | None) -> None:
    if at_version is not None and as_of is not None:
        raise ConfigurationError("give at_version or as_of, not both")
    if at_version is not None and at_version < 1:
        raise ConfigurationError(f"at_version must be 1 or more (its first event), not {at_version}")
    if as_of is not None and as_of.tzinfo is None:
        raise ConfigurationError("as_of needs a time zone (an aware datetime), as events are recorded in UTC")


def _until(envelopes: Sequence[EventEnvelope], named: str, at_version: int | None,
           as_of: datetime | None) -> Sequence[EventEnvelope]:
    """The events up to the point asked for: versions are consecutive from 1, and a moment takes the
    events in version order until the first one recorded after it."""
    if at_version is not None:
        if at_version > envelopes[-1].version:
            raise AggregateNotFound(f"{named} has no version {at_version}: its latest is {envelopes[-1].version}")
        return [e for e in envelopes if e.version <= at_version]
    if as_of is not None:
        kept = _before(envelopes, as_of)
        if not kept:
            first = envelopes[0].metadata.recorded_at.isoformat()
            raise AggregateNotFound(f"{named} did not exist yet at {as_of.isoformat()}: its first event was "
                                    f"recorded at {first}")
        return kept
    return envelopes


def _before(envelopes: Sequence[EventEnvelope], as_of: datetime) -> list[EventEnvelope]:
    kept: list[EventEnvelope] = []
    for envelope in envelopes:
        if envelope.metadata.recorded_at > as_of:
            break
        kept.append(envelope)
    return kept
