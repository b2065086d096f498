"""The per-event records the bus path builds without their frozen dataclasses' ``__init__``
(``framework.store.notification``, the envelopes of ``framework.mapper.from_stored``) are the
objects the constructors make: equal, hashed alike, frozen, with the same fields."""

from __future__ import annotations

import dataclasses
from uuid import uuid4

import pytest

from example_app.accounts import SecuritiesCredited
from framework import EventEnvelope, EventMetadata
from framework.mapper import from_stored, to_stored
from framework.store import Notification, notification


def test_a_notification_is_the_one_its_constructor_makes() -> None:
    aggregate = uuid4()
    built = notification(aggregate, 3, "Credited", b'{"a": 1}', 42)
    made = Notification(originator_id=aggregate, originator_version=3, topic="Credited", state=b'{"a": 1}', id=42)
    assert type(built) is Notification
    assert built == made and hash(built) == hash(made) and repr(built) == repr(made)
    assert dataclasses.asdict(built) == dataclasses.asdict(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = 43  # type: ignore[misc]


def test_a_decoded_envelope_is_the_one_its_constructor_makes() -> None:
    aggregate = uuid4()
    meta = EventMetadata(correlation_id="c-1", causation_id="c-1", actor="test")
    stored = to_stored(EventEnvelope("Account", aggregate, 5, SecuritiesCredited(isin="US0378331005", quantity=10),
                                     meta))
    delivered = Notification(stored.originator_id, stored.originator_version, stored.topic, stored.state, 77)
    built = from_stored(delivered)
    made = EventEnvelope(aggregate_type="Account", aggregate_id=aggregate, version=5, event=built.event,
                         metadata=built.metadata, position=77)
    assert type(built) is EventEnvelope
    assert built == made and hash(built) == hash(made) and repr(built) == repr(made)
    assert built.event == SecuritiesCredited(isin="US0378331005", quantity=10)
    assert built.event_name == "SecuritiesCredited"
    assert from_stored(stored).position is None  # a stored event (not a notification) has no position
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.version = 6  # type: ignore[misc]
