"""Snapshots: an aggregate's typed state at a version, so loading skips old events."""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from framework.aggregate import Aggregate
from framework.mapper import decode_snapshot, encode_snapshot
from framework.store import StoredEvent

__all__ = ["from_snapshot", "snapshot_due", "to_snapshot"]

A = TypeVar("A", bound=Aggregate)


def snapshot_due(aggregate: Aggregate, previous_version: int) -> bool:
    """Whether the versions just saved crossed a multiple of ``snapshot_every``."""
    every = type(aggregate).snapshot_every
    if not every:
        return False
    return aggregate.version // every > previous_version // every


def to_snapshot(aggregate: Aggregate) -> StoredEvent:
    return StoredEvent(
        originator_id=aggregate.id,
        originator_version=aggregate.version,
        topic=type(aggregate).aggregate_name,
        state=encode_snapshot(type(aggregate).snapshot_version, aggregate.model_dump(mode="json")),
    )


def from_snapshot(aggregate_type: type[A], snapshot: StoredEvent) -> A | None:
    """The aggregate as snapshotted, or None when the snapshot is not of this shape."""
    decoded = decode_snapshot(snapshot) if snapshot.topic == aggregate_type.aggregate_name else None
    if decoded is None or decoded[0] != aggregate_type.snapshot_version:
        return None  # outdated or damaged: replaying the events is always correct
    try:
        return aggregate_type.model_validate(decoded[1])
    except ValidationError:
        return None
