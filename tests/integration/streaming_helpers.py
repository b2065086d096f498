"""Shared pieces of the streaming integration tests: deployments of the roles, workloads, checks.

The standard every test holds the system to is "nothing lost, nothing doubled":

* ``assert_matches_replay``: every table of every projection (active version) holds
  exactly the rows a fresh replay of the event store produces, and its position is the same;
* ``assert_stream_matches_store``: JetStream holds each stored event exactly once;
* ``assert_process_outcomes``: the corporate-action process recorded each validated action's
  entitlements once, from the holdings at validation, and told every entitled depositor
  exactly once (and once more on cancellation).

Roles run as real ``eventfold`` subprocesses (``Role``, stopped and killed by their own
pid only) or in process (``InProcessRoles``: the runner loops on the NATS adapters in a
thread of their own). ``build_poison_projectors`` is the test-only projection set that
subprocesses load through ``EVENTFOLD_APP=streaming_helpers:poison_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import nats.js.errors

from example_app.accounts import Account, AccountOpened, SecuritiesCredited
from example_app.app import build_router
from example_app.commands import (
    AnnounceCorporateAction,
    CreditHoldings,
    OpenAccount,
    RegisterSecurity,
    TransferHoldings,
    ValidateCorporateAction,
)
from example_app.corporate_actions import CashTerms, CorporateAction
from example_app.securities import check_isin
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.nats import JetStreamConsumer, JetStreamPublisher, JetStreamSettings, connect
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.aggregate import Aggregate
from framework.app import App
from framework.bus import CommandBus, CommandContext
from framework.commands import Command
from framework.events import EventEnvelope, EventMetadata
from framework.mapper import from_stored, to_stored
from framework.projector import HandlerContext, Projector, on
from framework.readmodel import ReadModel
from framework.runner import run_projection, run_relay
from framework.store import EventStore
from framework.views import ViewStore
from framework.worker import ProjectionWorker, WorkerOptions
from projections import build_projectors

TESTS_DIR = Path(__file__).resolve().parent.parent
POISON_FILE_VARIABLE = "EVENTFOLD_TEST_POISON_FILE"
POISON_APP = "streaming_helpers:poison_app"
EXAMPLE_APP = "example_app.app:app"
TRACEBACK = "Traceback (most recent call last)"


# --- waiting ----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.1,
               message: str | Callable[[], str] = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


def short_token() -> str:
    return secrets.token_hex(3).upper()


def record_date() -> date:
    """Far enough ahead that every movement recorded today counts (value date <= record date)."""
    return date.today() + timedelta(days=30)


def new_isin(country: str = "XS") -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    body = country + "".join(secrets.choice(alphabet) for _ in range(9))
    for digit in "0123456789":
        with contextlib.suppress(ValueError):
            return check_isin(body + digit)
    raise AssertionError(f"no check digit fits {body}")


# --- subprocess roles -------------------------------------------------------------------------


def eventfold_executable() -> str:
    # support.* is imported where used: a subprocess loading build_poison_projectors needs none of it.
    from support.http import eventfold_executable as find

    return find()


@dataclass
class Role:
    """``eventfold <args>`` in a subprocess, output in a log file; signalled by its own pid only."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    kills: int = 0

    def start(self) -> Role:
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {' '.join(self.args)} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [eventfold_executable(), *self.args], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, like a crash: no clean-up runs."""
        if self.alive:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(15)
            self.kills += 1

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean stop), then SIGKILL if it lingers; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(15)
        return self.process.returncode

    def restart(self) -> Role:
        self.stop()
        return self.start()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


# --- a deployment: one PG schema, one stream, the roles ---------------------------------------


@dataclass
class Deployment:
    """The pieces of one distributed deployment of the example app, owned by one test."""

    database_url: str
    pg_database: Any  # support.postgres.PgDatabase (the run's database)
    schema: str
    jetstream: JetStreamSettings
    workdir: Path
    app: str = EXAMPLE_APP
    extra_env: dict[str, str] = field(default_factory=dict)
    roles: list[Role] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        from support.http import clean_env

        js = self.jetstream
        variables = {
            "EVENTFOLD_DATABASE_URL": self.database_url,
            "EVENTFOLD_DB_SCHEMA": self.schema,
            "EVENTFOLD_DB_POOL_SIZE": "4",
            "EVENTFOLD_NATS_URL": ",".join(js.servers),
            "EVENTFOLD_STREAM": js.stream,
            "EVENTFOLD_SUBJECT_PREFIX": js.subject_prefix,
            "EVENTFOLD_CONSUMER_PREFIX": js.consumer_prefix,
            "EVENTFOLD_STREAM_STORAGE": js.storage,
            "EVENTFOLD_APP": self.app,
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR / "integration"), str(TESTS_DIR), str(TESTS_DIR.parent)]),
            **self.extra_env,
            **extra,
        }
        return clean_env(**variables)

    def cli(self, *args: str, timeout: float = 120.0, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([eventfold_executable(), *args], env=self.env(**extra), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def cli_ok(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        done = self.cli(*args, timeout=timeout)
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        assert TRACEBACK not in done.stdout + done.stderr, done.stderr
        return done

    def init_db(self) -> None:
        self.cli_ok("init-db")

    def start(self, *args: str, name: str | None = None, env: dict[str, str] | None = None) -> Role:
        name = name or "-".join(args)
        role = Role(name, list(args), self.env(**(env or {})), self.workdir / f"{name}-{len(self.roles)}.log")
        self.roles.append(role)
        return role.start()

    def store(self, pool_size: int = 3) -> PostgresEventStore:
        store = PostgresEventStore(self.pg_database.settings(self.schema, pool_size=pool_size))
        self._closers.append(store.close)
        return store

    def views(self, pool_size: int = 3) -> PostgresViewStore:
        views = PostgresViewStore(self.pg_database.settings(self.schema, pool_size=pool_size))
        self._closers.append(views.close)
        return views

    def bus(self, store: EventStore) -> CommandBus:
        return CommandBus(build_router(), store, max_attempts=5, idempotency_lease_seconds=60)

    def assert_no_tracebacks(self) -> None:
        for role in self.roles:
            assert TRACEBACK not in role.output(), f"{role.name} logged a traceback:\n{role.tail(60)}"

    def close(self) -> None:
        for role in self.roles:
            with contextlib.suppress(Exception):
                role.stop()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()


@contextlib.contextmanager
def deployment_for(pg_database: Any, schema: str, jetstream: JetStreamSettings, workdir: Path,
                   **options: Any) -> Iterator[Deployment]:
    deployment = Deployment(pg_database.url(), pg_database, schema, jetstream, workdir, **options)
    try:
        yield deployment
    finally:
        deployment.close()


# --- in-process roles -------------------------------------------------------------------------


class InProcessRoles:
    """The relay and one projection loop per projector, as asyncio tasks in a thread of their own."""

    def __init__(self, store: EventStore, views: ViewStore, bus: CommandBus, jetstream: JetStreamSettings,
                 projectors: Sequence[Projector]) -> None:
        self.store, self.views, self.bus, self.jetstream = store, views, bus, jetstream
        self.workers = [ProjectionWorker(p, views, store, bus) for p in projectors]
        self.errors: list[BaseException] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="in-process-roles", daemon=True)

    def __enter__(self) -> InProcessRoles:
        self._thread.start()
        assert self._ready.wait(30), "the in-process roles did not start"
        if self.errors:
            raise self.errors[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            self.errors.append(error)
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        connection = await connect(self.jetstream)
        try:
            await connection.ensure_stream()
            self._ready.set()
            tasks = [run_relay(self.store, JetStreamPublisher(connection), self._stop, poll_seconds=0.2)]
            tasks += [run_projection(w, JetStreamConsumer(connection, w.name), self._stop, fetch_seconds=0.2)
                      for w in self.workers]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            self.errors += [r for r in results if isinstance(r, BaseException)]
        finally:
            await connection.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the in-process roles did not stop"
        assert not self.errors, f"a role failed: {self.errors[0]!r}"


# --- workloads --------------------------------------------------------------------------------


class Backlog:
    """Domain events made by the example's own aggregates, appended to the store in bulk.

    Fast enough to put tens of thousands of events in front of a relay or worker.
    """

    def __init__(self) -> None:
        self.envelopes: list[EventEnvelope] = []
        self._versions: dict[UUID, int] = {}

    def take(self, aggregate: Aggregate) -> None:
        events = aggregate.collect_events()
        first = aggregate.version - len(events) + 1
        for offset, event in enumerate(events):
            self.envelopes.append(EventEnvelope(type(aggregate).aggregate_name, aggregate.id, first + offset,
                                                event, EventMetadata(correlation_id="backlog")))

    def append_to(self, store: EventStore, chunk: int = 2000) -> list[int]:
        positions: list[int] = []
        for start in range(0, len(self.envelopes), chunk):
            positions += store.append([to_stored(e) for e in self.envelopes[start:start + chunk]])
        self.envelopes = []
        return positions


def write_backlog(store: EventStore, isin: str, *, accounts: int, credits_each: int,
                  actions: Sequence[tuple[str, str]] = (), prefix: str | None = None) -> list[int]:
    """Accounts credited many times with ``isin``, then corporate actions on it.

    ``actions``: (action id, "validate" | "validate-cancel" | "announce"), in order, each after
    all the movements (so its entitlements cover every account).
    """
    prefix = prefix or f"BL{short_token()}"
    backlog = Backlog()
    opened = []
    for index in range(accounts):
        account = Account.open(f"{prefix}-{index:04d}", f"Holder {index}")
        backlog.take(account)
        opened.append(account)
    for round_ in range(credits_each):
        for index, account in enumerate(opened):
            account.credit(isin, 1 + (index + round_) % 7)
            backlog.take(account)
    for action_id, what in actions:
        action = CorporateAction.announce(action_id, isin, record_date(), None, _cash_terms())
        if what.startswith("validate"):
            action.validate_action()
        if what == "validate-cancel":
            action.cancel("withdrawn before entitlements")
        backlog.take(action)
    return backlog.append_to(store)


def _cash_terms() -> CashTerms:
    return CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.25"), currency="USD")


def setup_security(bus: CommandBus, isin: str, name: str = "Test security") -> None:
    bus.execute(RegisterSecurity(isin=isin, name=name, currency="USD"))


class CommandWriter(threading.Thread):
    """Keeps sending valid commands (credits, transfers, now and then a corporate action) until stopped.

    Each command carries an idempotency key; the writer tracks balances so no debit is refused.
    """

    def __init__(self, bus: CommandBus, isin: str, *, accounts: int = 6, actions_every: int = 0,
                 pause: float = 0.0) -> None:
        super().__init__(name="command-writer", daemon=True)
        self.bus, self.isin, self.pause = bus, isin, pause
        self.prefix = f"W{short_token()}"
        self.accounts = [f"{self.prefix}-{i}" for i in range(accounts)]
        self.balances = dict.fromkeys(self.accounts, 0)
        self.actions_every = actions_every
        self.sent = 0
        self.positions: list[int] = []
        self.errors: list[BaseException] = []
        self._stop_event = threading.Event()
        self._rng = random.Random(7)

    def execute(self, command: Command) -> None:
        context = CommandContext(idempotency_key=f"{self.prefix}-{self.sent}", actor="writer")
        result = self.bus.execute(command, context).result
        self.sent += 1
        if result.position is not None:
            self.positions.append(result.position)

    def run(self) -> None:
        try:
            for account in self.accounts:
                self.execute(OpenAccount(account_number=account, holder_name="Writer"))
            while not self._stop_event.is_set():
                self.execute(self._next_command())
                if self.actions_every and self.sent % self.actions_every == 0:
                    self._corporate_action()
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as error:
            self.errors.append(error)

    def _next_command(self) -> Command:
        rng = self._rng
        rich = [a for a, held in self.balances.items() if held >= 10]
        if rich and rng.random() < 0.4:
            source = rng.choice(rich)
            target = rng.choice([a for a in self.accounts if a != source])
            quantity = rng.randint(1, self.balances[source] // 2)
            self.balances[source] -= quantity
            self.balances[target] += quantity
            return TransferHoldings(from_account=source, to_account=target, isin=self.isin, quantity=quantity)
        account = rng.choice(self.accounts)
        quantity = rng.randint(1, 50)
        self.balances[account] += quantity
        return CreditHoldings(account_number=account, isin=self.isin, quantity=quantity)

    def _corporate_action(self) -> None:
        action_id = f"{self.prefix}-CA{self.sent}"
        self.execute(AnnounceCorporateAction(action_id=action_id, isin=self.isin, record_date=record_date(),
                                             terms=_cash_terms()))
        self.execute(ValidateCorporateAction(action_id=action_id))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)
        assert not self.is_alive(), "the command writer did not stop"
        assert not self.errors, f"the command writer failed: {self.errors[0]!r}"


def wait_entitled(store: EventStore, action_id: str, timeout: float = 60.0) -> None:
    """Wait until the process recorded an action's entitlements (so cancelling it notifies)."""
    from framework.unit_of_work import UnitOfWork

    def entitled() -> bool:
        action = UnitOfWork(store).find(CorporateAction, CorporateAction.id_for(action_id))
        return action is not None and action.entitlements_calculated

    wait_until(entitled, timeout=timeout, message=f"entitlements of {action_id}")


