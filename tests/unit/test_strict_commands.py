"""``CommandRouter.parse_json``: what a client sends is taken in JSON's own forms only (issue 10, rows 4 and 5)."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from pydantic import BaseModel, Field

from framework import Command, CommandRouter, InvalidCommand
from framework.commands import Lax
from framework.errors import MalformedJson


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Part(BaseModel):
    count: int
    label: str = "x"


class StrictAll(Command):
    quantity: int = 0
    name: str = ""
    flag: bool = False
    ratio: float = 0.0
    amount: Decimal = Decimal(0)
    day: date | None = None
    at: datetime | None = None
    ref: UUID | None = None
    colour: Colour | None = None
    kind: Literal["a", "b"] | None = None
    pair: tuple[int, int] | None = None
    parts: list[Part] = Field(default_factory=list)


class Loose(Command):
    quantity: Annotated[int, Field(gt=0), Lax()] = 1
    name: Annotated[str, Lax()] = ""
    strict_too: int = 0


def _router() -> CommandRouter:
    router = CommandRouter()
    router.route(StrictAll, lambda command, unit: None)
    router.route(Loose, lambda command, unit: None)
    return router


def parse(name: str, body: Any) -> Command:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _router().parse_json(name, raw)


def refused_at(name: str, body: Any) -> list[str]:
    with pytest.raises(InvalidCommand) as refused:
        parse(name, body)
    return [e.path for e in refused.value.errors]


@pytest.mark.parametrize(("field", "value"), [
    ("quantity", True), ("quantity", "7"), ("quantity", 7.5), ("quantity", 7.0), ("quantity", None),
    ("name", 5), ("name", True), ("name", ["a"]),
    ("flag", "true"), ("flag", 1), ("flag", "yes"),
    ("ratio", "1.5"), ("ratio", True),
    ("amount", True), ("amount", [1]),
    ("day", 1_700_000_000), ("day", "30/06/2026"),
    ("colour", "RED"), ("colour", 0),
    ("pair", "1,2"),
])
def test_a_value_not_in_its_json_form_is_refused_at_its_path(field: str, value: Any) -> None:
    assert refused_at("StrictAll", {field: value}) == [f"/{field}"]


def test_nested_models_are_strict_too() -> None:
    assert refused_at("StrictAll", {"parts": [{"count": 1}, {"count": "2"}, {"count": 3, "label": 4}]}) == [
        "/parts/1/count", "/parts/2/label"]


def test_json_s_natural_forms_are_accepted() -> None:
    command = parse("StrictAll", {
        "quantity": 7, "name": "Ann", "flag": True, "ratio": 1, "amount": "0.25", "day": "2026-06-30",
        "at": "2026-06-30T10:00:00Z", "ref": "86adfd40-7742-5f0d-99a2-12537867d1e3", "colour": "red",
        "kind": "a", "pair": [1, 2], "parts": [{"count": 1}],
    })
    assert isinstance(command, StrictAll)
    assert (command.quantity, command.ratio, command.amount) == (7, 1.0, Decimal("0.25"))
    assert command.day == date(2026, 6, 30)
    assert command.colour is Colour.RED and command.pair == (1, 2)
    assert parse("StrictAll", {"amount": 0.25}).amount == Decimal("0.25")  # type: ignore[attr-defined]


def test_a_lax_field_takes_pydantic_s_conversions_and_keeps_its_rules() -> None:
    command = parse("Loose", {"quantity": "7", "name": "Ann"})
    assert isinstance(command, Loose) and command.quantity == 7
    assert refused_at("Loose", {"quantity": "-1"}) == ["/quantity"]  # its gt=0 still holds
    assert refused_at("Loose", {"quantity": "seven"}) == ["/quantity"]
    assert refused_at("Loose", {"strict_too": "7"}) == ["/strict_too"]  # only the marked fields are lax


def test_parse_stays_lax_for_what_the_framework_built() -> None:
    """A process manager's command is rebuilt from its outbox with ``parse``: dates come back as strings."""
    command = _router().parse("StrictAll", {"day": "2026-06-30", "quantity": "7"})
    assert isinstance(command, StrictAll) and command.quantity == 7


@pytest.mark.parametrize(("body", "says"), [
    (b'{"quantity": 1, "quantity": 2}', "'quantity' appears twice"),
    (b'{"parts": [{"count": 1, "count": 2}]}', "'count' appears twice"),
    (b'\xef\xbb\xbf{"quantity": 1}', "byte order mark"),
    ('{"name": "Zoë"}'.encode("utf-16"), "not UTF-8"),
    ('{"name": "Zoë"}'.encode("latin-1"), "not UTF-8"),
    ('{"name": "x"}'.encode("utf-16-le"), "not valid JSON"),
    (b'{"ratio": NaN}', "NaN is not allowed"),
    (b'{"ratio": -Infinity}', "-Infinity is not allowed"),
    (b'{"name": "\\ud800"}', "surrogate"),
    (b'{"name": "a\\udc00"}', "surrogate"),
    (b'{"parts": ' + b"[" * 300 + b"]" * 300 + b"}", "recursion"),
    (b'{"quantity": 1} {"quantity": 2}', "Extra data"),
    (b"", "Expecting value"),
])
def test_what_is_not_plain_json_is_malformed(body: bytes, says: str) -> None:
    with pytest.raises(MalformedJson) as malformed:
        parse("StrictAll", body)
    assert says in malformed.value.message, malformed.value.message
    assert malformed.value.code == "malformed_json"


def test_a_paired_surrogate_escape_is_fine() -> None:
    command = parse("StrictAll", b'{"name": "\\ud83d\\ude00"}')
    assert isinstance(command, StrictAll) and command.name == "\U0001f600"
