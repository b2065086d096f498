"""A read model's storage hint: ``fillfactor`` (room left on each page of its tables for rows updated in
place) is checked when the class is defined."""

from __future__ import annotations

import pytest

from framework.errors import ConfigurationError
from framework.readmodel import ReadModel
from projections.holdings import Holding, HoldingMovement


@pytest.mark.parametrize("value", [0, 9, 101, 50.0, "50", True])
def test_a_fillfactor_outside_10_to_100_is_a_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError, match="fillfactor"):
        type("Roomy", (ReadModel,), {"__annotations__": {"name": str}, "table": "roomy", "key": ("name",),
                                     "fillfactor": value})


def test_a_fillfactor_from_10_to_100_is_kept_and_none_is_the_default() -> None:
    class Roomy(ReadModel):
        table = "roomy"
        key = ("name",)
        fillfactor = 10

        name: str

    assert Roomy.fillfactor == 10 and ReadModel.fillfactor is None


def test_the_example_leaves_room_in_the_rows_it_updates_only() -> None:
    assert Holding.fillfactor == 50 and HoldingMovement.fillfactor is None
