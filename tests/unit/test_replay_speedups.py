"""The fast paths of bulk catch-up behave exactly like the general ones: decoding a stored event
in one pydantic call, copying rows handed to handlers, and a row cache that knows a fresh
table's rows (so "no such row" needs no query)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from pydantic import PrivateAttr

import framework.mapper as mapper
from example_app.accounts import AccountOpened, SecuritiesCredited
from framework import Event, EventEnvelope, EventMetadata, EventSchemaError
from framework.mapper import from_stored, to_stored
from framework.readmodel import ReadModel
from framework.staging import RowCache, StagedViews
from framework.store import Notification, StoredEvent

AGGREGATE_ID = UUID("4a4c5f0c-5b1b-4c0d-9d55-7f6c0b1e2a33")


def _general(stored: StoredEvent) -> EventEnvelope:
    """``from_stored`` without its fast path."""
    original = mapper._from_current
    mapper._from_current = lambda _: None  # type: ignore[assignment]
    try:
        return from_stored(stored)
    finally:
        mapper._from_current = original


def _notification(topic: str, document: dict[str, Any], position: int = 5) -> Notification:
    return Notification(AGGREGATE_ID, 3, topic, json.dumps(document).encode(), position)


@pytest.mark.parametrize("metadata", [
    EventMetadata(),
    EventMetadata(correlation_id="c", causation_id="d", actor="a",
                  trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
])
@pytest.mark.parametrize("event", [
    AccountOpened(account_number="A-1", holder_name="Ada"),
    SecuritiesCredited(isin="XS0000000001", quantity=5),
    SecuritiesCredited(isin="XS0000000001", quantity=5, reference="ref"),
])
def test_the_fast_path_decodes_what_the_general_one_does(event: Event, metadata: EventMetadata) -> None:
    stored = to_stored(EventEnvelope("Account", AGGREGATE_ID, 3, event, metadata))
    for item in (stored, Notification(stored.originator_id, 3, stored.topic, stored.state, 42)):
        fast = mapper._from_current(item)
        assert fast is not None
        assert fast == _general(item) == from_stored(item)
        assert type(fast.event) is type(event) and type(fast.metadata) is EventMetadata
        assert fast.position == (42 if isinstance(item, Notification) else None)
    assert from_stored(stored).event == event and from_stored(stored).metadata == metadata


class UnitSpeedupQuote(Event):
    """v1: {price}; v2: {amount}."""

    event_name: ClassVar[str] = "eventfold-unit:SpeedupQuote"
    schema_version: ClassVar[int] = 2
    upcasters: ClassVar[dict[int, Any]] = {1: lambda data: {"amount": data["price"]}}

    amount: Decimal


META = {"event_id": str(uuid4()), "recorded_at": "2020-01-02T03:04:05.123456Z", "correlation_id": None,
        "causation_id": None, "actor": None}


def test_an_older_version_is_upcast_by_the_general_path() -> None:
    stored = _notification("eventfold-unit:SpeedupQuote", {"v": 1, "agg": "Q", "meta": META, "data": {"price": "1.5"}})
    assert mapper._from_current(stored) is None
    assert from_stored(stored).event == UnitSpeedupQuote(amount=Decimal("1.5"))
    current = _notification("eventfold-unit:SpeedupQuote", {"v": 2, "agg": "Q", "meta": META, "data": {"amount": "2"}})
    assert mapper._from_current(current) is not None
    assert from_stored(current).event == UnitSpeedupQuote(amount=Decimal(2))


def test_unknown_metadata_keys_are_still_ignored() -> None:
    stored = _notification("eventfold-unit:SpeedupQuote", {
        "v": 2, "agg": "Q", "meta": {**META, "added_by_a_newer_release": 1}, "data": {"amount": "2"}})
    assert mapper._from_current(stored) is None
    assert from_stored(stored).metadata.event_id == UUID(META["event_id"])


@pytest.mark.parametrize(("document", "message"), [
    ({"v": 2, "agg": "Q", "meta": META, "data": {"amount": "x"}}, "does not match its schema"),
    ({"v": 2, "agg": "Q", "meta": META, "data": {"amount": "1", "extra": 1}}, "does not match its schema"),
    ({"v": 3, "agg": "Q", "meta": META, "data": {"amount": "1"}}, "newer than this code"),
    ({"v": 2, "agg": "Q", "meta": META}, "not an Eventfold event document"),
    ({"v": 2, "agg": "Q", "meta": {**META, "recorded_at": "never"}, "data": {"amount": "1"}},
     "does not match its schema"),
])
def test_what_the_fast_path_refuses_fails_as_before(document: dict[str, Any], message: str) -> None:
    stored = _notification("eventfold-unit:SpeedupQuote", document)
    assert mapper._from_current(stored) is None
    with pytest.raises(EventSchemaError, match=message):
        from_stored(stored)


def test_broken_and_unknown_events_fail_as_before() -> None:
    not_json = Notification(AGGREGATE_ID, 1, "eventfold-unit:SpeedupQuote", b"{nope", 1)
    with pytest.raises(EventSchemaError, match="is not JSON"):
        from_stored(not_json)
    with pytest.raises(EventSchemaError, match="no event class"):
        from_stored(_notification("eventfold-unit:NoSuchEvent", {"v": 1, "agg": "Q", "meta": META, "data": {}}))


# --- rows handed to handlers ----------------------------------------------------------------


class Flat(ReadModel):
    table = "flat"
    key = ("name",)

    name: str
    count: int
    day: date | None = None


class Nested(ReadModel):
    table = "nested"
    key = ("a", "b")

    a: str
    b: int
    items: list[str]


class _Source:
    def __init__(self, rows: dict[tuple[type[ReadModel], tuple[Any, ...]], ReadModel]) -> None:
        self.rows, self.loads = rows, 0

    def load(self, model: type[Any], key: tuple[Any, ...]) -> Any:
        self.loads += 1
        row = self.rows.get((model, key))
        return row.copy_row() if row is not None else None

    def load_where(self, model: type[Any], equal: dict[str, Any]) -> list[Any]:
        return [r for (m, _), r in self.rows.items() if m is model]


def test_a_row_from_get_is_a_copy_the_handler_may_mutate() -> None:
    source = _Source({(Flat, ("x",)): Flat(name="x", count=1)})
    cache = RowCache()
    views = StagedViews(source, cache)
    got = views.get(Flat, "x")
    assert got == Flat(name="x", count=1) and got.model_fields_set == {"name", "count"}
    got.count = 99
    assert views.get(Flat, "x") == Flat(name="x", count=1)  # the cached row is untouched
    with pytest.raises(ValueError):
        got.count = "not a number"  # type: ignore[assignment]  # still validated on assignment
    views.put(got)
    again = views.get(Flat, "x")
    assert again == got and again is not got
    again.count = 5
    assert views.get(Flat, "x") == Flat(name="x", count=99)  # the staged row is untouched too

    nested = Nested(a="k", b=1, items=["one"])
    views.put(nested)
    copy = views.get(Nested, "k", 1)
    assert copy == nested
    copy.items.append("two")  # a deep copy for rows with structured fields
    assert views.get(Nested, "k", 1) == Nested(a="k", b=1, items=["one"])
    assert dict((m, k) for m, k, _ in views.changes()) == {Flat: ("x",), Nested: ("k", 1)}


def test_put_keys_rows_like_key_values() -> None:
    views = StagedViews(_Source({}))
    rows = [Flat(name="x", count=1), Nested(a="k", b=2, items=[])]
    for row in rows:
        views.put(row)
    assert [(m, k) for m, k, _ in views.changes()] == [(type(r), r.key_values()) for r in rows]


# --- the row cache of a fresh table ---------------------------------------------------------


def test_a_complete_model_answers_no_such_row_without_a_query() -> None:
    source = _Source({})
    cache = RowCache(complete=[Flat])
    first = StagedViews(source, cache)
    assert first.get(Flat, "x") is None and source.loads == 0
    assert first.get(Nested, "k", 1) is None and source.loads == 1  # not declared empty
    first.put(Flat(name="x", count=1))
    first.publish()
    second = StagedViews(source, cache)
    assert second.get(Flat, "x") == Flat(name="x", count=1) and source.loads == 1
    second.delete(Flat, "x")
    second.publish()
    assert StagedViews(source, cache).get(Flat, "x") is None and source.loads == 1


def test_rows_written_before_their_model_is_read_are_kept_and_it_stays_complete() -> None:
    """A log that opens every account before it moves one: the accounts' rows are written before any is
    looked up. They are kept, so the later lookups need no query, found or not."""
    source = _Source({})
    cache = RowCache(complete=[Flat])
    for name in "ab":
        views = StagedViews(source, cache)
        views.put(Flat(name=name, count=1))
        views.publish()
    later = StagedViews(source, cache)
    assert later.get(Flat, "a") == Flat(name="a", count=1) and later.get(Flat, "z") is None
    assert source.loads == 0


def test_a_model_only_ever_written_is_let_go_beyond_the_held_rows_and_loses_completeness() -> None:
    source = _Source({})
    cache = RowCache(complete=[Flat, Nested], held=3)
    views = StagedViews(source, cache)
    views.put(Flat(name="x", count=1))  # read later
    for b in range(3):
        views.put(Nested(a="k", b=b, items=[]))  # a history: never looked up by key
    views.publish()  # 4 rows held, 3 allowed: the model holding the most is let go
    assert cache.lookup((Nested, ("k", 1))) == (False, None)
    for b in range(3, 10):  # let go for good: not held again
        more = StagedViews(source, cache)
        more.put(Nested(a="k", b=b, items=[]))
        more.publish()
    assert cache.lookup((Nested, ("k", 9))) == (False, None)
    assert StagedViews(source, cache).get(Nested, "k", 1) is None and source.loads == 1  # asked the source
    assert StagedViews(source, cache).get(Flat, "x") == Flat(name="x", count=1) and source.loads == 1
    assert cache.lookup((Flat, ("y",))) == (True, None)  # the other model is still known whole


def test_rows_of_a_model_once_read_no_longer_count_as_held() -> None:
    source = _Source({})
    cache = RowCache(complete=[Flat, Nested], held=2)
    first = StagedViews(source, cache)
    first.put(Flat(name="a", count=1))
    first.put(Flat(name="b", count=1))
    first.publish()
    second = StagedViews(source, cache)
    assert second.get(Flat, "a") is not None  # read now: its rows are the cache's as any other's
    second.put(Nested(a="k", b=1, items=[]))
    second.put(Nested(a="k", b=2, items=[]))
    second.publish()  # 2 held (the Nested rows), within the limit: nothing let go
    assert cache.lookup((Flat, ("b",))) == (True, Flat(name="b", count=1))
    assert cache.lookup((Nested, ("k", 2))) == (True, Nested(a="k", b=2, items=[]))
    assert source.loads == 0


def test_eviction_and_clear_end_completeness() -> None:
    source = _Source({})
    cache = RowCache(maxsize=2, complete=[Flat])
    views = StagedViews(source, cache)
    views.get(Flat, "a")
    for name in "abc":
        views.put(Flat(name=name, count=1))
    views.publish()  # three rows in a cache of two: "a" is evicted
    later = StagedViews(source, cache)
    assert later.get(Flat, "a") is None and source.loads == 1  # not known absent any more: asked
    cleared = RowCache(complete=[Flat])
    cleared.clear()
    assert cleared.lookup((Flat, ("z",))) == (False, None)


def test_datetimes_and_dates_survive_the_copy() -> None:
    row = Flat(name="d", count=1, day=date(2026, 1, 2))
    views = StagedViews(_Source({}), RowCache(complete=[Flat]))
    views.put(row)
    assert views.get(Flat, "d") == row
    assert datetime(2026, 1, 2, tzinfo=UTC).date() == views.get(Flat, "d").day  # type: ignore[union-attr]


class WithPrivate(ReadModel):
    table = "with_private"
    key = ("name",)

    name: str
    _note: str = PrivateAttr(default="")


def test_a_flat_row_with_private_attributes_is_copied_with_them() -> None:
    row = WithPrivate(name="x")
    row._note = "kept"
    views = StagedViews(_Source({}))
    views.put(row)
    copy = views.get(WithPrivate, "x")
    assert copy == row and copy is not row and copy._note == "kept"


# --- the pages a partitioned rebuild's partitions share -------------------------------------


class _CountingLog:
    def __init__(self, events: int, fail_first: bool = False) -> None:
        self.events = [Notification(AGGREGATE_ID, i, "t", b"{}", i) for i in range(1, events + 1)]
        self.reads: list[tuple[int, int]] = []
        self.fail_first = fail_first

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        self.reads.append((after_position, limit))
        if self.fail_first:
            self.fail_first = False
            raise OSError("store down")
        return [n for n in self.events if n.id > after_position][:limit]

    def head(self) -> int:
        return len(self.events)


def test_partitions_read_each_page_of_the_store_once() -> None:
    from framework.shared_pages import SharedPages

    log = _CountingLog(10)
    pages = SharedPages(log, readers=3)
    for _ in range(3):
        assert [n.id for n in pages.read_all(0, 4)] == [1, 2, 3, 4]
        assert [n.id for n in pages.read_all(4, 4)] == [5, 6, 7, 8]
    assert log.reads == [(0, 4), (4, 4)]
    assert [n.id for n in pages.read_all(0, 4)] == [1, 2, 3, 4]  # every reader had it: read again
    assert log.reads == [(0, 4), (4, 4), (0, 4)]
    assert pages.head() == 10


def test_a_failed_page_read_is_not_kept() -> None:
    from framework.shared_pages import SharedPages

    log = _CountingLog(5, fail_first=True)
    pages = SharedPages(log, readers=2)
    with pytest.raises(OSError):
        pages.read_all(0, 5)
    assert len(pages.read_all(0, 5)) == 5
    assert log.reads == [(0, 5), (0, 5)]


def test_pages_beyond_the_bound_are_let_go() -> None:
    from framework.shared_pages import SharedPages

    log = _CountingLog(20)
    pages = SharedPages(log, readers=2, keep=2)
    for after in (0, 5, 10):
        pages.read_all(after, 5)
    pages.read_all(0, 5)  # the oldest was let go: read again
    assert log.reads == [(0, 5), (5, 5), (10, 5), (0, 5)]


def test_the_partial_last_page_is_read_again_by_each_partition() -> None:
    from framework.shared_pages import SharedPages

    log = _CountingLog(3)
    pages = SharedPages(log, readers=2)
    assert len(pages.read_all(0, 5)) == 3
    log.events.append(Notification(AGGREGATE_ID, 4, "t", b"{}", 4))  # the log grew meanwhile
    assert len(pages.read_all(0, 5)) == 4
    assert log.reads == [(0, 5), (0, 5)]


def test_a_process_s_partitions_share_pages_while_they_catch_up_and_keep_none_after() -> None:
    from framework.shared_pages import SharedPages

    log = _CountingLog(10)
    pages = SharedPages(log)  # readers: as many as are catching up
    with pages.catching_up(), pages.catching_up():
        pages.read_all(0, 5)
        pages.read_all(0, 5)  # the second partition: from the first one's read
        pages.read_all(0, 5)  # both had it: let go
        with pages.catching_up():
            pages.read_all(5, 5)
    assert log.reads == [(0, 5), (0, 5), (5, 5)]
    assert pages._pages == {}  # nobody catching up: nothing kept
    pages.read_all(5, 5)  # outside a catch-up (a dead letter's event): read, not kept
    assert log.reads[-1] == (5, 5) and pages._pages == {}


def test_the_fast_path_builds_each_envelope_field_from_its_own_source() -> None:
    """The fast path builds envelopes positionally: each field must still come from the right place (an
    aggregate id stored as text is a UUID too)."""
    metadata = EventMetadata(correlation_id="c", actor="a")
    stored = to_stored(EventEnvelope("Account", AGGREGATE_ID, 7, SecuritiesCredited(isin="XS1", quantity=2), metadata))
    for originator in (AGGREGATE_ID, str(AGGREGATE_ID)):
        fast = mapper._from_current(Notification(originator, 7, stored.topic, stored.state, 99))
        assert fast is not None
        assert (fast.aggregate_type, fast.aggregate_id, fast.version, fast.event, fast.metadata, fast.position) == (
            "Account", AGGREGATE_ID, 7, SecuritiesCredited(isin="XS1", quantity=2), metadata, 99)
        assert type(fast.aggregate_id) is UUID


def test_a_built_envelope_is_the_envelope_its_constructor_makes() -> None:
    """``built_envelope`` skips the frozen dataclass's ``__init__``: it must set every field, and only those
    (a field added to ``EventEnvelope`` fails here until it is built there too)."""
    from dataclasses import FrozenInstanceError, asdict, fields

    from framework.events import built_envelope

    event, metadata = SecuritiesCredited(isin="XS1", quantity=2), EventMetadata(actor="a")
    for position in (9, None):
        built = built_envelope("Account", AGGREGATE_ID, 7, event, metadata, position)
        made = EventEnvelope("Account", AGGREGATE_ID, 7, event, metadata, position)
        assert type(built) is EventEnvelope and built == made and hash(built) == hash(made)
        assert vars(built) == vars(made) and list(vars(built)) == [f.name for f in fields(EventEnvelope)]
        assert asdict(built) == asdict(made)
        with pytest.raises(FrozenInstanceError):
            built.version = 8  # type: ignore[misc]


def test_a_batch_layered_over_another_reads_its_own_changes_then_the_others_then_the_store() -> None:
    """``get`` skips the layers that changed no row of the model: what each layer changed is still found,
    deletes included, and the newest layer wins."""
    stored = {(Flat, ("a",)): Flat(name="a", count=1), (Flat, ("b",)): Flat(name="b", count=1),
              (Flat, ("c",)): Flat(name="c", count=1), (Nested, ("k", 1)): Nested(a="k", b=1, items=["s"])}
    source = _Source(stored)
    first = StagedViews(source)
    first.put(Flat(name="a", count=2))
    first.delete(Flat, "b")
    first.delete(Nested, "k", 1)  # a model the layer only deletes
    assert first.get(Nested, "k", 1) is None
    second = StagedViews(source)
    second.layer_over(first)
    assert second.get(Flat, "a") == Flat(name="a", count=2)  # the model is only the layer under's
    assert second.get(Flat, "b") is None  # deleted under: not the stored row
    assert second.get(Nested, "k", 1) is None
    assert second.get(Flat, "c") == Flat(name="c", count=1)  # from the store
    second.delete(Flat, "a")
    second.put(Flat(name="b", count=3))
    assert second.get(Flat, "a") is None and second.get(Flat, "b") == Flat(name="b", count=3)
    second.put(Nested(a="k", b=1, items=["t"]))
    assert second.get(Nested, "k", 1) == Nested(a="k", b=1, items=["t"])
    third = StagedViews(source)
    third.layer_over(second)
    assert third.get(Nested, "k", 1) == Nested(a="k", b=1, items=["t"])
    assert third.get(Flat, "a") is None and third.get(Flat, "b") == Flat(name="b", count=3)
    assert third.get(Flat, "c") == Flat(name="c", count=1)


def test_a_shared_page_is_split_once_for_the_partitions_that_share_it() -> None:
    """The partitions of one projection reading a page: the first splits it by partition, the others take
    their part of that split (each partition used to filter every event of every page itself)."""
    from framework.shared_pages import SharedPages

    log = _CountingLog(10)
    pages = SharedPages(log, readers=3)
    splits: list[int] = []

    def split(rows: list[Notification]) -> dict[int, list[Notification]]:
        splits.append(len(rows))
        return {0: [n for n in rows if n.id % 2 == 0], 1: [n for n in rows if n.id % 2 == 1]}

    for _ in range(3):
        rows, parts = pages.read_split(0, 4, ("p", 2), split)
        assert [n.id for n in rows] == [1, 2, 3, 4]
        assert [n.id for n in parts[0]] == [2, 4] and [n.id for n in parts[1]] == [1, 3]
    assert splits == [4] and log.reads == [(0, 4)]
    _, other = pages.read_split(4, 4, ("another projection", 2), split)  # another key: its own split
    assert splits == [4, 4] and [n.id for n in other[0]] == [6, 8]
