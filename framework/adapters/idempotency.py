"""The decision every store adapter makes when a claimed key is already present."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from framework.store import ClaimOutcome, CommandResult, InFlight, Replay

__all__ = ["KeyRecord", "outcome_for_existing"]


@dataclass(frozen=True)
class KeyRecord:
    """An idempotency key as stored."""

    request_hash: str
    completed: bool
    aggregate_id: UUID | None = None
    version: int = 0
    position: int | None = None


def outcome_for_existing(record: KeyRecord) -> ClaimOutcome:
    if not record.completed:
        return InFlight(record.request_hash)
    result = CommandResult(record.aggregate_id, record.version, record.position)
    return Replay(record.request_hash, result)
