"""Corporate-action cards for the public site: one card per action, upserted, never duplicated."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import Field

from example_app.corporate_actions import (
    CorporateActionAnnounced,
    CorporateActionCancelled,
    CorporateActionRejected,
    CorporateActionValidated,
    EntitlementsCalculated,
)
from example_app.securities import SecurityRegistered
from framework.read import HandlerContext, Projector, ReadModel, on

__all__ = ["CardsProjector", "CorporateActionCard", "SecurityRow"]


class SecurityRow(ReadModel):
    table = "securities"
    key = ("isin",)

    isin: str
    name: str
    currency: str


class CorporateActionCard(ReadModel):
    table = "cards"
    key = ("action_id",)
    indexes = (("isin",), ("status",), ("record_date",))

    action_id: str
    isin: str
    security_name: str
    kind: str
    record_date: date
    payment_date: date | None
    terms: dict[str, Any]
    status: str
    reasons: list[str] = Field(default_factory=list)
    cancellation_reason: str | None = None
    entitled_accounts: int | None = None
    announced_at: datetime
    updated_at: datetime
    position: int = 0  # of the event that last changed the card: what a live subscription resumes from


class CardsProjector(Projector):
    name = "cards"
    read_models = (SecurityRow, CorporateActionCard)
    # Not per_aggregate: a card names its security, a row another aggregate's events wrote.

    @on(SecurityRegistered)
    def registered(self, event: SecurityRegistered, context: HandlerContext) -> None:
        context.views.put(SecurityRow(isin=event.isin, name=event.name, currency=event.currency))

    @on(CorporateActionAnnounced)
    def announced(self, event: CorporateActionAnnounced, context: HandlerContext) -> None:
        security = context.views.get(SecurityRow, event.isin)
        at = context.envelope.metadata.recorded_at
        context.views.put(CorporateActionCard(
            action_id=event.action_id, isin=event.isin,
            security_name=security.name if security else event.isin,
            kind=event.terms.kind, record_date=event.record_date, payment_date=event.payment_date,
            terms=event.terms.model_dump(mode="json"), status="announced",
            announced_at=at, updated_at=at, position=context.envelope.position or 0,
        ))

    @on(CorporateActionValidated)
    def validated(self, event: CorporateActionValidated, context: HandlerContext) -> None:
        self._update(context, event.action_id, status="validated")

    @on(CorporateActionRejected)
    def rejected(self, event: CorporateActionRejected, context: HandlerContext) -> None:
        self._update(context, event.action_id, status="rejected", reasons=event.reasons)

    @on(EntitlementsCalculated)
    def entitled(self, event: EntitlementsCalculated, context: HandlerContext) -> None:
        self._update(context, event.action_id, entitled_accounts=len(event.entitlements))

    @on(CorporateActionCancelled)
    def cancelled(self, event: CorporateActionCancelled, context: HandlerContext) -> None:
        self._update(context, event.action_id, status="cancelled", cancellation_reason=event.reason)

    def _update(self, context: HandlerContext, action_id: str, **changes: Any) -> None:
        card = context.views.get(CorporateActionCard, action_id)
        assert card is not None, f"no card for {action_id}"
        changes["updated_at"] = context.envelope.metadata.recorded_at
        changes["position"] = context.envelope.position or 0
        context.views.put(card.model_copy(update=changes))
