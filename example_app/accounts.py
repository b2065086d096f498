"""Depository accounts and the securities they hold. A holding never goes negative."""

from __future__ import annotations

from pydantic import Field

from framework import Aggregate, Event, RuleViolation, event

__all__ = ["MAX_HOLDING", "Account", "AccountOpened", "SecuritiesCredited", "SecuritiesDebited"]

MAX_HOLDING = 10**15
"""The most units of one security one account may hold.

Far above any security's whole issue (the largest share counts are around 10**10, bonds in units of
one currency unit around 10**12), so only a mistake reaches it, and a back office would rather refuse
that credit than book it. It also keeps every quantity derived from a holding within a 64-bit
integer (a PostgreSQL bigint in the read models): holdings, movements and running balances, the
net movement of a day, and a split's new units (at most ``MAX_SPLIT_RATIO`` times a holding).
"""


class AccountOpened(Event):
    account_number: str
    holder_name: str


class SecuritiesCredited(Event):
    isin: str
    quantity: int
    reference: str | None = None


class SecuritiesDebited(Event):
    isin: str
    quantity: int
    reference: str | None = None


class Account(Aggregate):
    snapshot_every = 50  # busy accounts collect many movements

    account_number: str = ""
    holder_name: str = ""
    holdings: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def open(cls, account_number: str, holder_name: str) -> Account:
        account = cls.blank(cls.id_for(account_number))
        account._opened(account_number=account_number, holder_name=holder_name)
        return account

    def holding(self, isin: str) -> int:
        return self.holdings.get(isin, 0)

    def credit(self, isin: str, quantity: int, reference: str | None = None) -> None:
        _require_positive(quantity)
        if self.holding(isin) + quantity > MAX_HOLDING:
            raise RuleViolation(
                f"account {self.account_number} holds {self.holding(isin)} of {isin},"
                f" crediting {quantity} would exceed the limit of {MAX_HOLDING} units",
                reason="holding_limit_exceeded",
            )
        self._credited(isin=isin, quantity=quantity, reference=reference)

    def debit(self, isin: str, quantity: int, reference: str | None = None) -> None:
        _require_positive(quantity)
        if self.holding(isin) < quantity:
            raise RuleViolation(
                f"account {self.account_number} holds {self.holding(isin)} of {isin},"
                f" cannot debit {quantity}",
                reason="insufficient_holdings",
            )
        self._debited(isin=isin, quantity=quantity, reference=reference)

    @event(AccountOpened)
    def _opened(self, account_number: str, holder_name: str) -> None:
        self.account_number, self.holder_name = account_number, holder_name

    @event(SecuritiesCredited)
    def _credited(self, isin: str, quantity: int, reference: str | None) -> None:
        self.holdings[isin] = self.holding(isin) + quantity

    @event(SecuritiesDebited)
    def _debited(self, isin: str, quantity: int, reference: str | None) -> None:
        self.holdings[isin] = self.holding(isin) - quantity
        if not self.holdings[isin]:
            del self.holdings[isin]


def _require_positive(quantity: int) -> None:
    if quantity <= 0:
        raise RuleViolation(f"quantity must be positive, got {quantity}", reason="non_positive_quantity")
