"""Turns event envelopes into ``eventsourcing`` stored events and back.

The library's default mapper does not validate pydantic events when they are
read back; this one does, after upcasting old versions to the current shape.
The stored state is one JSON document: ``{"v", "agg", "meta", "data"}``. This
module is the only one that reads or writes stored documents: the header of an
event (``stored_header``, without validating its data) and snapshots' documents too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from eventsourcing.persistence import Notification, StoredEvent
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from framework.errors import EventSchemaError
from framework.events import Event, EventEnvelope, EventMetadata, built_envelope, event_type_named

__all__ = [
    "RawDocument",
    "StoredHeader",
    "decode_snapshot",
    "encode_snapshot",
    "from_stored",
    "optional_moment",
    "optional_text",
    "raw_document",
    "stored_at_version",
    "stored_header",
    "stored_trace_context",
    "to_stored",
]


# What json.dumps(..., separators=(",", ":")) builds on every call, built once (a document per event).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


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
        state=_COMPACT.encode(document).encode(),
    )


def stored_at_version(
    event_name: str,
    data: Mapping[str, Any],
    schema_version: int,
    *,
    aggregate_type: str = "",
    aggregate_id: UUID | None = None,
    version: int = 1,
    metadata: EventMetadata | None = None,
) -> StoredEvent:
    """An event as a store holds it, written when the event's payload was ``data`` at ``schema_version``
    (what an older release stored): ``from_stored`` upcasts it (testing upcasters with old payloads)."""
    document = {"v": schema_version, "agg": aggregate_type, "meta": _metadata(metadata or EventMetadata()),
                "data": dict(data)}
    return StoredEvent(originator_id=aggregate_id or uuid4(), originator_version=version, topic=event_name,
                       state=_COMPACT.encode(document).encode())


def _metadata(metadata: EventMetadata) -> dict[str, Any]:
    """Metadata as stored; an absent trace context is left out (events stored before it look the same)."""
    return metadata.model_dump(mode="json", exclude=_NO_TRACE if metadata.trace_context is None else None)


_NO_TRACE = {"trace_context"}


def from_stored(stored: StoredEvent) -> EventEnvelope:
    fast = _from_current(stored)
    if fast is not None:
        return fast
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


def _from_current(stored: StoredEvent) -> EventEnvelope | None:
    """The common case in one pydantic call on the stored JSON: an event stored at its class's
    current schema version, with metadata this version knows. Anything else (an older version to
    upcast, unknown metadata keys, an unknown topic, a document that does not validate) returns
    None, and the general path decodes it or says what is wrong with it."""
    try:
        event_type = event_type_named(stored.topic)
    except EventSchemaError:
        return None
    validator = _DOCUMENTS.get(event_type) or _document_validator(event_type)
    try:
        document = validator.validate_json(stored.state)
    except ValidationError:
        return None
    originator = stored.originator_id
    # Every stored event a catch-up applies is built here: ``built_envelope`` is EventEnvelope(...) at less cost.
    return built_envelope(document["agg"], originator if isinstance(originator, UUID) else UUID(originator),
                          stored.originator_version, document["data"], document["meta"],
                          stored.id if isinstance(stored, Notification) else None)


def _document_validator(event_type: type[Event]) -> Any:
    """The validator of a whole document whose "v" is the current version (nothing to upcast):
    "data" validates as the event class, "meta" as EventMetadata (extra keys refused here)."""
    document = TypedDict(  # type: ignore[misc]  # noqa: UP013 - built per event class
        f"_{event_type.__name__}Document",
        {"v": Literal[event_type.schema_version], "agg": str, "meta": EventMetadata, "data": event_type},
    )
    validator = TypeAdapter(document).validator  # called directly: the adapter's wrapper costs a call
    _DOCUMENTS[event_type] = validator
    return validator


_DOCUMENTS: dict[type[Event], Any] = {}  # event class -> pydantic-core validator of its documents


@dataclass(frozen=True)
class StoredHeader:
    """What a stored event's document says besides its data, read without validating the event
    (for the relay's subjects and headers, a projection's lag, a trace's parent). Each field is
    None when the document lacks it or it has the wrong type; the trace context keeps string values."""

    aggregate_type: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    recorded_at: datetime | None = None
    trace_context: dict[str, str] | None = None


def stored_header(stored: StoredEvent) -> StoredHeader:
    """The header of a stored event's document (an empty one when it is not JSON or not an object)."""
    try:
        document = json.loads(stored.state)
    except ValueError:
        return StoredHeader()
    if not isinstance(document, dict):
        return StoredHeader()
    meta = document.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    return StoredHeader(
        aggregate_type=optional_text(document.get("agg")),
        correlation_id=optional_text(meta.get("correlation_id")),
        causation_id=optional_text(meta.get("causation_id")),
        recorded_at=optional_moment(meta.get("recorded_at")),
        trace_context=_strings(meta.get("trace_context")),
    )


@dataclass(frozen=True)
class RawDocument:
    """A stored event's document as it is stored: neither validated nor upcast (for people to read, in
    the operator console). A document that is not a JSON object is all ``data``."""

    aggregate_type: str | None
    schema_version: int | None
    metadata: dict[str, Any]
    data: Any


def raw_document(stored: StoredEvent) -> RawDocument:
    """The document of ``stored`` as stored, whatever the event classes of this process say about it."""
    try:
        document = json.loads(stored.state)
    except ValueError:
        text = stored.state.decode("utf-8", "replace") if isinstance(stored.state, bytes) else str(stored.state)
        return RawDocument(None, None, {}, text)
    if not isinstance(document, dict):
        return RawDocument(None, None, {}, document)
    meta, version = document.get("meta"), document.get("v")
    return RawDocument(optional_text(document.get("agg")), version if isinstance(version, int) else None,
                       meta if isinstance(meta, dict) else {}, document.get("data"))


def stored_trace_context(stored: StoredEvent) -> dict[str, str] | None:
    """The W3C trace context in a stored event's metadata, without validating the event (None: none)."""
    context = stored_header(stored).trace_context
    return context if context is not None and "traceparent" in context else None


def optional_text(value: Any) -> str | None:
    """``value`` as text, or None: a stored document's field of unknown shape."""
    return None if value is None else str(value)


def optional_moment(value: Any) -> datetime | None:
    """``value`` as a datetime when it is an ISO 8601 string, else None."""
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _strings(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def encode_snapshot(schema_version: int, state: dict[str, Any]) -> bytes:
    """A snapshot's stored document: ``{"v": schema_version, "state": state}``."""
    return _COMPACT.encode({"v": schema_version, "state": state}).encode()


def decode_snapshot(stored: StoredEvent) -> tuple[Any, Any] | None:
    """A snapshot document's schema version and state, unvalidated; None when it is not one."""
    try:
        document = json.loads(stored.state)
    except ValueError:
        return None
    if not isinstance(document, dict) or "state" not in document:
        return None
    return document.get("v"), document["state"]


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
        stored = {k: v for k, v in stored.items() if k in _METADATA_FIELDS}
    return EventMetadata.model_validate(stored)


_METADATA_FIELDS = frozenset(EventMetadata.model_fields)
