"""Securities: the ISIN check and registration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from example_app.commands import RegisterSecurity
from example_app.handlers import router
from example_app.securities import Security, SecurityRegistered, check_isin
from framework import AlreadyExists, InvalidCommand
from framework.testing import CommandSpec, given

from .domain import APPLE, BAE, SAP, TREASURY

VALID_ISINS = [
    APPLE,
    SAP,
    BAE,
    TREASURY,  # letters in the body: converted to two digits each before the Luhn sum
    "US5949181045",  # Microsoft
    "NL0000729408",
    "JP3633400001",  # Toyota
    "CH0012221716",  # ABB
    "XS2021832634",  # a Eurobond, XS prefix
]


@pytest.mark.parametrize("isin", VALID_ISINS)
def test_valid_isins_pass_the_check_digit(isin: str) -> None:
    assert check_isin(isin) == isin


def test_isin_is_normalised_to_upper_case_without_surrounding_space() -> None:
    assert check_isin("  us0378331005 ") == APPLE


@pytest.mark.parametrize(
    "isin",
    [
        "US0378331006",  # Apple with the wrong check digit
        "US0378331004",
        "DE0007164601",
        "AU0000XVGZA4",
        "US0387331005",  # two digits swapped
    ],
)
def test_a_wrong_check_digit_is_rejected(isin: str) -> None:
    with pytest.raises(ValueError, match="wrong check digit"):
        check_isin(isin)


@pytest.mark.parametrize(
    "isin",
    [
        "",
        "US037833100",  # 11 characters
        "US03783310055",  # 13 characters
        "120378331005",  # country code is not letters
        "US03783310-5",  # punctuation
        "US037833100A",  # the check character must be a digit
        "US 378331005",
        "US037833100\u0665",  # ARABIC-INDIC DIGIT FIVE: isdigit() but not an ISIN digit
        "US\uff10378331005",  # FULLWIDTH DIGIT ZERO
        "\u00c4\u00d60378331005",  # non-ASCII letters
    ],
)
def test_malformed_isins_are_rejected(isin: str) -> None:
    with pytest.raises(ValueError, match="ISIN is 2 letters"):
        check_isin(isin)


def test_the_command_validates_the_isin_field() -> None:
    with pytest.raises(ValidationError) as caught:
        RegisterSecurity(isin="US0378331006", name="Apple", currency="USD")
    assert caught.value.errors()[0]["loc"] == ("isin",)


def test_the_command_normalises_the_isin() -> None:
    assert RegisterSecurity(isin="us0378331005", name="Apple", currency="USD").isin == APPLE


def test_the_event_revalidates_the_isin() -> None:
    with pytest.raises(ValidationError):
        SecurityRegistered(isin="US0378331006", name="Apple", currency="USD")


@pytest.mark.parametrize(
    ("field", "value"),
    [("currency", "usd"), ("currency", "US"), ("name", "   "), ("name", "x" * 201)],
)
def test_register_security_field_rules(field: str, value: str) -> None:
    payload = {"isin": APPLE, "name": "Apple", "currency": "USD", field: value}
    with pytest.raises(InvalidCommand) as caught:
        router.parse("RegisterSecurity", payload)
    assert [e.path for e in caught.value.errors] == [f"/{field}"]


def test_registering_records_one_event() -> None:
    given(Security).when(lambda _: Security.register(APPLE, "Apple", "USD")).then(
        SecurityRegistered(isin=APPLE, name="Apple", currency="USD")
    )


def test_a_security_id_is_derived_from_its_isin() -> None:
    assert Security.register(APPLE, "Apple", "USD").id == Security.id_for(APPLE)
    assert Security.id_for(APPLE) != Security.id_for(SAP)


def test_register_security_command() -> None:
    CommandSpec(router).when(RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD")).then(
        SecurityRegistered(isin=APPLE, name="Apple Inc.", currency="USD")
    )


def test_registering_the_same_isin_twice_raises_already_exists() -> None:
    (
        CommandSpec(router)
        .given(Security, Security.id_for(APPLE), SecurityRegistered(isin=APPLE, name="Apple", currency="USD"))
        .when(RegisterSecurity(isin=APPLE, name="Apple again", currency="EUR"))
        .then_raises(AlreadyExists, match=APPLE)
    )


def test_a_lower_case_duplicate_is_still_a_duplicate() -> None:
    (
        CommandSpec(router)
        .given(Security, Security.id_for(APPLE), SecurityRegistered(isin=APPLE, name="Apple", currency="USD"))
        .when(RegisterSecurity(isin="us0378331005", name="Apple", currency="USD"))
        .then_raises(AlreadyExists)
    )