# --- replay and comparisons -------------------------------------------------------------------


def replay(store: EventStore, projectors: Sequence[Projector] | None = None, *,
           until: int | None = None) -> MemoryViewStore:
    """A fresh replay of the store into memory, one batch per projection (no commands issued)."""
    views = MemoryViewStore()
    options = WorkerOptions(catch_up_batch=1_000_000_000, retry_backoff_seconds=0)
    for projector in projectors if projectors is not None else build_projectors():
        worker = ProjectionWorker(projector, views, store, None, options, sleep=lambda _: None)
        worker.catch_up(until)
    return views


def rows_by_key(views: ViewStore, name: str, model: type[ReadModel]) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = views.query(name, model)
    found = {row.key_values(): row.model_dump() for row in rows}
    assert len(found) == len(rows), f"{name}.{model.table}: duplicate keys"
    return found


def assert_same_rows(actual: ViewStore, expected: ViewStore, projectors: Sequence[Projector],
                     *, label: str = "read models") -> None:
    problems = []
    for projector in projectors:
        for model in projector.read_models:
            got = rows_by_key(actual, projector.name, model)
            want = rows_by_key(expected, projector.name, model)
            if got == want:
                continue
            missing = [k for k in want if k not in got]
            extra = [k for k in got if k not in want]
            differ = [k for k in want if k in got and got[k] != want[k]]
            problems.append(
                f"{projector.name}.{model.table}: {len(got)} rows vs {len(want)} replayed; "
                f"missing {missing[:3]}, extra {extra[:3]}, differing "
                + "; ".join(f"{k}: {got[k]} != {want[k]}" for k in differ[:2])
            )
    assert not problems, f"{label} differ from a replay of the store:\n" + "\n".join(problems)


