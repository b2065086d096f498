"""Conformance suite of the read-model port (``framework.views.ViewStore``).

Subclass ``ViewStoreConformance`` and provide a ``views`` fixture that yields
a fresh, schema-created store; every test below then runs against it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

from framework.errors import ConcurrencyConflict, VersionSwitched
from framework.query import Condition, InvalidQuery, PageRequest, Sort, paginate
from framework.readmodel import ReadModel
from framework.views import DeadLetter, ViewStore

__all__ = ["ViewStoreConformance"]


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Detail(BaseModel):
    note: str
    tags: list[str]


class Row(ReadModel):
    table = "rows"
    key = ("group", "number")
    indexes = (("colour",),)

    group: str
    number: int
    colour: Colour
    amount: Decimal
    day: date
    at: datetime
    ref: UUID
    flag: bool
    detail: Detail
    extra: dict[str, Any]
    maybe: int | None = None


def _row(group: str = "g", number: int = 1, **changes: Any) -> Row:
    values: dict[str, Any] = {
        "group": group, "number": number, "colour": Colour.RED, "amount": Decimal("12.345"),
        "day": date(2026, 12, 1), "at": datetime(2026, 11, 23, 12, 0, tzinfo=UTC), "ref": uuid4(),
        "flag": True, "detail": Detail(note="n", tags=["a", "b"]), "extra": {"k": [1, 2]},
    }
    return Row(**(values | changes))


NAME = "conformance"


class ViewStoreConformance:
    @pytest.fixture
    def views(self) -> ViewStore:
        raise NotImplementedError("provide a fresh, schema-created ViewStore")

    @pytest.fixture
    def ready(self, views: ViewStore) -> ViewStore:
        views.ensure_tables(NAME, 1, [Row])
        return views

    def test_new_projection_is_version_one_at_position_zero(self, ready: ViewStore) -> None:
        assert ready.active_version(NAME) == 1
        assert ready.position(NAME, 1) == 0

    def test_rows_round_trip_with_their_types(self, ready: ViewStore) -> None:
        row = _row()
        with ready.batch(NAME, 1) as batch:
            batch.put(row)
        with ready.read(NAME) as views:
            assert views.get(Row, "g", 1) == row

    def test_a_batch_sees_its_own_changes(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            batch.put(_row(number=1))
            assert batch.get(Row, "g", 1) is not None
            batch.delete(Row, "g", 1)
            assert batch.get(Row, "g", 1) is None
            batch.put(_row(number=2, colour=Colour.BLUE))
            assert [r.number for r in batch.select(Row, colour=Colour.BLUE)] == [2]

    def test_put_replaces_and_delete_removes(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            batch.put(_row(number=1, maybe=1))
            batch.put(_row(number=2))
        with ready.batch(NAME, 1) as batch:
            batch.put(_row(number=1, maybe=None, flag=False))
            batch.delete(Row, "g", 2)
            batch.delete(Row, "g", 99)  # deleting nothing is fine
        with ready.read(NAME) as views:
            rows = views.select(Row)
        assert [(r.number, r.maybe, r.flag) for r in rows] == [(1, None, False)]

    def test_select_filters_and_orders_by_key(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            for number in (3, 1, 2):
                batch.put(_row(number=number, colour=Colour.BLUE if number != 2 else Colour.RED))
            batch.put(_row(group="h", number=1, colour=Colour.BLUE))
        with ready.read(NAME) as views:
            blue = views.select(Row, colour=Colour.BLUE)
            in_g = views.select(Row, group="g")
        assert [(r.group, r.number) for r in blue] == [("g", 1), ("g", 3), ("h", 1)]
        assert [r.number for r in in_g] == [1, 2, 3]

    def test_changes_and_position_commit_together(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            batch.put(_row())
            batch.advance(7, datetime.now(UTC))
        assert ready.position(NAME, 1) == 7

    def test_a_failed_batch_changes_nothing(self, ready: ViewStore) -> None:
        with pytest.raises(RuntimeError), ready.batch(NAME, 1) as batch:
            batch.put(_row())
            batch.advance(5, None)
            raise RuntimeError("handler failed")
        assert ready.position(NAME, 1) == 0
        with ready.read(NAME) as views:
            assert views.get(Row, "g", 1) is None
        with ready.batch(NAME, 1) as batch:  # and the store is still usable
            assert batch.get(Row, "g", 1) is None

    def test_position_never_moves_backwards(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            batch.advance(10, None)
        with pytest.raises(ConcurrencyConflict), ready.batch(NAME, 1) as batch:
            batch.put(_row())
            batch.advance(10, None)
        assert ready.position(NAME, 1) == 10
        with ready.read(NAME) as views:
            assert views.get(Row, "g", 1) is None

    def test_versions_have_separate_tables_and_positions(self, ready: ViewStore) -> None:
        ready.ensure_tables(NAME, 2, [Row])
        with ready.batch(NAME, 2, follow_active=False) as batch:
            batch.put(_row(number=2))
            batch.advance(3, None)
        assert ready.position(NAME, 1) == 0
        assert ready.position(NAME, 2) == 3
        with ready.read(NAME) as views:  # still version 1
            assert views.select(Row) == []

    def test_switch_makes_the_new_version_active(self, ready: ViewStore) -> None:
        ready.ensure_tables(NAME, 2, [Row])
        with ready.switch(NAME, 2) as batch:
            batch.put(_row(number=2))
            batch.advance(4, None)
        assert ready.active_version(NAME) == 2
        with ready.read(NAME) as views:
            assert [r.number for r in views.select(Row)] == [2]
        with pytest.raises(VersionSwitched), ready.batch(NAME, 1):
            pass  # a live worker still on version 1 is told to follow

    def test_dead_letters_park_list_retry_discard(self, ready: ViewStore) -> None:
        letter = DeadLetter(NAME, 9, "Broken", str(uuid4()), "ValueError: no")
        with ready.batch(NAME, 1) as batch:
            batch.park(letter)
            batch.advance(9, None)
        (parked,) = ready.dead_letters(NAME)
        assert (parked.position, parked.event_name, parked.error) == (9, "Broken", "ValueError: no")
        assert parked.id is not None and parked.failed_at is not None
        assert ready.retry_requests(NAME) == []
        assert ready.request_retry(parked.id)
        assert [d.id for d in ready.retry_requests(NAME)] == [parked.id]
        with ready.batch(NAME, 1) as batch:
            ready.settle_dead_letter(batch, parked.id)
        assert ready.dead_letters(NAME) == []
        assert not ready.discard_dead_letter(parked.id)
        assert not ready.request_retry(12345)

    def test_states_and_set_state(self, ready: ViewStore) -> None:
        ready.set_state(NAME, 1, "halted", "position 3: boom")
        (state,) = [s for s in ready.states() if s.name == NAME]
        assert (state.version, state.state, state.error) == (1, "halted", "position 3: boom")

    def test_drop_tables_forgets_a_version(self, ready: ViewStore) -> None:
        ready.ensure_tables(NAME, 2, [Row])
        ready.drop_tables(NAME, 2, [Row])
        assert [s.version for s in ready.states() if s.name == NAME] == [1]

    def test_ensure_tables_is_idempotent(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            batch.put(_row())
            batch.advance(1, None)
        ready.ensure_tables(NAME, 1, [Row])
        assert ready.position(NAME, 1) == 1
        with ready.read(NAME) as views:
            assert views.get(Row, "g", 1) is not None

    # --- queries (the GraphQL side reads through these) ---------------------------------------

    @pytest.fixture
    def numbered(self, ready: ViewStore) -> ViewStore:
        with ready.batch(NAME, 1) as batch:
            for number in range(1, 8):
                colour = Colour.BLUE if number % 2 else Colour.RED
                batch.put(_row(number=number, colour=colour, day=date(2026, 12, 8 - number)))
            batch.put(_row(group="h", number=1, colour=Colour.BLUE, day=date(2026, 12, 1)))
            batch.advance(3, None)
        return ready

    def test_query_filters_with_every_operator(self, numbered: ViewStore) -> None:
        def numbers(*where: Condition) -> list[int]:
            return [r.number for r in numbered.query(NAME, Row, list(where)) if r.group == "g"]

        assert numbers(Condition("colour", "eq", Colour.BLUE)) == [1, 3, 5, 7]
        assert numbers(Condition("number", "gt", 5)) == [6, 7]
        assert numbers(Condition("number", "gte", 5), Condition("number", "lt", 7)) == [5, 6]
        assert numbers(Condition("day", "lte", date(2026, 12, 2))) == [6, 7]
        assert numbers(Condition("number", "in", [2, 4, 9])) == [2, 4]

    def test_query_sorts_by_a_column_then_the_key(self, numbered: ViewStore) -> None:
        by_day = numbered.query(NAME, Row, [], Sort("day"))
        assert [(r.day.day, r.group, r.number) for r in by_day][:3] == [(1, "g", 7), (1, "h", 1), (2, "g", 6)]
        newest = numbered.query(NAME, Row, [Condition("group", "eq", "g")], Sort("day", descending=True), limit=2)
        assert [r.number for r in newest] == [1, 2]

    def test_query_after_a_cursor_in_either_direction(self, numbered: ViewStore) -> None:
        sort = Sort("day")
        first = numbered.query(NAME, Row, [], sort, limit=2)
        rest = numbered.query(NAME, Row, [], sort, after=sort.values(first[-1]))
        assert len(first) + len(rest) == 8
        assert {(r.group, r.number) for r in first}.isdisjoint({(r.group, r.number) for r in rest})
        back = Sort("day", descending=True)
        before = numbered.query(NAME, Row, [], back, after=back.values(rest[0]))
        assert [(r.group, r.number) for r in before] == [(r.group, r.number) for r in reversed(first)]

    def test_paginate_to_the_end_and_back(self, numbered: ViewStore) -> None:
        where = [Condition("group", "eq", "g")]
        seen: list[int] = []
        page = paginate(numbered, NAME, Row, PageRequest(first=3), where, Sort("number"))
        assert not page.has_previous
        while True:
            seen += [r.number for r in page.rows]
            if not page.has_next:
                break
            page = paginate(numbered, NAME, Row, PageRequest(first=3, after=page.cursors[-1]), where, Sort("number"))
        assert seen == [1, 2, 3, 4, 5, 6, 7]
        back = paginate(numbered, NAME, Row, PageRequest(last=3, before=page.cursors[0]), where, Sort("number"))
        assert [r.number for r in back.rows] == [4, 5, 6] and back.has_previous and back.has_next

    def test_a_forged_cursor_is_a_clear_error(self, numbered: ViewStore) -> None:
        with pytest.raises(InvalidQuery):
            paginate(numbered, NAME, Row, PageRequest(first=2, after="not-a-cursor"))
        with pytest.raises(InvalidQuery):
            paginate(numbered, NAME, Row, PageRequest(first=1000))

    def test_get_many_keeps_the_order_of_the_keys(self, numbered: ViewStore) -> None:
        rows = numbered.get_many(NAME, Row, [("g", 3), ("x", 1), ("h", 1)])
        assert [(r.group, r.number) if r else None for r in rows] == [("g", 3), None, ("h", 1)]
        assert numbered.get_many(NAME, Row, []) == []

    def test_active_position_is_the_active_versions(self, numbered: ViewStore) -> None:
        assert numbered.active_position(NAME) == 3
