"""The given/when/then helpers must fail when they should, or every spec above could pass vacuously."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

from framework import AggregateNotFound, AlreadyExists, ConfigurationError, Event, EventSchemaError, RuleViolation
from framework.projector import HandlerContext, ProcessManager, Projector, Refusal, on
from framework.readmodel import ReadModel
from framework.testing import (
    GIVEN_AT,
    CommandSpec,
    ProcessSpec,
    ProjectionSpec,
    Scheduled,
    from_stored_document,
    from_stored_payload,
    given,
)
from framework.views import Deadline
from framework.worker import ProjectionHalted

from .domain import (
    Counter,
    CounterIncremented,
    CounterStarted,
    IncrementCounter,
    StartCounter,
    counter_router,
)


def test_then_passes_on_the_exact_events() -> None:
    given(Counter, CounterStarted(label="c")).when(lambda c: c.increment(2)).then(CounterIncremented(by=2))


@pytest.mark.parametrize(
    "expected",
    [
        (CounterIncremented(by=3),),
        (),
        (CounterIncremented(by=2), CounterIncremented(by=2)),
        (CounterStarted(label="c"), CounterIncremented(by=2)),  # history is not part of the outcome
    ],
)
def test_then_fails_on_other_events(expected: tuple[CounterIncremented, ...]) -> None:
    outcome = given(Counter, CounterStarted(label="c")).when(lambda c: c.increment(2))
    with pytest.raises(AssertionError, match="recorded"):
        outcome.then(*expected)


def test_then_fails_when_the_action_raised() -> None:
    def refuse(counter: Counter) -> None:
        raise RuleViolation("no", reason="nope")

    with pytest.raises(AssertionError, match="RuleViolation"):
        given(Counter, CounterStarted(label="c")).when(refuse).then()


def test_then_raises_checks_type_message_and_attributes() -> None:
    def refuse(counter: Counter) -> None:
        raise RuleViolation("counter is full", reason="full")

    outcome = given(Counter).when(refuse)
    outcome.then_raises(RuleViolation, match="full", reason="full")
    with pytest.raises(AssertionError):
        outcome.then_raises(AggregateNotFound)
    with pytest.raises(AssertionError):
        outcome.then_raises(RuleViolation, match="empty")
    with pytest.raises(AssertionError, match="reason"):
        outcome.then_raises(RuleViolation, reason="empty")


def test_then_raises_fails_when_events_were_recorded() -> None:
    with pytest.raises(AssertionError, match="expected RuleViolation"):
        given(Counter, CounterStarted(label="c")).when(lambda c: c.increment(1)).then_raises(RuleViolation)


def test_given_replays_history_before_the_action() -> None:
    spec = given(Counter, CounterStarted(label="c"), CounterIncremented(by=4))
    assert (spec.aggregate.version, spec.aggregate.total) == (2, 4)


def test_when_observes_the_aggregate_a_factory_returns() -> None:
    counter_id = uuid4()
    given(Counter).when(lambda _: Counter.start(counter_id, "new")).then(CounterStarted(label="new"))


def test_command_spec_sees_only_the_commands_events() -> None:
    counter_id = uuid4()
    spec = CommandSpec(counter_router()).given(Counter, counter_id, CounterStarted(label="c"))
    spec.given(Counter, counter_id, CounterIncremented(by=1))  # given twice continues the stream
    spec.when(IncrementCounter(counter_id=counter_id, by=5, times=2)).then(
        CounterIncremented(by=5), CounterIncremented(by=5)
    )
    assert len(spec.store.read_stream(counter_id)) == 4


def test_command_spec_reports_errors() -> None:
    outcome = CommandSpec(counter_router()).when(IncrementCounter(counter_id=uuid4()))
    outcome.then_raises(AggregateNotFound)
    with pytest.raises(AssertionError):
        outcome.then()


def test_command_spec_then_fails_on_other_events() -> None:
    outcome = CommandSpec(counter_router()).when(StartCounter(counter_id=uuid4(), label="x"))
    with pytest.raises(AssertionError):
        outcome.then(CounterStarted(label="y"))


# --- projections: given events, then rows -------------------------------------------------------------


class CounterRow(ReadModel):
    table = "counters"
    key = ("counter_id",)

    counter_id: UUID
    label: str
    total: int
    started_at: datetime


class CountersProjector(Projector):
    name = "counters"
    read_models = (CounterRow,)

    @on(CounterStarted)
    def started(self, event: CounterStarted, context: HandlerContext) -> None:
        context.views.put(CounterRow(counter_id=context.envelope.aggregate_id, label=event.label, total=0,
                                     started_at=context.envelope.metadata.recorded_at))

    @on(CounterIncremented)
    def incremented(self, event: CounterIncremented, context: HandlerContext) -> None:
        row = context.views.get(CounterRow, context.envelope.aggregate_id)
        assert row is not None
        if row.label == "fragile" and event.by < 0:
            raise ValueError("no going back")
        context.views.put(row.model_copy(update={"total": row.total + event.by}))


class ClockReadingProjector(CountersProjector):
    """Reads the wall clock instead of the event's time: a replay builds other rows."""

    name = "clock_reading"

    @on(CounterStarted)
    def started(self, event: CounterStarted, context: HandlerContext) -> None:
        context.views.put(CounterRow(counter_id=context.envelope.aggregate_id, label=event.label, total=0,
                                     started_at=datetime.now(UTC)))