def assert_matches_replay(views: ViewStore, store: EventStore,
                          projectors: Sequence[Projector] | None = None) -> MemoryViewStore:
    """Every table of every projection equals a fresh replay, and positions are at the head."""
    projectors = list(projectors) if projectors is not None else build_projectors()
    head = store.head()
    expected = replay(store, build_like(projectors), until=head)
    assert_same_rows(views, expected, projectors)
    for projector in projectors:
        assert views.active_position(projector.name) == head == expected.active_position(projector.name), (
            projector.name, views.active_position(projector.name), head)
    return expected


def build_like(projectors: Sequence[Projector]) -> list[Projector]:
    """Fresh instances (projectors are stateless, but a replay should share nothing)."""
    fresh = []
    for projector in projectors:
        if isinstance(projector, PoisonProjector):
            fresh.append(type(projector)(projector.fault_file))
        else:
            fresh.append(type(projector)())
    return fresh


def active_positions(views: ViewStore, names: Sequence[str]) -> dict[str, int]:
    states = {(s.name, s.version): s.position for s in views.states()}
    return {name: states.get((name, views.active_version(name)), 0) for name in names}


def wait_settled(views: ViewStore, store: EventStore, names: Sequence[str] | None = None, *,
                 timeout: float = 90.0) -> int:
    """Wait until every named projection (default: the example's) has applied everything stored and
    no process manager has a command left to dispatch (a command dispatched would store more events)."""
    names = list(names) if names is not None else [p.name for p in build_projectors()]
    seen: dict[str, Any] = {}

    def settled() -> bool:
        # In this order: a batch that issues after the outbox was read applies an event past ``head``.
        head = store.head()
        positions = active_positions(views, names)
        pending = {name: stats.pending for name, stats in views.outbox_stats().items() if stats.pending}
        seen.update(positions=positions, head=head, outbox=pending)
        return not pending and all(p == head for p in positions.values()) and store.head() == head

    wait_until(settled, timeout=timeout, interval=0.2, message=lambda: f"projections at the head: {seen}")
    return int(seen["head"])


