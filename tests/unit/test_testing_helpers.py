"""The given/when/then helpers must fail when they should, or every spec above could pass vacuously."""

from __future__ import annotations

from uuid import uuid4

import pytest

from framework import AggregateNotFound, RuleViolation
from framework.testing import CommandSpec, given

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