COUNTER = uuid4()


def test_projection_spec_then_passes_on_exactly_the_rows() -> None:
    spec = ProjectionSpec(CountersProjector())
    spec.given(Counter, COUNTER, CounterStarted(label="c"), CounterIncremented(by=2))
    spec.given(Counter, COUNTER, CounterIncremented(by=3))
    spec.then(CounterRow(counter_id=COUNTER, label="c", total=5, started_at=GIVEN_AT))
    assert spec.position == 3


@pytest.mark.parametrize("expected", [
    [CounterRow(counter_id=COUNTER, label="c", total=4, started_at=GIVEN_AT)],
    [],
    [CounterRow(counter_id=COUNTER, label="c", total=2, started_at=GIVEN_AT),
     CounterRow(counter_id=uuid4(), label="d", total=0, started_at=GIVEN_AT)],
], ids=["other-values", "none", "one-more"])
def test_projection_spec_then_fails_on_other_rows(expected: list[CounterRow]) -> None:
    spec = ProjectionSpec(CountersProjector())
    spec.given(Counter, COUNTER, CounterStarted(label="c"), CounterIncremented(by=2))
    with pytest.raises(AssertionError, match="CounterRow differ"):
        if expected:
            spec.then(*expected)
        else:
            spec.then_no_rows(CounterRow)


def test_projection_spec_records_events_at_the_given_time() -> None:
    at = datetime(2030, 5, 6, 7, 8, tzinfo=UTC)
    spec = ProjectionSpec(CountersProjector()).given(Counter, COUNTER, CounterStarted(label="c"), at=at)
    assert spec.rows(CounterRow)[0].started_at == at


def test_projection_spec_compares_the_rows_with_a_replay() -> None:
    spec = ProjectionSpec(ClockReadingProjector()).given(Counter, COUNTER, CounterStarted(label="c"))
    (row,) = spec.rows(CounterRow)
    with pytest.raises(AssertionError, match="differs from a replay"):
        spec.then(row)


def test_a_failing_handler_fails_the_spec_at_once() -> None:
    spec = ProjectionSpec(CountersProjector()).given(Counter, COUNTER, CounterStarted(label="fragile"))
    with pytest.raises(ProjectionHalted, match="no going back"):
        spec.given(Counter, COUNTER, CounterIncremented(by=-1))


# --- process managers: given events, then commands issued and deadlines scheduled ---------------------


class Nudges(ProcessManager):
    """Reminds a counter that nobody increments within a day; a big increment starts a twin counter."""

    name = "nudges"

    @on(CounterStarted)
    def started(self, event: CounterStarted, context: HandlerContext) -> None:
        at = context.envelope.metadata.recorded_at + timedelta(days=1)
        context.schedule("remind", at, data={"label": event.label})

    @on(CounterIncremented)
    def incremented(self, event: CounterIncremented, context: HandlerContext) -> None:
        context.cancel_deadline("remind")
        if event.by >= 10:
            context.issue(StartCounter(counter_id=TWIN, label="twin"))

    def on_deadline(self, deadline: Deadline, context: HandlerContext) -> None:
        context.issue(IncrementCounter(counter_id=context.envelope.aggregate_id, by=1))

    def on_refused(self, refusal: Refusal, context: HandlerContext) -> bool:
        return refusal.code == "already_exists"


TWIN = uuid4()
REMIND = Scheduled("remind", GIVEN_AT + timedelta(days=1), {"label": "c"})


def test_process_spec_then_scheduled_and_then_issued() -> None:
    spec = ProcessSpec(Nudges()).given(Counter, COUNTER, CounterStarted(label="c"))
    spec.then_scheduled(REMIND).then_issued()
    spec.then_scheduled(Scheduled("remind", REMIND.at, {"label": "c"}, key=f"remind:{COUNTER}"))
    with pytest.raises(AssertionError, match="scheduled deadlines differ"):
        spec.then_scheduled(Scheduled("remind", REMIND.at + timedelta(seconds=1), {"label": "c"}))
    with pytest.raises(AssertionError, match="scheduled deadlines differ"):
        spec.then_scheduled(Scheduled("remind", REMIND.at, {"label": "c"}, key="another"))
    with pytest.raises(AssertionError, match="scheduled deadlines differ"):
        spec.then_scheduled()