def stored_positions(store: EventStore) -> list[int]:
    return [n.id for n in store.read_all(0, 1_000_000_000)]


# --- JetStream ------------------------------------------------------------------------------


class StreamWatcher:
    """A connection kept open to poll the stream's message count cheaply (close it after use)."""

    def __init__(self, settings: JetStreamSettings) -> None:
        self.settings = settings
        self._runner = asyncio.Runner()
        self._connection = self._runner.run(connect(settings, timeout=5))

    def count(self) -> int:
        async def count() -> int:
            try:
                info = await self._connection.js.stream_info(self.settings.stream)
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.state.messages)

        return self._runner.run(count())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.run(self._connection.close())
        self._runner.close()

    def __enter__(self) -> StreamWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThrottledProxy:
    """A TCP proxy whose client-to-server direction runs at ``bytes_per_second``: a relay behind it
    takes long enough over each batch to be killed half-way through publishing one."""

    def __init__(self, upstream_port: int, bytes_per_second: int) -> None:
        from support.tcp_proxy import TcpProxy

        proxy = self.proxy = TcpProxy("127.0.0.1", upstream_port)
        rate = bytes_per_second

        def pump(client: Any, upstream: Any) -> None:  # TcpProxy._pump, throttled one way
            import selectors

            from support.tcp_proxy import _hard_close

            peers = {client: upstream, upstream: client}
            with selectors.DefaultSelector() as selector:
                for sock in peers:
                    selector.register(sock, selectors.EVENT_READ)
                try:
                    while not proxy._stopping.is_set():
                        for key, _ in selector.select(timeout=0.2):
                            source = key.fileobj
                            data = source.recv(4096)  # type: ignore[union-attr]
                            if not data:
                                return
                            peers[source].sendall(data)  # type: ignore[index]
                            if source is client:
                                time.sleep(len(data) / rate)
                except (OSError, ValueError):
                    return
                finally:
                    with proxy._lock:
                        proxy._open.difference_update(peers)
                    for sock in peers:
                        _hard_close(sock)

        proxy._pump = pump  # type: ignore[method-assign]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.proxy.port}"

    def __enter__(self) -> ThrottledProxy:
        self.proxy.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()


