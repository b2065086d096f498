"""A user's small application whose read models cannot hold every value its commands accept.

Loaded by ``eventfold write-api`` and ``eventfold project`` (``EVENTFOLD_APP=poison_values:app``) in the
poison tests:
an amount is accepted by the command (a 64-bit integer) but the ledger stores it scaled by 1,000 in a
bigint column, so a large amount is refused by PostgreSQL at commit; a note may be 200,000 characters.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from framework import Aggregate, App, Command, CommandRouter, Event, UnitOfWork, event
from framework.projector import HandlerContext, Projector, on
from framework.readmodel import ReadModel


class Posted(Event):
    event_name: ClassVar[str] = "poison-tests:Posted"
    entry_id: str
    note: str
    amount: int


class Entry(Aggregate):
    aggregate_name: ClassVar[str] = "poison-tests:Entry"
    note: str = ""
    amount: int = 0

    @classmethod
    def post(cls, entry_id: str, note: str, amount: int) -> Entry:
        entry = cls.blank(cls.id_for(entry_id))
        entry._posted(entry_id=entry_id, note=note, amount=amount)
        return entry

    @event(Posted)
    def _posted(self, entry_id: str, note: str, amount: int) -> None:
        self.note, self.amount = note, amount


class Post(Command):
    entry_id: str
    note: str = Field(default="", max_length=200_000)
    amount: int = 0


def post(command: Post, unit: UnitOfWork) -> Entry:
    return unit.add(Entry.post(command.entry_id, command.note, command.amount))


def build_router() -> CommandRouter:
    router = CommandRouter()
    router.route(Post, post)  # type: ignore[arg-type]
    return router


class LedgerRow(ReadModel):
    table = "ledger"
    key = ("entry_id",)

    entry_id: str
    note: str
    milli: int  # the amount in thousandths: a bigint column, which a large amount overflows


class LedgerTotal(ReadModel):
    table = "totals"
    key = ("name",)

    name: str
    entries: int


class Ledger(Projector):
    name = "ledger"
    read_models = (LedgerRow,)
    on_error = "park"

    @on(Posted)
    def posted(self, event: Posted, context: HandlerContext) -> None:
        context.views.put(LedgerRow(entry_id=event.entry_id, note=event.note, milli=event.amount * 1000))


class StrictLedger(Ledger):
    name = "strict_ledger"
    on_error = "halt"


class Count(Projector):
    """Holds nothing a value can break: it keeps counting whatever the others do."""

    name = "count"
    read_models = (LedgerTotal,)

    @on(Posted)
    def posted(self, event: Posted, context: HandlerContext) -> None:
        total = context.views.get(LedgerTotal, "all") or LedgerTotal(name="all", entries=0)
        context.views.put(LedgerTotal(name="all", entries=total.entries + 1))


def build_projectors() -> list[Projector]:
    return [Ledger(), StrictLedger(), Count()]


app = App(name="poison-values", commands=build_router(), projections=[Ledger, StrictLedger, Count])
