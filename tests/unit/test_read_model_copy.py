"""A read model's copies (the copy a handler gets of every row it reads): equal, independent, still
validated on assignment; a row with private attributes takes pydantic's own copy; a row nothing can change
(frozen, scalars only) is shared, not copied."""

from __future__ import annotations

import copy

import pytest
from pydantic import ConfigDict, PrivateAttr, ValidationError

from framework.readmodel import ReadModel
from framework.staging import StagedViews


class Row(ReadModel):
    table = "rows"
    key = ("name",)

    name: str
    count: int
    note: str | None = None


class Noted(ReadModel):
    table = "noted"
    key = ("name",)

    name: str
    count: int
    _seen: list[str] = PrivateAttr(default_factory=list)


def test_a_copy_is_equal_and_independent() -> None:
    row = Row(name="a", count=1)
    copied = copy.copy(row)
    assert copied == row and copied is not row and type(copied) is Row
    assert copied.model_fields_set == row.model_fields_set == {"name", "count"}
    copied.count = 2
    copied.note = "changed"
    assert (row.count, row.note) == (1, None)
    assert copied.model_fields_set == {"name", "count", "note"} and row.model_fields_set == {"name", "count"}


def test_a_copy_is_still_validated_on_assignment() -> None:
    copied = copy.copy(Row(name="a", count=1))
    with pytest.raises(ValidationError):
        copied.count = "many"  # type: ignore[assignment]


def test_private_attributes_are_copied_too() -> None:
    row = Noted(name="a", count=1)
    row._seen.append("x")
    copied = copy.copy(row)
    assert copied._seen == ["x"] and copied == row


class _Source:
    def __init__(self, row: Row) -> None:
        self.row = row

    def load(self, model: type[Row], key: tuple[str, ...]) -> Row | None:
        return self.row if key == (self.row.name,) else None

    def load_where(self, model: type[Row], equal: dict[str, str]) -> list[Row]:
        return [self.row]


def test_a_handler_changing_the_row_it_read_changes_nothing_it_did_not_put() -> None:
    stored = Row(name="a", count=1)
    views = StagedViews(_Source(stored))
    views.put(Row(name="b", count=5))
    for name in ("a", "b"):
        row = views.get(Row, name)
        assert row is not None
        row.count += 100
    assert stored.count == 1
    assert [(m, k, r.count if r else None) for m, k, r in views.changes()] == [(Row, ("b",), 5)]


class Frozen(ReadModel):
    model_config = ConfigDict(frozen=True)
    table = "frozen"
    key = ("name",)

    name: str
    count: int


class FrozenWithList(ReadModel):
    model_config = ConfigDict(frozen=True)
    table = "frozen_lists"
    key = ("name",)

    name: str
    tags: list[str]


class FrozenNoted(ReadModel):
    model_config = ConfigDict(frozen=True)
    table = "frozen_noted"
    key = ("name",)

    name: str
    _seen: list[str] = PrivateAttr(default_factory=list)


def test_only_rows_nothing_can_change_are_immutable() -> None:
    assert Frozen.immutable()
    assert not Row.immutable()  # assignments change it
    assert not FrozenWithList.immutable()  # its list changes in place
    assert not FrozenNoted.immutable()  # its private attributes change


def test_an_immutable_row_is_read_without_a_copy_and_cannot_be_changed() -> None:
    stored = Frozen(name="a", count=1)
    views = StagedViews(_FrozenSource(stored))
    row = views.get(Frozen, "a")
    assert row is stored and row.copy_row() is stored
    with pytest.raises(ValidationError):
        row.count = 2  # type: ignore[misc]
    listed = FrozenWithList(name="a", tags=["x"])
    assert listed.copy_row() is not listed and listed.copy_row().tags is not listed.tags


class _FrozenSource:
    def __init__(self, row: Frozen) -> None:
        self.row = row

    def load(self, model: type[Frozen], key: tuple[str, ...]) -> Frozen | None:
        return self.row if key == (self.row.name,) else None

    def load_where(self, model: type[Frozen], equal: dict[str, str]) -> list[Frozen]:
        return [self.row]


class FrozenWithExtras(ReadModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    table = "frozen_extras"
    key = ("name",)

    name: str


def test_a_frozen_row_that_allows_extra_fields_is_copied() -> None:
    """Its extra values (a list, say) are not fields: frozen does not keep them from changing in place."""
    assert not FrozenWithExtras.immutable()
    stored = FrozenWithExtras(name="a", tags=["x"])  # type: ignore[call-arg]
    row = StagedViews(_ExtrasSource(stored)).get(FrozenWithExtras, "a")
    assert row is not None and row is not stored
    row.tags.append("y")  # type: ignore[attr-defined]
    assert stored.tags == ["x"]  # type: ignore[attr-defined]


class _ExtrasSource:
    def __init__(self, row: FrozenWithExtras) -> None:
        self.row = row

    def load(self, model: type[FrozenWithExtras], key: tuple[str, ...]) -> FrozenWithExtras | None:
        return self.row

    def load_where(self, model: type[FrozenWithExtras], equal: dict[str, str]) -> list[FrozenWithExtras]:
        return [self.row]
