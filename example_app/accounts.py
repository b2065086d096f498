"""Depository accounts and the securities they hold. A holding never goes negative."""

from __future__ import annotations

from pydantic import Field

from framework import Aggregate, Event, RuleViolation, event

__all__ = ["Account", "AccountOpened", "SecuritiesCredited", "SecuritiesDebited"]


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
