"""Entitlements per depositor (account), from the process's calculation; cancelled with the action."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from example_app.corporate_actions import CorporateActionCancelled, EntitlementsCalculated
from framework.read import HandlerContext, Projector, ReadModel, on

__all__ = ["EntitlementRow", "EntitlementsProjector"]


class EntitlementRow(ReadModel):
    table = "entitlements"
    key = ("action_id", "account_number")
    indexes = (("account_number",),)

    action_id: str
    account_number: str
    record_date: date
    holding: int  # at most MAX_HOLDING (10**15): a bigint
    cash_amount: Decimal | None  # a numeric: exact; commands refuse a Decimal it cannot hold
    currency: str | None
    new_units: int | None  # at most MAX_SPLIT_RATIO times the holding (10**18): a bigint
    status: str


class EntitlementsProjector(Projector):
    name = "entitlements"
    read_models = (EntitlementRow,)
    per_aggregate = True  # every row is one corporate action's (its calculation, its cancellation)

    @on(EntitlementsCalculated)
    def calculated(self, event: EntitlementsCalculated, context: HandlerContext) -> None:
        for entitlement in event.entitlements:
            context.views.put(EntitlementRow(
                action_id=event.action_id, record_date=event.record_date, status="active",
                **entitlement.model_dump(),
            ))

    @on(CorporateActionCancelled)
    def cancelled(self, event: CorporateActionCancelled, context: HandlerContext) -> None:
        for row in context.views.select(EntitlementRow, action_id=event.action_id):
            context.views.put(row.model_copy(update={"status": "cancelled"}))