def stream_positions(settings: JetStreamSettings) -> tuple[int, list[int]]:
    """(``state.messages`` of the stream, the ``Eventfold-Position`` of every message in it)."""

    async def read() -> tuple[int, list[int]]:
        connection = await connect(settings, timeout=5)
        durable = f"audit-{secrets.token_hex(4)}"
        try:
            info = await connection.js.stream_info(settings.stream)
            total = int(info.state.messages)
            consumer = JetStreamConsumer(connection, durable, deliver_all=True)
            positions: list[int] = []
            deadline = time.monotonic() + 60
            while len(positions) < total and time.monotonic() < deadline:
                delivery = await consumer.fetch(1000, 1.0)
                positions += [n.id for n in delivery.notifications]
                await delivery.ack()
            await consumer.close()
            await connection.delete_consumer(durable)
            return total, positions
        finally:
            await connection.close()

    return asyncio.run(read())


def assert_stream_matches_store(settings: JetStreamSettings, store: EventStore) -> None:
    """Every stored event is in the stream, once: nothing lost, nothing doubled."""
    expected = stored_positions(store)
    total, positions = stream_positions(settings)
    doubled = [p for p, n in Counter(positions).items() if n > 1]
    assert not doubled, f"positions published more than once: {doubled[:10]}"
    missing = sorted(set(expected) - set(positions))
    assert not missing, f"{len(missing)} stored events never reached the stream, e.g. {missing[:10]}"
    assert sorted(positions) == expected, "the stream holds positions the store does not"
    assert total == len(expected) == len(positions), (total, len(expected), len(positions))


