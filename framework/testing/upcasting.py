"""Old stored payloads through the real mapper: what an upcaster test needs.

    old = {"isin": "US0378331005", "name": "Apple Inc."}  # as version 1 stored it
    assert from_stored_payload(SecurityRegistered, old, version=1) == SecurityRegistered(
        isin="US0378331005", name="Apple Inc.", currency="USD")

    envelope = from_stored_document("SecurityRegistered", Path("tests/stored/registered-v1.json").read_bytes())

Both go through ``framework.mapper.from_stored``, as a replay would: the upcasters run in order, the
result is validated as the current event, and a payload no upcaster can read raises ``EventSchemaError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar, overload
from uuid import UUID, uuid4

from eventsourcing.persistence import StoredEvent

from framework.events import Event, EventEnvelope
from framework.mapper import from_stored, stored_at_version

__all__ = ["from_stored_document", "from_stored_payload"]

E = TypeVar("E", bound=Event)


@overload
def from_stored_payload(event_type: type[E], data: Mapping[str, Any], *, version: int) -> E: ...
@overload
def from_stored_payload(event_type: str, data: Mapping[str, Any], *, version: int) -> Event: ...
def from_stored_payload(event_type: type[E] | str, data: Mapping[str, Any], *, version: int) -> Event:
    """The current event for ``data``, the payload of ``event_type`` (a class or a stored name) as
    schema ``version`` stored it."""
    name = event_type if isinstance(event_type, str) else event_type.event_name
    return from_stored(stored_at_version(name, data, version)).event


def from_stored_document(
    topic: str, document: str | bytes | Mapping[str, Any], *, aggregate_id: UUID | None = None, version: int = 1
) -> EventEnvelope:
    """The envelope for a stored document (a row's ``state``, as copied from the events table) stored
    under ``topic`` (the row's ``topic``): header, metadata and payload read as a replay reads them."""
    state = json.dumps(document).encode() if isinstance(document, Mapping) else (
        document.encode() if isinstance(document, str) else document)
    return from_stored(StoredEvent(originator_id=aggregate_id or uuid4(), originator_version=version, topic=topic,
                                   state=state))
