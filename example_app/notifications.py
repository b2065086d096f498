"""Depositor notifications: one aggregate per (action, account, kind), so each is sent exactly once."""

from __future__ import annotations

from typing import Literal

from framework import Aggregate, Event, event

__all__ = ["DepositorNotified", "Notification", "NotificationKind"]

NotificationKind = Literal["entitlement", "cancellation"]


class DepositorNotified(Event):
    account_number: str
    action_id: str
    kind: NotificationKind
    message: str


class Notification(Aggregate):
    account_number: str = ""
    action_id: str = ""
    kind: str = ""

    @staticmethod
    def natural_key(action_id: str, account_number: str, kind: str) -> str:
        return f"{action_id}/{account_number}/{kind}"

    @classmethod
    def send(cls, account_number: str, action_id: str, kind: NotificationKind, message: str) -> Notification:
        notification = cls.blank(cls.id_for(cls.natural_key(action_id, account_number, kind)))
        notification._notified(account_number=account_number, action_id=action_id, kind=kind,
                               message=message)
        return notification

    @event(DepositorNotified)
    def _notified(self, account_number: str, action_id: str, kind: NotificationKind, message: str) -> None:
        self.account_number, self.action_id, self.kind = account_number, action_id, kind
