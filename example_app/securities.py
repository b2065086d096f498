"""Securities, identified by ISIN."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from framework import Aggregate, Event, event

__all__ = ["ISIN_DESCRIPTION", "ISIN_PATTERN", "Isin", "Security", "SecurityRegistered", "check_isin"]


def check_isin(value: str) -> str:
    """ISO 6166: two letters, nine alphanumerics, and a Luhn check digit."""
    value = value.strip().upper()
    ascii_alnum = value.isascii() and value.isalnum()  # str.isalnum/isdigit accept any script
    if len(value) != 12 or not value[:2].isalpha() or not ascii_alnum or not value[-1].isdigit():
        raise ValueError("an ISIN is 2 letters, 9 letters or digits, and a check digit")
    digits = "".join(str(int(c, 36)) for c in value[:-1])
    if _luhn_check_digit(digits) != int(value[-1]):
        raise ValueError(f"{value} has a wrong check digit")
    return value


def _luhn_check_digit(digits: str) -> int:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if index % 2 == 0 else 1)
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


ISIN_PATTERN = "^[A-Z]{2}[A-Z0-9]{9}[0-9]$"
ISIN_DESCRIPTION = (
    "An ISIN (ISO 6166): 2 letters, 9 letters or digits, and a check digit. The check digit is the Luhn "
    "check digit of the first 11 characters with each letter written as its value (A=10 ... Z=35): "
    "US037833100 is written 3028037833100, whose check digit is 5, hence US0378331005. Lower case "
    "and surrounding spaces are taken and normalised."
)

# The pattern and format are the document's (format `isin`: the pattern plus the check digit); the
# server checks with check_isin, which also takes lower case.
Isin = Annotated[str, AfterValidator(check_isin),
                 Field(description=ISIN_DESCRIPTION, examples=["US0378331005"],
                       json_schema_extra={"pattern": ISIN_PATTERN, "format": "isin"})]


class SecurityRegistered(Event):
    isin: Isin
    name: str
    currency: str


class Security(Aggregate):
    isin: str = ""
    name: str = ""
    currency: str = ""

    @classmethod
    def register(cls, isin: str, name: str, currency: str) -> Security:
        security = cls.blank(cls.id_for(isin))
        security._registered(isin=isin, name=name, currency=currency)
        return security

    @event(SecurityRegistered)
    def _registered(self, isin: str, name: str, currency: str) -> None:
        self.isin, self.name, self.currency = isin, name, currency
