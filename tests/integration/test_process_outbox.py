"""The process-manager outbox keeps its promise on real PostgreSQL (and JetStream where roles run).

* ``eventfold project corporate_action_process`` killed (SIGKILL, by a fault point, not by luck)
  at each step of dispatching its commands, then restarted: every entitled depositor notified
  exactly once, entitlements recorded once, the outbox empty, nothing parked, the read models
  equal to a replay, and ``eventfold status`` saying so;
* temporary failures (a claim left in flight by a dead process, concurrency conflicts, the event
  store unavailable and its circuit breaker open): the command waits, is retried, and runs once;
  the commands after it with the same ordering key wait for it, other keys go on;
* permanent refusals reach the process manager's ``on_refused`` (a failure row and a compensating
  command, once) or, without one, a dead letter carrying the command, which a retry puts back;
* deadlines fire once after they are due (not before), from two dispatchers racing, after a
  restart; a cancelled one never fires.

The in-process tests drive ``ProjectionWorker.catch_up`` and ``Dispatcher.run_once`` by hand with
a clock of their own, so backoff is stepped over, never slept through.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from outbox_helpers import (
    ConflictingStore,
    FailingClaims,
    MonotonicClock,
    SteppingClock,
    drain,
    entry_for,
    envelopes,
    movements,
    outbox_rows,
    postgres_stores,
)
from streaming_helpers import (
    Deployment,
    Role,
    assert_matches_replay,
    assert_process_outcomes,
    deployment_for,
    new_isin,
    record_date,
    replay,
    rows_by_key,
    setup_security,
    short_token,
    wait_entitled,
    wait_until,
    write_backlog,
)
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase

from example_app.accounts import AccountOpened, SecuritiesCredited
from example_app.app import build_router
from example_app.commands import (
    AnnounceCorporateAction,
    CreditHoldings,
    DebitHoldings,
    OpenAccount,
    ValidateCorporateAction,
)
from example_app.corporate_actions import CashTerms
from framework.adapters.nats import JetStreamSettings
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.breaker import BreakingEventStore, CircuitBreaker
from framework.bus import CommandBus, CommandContext, fingerprint
from framework.dispatcher import Dispatcher, DispatchOptions
from framework.projector import Deadline, HandlerContext, ProcessManager, Projector, Refusal, on
from framework.readmodel import ReadModel
from framework.store import EventStore
from framework.views import ViewStore
from framework.worker import ProjectionWorker
from projections import build_projectors

PROCESS = "corporate_action_process"
OTHERS = [p.name for p in build_projectors() if p.name != PROCESS]
FAULT_POINTS = ["batch.committed", "command.claimed", "command.appended", "dispatch.forgotten"]


# --- 1. the corporate-action process killed at every step of the dispatch ----------------------


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
               tmp_path: Path) -> Iterator[Deployment]:
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path) as deployed:
        yield deployed


def _process_env(**extra: str) -> dict[str, str]:
    # A claim left in flight by the killed process is taken over 3 s after it was made; the
    # restarted process takes the projection's lease over a second after the last heartbeat.
    return {"EVENTFOLD_IDEMPOTENCY_LEASE_SECONDS": "3", "EVENTFOLD_LEASE_SECONDS": "1", **extra}


def _cash_dividend(bus: CommandBus, action_id: str, isin: str) -> None:
    terms = CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.25"), currency="USD")
    bus.execute(AnnounceCorporateAction(action_id=action_id, isin=isin, record_date=record_date(), terms=terms))
    bus.execute(ValidateCorporateAction(action_id=action_id))


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_the_process_killed_at_a_dispatch_step_notifies_every_depositor_exactly_once(
    deployment: Deployment, point: str,
) -> None:
    # 40 depositors holding the security and a validated dividend, before the process starts. It
    # commits its catch-up (batch 1), records the entitlements (claim, append, dispatch round 1),
    # commits them (batch 2), notifies the 40 (claims 2..41, round 2), commits the notices (batch
    # 3...); a second dividend, validated once the first is entitled, needs rounds of its own. So
    # the third hit of each point always comes: a claim or an append among the notices, a batch
    # while they are sent, or (dispatch.forgotten) right after the first notices or the second
    # dividend's entitlements were forgotten.
    scene = _first_dividend_due(deployment, "K")
    store, views, first, second = scene.store, scene.views, scene.first, scene.second
    killed = deployment.start("project", PROCESS, name="process-faulty",
                              env=_process_env(EVENTFOLD_FAULTS=f"{point}@3"))
    wait_entitled(store, first)
    _cash_dividend(scene.bus, second, scene.isin)  # a second action while (or after) it dies
    _wait_killed(killed, f"{point}@3")
    left = outbox_rows(deployment.pg_database, deployment.schema)
    print(f"{point}: died with {len(left)} commands in the outbox, "
          f"{len(envelopes(store, 'DepositorNotified'))} depositors notified")

    restarted = deployment.start("project", PROCESS, name="process", env=_process_env())
    errors: set[str] = set()
    wait_entitled(store, second)
    _wait_quiet(deployment, store, views, errors)

    outcome = assert_process_outcomes(store)
    assert set(outcome.entitled) == {first, second}
    assert all(len(accounts) == 40 for accounts in outcome.entitled.values()), outcome.entitled
    assert sum(outcome.notified.values()) == 80
    assert outbox_rows(deployment.pg_database, deployment.schema) == []
    assert views.dead_letters() == []
    assert_matches_replay(views, store)
    process = _status_when_leased(deployment)
    assert (process["outbox_pending"], process["deadlines_pending"], process["dead_letters"],
            process["lag_events"], process["state"]) == (0, 0, 0, 0, "running"), process
    assert restarted.alive
    deployment.assert_no_tracebacks()
    print(f"{point}: the restarted process postponed commands for {sorted(errors) or 'nothing'}")


def test_the_process_killed_right_after_a_second_actions_entitlements_were_recorded_notifies_once(
    deployment: Deployment,
) -> None:
    # A moment the test above hits only in some runs, every time: the first dividend settled (entitled,
    # its 40 notices sent), the process killed just after the second dividend's RecordEntitlements
    # left the outbox (its EntitlementsCalculated stored, perhaps not yet applied), then restarted:
    # it must apply that event and notify the 40, once each.
    scene = _first_dividend_due(deployment, "R")
    store, views, first, second = scene.store, scene.views, scene.first, scene.second
    calm = deployment.start("project", PROCESS, name="process-calm", env=_process_env())
    wait_entitled(store, first)
    wait_until(lambda: len(envelopes(store, "DepositorNotified")) == 40, timeout=60,
               message="the first dividend's 40 notices")
    wait_until(lambda: not outbox_rows(deployment.pg_database, deployment.schema), timeout=30,
               message="an empty outbox")
    assert calm.stop() == 0, calm.tail()

    killed = deployment.start("project", PROCESS, name="process-faulty",
                              env=_process_env(EVENTFOLD_FAULTS="dispatch.forgotten@1"))
    _cash_dividend(scene.bus, second, scene.isin)
    _wait_killed(killed, "dispatch.forgotten@1")
    wait_entitled(store, second)

    restarted = deployment.start("project", PROCESS, name="process", env=_process_env())
    _wait_quiet(deployment, store, views, set())
    outcome = assert_process_outcomes(store)
    assert set(outcome.entitled) == {first, second}
    assert sum(outcome.notified.values()) == 80
    assert views.dead_letters() == []
    assert_matches_replay(views, store)
    assert restarted.alive
    deployment.assert_no_tracebacks()


@dataclass(frozen=True)
class _Scene:
    store: EventStore
    views: ViewStore
    bus: CommandBus
    isin: str
    first: str  # the validated dividend of the backlog
    second: str  # the one each test validates later


def _first_dividend_due(deployment: Deployment, prefix: str) -> _Scene:
    """A fresh schema: 40 depositors holding a security and a validated dividend, stored before any
    projection runs; the relay and every projection but the process started."""
    deployment.init_db()
    store, views = deployment.store(), deployment.views()
    bus = deployment.bus(deployment.store())
    isin, token = new_isin(), short_token()
    setup_security(bus, isin)
    first = f"{prefix}{token}-1"
    write_backlog(store, isin, accounts=40, credits_each=2, actions=[(first, "validate")], prefix=f"{prefix}{token}")
    deployment.start("relay")
    deployment.start("project", *OTHERS, name="others")
    return _Scene(store, views, bus, isin, first, f"{prefix}{token}-2")


def _wait_killed(role: Role, fault: str) -> None:
    wait_until(lambda: not role.alive, timeout=60, message=f"the process to die at {fault}")
    assert role.process is not None and role.process.returncode == -signal.SIGKILL, (
        role.process and role.process.returncode, role.tail())


def _status_when_leased(deployment: Deployment) -> dict[str, Any]:
    """The process's row of ``eventfold status --json`` once its lease is live. The tests' lease lasts
    a second: on a loaded machine a renewal can come late, and status then rightly says "stopped" (no
    live worker holds it) until the next renewal."""
    rows: list[dict[str, Any]] = []

    def leased() -> bool:
        status = json.loads(deployment.cli_ok("status", "--json").stdout)
        rows[:] = [row for row in status if row["name"] == PROCESS and row["active"]]
        return len(rows) == 1 and rows[0]["owner"] is not None

    wait_until(leased, timeout=30, interval=0.2, message=lambda: f"a live lease on {PROCESS}: {rows}")
    return rows[0]


def _wait_quiet(deployment: Deployment, store: EventStore, views: ViewStore, errors: set[str]) -> None:
    """Until the outbox is empty and every projection has applied everything stored (nothing left to
    issue nor to execute); notes the errors commands were postponed for meanwhile."""
    names = [*OTHERS, PROCESS]

    def quiet() -> bool:
        # In this order (as ``wait_settled``): the head, then the positions, then the outbox. An outbox
        # read first can be empty just before the process applies the last event and issues from it.
        head = store.head()
        at_head = all(views.active_position(n) == head for n in names)
        rows = outbox_rows(deployment.pg_database, deployment.schema)
        errors.update(r["last_error"].split(":")[0] for r in rows if r["last_error"])
        return at_head and not rows and store.head() == head

    wait_until(quiet, timeout=90, interval=0.2, message=lambda: (
        f"an empty outbox and every projection at the head {store.head()}: "
        f"{ {n: views.active_position(n) for n in names} }, "
        f"outbox {outbox_rows(deployment.pg_database, deployment.schema)[:3]}"))


# --- a process manager of the tests' own: credit then debit each account it sees opened ----------


class Opened(ReadModel):
    table = "opened"
    key = ("account_number",)

    account_number: str


class Welcome(ProcessManager):
    """Each account opened gets 10 units credited, then a fee of 4 debited: two commands with one
    ordering key (the account), so a debit running before its credit would be refused."""

    name = "welcome"
    read_models = (Opened,)

    def __init__(self, isin: str) -> None:
        self.isin = isin

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(Opened(account_number=event.account_number))
        number = event.account_number
        context.issue(CreditHoldings(account_number=number, isin=self.isin, quantity=10, reference="welcome"),
                      discriminator="credit", ordering_key=number)
        context.issue(DebitHoldings(account_number=number, isin=self.isin, quantity=4, reference="fee"),
                      discriminator="debit", ordering_key=number)


def _fresh_setup(store: EventStore, accounts: int, prefix: str) -> tuple[str, list[str]]:
    """A security and ``accounts`` opened accounts, written through a bus of their own."""
    bus = CommandBus(build_router(), store)
    isin = new_isin()
    setup_security(bus, isin)
    numbers = [f"{prefix}{short_token()}-{i}" for i in range(accounts)]
    for number in numbers:
        bus.execute(OpenAccount(account_number=number, holder_name="Holder"))
    return isin, numbers


def _assert_welcomed_once(store: EventStore, numbers: list[str]) -> None:
    """Each account credited once and debited once, by the process, the credit first."""
    counted = movements(store)
    assert counted == {**{(n, "credit", "welcome"): 1 for n in numbers},
                       **{(n, "debit", "fee"): 1 for n in numbers}}, counted
    order: dict[str, list[str]] = {}
    accounts: dict[Any, str] = {}
    for envelope in envelopes(store):
        if envelope.event_name == "AccountOpened":
            accounts[envelope.aggregate_id] = envelope.event.account_number  # type: ignore[attr-defined]
        elif envelope.event_name in ("SecuritiesCredited", "SecuritiesDebited"):
            assert envelope.metadata.actor == "process-manager:welcome", envelope.metadata
            order.setdefault(accounts[envelope.aggregate_id], []).append(envelope.event_name)
    assert order == {n: ["SecuritiesCredited", "SecuritiesDebited"] for n in numbers}, order


def _assert_replayed(views: ViewStore, store: EventStore, projector: Projector,
                     models: tuple[type[ReadModel], ...] | None = None) -> None:
    """The process manager's tables (those a replay can rebuild) equal a fresh replay's, at the head."""
    expected = replay(store, [projector], until=store.head())  # no bus: a replay issues nothing
    for model in models if models is not None else projector.read_models:
        assert rows_by_key(views, projector.name, model) == rows_by_key(expected, projector.name, model), model
    assert views.active_position(projector.name) == store.head()


@pytest.fixture
def stores(pg_database: PgDatabase, pg_schema: str) -> Iterator[tuple[PostgresEventStore, PostgresViewStore]]:
    with postgres_stores(pg_database, pg_schema) as pair:
        yield pair


# --- 2. temporary failures: retried, executed once, in order per ordering key ---------------------


def test_a_claim_left_in_flight_by_a_dead_process_is_taken_over_when_its_lease_ends(
    stores: tuple[PostgresEventStore, PostgresViewStore],
) -> None:
    store, views = stores
    isin, numbers = _fresh_setup(store, 2, "F")
    stuck, free = numbers
    bus = CommandBus(build_router(), store, idempotency_lease_seconds=2)  # takes a claim over after 2 s
    worker = ProjectionWorker(Welcome(isin), views, store, bus)
    clock = SteppingClock()
    dispatcher = Dispatcher(worker, bus, clock=clock)
    worker.catch_up()
    # A process that died right after claiming the first account's credit (same command, same key).
    credit = entry_for(views, "welcome", lambda e: e.ordering_key == stuck and e.command_name == "CreditHoldings")
    command = bus.router.parse(credit.command_name, credit.payload)
    store.claim_idempotency_key(credit.key, fingerprint(command), uuid4(), 60)

    dispatcher.run_once()
    postponed = entry_for(views, "welcome", lambda e: e.key == credit.key)
    assert postponed.attempts == 1 and "IdempotencyKeyInFlight" in (postponed.last_error or ""), postponed
    assert postponed.next_attempt_at is not None and postponed.next_attempt_at > clock()
    assert movements(store) == {(free, "credit", "welcome"): 1, (free, "debit", "fee"): 1}  # only the other key
    assert [e.command_name for e in views.outbox("welcome", 10)] == ["CreditHoldings", "DebitHoldings"]

    dispatcher.run_once()  # not due yet: nothing of that account runs, nothing is tried again
    assert entry_for(views, "welcome", lambda e: e.key == credit.key).attempts == 1

    def executed() -> bool:  # the claim's lease ends (real time, in PostgreSQL): taken over, never skipped
        clock.advance(60)
        dispatcher.run_once()
        return not views.outbox("welcome", 10)

    wait_until(executed, timeout=30, interval=0.2, message="the stuck credit to be taken over")
    drain(worker, [dispatcher], clock)
    _assert_welcomed_once(store, numbers)
    _assert_replayed(views, store, worker.projector)
    dispatcher.close()


def test_concurrency_conflicts_are_retried_until_the_command_runs_once(
    stores: tuple[PostgresEventStore, PostgresViewStore],
) -> None:
    store, views = stores
    isin, numbers = _fresh_setup(store, 3, "C")
    bus = CommandBus(build_router(), store)
    worker = ProjectionWorker(Welcome(isin), views, store, bus)
    worker.catch_up()
    keys = {e.key: 5 for e in views.outbox("welcome", 100) if e.ordering_key == numbers[0]}
    conflicting = ConflictingStore(store, keys)  # each of the first account's commands conflicts 5 times
    clock = SteppingClock()
    dispatcher = Dispatcher(worker, CommandBus(build_router(), conflicting, max_attempts=2), clock=clock)

    dispatcher.run_once()  # two attempts each, both conflict: postponed
    (head, waiting) = [e for e in views.outbox("welcome", 100) if e.ordering_key == numbers[0]]
    assert head.attempts == 1 and "ConcurrencyConflict" in (head.last_error or ""), head
    assert waiting.attempts == 0 and waiting.command_name == "DebitHoldings"  # never tried before its credit
    assert len(views.outbox("welcome", 100)) == 2

    drain(worker, [dispatcher], clock)
    assert sum(conflicting.conflicts.values()) == 10 and not any(conflicting.failures.values())
    _assert_welcomed_once(store, numbers)
    _assert_replayed(views, store, worker.projector)
    dispatcher.close()


def test_an_unavailable_store_and_an_open_breaker_postpone_commands_that_then_run_once(
    stores: tuple[PostgresEventStore, PostgresViewStore],
) -> None:
    store, views = stores
    isin, numbers = _fresh_setup(store, 3, "U")
    breaker_clock = MonotonicClock()
    breaker = CircuitBreaker(threshold=1, cool_down=30, clock=breaker_clock)
    bus = CommandBus(build_router(), BreakingEventStore(FailingClaims(store, failures=1), breaker))
    worker = ProjectionWorker(Welcome(isin), views, store, bus)
    clock = SteppingClock()
    dispatcher = Dispatcher(worker, bus, DispatchOptions(concurrency=1), clock=clock)
    worker.catch_up()

    # The first claim finds the store down: the breaker opens, and refuses the other two at once.
    dispatcher.run_once()
    errors = sorted(e.last_error or "" for e in views.outbox("welcome", 100) if e.attempts)
    assert breaker.state == "open" and len(errors) == 3, errors
    assert all(e.startswith("StoreUnavailable: ") for e in errors), errors
    assert sum("did not answer" in e for e in errors) == 1, errors  # the store itself
    assert sum("not trying again" in e for e in errors) == 2, errors  # the open breaker
    assert movements(store) == {}

    clock.advance(60)  # due again, the breaker still open: refused again, nothing lost
    dispatcher.run_once()
    assert all(e.attempts == 2 and "not trying again" in (e.last_error or "") for e in
               views.outbox("welcome", 100) if e.command_name == "CreditHoldings")
    assert movements(store) == {} and len(views.outbox("welcome", 100)) == 6

    breaker_clock.advance(31)  # cooled down: the probe goes through, the breaker closes
    drain(worker, [dispatcher], clock)
    assert breaker.state == "closed"
    _assert_welcomed_once(store, numbers)
    dispatcher.close()


class FlakyBus(CommandBus):
    """The first ``failures`` executions of commands for one account raise an unexpected error."""

    def __init__(self, store: EventStore, account: str, failures: int) -> None:
        super().__init__(build_router(), store)
        self.account, self.failures, self.calls = account, failures, 0

    def execute(self, command: Any, context: CommandContext | None = None) -> Any:
        if getattr(command, "account_number", None) == self.account and self.failures:
            self.failures -= 1
            self.calls += 1
            raise RuntimeError(f"a bug in a handler (test), {self.failures} more")
        return super().execute(command, context)


def test_a_postponed_command_holds_back_its_ordering_key_and_no_other(
    stores: tuple[PostgresEventStore, PostgresViewStore],
) -> None:
    store, views = stores
    isin, numbers = _fresh_setup(store, 4, "O")
    held = numbers[1]
    bus = FlakyBus(store, held, failures=3)
    worker = ProjectionWorker(Welcome(isin), views, store, bus)
    clock = SteppingClock()
    dispatcher = Dispatcher(worker, bus, clock=clock)
    worker.catch_up()

    for _ in range(3):  # its credit fails three times in a row; its debit never runs meanwhile
        dispatcher.run_once()
        pending = views.outbox("welcome", 100)
        assert [(e.ordering_key, e.command_name) for e in pending] == [(held, "CreditHoldings"),
                                                                       (held, "DebitHoldings")], pending
        assert "RuntimeError" in (pending[0].last_error or "") and pending[1].attempts == 0, pending
        assert not any(number == held for number, _, _ in movements(store))
        clock.advance(60)
    # every other account went through at the first round, in its own order
    others = [n for n in numbers if n != held]
    assert movements(store) == {**{(n, "credit", "welcome"): 1 for n in others},
                                **{(n, "debit", "fee"): 1 for n in others}}

    drain(worker, [dispatcher], clock)
    assert bus.calls == 3
    _assert_welcomed_once(store, numbers)  # the held account too: credit, then debit, once each
    assert views.dead_letters() == []
    dispatcher.close()


# --- 3. permanent refusals: on_refused, or a dead letter that a retry puts back ---------------------


class Failure(ReadModel):
    table = "failures"
    key = ("command_key",)

    command_key: str
    account_number: str
    code: str
    error: str


class ChargeOnOpen(ProcessManager):
    """Charges a fee of 5 to every account opened: refused (nothing held yet), for good."""

    name = "charge"
    read_models: tuple[type[ReadModel], ...] = (Opened,)

    def __init__(self, isin: str) -> None:
        self.isin = isin

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(Opened(account_number=event.account_number))
        context.issue(DebitHoldings(account_number=event.account_number, isin=self.isin, quantity=5,
                                    reference="fee"), discriminator="fee")


class CompensatingCharge(ChargeOnOpen):
    """The same, recording each refusal and crediting a goodwill unit instead (a compensation)."""

    name = "charge_compensated"
    read_models = (Opened, Failure)

    def on_refused(self, refusal: Refusal, context: HandlerContext) -> bool:
        command = refusal.command
        assert isinstance(command, DebitHoldings), refusal
        context.views.put(Failure(command_key=refusal.idempotency_key, account_number=command.account_number,
                                  code=refusal.code, error=str(refusal.error)))
        context.issue(CreditHoldings(account_number=command.account_number, isin=command.isin, quantity=1,
                                     reference="goodwill"), discriminator="goodwill")
        return True


def test_a_refused_command_without_on_refused_is_parked_with_its_command_and_retried_on_request(
    stores: tuple[PostgresEventStore, PostgresViewStore],
) -> None:
    store, views = stores
    isin, numbers = _fresh_setup(store, 2, "R")
    bus = CommandBus(build_router(), store)
    worker = ProjectionWorker(ChargeOnOpen(isin), views, store, bus)
    clock = SteppingClock()
    dispatcher = Dispatcher(worker, bus, clock=clock)
    worker.catch_up()
    issued = {e.payload["account_number"]: e for e in views.outbox("charge", 10)}
    assert sorted(issued) == sorted(numbers)

    assert dispatcher.run_once() == 2
    assert views.outbox("charge", 10) == []  # gone from the outbox only because it is parked
    letters = {}
    for letter in views.dead_letters("charge"):
        assert letter.command is not None, letter
        entry = issued[letter.command["payload"]["account_number"]]
        assert (letter.command["key"], letter.command["command_name"], letter.command["payload"],
                letter.position) == (entry.key, "DebitHoldings", entry.payload, entry.position)
        assert "RuleViolation" in letter.error and "cannot debit 5" in letter.error, letter.error
        letters[entry.payload["account_number"]] = letter
    assert sorted(letters) == sorted(numbers)
    clock.advance(3600)
    assert dispatcher.run_once() == 0 and movements(store) == {}  # parked: not tried behind anyone's back

    # Once the account holds enough, the operator asks for a retry: back in the outbox, then run once.
    setup = CommandBus(build_router(), store)
    setup.execute(CreditHoldings(account_number=numbers[0], isin=isin, quantity=7, reference="deposit"))
    retried, still = letters[numbers[0]], letters[numbers[1]]
    assert views.request_retry(retried.id or 0)
    assert worker.retry_dead_letters() == 1
    (requeued,) = views.outbox("charge", 10)
    assert requeued.key == issued[numbers[0]].key and requeued.attempts == 0
    assert [d.id for d in views.dead_letters("charge")] == [still.id]
    drain(worker, [dispatcher], clock)
    assert movements(store) == {(numbers[0], "credit", "deposit"): 1, (numbers[0], "debit", "fee"): 1}
    assert worker.retry_dead_letters() == 0 and len(views.dead_letters("charge")) == 1
    _assert_replayed(views, store, worker.projector)
    dispatcher.close()


def test_on_refused_records_the_failure_and_compensates_exactly_once(
    stores: tuple[PostgresEventStore, PostgresViewStore],
) -> None:
    store, views = stores
    isin, numbers = _fresh_setup(store, 3, "G")
    bus = CommandBus(build_router(), store)
    worker = ProjectionWorker(CompensatingCharge(isin), views, store, bus)
    clock = SteppingClock()
    dispatcher = Dispatcher(worker, bus, clock=clock)
    worker.catch_up()
    fees = {e.key for e in views.outbox("charge_compensated", 10)}

    assert dispatcher.run_once() == 3  # refused, handled: the failure and the compensation recorded
    assert {e.command_name for e in views.outbox("charge_compensated", 10)} == {"CreditHoldings"}
    drain(worker, [dispatcher], clock)
    for _ in range(3):  # more rounds change nothing
        clock.advance(3600)
        assert dispatcher.run_once() == 0

    failures = views.query("charge_compensated", Failure)
    assert sorted((f.account_number, f.code) for f in failures) == [(n, "rule_violation") for n in sorted(numbers)]
    assert {f.command_key for f in failures} == fees
    assert all("cannot debit 5" in f.error for f in failures), failures
    assert movements(store) == {(n, "credit", "goodwill"): 1 for n in numbers}
    goodwill = envelopes(store, "SecuritiesCredited")
    assert all(e.metadata.actor == "process-manager:charge_compensated" for e in goodwill)
    assert views.outbox("charge_compensated", 10) == [] and views.dead_letters() == []
    _assert_replayed(views, store, worker.projector, (Opened,))
    dispatcher.close()


class CreditIfUntouched(ProcessManager):
    """Credits every account opened a unit, only if nothing happened to it since it was opened
    (expected version: the opening's); a refusal is recorded as a failure."""

    name = "credit_if_untouched"
    read_models: tuple[type[ReadModel], ...] = (Opened, Failure)

    def __init__(self, isin: str) -> None:
        self.isin = isin

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(Opened(account_number=event.account_number))
        context.issue(CreditHoldings(account_number=event.account_number, isin=self.isin, quantity=1,
                                     reference="untouched"), expected_version=context.envelope.version)

    def on_refused(self, refusal: Refusal, context: HandlerContext) -> bool:
        command = refusal.command
        assert isinstance(command, CreditHoldings), refusal
        context.views.put(Failure(command_key=refusal.idempotency_key, account_number=command.account_number,
                                  code=refusal.code, error=str(refusal.error)))
        return True


def test_an_expected_version_travels_through_the_outbox_and_a_mismatch_is_refused_for_good(
    stores: tuple[PostgresEventStore, PostgresViewStore],
) -> None:
    store, views = stores
    isin, (untouched, touched) = _fresh_setup(store, 2, "V")
    bus = CommandBus(build_router(), store)
    worker = ProjectionWorker(CreditIfUntouched(isin), views, store, bus)
    clock = SteppingClock()
    dispatcher = Dispatcher(worker, bus, clock=clock)
    worker.catch_up()
    assert {e.context["expected_version"] for e in views.outbox("credit_if_untouched", 10)} == {1}  # via jsonb
    bus.execute(CreditHoldings(account_number=touched, isin=isin, quantity=2, reference="first"))

    assert dispatcher.run_once() == 2  # one executed, one refused for good: neither postponed
    (failure,) = views.query("credit_if_untouched", Failure)
    assert (failure.account_number, failure.code) == (touched, "version_mismatch")
    assert "at version 2; the command expected version 1" in failure.error
    assert movements(store) == {(untouched, "credit", "untouched"): 1, (touched, "credit", "first"): 1}
    clock.advance(3600)
    assert dispatcher.run_once() == 0
    assert views.outbox("credit_if_untouched", 10) == [] and views.dead_letters() == []
    worker.catch_up()  # the credits are events it sees (and ignores) too
    _assert_replayed(views, store, worker.projector, (Opened,))
    dispatcher.close()


# --- 4. deadlines ------------------------------------------------------------------------------------


class Fired(ReadModel):
    table = "fired"
    key = ("by", "account_number")

    by: str
    account_number: str


class Reminder(ProcessManager):
    """An hour after an account is opened, credit it a unit, unless something was credited to it
    meanwhile (then the deadline is cancelled). ``label`` says which worker fired a deadline."""

    name = "reminder"
    read_models = (Opened, Fired)

    def __init__(self, isin: str, label: str = "") -> None:
        self.isin, self.label = isin, label

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(Opened(account_number=event.account_number))
        context.schedule("remind", context.envelope.metadata.recorded_at + timedelta(hours=1),
                         data={"account": event.account_number})

    @on(SecuritiesCredited)
    def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
        if event.reference != "reminder":
            context.cancel_deadline("remind")

    def on_deadline(self, deadline: Deadline, context: HandlerContext) -> None:
        account = deadline.data["account"]
        context.views.put(Fired(by=self.label, account_number=account))
        context.issue(CreditHoldings(account_number=account, isin=self.isin, quantity=1, reference="reminder"),
                      discriminator="remind")


def test_a_deadline_fires_once_when_due_across_a_restart_and_two_racing_dispatchers(
    pg_database: PgDatabase, pg_schema: str,
) -> None:
    with postgres_stores(pg_database, pg_schema) as (store, views):
        isin, (due, cancelled) = _fresh_setup(store, 2, "D")
        bus = CommandBus(build_router(), store)
        worker = ProjectionWorker(Reminder(isin), views, store, bus)
        now = SteppingClock()
        dispatcher = Dispatcher(worker, bus, clock=now)
        worker.catch_up()
        assert views.outbox_stats()["reminder"].deadlines == 2
        bus.execute(CreditHoldings(account_number=cancelled, isin=isin, quantity=3, reference="deposit"))
        worker.catch_up()  # the credit cancels that account's deadline
        assert views.outbox_stats()["reminder"].deadlines == 1

        now.advance(50 * 60)  # 50 minutes later: not due yet
        assert dispatcher.run_once() == 0
        assert views.due_deadlines("reminder", now(), 10) == [] and views.query("reminder", Fired) == []
        dispatcher.close()
    # a restart: new stores, workers and dispatchers read the deadline from PostgreSQL
    later = SteppingClock(now() + timedelta(hours=1))
    with postgres_stores(pg_database, pg_schema) as (store, views_a), \
            postgres_stores(pg_database, pg_schema) as (_, views_b):
        racers = []
        for label, racing_views in (("a", views_a), ("b", views_b)):
            racing = ProjectionWorker(Reminder(isin, label), racing_views, store, CommandBus(build_router(), store))
            racers.append(Dispatcher(racing, racing.commands, clock=later))  # type: ignore[arg-type]
        assert [d.name for d in racers] == ["reminder", "reminder"]
        (pending,) = views_a.due_deadlines("reminder", later(), 10)
        assert pending.data == {"account": due} and pending.name == "remind"

        start, failed = threading.Barrier(2), []

        def race(index: int) -> None:
            try:
                start.wait(10)
                racers[index].run_once()
            except BaseException as error:  # surfaced below
                failed.append(error)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failed, failed
        fired = views_a.query("reminder", Fired)  # each dispatcher's process manager signs what it fires
        assert [f.account_number for f in fired] == [due] and fired[0].by in ("a", "b"), fired

        for _ in range(3):
            later.advance(3600)
            drain(racers[0].worker, racers, later)
        assert movements(store) == {(cancelled, "credit", "deposit"): 1, (due, "credit", "reminder"): 1}
        assert "reminder" not in views_a.outbox_stats()  # no command, no deadline left
        assert len(views_a.query("reminder", Fired)) == 1
        assert views_a.dead_letters() == []
        _assert_replayed(views_a, store, racers[0].worker.projector, (Opened,))
        for dispatcher in racers:
            dispatcher.close()
