"""Many writers on one account: the set-up, the threads, and what a replay of the store says."""

from __future__ import annotations

import threading
from collections.abc import Callable

from example_app.accounts import Account
from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity
from example_app.handlers import router
from framework.bus import CommandBus
from framework.errors import ConcurrencyConflict
from framework.store import EventStore
from framework.unit_of_work import UnitOfWork

ISIN = "US0378331005"


def setup_one_account(store: EventStore, max_attempts: int = 5) -> CommandBus:
    bus = CommandBus(router, store, max_attempts=max_attempts)
    bus.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"))
    bus.execute(OpenAccount(account_number="HOT-1", holder_name="Many Writers"))
    return bus


def open_accounts(bus: CommandBus, accounts: list[str], holder: str) -> None:
    """The security and ``accounts``, each opened for ``holder``."""
    bus.execute(RegisterSecurity(isin=ISIN, name="Apple", currency="USD"))
    for number in accounts:
        bus.execute(OpenAccount(account_number=number, holder_name=holder))


def replayed_holding(store: EventStore, number: str) -> int:
    """What a fresh replay of the account's stream says (no cache, no snapshot)."""
    return UnitOfWork(store, None).get(Account, Account.id_for(number)).holding(ISIN)


def hammer(send: Callable[[int], None], threads: int, each: int) -> list[BaseException]:
    failures: list[BaseException] = []

    def run(offset: int) -> None:
        for n in range(each):
            try:
                send(offset * each + n)
            except ConcurrencyConflict as error:
                failures.append(error)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return failures


def credit(bus: CommandBus, quantity: int = 1) -> Callable[[int], None]:
    def send(_: int) -> None:
        bus.execute(CreditHoldings(account_number="HOT-1", isin=ISIN, quantity=quantity))

    return send


def replayed_quantity(store: EventStore) -> int:
    """The account's holding as a fresh read of its whole stream says (no cache, no snapshot taken)."""
    from example_app.accounts import Account
    from framework.unit_of_work import UnitOfWork

    unit = UnitOfWork(store, None)
    accounts = [n.originator_id for n in store.read_all(0, 100_000) if n.topic.endswith("AccountOpened")]
    account = unit.get(Account, accounts[0])
    return account.holding(ISIN)