def test_process_spec_when_looks_at_what_follows_only() -> None:
    spec = ProcessSpec(Nudges()).given(Counter, COUNTER, CounterStarted(label="c"), CounterIncremented(by=10))
    spec.then_issued(StartCounter(counter_id=TWIN, label="twin"))
    spec.when(Counter, COUNTER, CounterIncremented(by=1)).then_issued().then_scheduled()
    assert [e.command_name for e in spec.issued] == ["StartCounter"]  # still pending: nothing is executed
    spec.when(Counter, COUNTER, CounterIncremented(by=12)).then_issued(StartCounter(counter_id=TWIN, label="twin"))
    with pytest.raises(AssertionError, match="issued commands differ"):
        spec.then_issued(StartCounter(counter_id=TWIN, label="other"))
    with pytest.raises(AssertionError, match="issued commands differ"):
        spec.then_issued()


def test_process_spec_fires_due_deadlines() -> None:
    spec = ProcessSpec(Nudges()).given(Counter, COUNTER, CounterStarted(label="c"))
    spec.when_due(REMIND.at - timedelta(seconds=1)).then_issued().then_scheduled()
    assert spec.deadlines != []
    spec.when_due(REMIND.at).then_issued(IncrementCounter(counter_id=COUNTER, by=1))
    assert spec.deadlines == []


def test_process_spec_hands_a_refusal_to_on_refused() -> None:
    spec = ProcessSpec(Nudges()).given(Counter, COUNTER, CounterStarted(label="c"), CounterIncremented(by=10))
    spec.when_refused(StartCounter, AlreadyExists("counter twin exists")).then_issued()
    assert spec.issued == [] and spec.views.dead_letters() == []
    spec.given(Counter, COUNTER, CounterIncremented(by=10))
    spec.when_refused(StartCounter(counter_id=TWIN, label="twin"), RuleViolation("no", reason="no"))
    assert [letter.event_name for letter in spec.views.dead_letters()] == ["command StartCounter"]
    with pytest.raises(AssertionError, match="expected one pending StartCounter"):
        spec.when_refused(StartCounter, RuleViolation("no", reason="no"))


def test_process_spec_needs_a_process_manager() -> None:
    with pytest.raises(ConfigurationError, match="ProjectionSpec"):
        ProcessSpec(CountersProjector())  # type: ignore[type-var]


# --- upcasters: old stored payloads through the real mapper -----------------------------------------


def _v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount": data["price"]}


def _v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


class PriceQuoted(Event):
    """v1 {price}; v2 renamed it amount; v3 added the currency (old quotes were in EUR)."""

    event_name: ClassVar[str] = "eventfold-unit:helpers.PriceQuoted"
    schema_version: ClassVar[int] = 3
    upcasters: ClassVar[dict[int, Any]] = {1: _v1, 2: _v2}

    amount: Decimal
    currency: str


@pytest.mark.parametrize(("version", "data"), [
    (1, {"price": "1.50"}), (2, {"amount": "1.50"}), (3, {"amount": "1.50", "currency": "EUR"}),
])
def test_an_old_payload_becomes_the_current_event(version: int, data: dict[str, Any]) -> None:
    current = PriceQuoted(amount=Decimal("1.50"), currency="EUR")
    assert from_stored_payload(PriceQuoted, data, version=version) == current
    assert from_stored_payload("eventfold-unit:helpers.PriceQuoted", data, version=version) == current


def test_an_old_payload_no_upcaster_reads_is_an_event_schema_error() -> None:
    with pytest.raises(EventSchemaError):
        from_stored_payload(PriceQuoted, {"amount": "1.50"}, version=1)  # v1 had `price`
    with pytest.raises(EventSchemaError, match="does not match its schema"):
        from_stored_payload(PriceQuoted, {"price": "cheap"}, version=1)


def test_a_stored_document_as_copied_from_the_events_table() -> None:
    document = ('{"v":1,"agg":"Quotes","meta":{"event_id":"0d5c8a4e-7b0b-4f43-8a43-7e6f1c9a0b11",'
                '"recorded_at":"2020-01-02T03:04:05Z","correlation_id":"c-1","actor":"alice"},'
                '"data":{"price":"2"}}')
    for form in (document, document.encode(), json.loads(document)):
        envelope = from_stored_document("eventfold-unit:helpers.PriceQuoted", form, aggregate_id=COUNTER, version=4)
        assert envelope.event == PriceQuoted(amount=Decimal("2"), currency="EUR")
        assert (envelope.aggregate_type, envelope.aggregate_id, envelope.version) == ("Quotes", COUNTER, 4)
        assert (envelope.metadata.actor, envelope.metadata.recorded_at) == ("alice", datetime(2020, 1, 2, 3, 4, 5,
                                                                                              tzinfo=UTC))
