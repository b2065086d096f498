"""A delete names its row as the row holds its key: "07" for an int column is row 7 (PostgreSQL casts
it so), in the batch and in what the commit announces to the query API's response cache."""

from __future__ import annotations

from typing import Any

from framework.positions import touched_by
from framework.read import ReadModel
from framework.staging import StagedViews, canonical_key


class Numbered(ReadModel):
    table = "numbered"
    key = ("kind", "n")
    kind: str
    n: int
    text: str


class _Nothing:
    def load(self, model: Any, key: tuple[Any, ...]) -> None:
        return None

    def load_where(self, model: Any, equal: dict[str, Any]) -> list[Any]:
        return []


def test_a_delete_spelled_otherwise_deletes_the_row_put_in_the_same_batch() -> None:
    batch = StagedViews(_Nothing())
    batch.put(Numbered(kind="a", n=7, text="seven"))
    batch.delete(Numbered, "a", "07")
    assert list(batch.changes()) == [(Numbered, ("a", 7), None)], "one row, deleted"
    assert batch.get(Numbered, "a", 7) is None


def test_the_commit_announces_the_key_as_readers_ask_for_it() -> None:
    batch = StagedViews(_Nothing())
    batch.delete(Numbered, "a", " 7")
    assert touched_by(batch.changes()) == {"numbered": frozenset({("a", "7")})}


def test_a_key_that_is_no_value_of_its_column_is_kept_as_given() -> None:
    assert canonical_key(Numbered, ("a", "seven")) == ("a", "seven")
    assert canonical_key(Numbered, ("a",)) == ("a",)
    assert canonical_key(Numbered, (7, 7)) == (7, 7), "an int for a text column: the database casts it"
