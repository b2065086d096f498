"""A kept answer's query read against the commits after it: a change that can alter what the query
returned must be seen to (never a wrong keep), and one that cannot is let through often enough to matter.
Checked against the memory view store's own answers before and after thousands of random changes."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from framework.adapters.memory_views import MemoryViewStore
from framework.graphql.query_reads import QueryRead
from framework.graphql.responses import Reads, RecordingViews, ResponseCache
from framework.positions import PositionChange, RowValues, changed_values, touched_by
from framework.query import Condition, Sort
from framework.readmodel import ReadModel


class Row(ReadModel):
    table = "rows"
    key = ("id",)
    id: int
    rank: int
    label: str
    score: float | None = None
    day: date | None = None
    amount: Decimal | None = None


LABELS = ["", "a", "ab", "b", "ba", "B", "é", "a_", "%"]
DAYS = [date(2026, 1, d) for d in (1, 2, 3)]


def _row(chooser: random.Random, row_id: int) -> Row:
    return Row(id=row_id, rank=chooser.randrange(5), label=chooser.choice(LABELS),
               score=chooser.choice([None, 0.5, 1.0, 2.5, -0.0]), day=chooser.choice([None, *DAYS]),
               amount=chooser.choice([None, Decimal("1.50"), Decimal("2"), Decimal("-3.25")]))


def _condition(chooser: random.Random) -> Condition:
    column = chooser.choice(["rank", "label", "score", "day", "amount", "id"])
    operators = ["eq", "ne", "lt", "lte", "gt", "gte", "in", "is_null"]
    if column == "label":
        operators += ["prefix", "contains"]
    operator = chooser.choice(operators)
    pick = {"rank": lambda: chooser.randrange(5), "label": lambda: chooser.choice(LABELS),
            "score": lambda: chooser.choice([0.5, 1.0, 2.5, 0.0]), "day": lambda: chooser.choice(DAYS),
            "amount": lambda: chooser.choice([Decimal("1.5"), Decimal("2.00"), Decimal("-3.25")]),
            "id": lambda: chooser.randrange(12)}[column]
    if operator == "is_null":
        return Condition(column, operator, chooser.random() < 0.5)
    if operator == "in":
        return Condition(column, operator, [pick() for _ in range(chooser.randrange(1, 3))])
    if operator in ("prefix", "contains"):
        return Condition(column, operator, chooser.choice(["a", "b", "", "_", "%"]))
    return Condition(column, operator, pick())


def _store(rows: list[Row]) -> MemoryViewStore:
    store = MemoryViewStore(clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    store.ensure_tables("p", 1, [Row])
    with store.batch("p", 1) as batch:
        for row in rows:
            batch.put(row)
        batch.advance(1, None)
    return store


def _commit(store: MemoryViewStore, position: int, puts: list[Row], deletes: list[int]) -> PositionChange:
    heard: list[PositionChange] = []
    stop = store.observe(heard.append)
    with store.batch("p", 1) as batch:
        for row in puts:
            batch.put(row)
        for row_id in deletes:
            batch.delete(Row, row_id)
        batch.advance(position, None)
    stop()
    return heard[-1]


def _flagged(read: QueryRead, change: PositionChange) -> bool:
    assert change.touched is not None and change.rows is not None
    rows: RowValues = change.rows
    return any(read.changed_by(key, rows["rows"][key]) for key in change.touched.get("rows", ()))


@pytest.mark.parametrize("seed", range(6))
def test_no_change_that_alters_a_query_result_goes_unseen(seed: int) -> None:
    chooser = random.Random(seed)
    kept = altered = 0
    for round_ in range(400):
        rows = {i: _row(chooser, i) for i in chooser.sample(range(12), chooser.randrange(0, 10))}
        store = _store(list(rows.values()))
        where = [_condition(chooser) for _ in range(chooser.choice([0, 0, 1, 1, 2]))]
        sort = Sort(chooser.choice([None, "rank", "label", "id"]), chooser.random() < 0.5)
        after = None
        if rows and chooser.random() < 0.3:
            after = sort.values(chooser.choice(list(rows.values())))
        limit = chooser.choice([None, 0, 1, 2, 3, 5])
        reads = Reads()
        before = RecordingViews(store, reads).query("p", Row, where, sort, after=after, limit=limit)
        (read,) = reads.queries
        puts = [_row(chooser, chooser.randrange(12)) for _ in range(chooser.randrange(0, 3))]
        deletes = chooser.sample(range(12), chooser.randrange(0, 2))
        deletes = [d for d in deletes if d not in {p.id for p in puts}]
        change = _commit(store, 2 + round_, puts, deletes)
        now = store.query("p", Row, where, sort, after=after, limit=limit)
        flagged = _flagged(read, change)
        if now != before:
            altered += 1
            assert flagged, f"unseen: {where} {sort} after={after} limit={limit}\n{before}\n->{now}\n{change.rows}"
        elif not flagged:
            kept += 1
    assert altered > 50 and kept > 50, (altered, kept)


def test_a_kept_page_survives_a_row_entering_beyond_it_and_not_one_entering_it() -> None:
    store = _store([Row(id=i, rank=i, label="x") for i in range(10)])
    reads = Reads()
    RecordingViews(store, reads).query("p", Row, [], Sort("rank"), limit=4)
    cache = ResponseCache(entries=4)
    cache.hear(None)
    cache.put("page", {"p": (1, 1)}, ["p"], {"page": []}, reads, cache.epoch)
    cache.hear(_commit(store, 2, [Row(id=20, rank=50, label="x")], []))
    kept = cache.get("page")
    assert kept is not None and cache.valid(kept, {"p": (1, 2)}), "a row beyond the page"
    cache.hear(_commit(store, 3, [], [9]))
    assert cache.get("page") is not None, "a row beyond the page deleted"
    cache.hear(_commit(store, 4, [Row(id=21, rank=2, label="x")], []))
    assert cache.get("page") is None, "a row sorting inside the page"


def test_a_commit_without_values_drops_a_page_of_its_table() -> None:
    store = _store([Row(id=i, rank=i, label="x") for i in range(10)])
    reads = Reads()
    RecordingViews(store, reads).query("p", Row, [], Sort("rank"), limit=4)
    cache = ResponseCache(entries=4)
    cache.hear(None)
    cache.put("page", {"p": (1, 1)}, ["p"], {"page": []}, reads, cache.epoch)
    cache.hear(PositionChange("p", 1, 2, touched={"rows": frozenset({("20",)})}))
    assert cache.get("page") is None


@pytest.mark.parametrize("value", [float("nan"), datetime(2026, 1, 1)])
def test_values_compared_otherwise_by_the_store_are_not_decided(value: Any) -> None:
    """NaN (PostgreSQL: above every number, equal to itself) and a time without a zone drop the page."""
    class Timed(ReadModel):
        table = "timed"
        key = ("id",)
        id: int
        at: float | datetime | None = None

    read = QueryRead("p", Timed, (), Sort("at"), None, 2, frozenset({("1",), ("2",)}), 2,
                     (1.0, 2) if isinstance(value, float) else (datetime(2027, 1, 1, tzinfo=UTC), 2), True)
    values = changed_values([(Timed, (9,), Timed(id=9, at=value))])
    assert values is not None and touched_by([(Timed, (9,), None)]) is not None
    assert read.changed_by(("9",), values["timed"][("9",)]), "undecided: dropped"


def test_text_order_is_decided_only_when_the_store_orders_by_code_point() -> None:
    read = QueryRead("p", Row, (), Sort("label"), None, 2, frozenset({("1",), ("2",)}), 2, ("b", 2), False)
    values = changed_values([(Row, (9,), Row(id=9, rank=0, label="c"))])
    assert values is not None
    assert read.changed_by(("9",), values["rows"][("9",)]), "collation unknown: dropped"
    exact = QueryRead("p", Row, (), Sort("label"), None, 2, frozenset({("1",), ("2",)}), 2, ("b", 2), True)
    assert not exact.changed_by(("9",), values["rows"][("9",)]), "'c' sorts after 'b' by code point"
