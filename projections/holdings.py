"""Holdings per account, now and at any past date (from the movement history)."""

from __future__ import annotations

from datetime import date, datetime
from uuid import UUID

from pydantic import ConfigDict

from example_app.accounts import AccountOpened, SecuritiesCredited, SecuritiesDebited
from framework.read import HandlerContext, Projector, ReadModel, on

__all__ = ["AccountRow", "Holding", "HoldingMovement", "HoldingsProjector"]


class AccountRow(ReadModel):
    model_config = ConfigDict(frozen=True)  # rows are replaced, never changed: handlers read them uncopied
    table = "accounts"
    key = ("aggregate_id",)
    indexes = (("account_number",),)

    aggregate_id: UUID
    account_number: str
    holder_name: str
    opened_at: datetime


class Holding(ReadModel):
    model_config = ConfigDict(frozen=True)
    table = "holdings"
    key = ("account_number", "isin")
    indexes = (("isin",),)
    fillfactor = 50  # updated by every movement: room for PostgreSQL to update rows in place (HOT)

    account_number: str
    isin: str
    quantity: int  # a bigint: an account refuses a credit that would take it above MAX_HOLDING (10**15)


class HoldingMovement(ReadModel):
    """One credit or debit; the balance after it answers "what was held on date D"."""

    model_config = ConfigDict(frozen=True)
    table = "holding_movements"
    key = ("account_number", "isin", "position")
    indexes = (("isin", "value_date"),)

    account_number: str
    isin: str
    position: int
    value_date: date
    delta: int  # both at most MAX_HOLDING: bigints (see example_app.accounts)
    balance: int


class HoldingsProjector(Projector):
    name = "holdings"
    read_models = (AccountRow, Holding, HoldingMovement)
    per_aggregate = True  # every row is one account's: `eventfold replay holdings --aggregate` can rebuild it
    partitions = 4  # ...so accounts can be split: `eventfold project holdings` started twice shares them

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(AccountRow(
            aggregate_id=context.envelope.aggregate_id,
            account_number=event.account_number,
            holder_name=event.holder_name,
            opened_at=context.envelope.metadata.recorded_at,
        ))

    @on(SecuritiesCredited)
    def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
        self._move(context, event.isin, event.quantity)

    @on(SecuritiesDebited)
    def debited(self, event: SecuritiesDebited, context: HandlerContext) -> None:
        self._move(context, event.isin, -event.quantity)

    def _move(self, context: HandlerContext, isin: str, delta: int) -> None:
        views, envelope = context.views, context.envelope
        account = views.get(AccountRow, envelope.aggregate_id)
        assert account is not None, f"no account {envelope.aggregate_id}"
        holding = views.get(Holding, account.account_number, isin)
        balance = (holding.quantity if holding else 0) + delta
        if balance:
            views.put(Holding(account_number=account.account_number, isin=isin, quantity=balance))
        else:
            views.delete(Holding, account.account_number, isin)
        assert envelope.position is not None
        views.put(HoldingMovement(
            account_number=account.account_number, isin=isin, position=envelope.position,
            value_date=envelope.metadata.recorded_at.date(), delta=delta, balance=balance,
        ))
