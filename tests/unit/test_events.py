"""Events: stable names, schema versions with upcasters, validation on read, metadata."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from example_app.accounts import AccountOpened, SecuritiesCredited
from example_app.corporate_actions import CorporateActionAnnounced
from example_app.securities import SecurityRegistered
from framework import ConfigurationError, Event, EventEnvelope, EventMetadata, EventSchemaError, UnitOfWork
from framework.adapters.memory import MemoryEventStore
from framework.events import event_type_named, registered_event_names
from framework.mapper import StoredHeader, from_stored, stored_header, stored_trace_context, to_stored
from framework.store import Notification, StoredEvent

from .domain import APPLE, Counter, CounterIncremented, CounterStarted, append_events

# --- names -----------------------------------------------------------------------------------


class UnitProbeDefaultNamed(Event):
    value: int


class UnitProbeRenamed(Event):
    event_name: ClassVar[str] = "eventfold-unit:probe.renamed"
    value: int


class UnitProbeChild(UnitProbeRenamed):
    pass


def test_the_default_name_is_the_class_name_not_the_module_path() -> None:
    assert UnitProbeDefaultNamed.event_name == "UnitProbeDefaultNamed"
    assert event_type_named("UnitProbeDefaultNamed") is UnitProbeDefaultNamed


def test_example_events_have_their_class_names() -> None:
    for event_type in (SecurityRegistered, AccountOpened, SecuritiesCredited, CorporateActionAnnounced):
        assert event_type.event_name == event_type.__name__
        assert event_type.event_name in registered_event_names()


def test_a_classvar_overrides_the_name() -> None:
    assert UnitProbeRenamed.event_name == "eventfold-unit:probe.renamed"
    assert event_type_named("eventfold-unit:probe.renamed") is UnitProbeRenamed
    assert "event_name" not in UnitProbeRenamed.model_fields


def test_a_subclass_gets_its_own_name_not_its_parents() -> None:
    assert UnitProbeChild.event_name == "UnitProbeChild"
    assert event_type_named("UnitProbeChild") is UnitProbeChild


def test_the_stored_topic_is_the_event_name() -> None:
    stored = to_stored(envelope(UnitProbeDefaultNamed(value=1)))
    assert stored.topic == "UnitProbeDefaultNamed"
    assert __name__ not in stored.topic
    assert to_stored(envelope(UnitProbeRenamed(value=1))).topic == "eventfold-unit:probe.renamed"


def test_two_classes_with_one_name_raise_configuration_error() -> None:
    class UnitProbeFirstOfTwo(Event):
        event_name: ClassVar[str] = "eventfold-unit:probe.duplicate"

    with pytest.raises(ConfigurationError, match=r"eventfold-unit:probe\.duplicate"):

        class UnitProbeSecondOfTwo(Event):
            event_name: ClassVar[str] = "eventfold-unit:probe.duplicate"

    assert event_type_named("eventfold-unit:probe.duplicate") is UnitProbeFirstOfTwo


def _define_probe_in_scope_a() -> type[Event]:
    class UnitProbeSameClassName(Event):
        pass

    return UnitProbeSameClassName


def _define_probe_in_scope_b() -> type[Event]:
    class UnitProbeSameClassName(Event):
        pass

    return UnitProbeSameClassName


def test_two_classes_with_one_class_name_in_different_places_collide() -> None:
    _define_probe_in_scope_a()
    with pytest.raises(ConfigurationError, match="UnitProbeSameClassName"):
        _define_probe_in_scope_b()


def test_redefining_the_same_class_is_not_a_collision() -> None:
    """A class defined again at the same qualified name (a re-run, a reload) replaces itself."""
    first = _define_probe_in_scope_a()
    second = _define_probe_in_scope_a()
    assert first is not second
    assert event_type_named("UnitProbeSameClassName") is second


def test_an_unknown_name_is_an_event_schema_error() -> None:
    with pytest.raises(EventSchemaError, match="no event class"):
        event_type_named("eventfold-unit:never-defined")


def test_events_are_frozen_and_forbid_extra_fields() -> None:
    probe = UnitProbeDefaultNamed(value=1)
    with pytest.raises(ValidationError):
        probe.value = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        UnitProbeDefaultNamed(value=1, extra=2)  # type: ignore[call-arg]


def test_events_are_validated_when_written() -> None:
    with pytest.raises(ValidationError):
        UnitProbeDefaultNamed(value="many")  # type: ignore[arg-type]
    counter = Counter.start(uuid4(), "c")
    with pytest.raises(ValidationError):
        counter.increment("many")  # type: ignore[arg-type]
    assert counter.version == 1  # the bad event was neither applied nor queued
    assert len(counter.pending_events) == 1


# --- schema versions and upcasters ------------------------------------------------------------


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    data["amount"] = data.pop("price")
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    assert "amount" in data, "upcasters must run in order"
    return {**data, "currency": "EUR"}


class UnitQuoteRecorded(Event):
    """v1: {price}; v2 renamed price to amount; v3 added currency (old quotes were EUR)."""

    event_name: ClassVar[str] = "eventfold-unit:QuoteRecorded"
    schema_version: ClassVar[int] = 3
    upcasters: ClassVar[dict[int, Any]] = {1: _v1_to_v2, 2: _v2_to_v3}

    amount: Decimal
    currency: str


def test_missing_upcasters_fail_at_class_definition() -> None:
    with pytest.raises(ConfigurationError, match=r"\[2\]"):

        class UnitProbeMissingOne(Event):
            event_name: ClassVar[str] = "eventfold-unit:probe.missing-one"
            schema_version: ClassVar[int] = 3
            upcasters: ClassVar[dict[int, Any]] = {1: _v1_to_v2}

    with pytest.raises(ConfigurationError, match=r"\[1\]"):

        class UnitProbeMissingAll(Event):
            event_name: ClassVar[str] = "eventfold-unit:probe.missing-all"
            schema_version: ClassVar[int] = 2

    for name in ("eventfold-unit:probe.missing-one", "eventfold-unit:probe.missing-all"):
        with pytest.raises(EventSchemaError):
            event_type_named(name)  # a class that failed its checks is not registered


AGGREGATE_ID = UUID("4a4c5f0c-5b1b-4c0d-9d55-7f6c0b1e2a33")
META = {
    "event_id": "0d5c8a4e-7b0b-4f43-8a43-7e6f1c9a0b11",
    "recorded_at": "2020-01-02T03:04:05.123456Z",
    "correlation_id": "corr-1",
    "causation_id": "cause-1",
    "actor": "alice",
}


def stored_document(
    topic: str, version: int, data: Any, *, meta: Any = None, position: int | None = None, **doc: Any
) -> StoredEvent:
    document = {"v": version, "agg": "Quotes", "meta": META if meta is None else meta, "data": data, **doc}
    state = json.dumps(document).encode()
    if position is not None:
        return Notification(AGGREGATE_ID, 1, topic, state, position)
    return StoredEvent(AGGREGATE_ID, 1, topic, state)


@pytest.mark.parametrize(
    ("version", "data"),
    [
        (1, {"price": "12.50"}),
        (2, {"amount": "12.50"}),
        (3, {"amount": "12.50", "currency": "EUR"}),
    ],
)
def test_old_versions_are_upcast_and_validated_on_read(version: int, data: dict[str, Any]) -> None:
    envelope = from_stored(stored_document("eventfold-unit:QuoteRecorded", version, data))
    assert envelope.event == UnitQuoteRecorded(amount=Decimal("12.50"), currency="EUR")
    assert type(envelope.event.amount) is Decimal  # type: ignore[attr-defined]


def test_an_upcast_event_is_still_validated() -> None:
    with pytest.raises(EventSchemaError, match="does not match its schema"):
        from_stored(stored_document("eventfold-unit:QuoteRecorded", 1, {"price": "twelve"}))


def test_new_events_are_written_at_the_current_version() -> None:
    stored = to_stored(envelope(UnitQuoteRecorded(amount=Decimal("1"), currency="USD")))
    assert json.loads(stored.state)["v"] == 3


def test_a_stored_version_newer_than_the_code_is_refused() -> None:
    with pytest.raises(EventSchemaError, match="newer than this code"):
        from_stored(stored_document("eventfold-unit:QuoteRecorded", 4, {"amount": "1", "currency": "EUR"}))


@pytest.mark.parametrize(
    "data",
    [
        {"value": "not a number"},
        {"value": 1, "surplus": True},  # extra fields are forbidden on read too
        {},
        ["value", 1],
    ],
)
def test_stored_data_that_violates_the_schema_is_refused(data: Any) -> None:
    with pytest.raises(EventSchemaError, match="UnitProbeDefaultNamed"):
        from_stored(stored_document("UnitProbeDefaultNamed", 1, data))


def test_validators_run_on_read() -> None:
    bad_isin = {"isin": "US0378331006", "name": "Apple", "currency": "USD"}
    with pytest.raises(EventSchemaError):
        from_stored(stored_document("SecurityRegistered", 1, bad_isin))


def test_an_unknown_topic_is_refused() -> None:
    with pytest.raises(EventSchemaError, match="eventfold-unit:gone"):
        from_stored(stored_document("eventfold-unit:gone", 1, {}))


def test_metadata_that_violates_its_schema_is_refused() -> None:
    with pytest.raises(EventSchemaError):
        from_stored(stored_document("UnitProbeDefaultNamed", 1, {"value": 1}, meta={**META, "event_id": "x"}))


@pytest.mark.parametrize(
    "state",
    [b"not json", b"[]", b'{"v": 1, "data": {}}', b'"text"', b"\xff\xfe"],
)
def test_a_state_that_is_not_an_event_document_is_refused(state: bytes) -> None:
    with pytest.raises(EventSchemaError):
        from_stored(StoredEvent(AGGREGATE_ID, 1, "UnitProbeDefaultNamed", state))


def test_a_bad_stored_event_fails_loading_its_aggregate() -> None:
    store = MemoryEventStore()
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"))
    document = {"v": 1, "agg": "Counter", "meta": META, "data": {"by": "lots"}}
    store.append([StoredEvent(counter_id, 2, CounterIncremented.event_name, json.dumps(document).encode())])
    with pytest.raises(EventSchemaError):
        UnitOfWork(store).find(Counter, counter_id)


# --- envelopes and metadata ------------------------------------------------------------------


def envelope(event: Event, metadata: EventMetadata | None = None, version: int = 1) -> EventEnvelope:
    return EventEnvelope("Quotes", AGGREGATE_ID, version, event, metadata or EventMetadata())


def test_metadata_defaults() -> None:
    first, second = EventMetadata(), EventMetadata()
    assert first.event_id != second.event_id
    assert first.recorded_at.tzinfo is not None
    assert abs((datetime.now(UTC) - first.recorded_at).total_seconds()) < 60
    assert (first.correlation_id, first.causation_id, first.actor) == (None, None, None)


def test_envelope_round_trip_keeps_event_metadata_and_position() -> None:
    metadata = EventMetadata(
        event_id=uuid4(),
        recorded_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        correlation_id="corr-7",
        causation_id="cause-7",
        actor="bob@example.com",
    )
    original = envelope(UnitQuoteRecorded(amount=Decimal("0.000001"), currency="JPY"), metadata, version=7)
    stored = to_stored(original)
    assert stored.originator_version == 7
    notification = Notification(stored.originator_id, 7, stored.topic, stored.state, id=42)
    restored = from_stored(notification)
    assert restored == EventEnvelope("Quotes", AGGREGATE_ID, 7, original.event, metadata, position=42)
    assert restored.metadata.recorded_at == metadata.recorded_at
    assert restored.metadata.recorded_at.utcoffset() is not None
    assert isinstance(restored.metadata.event_id, UUID)
    assert restored.event_name == "eventfold-unit:QuoteRecorded"


def test_a_stored_event_outside_the_notification_log_has_no_position() -> None:
    assert from_stored(to_stored(envelope(UnitProbeDefaultNamed(value=3)))).position is None


def test_metadata_round_trip_with_nothing_optional_set() -> None:
    original = envelope(UnitProbeDefaultNamed(value=3))
    assert from_stored(to_stored(original)).metadata == original.metadata


def test_rich_example_event_round_trip() -> None:
    announced = CorporateActionAnnounced.model_validate(
        {
            "action_id": "CA-9",
            "isin": APPLE,
            "record_date": "2024-01-31",
            "payment_date": None,
            "terms": {"kind": "coupon", "amount_per_unit": "0.012345", "currency": "USD"},
        }
    )
    assert from_stored(to_stored(envelope(announced))).event == announced


def test_old_data_an_upcaster_cannot_handle_is_an_event_schema_error() -> None:
    with pytest.raises(EventSchemaError):
        from_stored(stored_document("eventfold-unit:QuoteRecorded", 1, {"amount": "1"}))  # v1 had price


def test_a_non_numeric_version_is_an_event_schema_error() -> None:
    with pytest.raises(EventSchemaError):
        from_stored(stored_document("UnitProbeDefaultNamed", "one", {"value": 1}))  # type: ignore[arg-type]


def test_metadata_keys_from_a_newer_release_are_ignored_on_read() -> None:
    import json as _json
    from uuid import uuid4 as _uuid4

    from eventsourcing.persistence import StoredEvent as _StoredEvent

    from framework.events import EventEnvelope as _Envelope
    from framework.events import EventMetadata as _Meta
    from framework.mapper import from_stored as _from_stored
    from framework.mapper import to_stored as _to_stored

    class NewerMetadataProbe(Event):
        value: int

    stored = _to_stored(_Envelope("Probe", _uuid4(), 1, NewerMetadataProbe(value=3), _Meta(actor="ann")))
    document = _json.loads(stored.state)
    document["meta"]["added_in_a_later_release"] = {"x": 1}
    newer = _StoredEvent(stored.originator_id, 1, stored.topic, _json.dumps(document).encode())
    envelope = _from_stored(newer)
    assert envelope.metadata.actor == "ann" and envelope.event == NewerMetadataProbe(value=3)


# --- the stored header: read by the mapper without validating the event ------------------------------------

def test_the_header_of_a_stored_event() -> None:
    metadata = EventMetadata(correlation_id="corr-1", causation_id="cause-1",
                             trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    envelope = EventEnvelope(aggregate_type="Counter", aggregate_id=uuid4(), version=1,
                             event=CounterStarted(label="a"), metadata=metadata)
    header = stored_header(to_stored(envelope))
    assert (header.aggregate_type, header.correlation_id, header.causation_id) == ("Counter", "corr-1", "cause-1")
    assert header.recorded_at == metadata.recorded_at
    assert header.trace_context == metadata.trace_context


@pytest.mark.parametrize("state", [b"not json", b"[1, 2]", b'{"agg": null, "meta": "nope"}'])
def test_a_document_without_a_header_has_an_empty_one(state: bytes) -> None:
    assert stored_header(StoredEvent(uuid4(), 1, "Whatever", state)) == StoredHeader()


def test_wrongly_typed_header_values_are_left_out() -> None:
    state = json.dumps({"agg": "Counter", "meta": {"recorded_at": "yesterday", "trace_context": {
        "traceparent": 7, "tracestate": "a=b"}}}).encode()
    header = stored_header(StoredEvent(uuid4(), 1, "Whatever", state))
    assert (header.aggregate_type, header.recorded_at, header.trace_context) == ("Counter", None, {"tracestate": "a=b"})
    assert stored_trace_context(StoredEvent(uuid4(), 1, "Whatever", state)) is None  # no traceparent
