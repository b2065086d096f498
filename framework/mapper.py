"""Turns event envelopes into ``eventsourcing`` stored events and back.

The library's default mapper does not validate pydantic events when they are
read back; this one does, after upcasting old versions to the current shape.
The stored state is one JSON document: ``{"v", "agg", "meta", "data"}``.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from pydantic import ValidationError

from framework.errors import EventSchemaError
from framework.events import EventEnvelope, EventMetadata, event_type_named

__all__ = ["from_stored", "stored_trace_context", "to_stored"]


def to_stored(envelope: EventEnvelope) -> StoredEvent:
    event = envelope.event
    document = {
        "v": event.schema_version,
        "agg": envelope.aggregate_type,
        "meta": _metadata(envelope.metadata),
        "data": event.model_dump(mode="json"),
    }
    return StoredEvent(
        originator_id=envelope.aggregate_id,
        originator_version=envelope.version,
        topic=event.event_name,
        state=json.dumps(document, separators=(",", ":")).encode(),
    )


def _metadata(metadata: EventMetadata) -> dict[str, Any]:
    """Metadata as stored; an absent trace context is left out (events stored before it look the same)."""
    return metadata.model_dump(mode="json", exclude=_NO_TRACE if metadata.trace_context is None else None)


_NO_TRACE = {"trace_context"}


def from_stored(stored: StoredEvent) -> EventEnvelope:
    document = _load_document(stored)
    event_type = event_type_named(stored.topic)
    try:
        data = event_type.upcast(document["data"], int(document["v"]))
        event = event_type.model_validate(data)
        metadata = _read_metadata(document["meta"])
    except EventSchemaError:
        raise
    except ValidationError as e:
        raise EventSchemaError(
            f"stored {stored.topic} at {stored.originator_id}/{stored.originator_version} "
            f"does not match its schema: {e.error_count()} error(s)"
        ) from e
    except (KeyError, TypeError, ValueError) as e:  # an upcaster or version that cannot read it
        raise EventSchemaError(
            f"stored {stored.topic} at {stored.originator_id}/{stored.originator_version} "
            f"cannot be upcast: {e!r}"
        ) from e
    return EventEnvelope(
        aggregate_type=str(document["agg"]),
        aggregate_id=_as_uuid(stored.originator_id),
        version=stored.originator_version,
        event=event,
        metadata=metadata,
        position=stored.id if isinstance(stored, Notification) else None,
    )


def stored_trace_context(stored: StoredEvent) -> dict[str, str] | None:
    """The W3C trace context in a stored event's metadata, without validating the event (None: none)."""
    try:
        context = json.loads(stored.state)["meta"].get("trace_context")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(context, dict) or not isinstance(context.get("traceparent"), str):
        return None
    return {str(k): str(v) for k, v in context.items()}


def _load_document(stored: StoredEvent) -> dict[str, Any]:
    try:
        document = json.loads(stored.state)
    except ValueError as e:
        raise EventSchemaError(f"stored {stored.topic} is not JSON") from e
    if not isinstance(document, dict) or not {"v", "agg", "meta", "data"} <= document.keys():
        raise EventSchemaError(f"stored {stored.topic} is not an Eventfold event document")
    return document


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def _read_metadata(stored: Any) -> EventMetadata:
    """Metadata keys this version does not know are ignored, not refused: events written by a
    newer release (a rolling upgrade) must still be readable by an older process."""
    if isinstance(stored, dict):
        stored = {k: v for k, v in stored.items() if k in EventMetadata.model_fields}
    return EventMetadata.model_validate(stored)
