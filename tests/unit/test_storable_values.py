"""Every command refuses what a store cannot hold: NUL characters, ints beyond 64 bits, huge decimals."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError, conint

from framework import Command, CommandRouter, InvalidCommand
from framework.storable import INT64_MAX, INT64_MIN

NUL = "must not contain NUL characters"
INT64 = "must be between -9223372036854775808 and 9223372036854775807"
SURROGATE = "must not contain unpaired surrogates (it is not valid Unicode)"
NUMERIC = "must have at most 131072 digits before the decimal point and 16383 after it"


class Detail(BaseModel):  # a plain model: not a Command, so none of its defaults of its own
    label: str
    count: int
    amount: Decimal | None = None


@dataclass
class Point:
    name: str
    x: int


class UnitRecord(Command):
    text: str = ""
    tags: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    detail: Detail | None = None
    details: list[Detail] = Field(default_factory=list)
    point: Point | None = None
    anything: Any = None
    count: int = 0
    counts: list[int] = Field(default_factory=list)


class UnitBounded(Command):
    wide: int = Field(0, le=10**30, ge=-(10**30))  # declares both sides: keeps them
    positive: int = Field(1, gt=0)  # declares the lower side only: the upper default stays
    interval: conint(ge=0, lt=10**20) = 0  # type: ignore[valid-type]
    short: str = Field("", max_length=5)  # its own length bound, and still no NUL
    long_text: str = Field("", max_length=50_000)


@pytest.fixture
def router() -> CommandRouter:
    router = CommandRouter()
    router.route(UnitRecord, lambda command, unit: None)
    router.route(UnitBounded, lambda command, unit: None)
    return router


def errors_of(router: CommandRouter, name: str, payload: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidCommand) as caught:
        router.parse(name, payload)
    assert caught.value.code == "invalid_command"
    return [(e.path, e.message) for e in caught.value.errors]


# --- NUL characters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"text": "Ann\u0000"}, "/text"),
        ({"text": "\u0000"}, "/text"),
        ({"tags": ["ok", "b\u0000d"]}, "/tags/1"),
        ({"labels": {"k": "v\u0000"}}, "/labels/k"),
        ({"labels": {"k\u0000": "v"}}, "/labels/k\u0000/[key]"),
        ({"detail": {"label": "x\u0000", "count": 1}}, "/detail/label"),
        ({"details": [{"label": "a", "count": 1}, {"label": "\u0000b", "count": 2}]}, "/details/1/label"),
        ({"point": {"name": "p\u0000", "x": 1}}, "/point/name"),
        ({"anything": {"deep": [{"list": ["fine", "not\u0000fine"]}]}}, "/anything/deep/0/list/1"),
        ({"short": "a\u0000"}, "/short"),
        ({"long_text": "x" * 20_000 + "\u0000"}, "/long_text"),
    ],
)
def test_a_nul_character_anywhere_is_refused_at_its_path(
    router: CommandRouter, payload: dict[str, Any], path: str
) -> None:
    name = "UnitBounded" if {"short", "long_text"} & payload.keys() else "UnitRecord"
    assert errors_of(router, name, payload) == [(path, NUL)]


def test_every_bad_value_is_reported(router: CommandRouter) -> None:
    payload = {"text": "a\u0000", "tags": ["\u0000", "ok", "\u0000"], "count": 2**63}
    assert errors_of(router, "UnitRecord", payload) == [
        ("/text", NUL), ("/tags/0", NUL), ("/tags/2", NUL), ("/count", INT64)
    ]


def test_a_command_built_in_code_is_refused_too() -> None:
    with pytest.raises(ValidationError) as caught:
        UnitRecord(details=[Detail(label="a\u0000", count=1)])  # an instance: pydantic does not revalidate it
    assert [(e["loc"], e["msg"], e["type"]) for e in caught.value.errors()] == [
        (("details", 0, "label"), NUL, "unstorable_text")
    ]


def test_an_unpaired_surrogate_in_a_plain_model_is_refused(router: CommandRouter) -> None:
    # A Command's own strings are refused by pydantic itself; a plain model's are not.
    assert errors_of(router, "UnitRecord", {"detail": {"label": "a\ud800", "count": 1}}) == [
        ("/detail/label", SURROGATE)
    ]


def test_other_control_characters_and_any_script_are_fine(router: CommandRouter) -> None:
    text = "tab\tnew line\n\u0001 Zoë 東京 \U0001f600"
    command = router.parse("UnitRecord", {"text": text, "tags": [text], "labels": {text: text}})
    assert isinstance(command, UnitRecord)
    assert command.text == text


# --- 64-bit ints ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30, -(10**30)])
@pytest.mark.parametrize(
    ("field", "path"),
    [("count", "/count"), ("counts", "/counts/1"), ("detail", "/detail/count"), ("anything", "/anything/k")],
)
def test_an_int_beyond_64_bits_is_refused_at_its_path(
    router: CommandRouter, value: int, field: str, path: str
) -> None:
    payloads: dict[str, dict[str, Any]] = {
        "count": {"count": value},
        "counts": {"counts": [0, value]},
        "detail": {"detail": {"label": "x", "count": value}},
        "anything": {"anything": {"k": value}},
    }
    assert errors_of(router, "UnitRecord", payloads[field]) == [(path, INT64)]


def test_the_64_bit_extremes_are_accepted(router: CommandRouter) -> None:
    payload = {"count": INT64_MAX, "counts": [INT64_MIN, INT64_MAX], "detail": {"label": "x", "count": INT64_MIN}}
    command = router.parse("UnitRecord", payload)
    assert isinstance(command, UnitRecord)
    assert (command.count, command.counts) == (2**63 - 1, [-(2**63), 2**63 - 1])


def test_a_field_with_its_own_bounds_keeps_them(router: CommandRouter) -> None:
    command = router.parse("UnitBounded", {"wide": 10**25, "interval": 10**19 + 1})
    assert isinstance(command, UnitBounded)
    assert (command.wide, command.interval) == (10**25, 10**19 + 1)
    assert router.parse("UnitBounded", {"wide": -(10**25)})
    assert [path for path, _ in errors_of(router, "UnitBounded", {"wide": 10**31})] == ["/wide"]  # its own, still


def test_a_field_bounded_on_one_side_keeps_the_default_on_the_other(router: CommandRouter) -> None:
    assert errors_of(router, "UnitBounded", {"positive": 2**63}) == [
        ("/positive", "must be at most 9223372036854775807")]
    assert router.parse("UnitBounded", {"positive": 2**63 - 1})


def test_a_bool_is_not_an_int_out_of_range(router: CommandRouter) -> None:
    assert router.parse("UnitRecord", {"anything": [True, False, None, 1.5]})


# --- decimals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1E+131072", "1E-16384", "1.5E-16383"])
def test_a_decimal_beyond_postgresql_numeric_is_refused(router: CommandRouter, amount: str) -> None:
    payload = {"detail": {"label": "x", "count": 1, "amount": amount}}
    assert errors_of(router, "UnitRecord", payload) == [("/detail/amount", NUMERIC)]


@pytest.mark.parametrize("amount", ["9.99E+131071", "1E-16383", "0E+200000", "12.50", "-0.000001"])
def test_a_decimal_numeric_holds_is_accepted(router: CommandRouter, amount: str) -> None:
    command = router.parse("UnitRecord", {"detail": {"label": "x", "count": 1, "amount": amount}})
    assert isinstance(command, UnitRecord)
    assert command.detail is not None
    assert command.detail.amount == Decimal(amount)


# --- depth --------------------------------------------------------------------------------------


def nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = {"n": value}
    return value


def test_a_value_nested_deeper_than_the_stack_is_still_checked(router: CommandRouter) -> None:
    assert router.parse("UnitRecord", {"anything": nested(5_000, "fine")})
    errors = errors_of(router, "UnitRecord", {"anything": nested(5_000, "not\u0000fine")})
    assert errors == [("/anything" + "/n" * 5_000, NUL)]
