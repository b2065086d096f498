"""``@event`` methods bind their arguments without ``Signature.bind`` in the usual calls: every shape of
call records what ``bind`` would record, and a call ``bind`` refuses is refused the same way."""

from __future__ import annotations

import inspect
import itertools
from uuid import uuid4

import pytest

from framework import Aggregate, Event, event
from framework.aggregate import _bound_simply, _positional_names


class Noted(Event):
    a: int
    b: int
    c: int = 0


class Pad(Aggregate):
    total: int = 0

    @event(Noted)
    def note(self, a: int, b: int, c: int = 0) -> None:
        self.total += a + b + c


def _method(self: object, a: int, b: int, c: int = 0) -> None: ...


SIGNATURE = inspect.signature(_method)
NAMES, REQUIRED = _positional_names(SIGNATURE)


def _calls() -> list[tuple[tuple[object, ...], dict[str, object]]]:
    """Every split of up to five arguments (and a stray name) between positions and keywords."""
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []
    for count in range(0, 6):
        for positional in range(0, count + 1):
            args = tuple(range(positional))
            for names in itertools.permutations([*NAMES, "d"], count - positional):
                calls.append((args, {name: 10 + i for i, name in enumerate(names)}))
    return calls


@pytest.mark.parametrize(("args", "kwargs"), _calls())
def test_a_call_binds_as_signature_bind_binds_it(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    simple = _bound_simply(NAMES, REQUIRED, args, kwargs)
    try:
        bound = SIGNATURE.bind(*args, **kwargs)
    except TypeError:
        assert simple is None
        return
    if simple is not None:
        assert simple == dict(list(bound.arguments.items())[1:])


def test_keyword_and_positional_calls_record_the_same_event() -> None:
    by_keywords, by_position, mixed = Pad.blank(uuid4()), Pad.blank(uuid4()), Pad.blank(uuid4())
    by_keywords.note(a=1, b=2)
    by_position.note(1, 2)
    mixed.note(1, b=2, c=0)
    events = [p.collect_events()[-1] for p in (by_keywords, by_position, mixed)]
    assert events[0] == events[1] == events[2] == Noted(a=1, b=2, c=0)


@pytest.mark.parametrize(("args", "kwargs"), [((1,), {"a": 1, "b": 2}), ((), {"b": 2}), ((1, 2, 3, 4), {}),
                                              ((1,), {"b": 2, "d": 3}), ((1,), {"self": 1, "b": 2})])
def test_a_call_bind_refuses_is_refused(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        Pad.blank(uuid4()).note(*args, **kwargs)  # type: ignore[arg-type]


def test_the_events_a_unit_collects_have_ids_of_their_own_and_the_same_metadata() -> None:
    from framework.adapters.memory import MemoryEventStore
    from framework.events import EventMetadata
    from framework.unit_of_work import UnitOfWork

    unit = UnitOfWork(MemoryEventStore())
    first, second = unit.add(Pad.blank(uuid4())), unit.add(Pad.blank(uuid4()))
    first.note(1, 2)
    first.note(a=3, b=4)
    second.note(5, 6, c=7)
    metadata = EventMetadata(correlation_id="corr", causation_id="cause", actor="ada")
    envelopes = unit.collect(metadata)
    assert [(e.aggregate_id, e.version) for e in envelopes] == [(first.id, 1), (first.id, 2), (second.id, 1)]
    assert len({e.metadata.event_id for e in envelopes}) == 3
    shared = {(e.metadata.correlation_id, e.metadata.causation_id, e.metadata.actor, e.metadata.recorded_at)
              for e in envelopes}
    assert shared == {("corr", "cause", "ada", metadata.recorded_at)}
