"""Every command of the example and the handler that carries it out: the whole routing table."""

from __future__ import annotations

from example_app.accounts import Account
from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    DebitHoldings,
    NotifyDepositor,
    OpenAccount,
    RecordEntitlements,
    RegisterSecurity,
    RejectCorporateAction,
    TransferHoldings,
    ValidateCorporateAction,
)
from example_app.corporate_actions import CorporateAction
from example_app.notifications import Notification
from example_app.securities import Security
from framework import CommandRouter, RuleViolation, UnitOfWork

__all__ = ["router"]

router = CommandRouter()


# Loaded by the key the command carries: "account 'ACC-1' does not exist" when there is none.
def _security(unit: UnitOfWork, isin: str) -> Security:
    return unit.get(Security, key=isin)


def _account(unit: UnitOfWork, number: str) -> Account:
    return unit.get(Account, key=number)


def _action(unit: UnitOfWork, action_id: str) -> CorporateAction:
    return unit.get(CorporateAction, key=action_id)


@router.handles
def register_security(command: RegisterSecurity, unit: UnitOfWork) -> Security:
    security = Security.register(command.isin, command.name, command.currency)
    return unit.add(security, key=command.isin)


@router.handles
def open_account(command: OpenAccount, unit: UnitOfWork) -> Account:
    account = Account.open(command.account_number, command.holder_name)
    return unit.add(account, key=command.account_number)


@router.handles
def credit_holdings(command: CreditHoldings, unit: UnitOfWork) -> Account:
    _security(unit, command.isin)
    account = _account(unit, command.account_number)
    account.credit(command.isin, command.quantity, command.reference)
    return account


@router.handles
def debit_holdings(command: DebitHoldings, unit: UnitOfWork) -> Account:
    account = _account(unit, command.account_number)
    account.debit(command.isin, command.quantity, command.reference)
    return account


@router.handles
def transfer_holdings(command: TransferHoldings, unit: UnitOfWork) -> Account:
    if command.from_account == command.to_account:
        raise RuleViolation("cannot transfer to the same account", reason="same_account")
    source = _account(unit, command.from_account)
    target = _account(unit, command.to_account)
    source.debit(command.isin, command.quantity, command.reference)
    target.credit(command.isin, command.quantity, command.reference)
    return source


@router.handles
def announce_corporate_action(command: AnnounceCorporateAction, unit: UnitOfWork) -> CorporateAction:
    _security(unit, command.isin)
    action = CorporateAction.announce(
        command.action_id, command.isin, command.record_date, command.payment_date, command.terms
    )
    return unit.add(action, key=command.action_id)


@router.handles
def validate_corporate_action(command: ValidateCorporateAction, unit: UnitOfWork) -> CorporateAction:
    action = _action(unit, command.action_id)
    action.validate_action()
    return action


@router.handles
def reject_corporate_action(command: RejectCorporateAction, unit: UnitOfWork) -> CorporateAction:
    action = _action(unit, command.action_id)
    action.reject(command.reasons)
    return action


@router.handles
def cancel_corporate_action(command: CancelCorporateAction, unit: UnitOfWork) -> CorporateAction:
    action = _action(unit, command.action_id)
    action.cancel(command.reason)
    return action


@router.handles
def record_entitlements(command: RecordEntitlements, unit: UnitOfWork) -> CorporateAction:
    action = _action(unit, command.action_id)
    action.record_entitlements(command.entitlements)
    return action


@router.handles
def notify_depositor(command: NotifyDepositor, unit: UnitOfWork) -> Notification:
    _account(unit, command.account_number)
    notification = Notification.send(
        command.account_number, command.action_id, command.kind, command.message
    )
    key = Notification.natural_key(command.action_id, command.account_number, command.kind)
    return unit.add(notification, key=key)
