"""Conformance suite of the read-model port (``framework.views.ViewStore``).

Subclass ``ViewStoreConformance`` and provide a ``views`` fixture that yields
a fresh, schema-created store; every test below then runs against it.
"""

from __future__ import annotations

import time
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
from framework.views import DeadLetter, Deadline, OutboxEntry, RowCaching, ViewStore

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
    note: str | None = None


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

    def test_copy_version_copies_rows_and_position_into_a_new_version(self, ready: ViewStore) -> None:
        kept, gone = _row(number=1), _row(number=2, maybe=7)
        with ready.batch(NAME, 1) as batch:
            batch.put(kept)
            batch.put(gone)
            batch.advance(5, datetime(2026, 12, 1, tzinfo=UTC))
        ready.ensure_tables(NAME, 2, [Row])
        with ready.batch(NAME, 2, follow_active=False) as batch:
            batch.put(_row(number=99))  # replaced by the copy
        assert ready.copy_version(NAME, 1, 2, [Row]) == 5
        assert ready.position(NAME, 2) == 5
        with ready.batch(NAME, 2, follow_active=False) as batch:
            assert [r.number for r in batch.select(Row)] == [1, 2]
            assert batch.get(Row, "g", 1) == kept
            batch.delete(Row, "g", 2)
            batch.advance(6, None, since=5)
        with ready.read(NAME) as views:  # the source is untouched, and still the active version
            assert views.select(Row) == [kept, gone]
        assert ready.position(NAME, 1) == 5 and ready.active_version(NAME) == 1
        (state,) = [s for s in ready.states() if s.version == 2]
        assert state.last_event_at == datetime(2026, 12, 1, tzinfo=UTC)

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

    def test_a_new_error_in_the_same_state_is_not_progress(self, ready: ViewStore) -> None:
        """``updated_at`` moves when the state changes, not when a retry only rewrites the error
        (status counts ``updated_at`` as progress: a projection retrying forever must go ``stalled``)."""

        def updated_at() -> object:
            return next(s.updated_at for s in ready.states() if s.name == NAME)

        ready.set_state(NAME, 1, "running")
        started = updated_at()
        assert started is not None
        time.sleep(0.002)  # a clock that could tell the writes apart
        ready.set_state(NAME, 1, "running", "will retry position 2")
        assert updated_at() == started
        assert ready.acquire_lease(NAME, "w", 60)
        ready.set_state_if_owner(NAME, 1, "w", "running", "will retry position 2 (again)")
        assert updated_at() == started
        ready.set_state(NAME, 1, "halted", "position 2: boom")
        assert updated_at() != started

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
        assert numbers(Condition("number", "ne", 4), Condition("number", "lte", 5)) == [1, 2, 3, 5]
        assert numbers(Condition("colour", "in", [Colour.RED, "blue"]), Condition("number", "lt", 3)) == [1, 2]
        assert numbers(Condition("number", "in", [])) == []

    def test_condition_values_are_read_as_the_columns_type(self, numbered: ViewStore) -> None:
        def numbers(*where: Condition) -> list[int]:
            return [r.number for r in numbered.query(NAME, Row, list(where)) if r.group == "g"]

        assert numbers(Condition("number", "eq", "2")) == [2]
        assert numbers(Condition("day", "lte", "2026-12-02")) == [6, 7]
        assert numbers(Condition("colour", "eq", "blue"), Condition("number", "gt", 4)) == [5, 7]
        assert numbers(Condition("number", "in", ["3", 4])) == [3, 4]

    @pytest.fixture
    def noted(self, ready: ViewStore) -> ViewStore:
        notes = ["50% off", "50 percent", "a_b", "axb", "back\\slash", "backslash", "UPPER", "upper",
                 "", "Ünïcode ✓", None]
        with ready.batch(NAME, 1) as batch:
            for number, note in enumerate(notes, start=1):
                batch.put(_row(number=number, note=note, maybe=None if number % 3 else number))
        return ready

    def _notes(self, views: ViewStore, *where: Condition) -> list[str | None]:
        return [r.note for r in views.query(NAME, Row, list(where))]

    def test_prefix_and_contains_match_text_literally_and_case_sensitively(self, noted: ViewStore) -> None:
        assert self._notes(noted, Condition("note", "prefix", "50%")) == ["50% off"]
        assert self._notes(noted, Condition("note", "prefix", "50")) == ["50% off", "50 percent"]
        assert self._notes(noted, Condition("note", "contains", "_")) == ["a_b"]
        assert self._notes(noted, Condition("note", "contains", "%")) == ["50% off"]
        assert self._notes(noted, Condition("note", "contains", "\\")) == ["back\\slash"]
        assert self._notes(noted, Condition("note", "contains", "k\\s")) == ["back\\slash"]
        assert self._notes(noted, Condition("note", "prefix", "up")) == ["upper"]
        assert self._notes(noted, Condition("note", "contains", "PP")) == ["UPPER"]
        assert self._notes(noted, Condition("note", "contains", "nïc")) == ["Ünïcode ✓"]
        assert self._notes(noted, Condition("note", "prefix", "Ü")) == ["Ünïcode ✓"]
        assert self._notes(noted, Condition("note", "contains", "zzz")) == []
        everything_but_null = [n for n in self._notes(noted) if n is not None]
        assert self._notes(noted, Condition("note", "contains", "")) == everything_but_null
        assert self._notes(noted, Condition("note", "prefix", "")) == everything_but_null

    def test_null_meets_no_comparison_but_is_null(self, noted: ViewStore) -> None:
        def numbers(*where: Condition) -> list[int]:
            return [r.number for r in noted.query(NAME, Row, list(where))]

        assert numbers(Condition("maybe", "is_null", False)) == [3, 6, 9]
        assert numbers(Condition("maybe", "is_null", True), Condition("number", "lt", 6)) == [1, 2, 4, 5]
        assert numbers(Condition("maybe", "ne", 3)) == [6, 9]  # not the nulls
        assert numbers(Condition("maybe", "in", [3, None])) == [3]
        assert numbers(Condition("maybe", "lt", 100)) == [3, 6, 9]
        assert numbers(Condition("note", "is_null", True)) == [11]
        assert numbers(Condition("note", "ne", "a_b"), Condition("number", "gt", 8)) == [9, 10]
        assert numbers(Condition("note", "eq", "")) == [9]

    @pytest.mark.parametrize("condition", [
        lambda: Condition("nope", "eq", 1),
        lambda: Condition("number", "prefix", "1"),
        lambda: Condition("colour", "contains", "re"),
        lambda: Condition("number", "eq", "two"),
        lambda: Condition("day", "in", ["not a day"]),
        lambda: Condition("maybe", "eq", None),
        lambda: Condition("note", "prefix", 5),
        lambda: Condition("note", "contains", "a\x00b"),
        lambda: Condition("note", "eq", "a\x00b"),
        lambda: Condition("number", "in", 3),
        lambda: Condition("maybe", "is_null", "yes"),
        lambda: Condition("number", "like", 3),  # type: ignore[arg-type]
    ], ids=["unknown-column", "prefix-on-int", "contains-on-enum", "not-an-int", "not-a-day", "eq-null",
            "prefix-not-text", "nul-in-contains", "nul-in-eq", "in-not-a-list", "is-null-not-bool", "unknown-op"])
    def test_a_bad_condition_is_a_clear_error(self, noted: ViewStore, condition: Any) -> None:
        with pytest.raises(InvalidQuery):
            noted.query(NAME, Row, [condition()])

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

    # --- exactly-once across workers: the position's compare-and-set ------------------------

    def test_the_position_moves_only_from_where_the_batch_started(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            batch.advance(5, None, since=0)
        with pytest.raises(ConcurrencyConflict), ready.batch(NAME, 1) as batch:
            batch.put(_row())
            batch.advance(9, None, since=3)  # another worker moved it from 3 meanwhile: this batch is stale
        assert ready.position(NAME, 1) == 5
        with ready.read(NAME) as views:
            assert views.get(Row, "g", 1) is None

    def test_a_staged_commit_is_a_compare_and_set_too(self, ready: ViewStore) -> None:
        first, second = ready.stage(NAME, 1), ready.stage(NAME, 1)
        first.put(_row(number=1))
        first.advance(4, None, since=0)
        second.put(_row(number=2))
        second.advance(6, None, since=0)
        ready.commit_staged(NAME, 1, first)
        with pytest.raises(ConcurrencyConflict):
            ready.commit_staged(NAME, 1, second)
        if isinstance(ready, RowCaching):  # what the losing worker does next
            ready.forget_cached(NAME, 1)
        assert ready.position(NAME, 1) == 4
        with ready.read(NAME) as views:
            assert [r.number for r in views.select(Row)] == [1]

    # --- process managers: outbox and deadlines ----------------------------------------------

    def _entry(self, key: str, order: str = "a", position: int = 1) -> OutboxEntry:
        return OutboxEntry(NAME, key, "DoIt", {"n": key}, order, position, {"correlation_id": "c"})

    def test_outbox_entries_commit_with_the_batch_or_not_at_all(self, ready: ViewStore) -> None:
        with pytest.raises(RuntimeError), ready.batch(NAME, 1) as batch:
            batch.enqueue(self._entry("lost"))
            raise RuntimeError("handler failed")
        assert ready.outbox(NAME, 10) == []
        with ready.batch(NAME, 1) as batch:
            batch.enqueue(self._entry("k1"))
            batch.enqueue(self._entry("k2", "b"))
            batch.advance(2, None, since=0)
        with ready.batch(NAME, 1) as batch:
            batch.enqueue(self._entry("k1"))  # issued again: kept once
        entries = ready.outbox(NAME, 10)
        assert [(e.key, e.ordering_key, e.payload, e.context, e.attempts) for e in entries] == [
            ("k1", "a", {"n": "k1"}, {"correlation_id": "c"}, 0), ("k2", "b", {"n": "k2"}, {"correlation_id": "c"}, 0)]
        assert all(e.id is not None and e.created_at is not None for e in entries)
        assert ready.outbox("another", 10) == []

    def test_outbox_postpone_done_and_settle(self, ready: ViewStore) -> None:
        with ready.batch(NAME, 1) as batch:
            batch.enqueue(self._entry("k1"))
            batch.enqueue(self._entry("k2"))
            batch.enqueue(self._entry("k3"))
        first, second, third = ready.outbox(NAME, 10)
        later = datetime(2030, 1, 1, tzinfo=UTC)
        ready.postpone(first.id or 0, later, "IdempotencyKeyInFlight: still running")
        (postponed, *_) = ready.outbox(NAME, 10)
        assert (postponed.attempts, postponed.next_attempt_at, postponed.last_error) == (
            1, later, "IdempotencyKeyInFlight: still running")
        ready.outbox_done([second.id or 0])
        with ready.batch(NAME, 1) as batch:
            ready.settle_outbox(batch, third.id or 0)
        assert [e.key for e in ready.outbox(NAME, 10)] == ["k1"]
        with pytest.raises(ConcurrencyConflict), ready.batch(NAME, 1) as batch:
            ready.settle_outbox(batch, third.id or 0)  # settled already (by another worker)
            batch.put(_row())
        with ready.read(NAME) as views:
            assert views.get(Row, "g", 1) is None
        stats = ready.outbox_stats()[NAME]
        assert stats.pending == 1 and stats.oldest_at is not None

    def test_deadlines_are_kept_moved_cancelled_and_fired_once(self, ready: ViewStore) -> None:
        soon, later = datetime(2026, 12, 24, tzinfo=UTC), datetime(2027, 1, 6, tzinfo=UTC)
        with ready.batch(NAME, 1) as batch:
            batch.schedule(Deadline(NAME, "remind:1", "remind", later, 3, {"n": 1}))
            batch.schedule(Deadline(NAME, "remind:1", "remind", soon, 4, {"n": 2}))  # the same key: moved
            batch.schedule(Deadline(NAME, "remind:2", "remind", soon, 5))
            batch.schedule(Deadline(NAME, "remind:3", "remind", soon, 6))
        with ready.batch(NAME, 1) as batch:
            batch.cancel_deadline(NAME, "remind:2")
        assert ready.due_deadlines(NAME, datetime(2026, 12, 23, tzinfo=UTC), 10) == []
        due = ready.due_deadlines(NAME, soon, 10)
        assert [(d.key, d.position, d.data) for d in due] == [("remind:1", 4, {"n": 2}), ("remind:3", 6, {})]
        ready.postpone_deadline(due[1].id or 0, later)
        assert [d.key for d in ready.due_deadlines(NAME, soon, 10)] == ["remind:1"]
        assert ready.outbox_stats()[NAME].deadlines == 2
        with ready.batch(NAME, 1) as batch:
            ready.settle_deadline(batch, due[0].id or 0)
        with pytest.raises(ConcurrencyConflict), ready.batch(NAME, 1) as batch:
            ready.settle_deadline(batch, due[0].id or 0)  # fired already: not twice
        (moved,) = ready.due_deadlines(NAME, later, 10)
        assert (moved.key, moved.attempts) == ("remind:3", 1)

    def test_a_parked_command_keeps_what_it_takes_to_send_it_again(self, ready: ViewStore) -> None:
        command = {"key": "k", "command_name": "DoIt", "payload": {"n": 1}, "ordering_key": "a", "position": 3,
                   "context": {}}
        with ready.batch(NAME, 1) as batch:
            batch.park(DeadLetter(NAME, 3, "command DoIt", "a", "RuleViolation: no", command=command))
        (letter,) = ready.dead_letters(NAME)
        assert letter.command == command

    # --- one active worker per projection ----------------------------------------------------

    def test_a_lease_has_one_owner_until_released_or_expired(self, ready: ViewStore) -> None:
        assert ready.acquire_lease(NAME, "a", 60)
        assert not ready.acquire_lease(NAME, "b", 60)
        assert ready.acquire_lease(NAME, "a", 60, progressed=True)  # renewed
        assert [(lease.name, lease.owner) for lease in ready.leases()] == [(NAME, "a")]
        ready.release_lease(NAME, "b")  # not b's to release
        assert not ready.acquire_lease(NAME, "b", 60)
        ready.release_lease(NAME, "a")
        assert ready.acquire_lease(NAME, "b", -1)  # b holds a lease that has already expired ...
        assert ready.acquire_lease(NAME, "a", 60)  # ... so a takes it over
        assert ready.leases()[0].owner == "a"

    def test_only_the_lease_holder_sets_the_state(self, ready: ViewStore) -> None:
        assert ready.acquire_lease(NAME, "new", 60)
        ready.set_state_if_owner(NAME, 1, "new", "running")
        assert not ready.set_state_if_owner(NAME, 1, "old", "stopped")  # a stopping old worker
        (state,) = [s for s in ready.states() if s.name == NAME]
        assert state.state == "running"