# --- the corporate-action process, checked against the store -----------------------------------


@dataclass
class ProcessOutcome:
    entitled: dict[str, dict[str, int]]  # action -> account -> holding, as recorded
    notified: Counter[tuple[str, str, str]]  # (action, account, kind) -> times


def assert_process_outcomes(store: EventStore) -> ProcessOutcome:
    """Fold the store: each validated action's entitlements were recorded at most once, from the
    holdings before its validation; each entitled depositor was notified exactly once, and once
    more if the action was cancelled after the entitlements were recorded. Nothing else was sent."""
    accounts: dict[UUID, str] = {}
    holdings: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    actions: dict[str, dict[str, Any]] = {}
    recorded: dict[str, list[Any]] = defaultdict(list)
    notified: Counter[tuple[str, str, str]] = Counter()
    expected: Counter[tuple[str, str, str]] = Counter()
    for notification in store.read_all(0, 1_000_000_000):
        envelope = from_stored(notification)
        event, name = envelope.event, envelope.event_name
        data = event.model_dump()
        if name == "AccountOpened":
            accounts[envelope.aggregate_id] = data["account_number"]
        elif name in ("SecuritiesCredited", "SecuritiesDebited"):
            sign = 1 if name == "SecuritiesCredited" else -1
            holdings[data["isin"]][accounts[envelope.aggregate_id]] += sign * data["quantity"]
        elif name == "CorporateActionAnnounced":
            actions[data["action_id"]] = {"isin": data["isin"], "terms": data["terms"], "status": "announced"}
        elif name == "CorporateActionValidated":
            action = actions[data["action_id"]]
            action["status"] = "validated"
            action["due"] = {a: h for a, h in holdings[action["isin"]].items() if h > 0}
        elif name == "EntitlementsCalculated":
            action = actions[data["action_id"]]
            assert action["status"] == "validated", f"entitlements of a {action['status']} action"
            recorded[data["action_id"]].append(data["entitlements"])
            for entitlement in data["entitlements"]:
                expected[(data["action_id"], entitlement["account_number"], "entitlement")] += 1
        elif name == "CorporateActionCancelled":
            action = actions[data["action_id"]]
            if recorded.get(data["action_id"]):
                for entitlement in recorded[data["action_id"]][0]:
                    expected[(data["action_id"], entitlement["account_number"], "cancellation")] += 1
            action["status"] = "cancelled"
        elif name == "DepositorNotified":
            notified[(data["action_id"], data["account_number"], data["kind"])] += 1
    entitled: dict[str, dict[str, int]] = {}
    for action_id, times in recorded.items():
        assert len(times) == 1, f"entitlements of {action_id} recorded {len(times)} times"
        got = {e["account_number"]: e["holding"] for e in times[0]}
        assert got == actions[action_id]["due"], (
            f"{action_id}: entitlements {sorted(got.items())[:5]} are not the holdings at validation "
            f"{sorted(actions[action_id]['due'].items())[:5]}")
        terms = actions[action_id]["terms"]
        for entitlement in times[0]:
            if terms["kind"] != "stock_split":
                due = (Decimal(str(terms["amount_per_unit"])) * entitlement["holding"]).quantize(Decimal("0.01"))
                assert Decimal(str(entitlement["cash_amount"])) == due, (action_id, entitlement)
        entitled[action_id] = got
    doubled = {k: n for k, n in notified.items() if n > 1}
    assert not doubled, f"depositors notified more than once: {list(doubled.items())[:5]}"
    assert set(notified) == set(expected), (
        f"notifications sent {len(notified)} vs due {len(expected)}: missing "
        f"{sorted(set(expected) - set(notified))[:5]}, unexpected {sorted(set(notified) - set(expected))[:5]}")
    return ProcessOutcome(entitled, notified)


