"""Securities, identified by ISIN."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from framework import Aggregate, Event, event

__all__ = ["Isin", "Security", "SecurityRegistered", "check_isin"]


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


Isin = Annotated[str, AfterValidator(check_isin)]


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
