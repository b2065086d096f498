"""Notifications per depositor, as sent."""

from __future__ import annotations

from datetime import datetime

from example_app.notifications import DepositorNotified
from framework.read import HandlerContext, Projector, ReadModel, on

__all__ = ["NotificationRow", "NotificationsProjector"]


class NotificationRow(ReadModel):
    table = "notifications"
    key = ("action_id", "account_number", "kind")
    indexes = (("account_number",), ("account_number", "position"))

    action_id: str
    account_number: str
    kind: str
    message: str
    notified_at: datetime
    position: int = 0  # of the event that notified: what a live subscription resumes from


class NotificationsProjector(Projector):
    name = "notifications"
    read_models = (NotificationRow,)
    per_aggregate = True  # one row per notification aggregate

    @on(DepositorNotified)
    def notified(self, event: DepositorNotified, context: HandlerContext) -> None:
        context.views.put(NotificationRow(
            action_id=event.action_id, account_number=event.account_number, kind=event.kind,
            message=event.message, notified_at=context.envelope.metadata.recorded_at,
            position=context.envelope.position or 0,
        ))