# --- a test-only projection set with a poison event -------------------------------------------


class PoisonAccount(ReadModel):
    table = "accounts"
    key = ("aggregate_id",)

    aggregate_id: UUID
    account_number: str
    holder_name: str


class PoisonCredit(ReadModel):
    table = "credits"
    key = ("position",)

    position: int
    aggregate_id: UUID
    isin: str
    quantity: int


class PoisonError(RuntimeError):
    pass


class PoisonProjector(Projector):
    """Accounts and credits; opening an account listed in the fault file raises (order-independent
    tables, so an event retried later lands where a replay puts it)."""

    read_models = (PoisonAccount, PoisonCredit)
    name: ClassVar[str] = "poison"

    def __init__(self, fault_file: str | Path) -> None:
        self.fault_file = Path(fault_file)

    def poisoned(self) -> set[str]:
        try:
            return set(json.loads(self.fault_file.read_text()))
        except (OSError, ValueError):
            return set()

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        if event.account_number in self.poisoned():
            raise PoisonError(f"poisoned account {event.account_number}")
        context.views.put(PoisonAccount(aggregate_id=context.envelope.aggregate_id,
                                        account_number=event.account_number, holder_name=event.holder_name))

    @on(SecuritiesCredited)
    def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
        assert context.envelope.position is not None
        context.views.put(PoisonCredit(position=context.envelope.position, aggregate_id=context.envelope.aggregate_id,
                                       isin=event.isin, quantity=event.quantity))


class ParkingPoisonProjector(PoisonProjector):
    name = "poison_park"
    on_error = "park"


class HaltingPoisonProjector(PoisonProjector):
    name = "poison_halt"
    on_error = "halt"


def build_poison_projectors() -> list[Projector]:
    fault_file = os.environ[POISON_FILE_VARIABLE]
    return [ParkingPoisonProjector(fault_file), HaltingPoisonProjector(fault_file)]


# The example's commands with the poison projections (the fault file is named by the environment).
poison_app = App(
    name="poison",
    commands=build_router(),
    projections=[lambda: ParkingPoisonProjector(os.environ[POISON_FILE_VARIABLE]),
                 lambda: HaltingPoisonProjector(os.environ[POISON_FILE_VARIABLE])],
)


def set_poisoned(fault_file: Path, accounts: Sequence[str]) -> None:
    tmp = fault_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(list(accounts)))
    tmp.replace(fault_file)  # atomic: a handler never reads half a file


def rolled_back_gap(pg_database: Any, schema: str) -> None:
    """Consume positions in a transaction that rolls back: a permanent hole in the sequence."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_database.url()) as conn:  # not autocommit: one transaction
        conn.execute(
            sql.SQL("INSERT INTO {}.stored_events (originator_id, originator_version, topic, state)"
                    " VALUES (gen_random_uuid(), 1, 'Nothing', '\\x7b7d'::bytea),"
                    " (gen_random_uuid(), 1, 'Nothing', '\\x7b7d'::bytea)").format(sql.Identifier(schema)))
        conn.rollback()

