"""Shared pieces of the GraphQL tests.

- ``GraphQLClient``: graphql-over-HTTP with httpx; every response is checked for leaked internals.
- The example's data, with what the read models must then say: the demo seed plus corporate
  actions of every status over five securities and many record dates, and an account whose
  history is appended with chosen ``recorded_at`` dates (for ``holdings(asOf)``).
- ``ReadSide``: the example's projectors (and its process manager, issuing commands through the
  example router's ``CommandBus``) caught up over an event store; ``LiveProjections`` runs the relay
  and every projection in process over the memory bus, in a thread of their own.
- ``CountingViewStore``: a PostgreSQL view store that records the SQL statements queries issue.
- ``Role``: an ``eventfold`` subprocess whose output goes to files, stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
from support.http import eventfold_executable, wait_until_healthy
from support.postgres import free_port

from example_app.accounts import Account, AccountOpened, SecuritiesCredited, SecuritiesDebited
from example_app.app import build_router
from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    RegisterSecurity,
    RejectCorporateAction,
    ValidateCorporateAction,
)
from example_app.demo import seed
from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
from framework.adapters.postgres_views import PostgresViewStore, _read_as_json, _shape
from framework.bus import CommandBus, CommandContext
from framework.commands import Command
from framework.dispatcher import Dispatcher
from framework.events import Event, EventEnvelope, EventMetadata
from framework.mapper import to_stored
from framework.projector import ProcessManager
from framework.query import BY_KEY, Condition, Sort, check_conditions
from framework.runner import run_projection, run_relay
from framework.store import EventStore
from framework.views import ViewStore
from framework.worker import ProjectionWorker
from projections import build_projectors

T = TypeVar("T")

# What must never reach a client: tracebacks, file paths, driver or SQL detail, Python exception reprs.
LEAK_MARKERS = ("Traceback", 'File "', "site-packages", "psycopg", "SELECT ", "sqlite3", "KeyError",
                "AttributeError", "AssertionError", "NoneType")

# --- the client ----------------------------------------------------------------------------------


def assert_no_leak(response: httpx.Response) -> None:
    text = response.text
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{response.request.url} leaked {marker!r}: {text[:600]}"


class GraphQLClient:
    """POST and GET ``/graphql``; ``data`` insists on an answer without errors."""

    def __init__(self, base_url: str, *, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/graphql"
        self.http = httpx.Client(timeout=timeout, event_hooks={"response": [self._check]})

    @staticmethod
    def _check(response: httpx.Response) -> None:
        response.read()
        assert_no_leak(response)

    def post(self, query: str, variables: Mapping[str, Any] | None = None, *,
             operation_name: str | None = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = dict(variables)
        if operation_name is not None:
            body["operationName"] = operation_name
        return self.http.post(self.url, json=body, headers=dict(headers or {}))

    def get(self, query: str, variables: Mapping[str, Any] | None = None, *,
            headers: Mapping[str, str] | None = None) -> httpx.Response:
        params = {"query": query}
        if variables is not None:
            params["variables"] = json.dumps(variables)
        return self.http.get(self.url, params=params, headers=dict(headers or {}))

    def execute(self, query: str, variables: Mapping[str, Any] | None = None, *,
                position: int | None = None, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The whole JSON answer of a 200 response (data, errors, extensions)."""
        sent = dict(headers or {})
        if position is not None:
            sent["Eventfold-Position"] = str(position)
        response = self.post(query, variables, headers=sent)
        assert response.status_code == 200, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json"), response.headers
        body: dict[str, Any] = response.json()
        return body

    def data(self, query: str, variables: Mapping[str, Any] | None = None, *,
             position: int | None = None) -> dict[str, Any]:
        body = self.execute(query, variables, position=position)
        assert "errors" not in body, body
        if position is not None:
            assert body["extensions"]["consistency"]["reached"] is True, body["extensions"]
        data: dict[str, Any] = body["data"]
        return data

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GraphQLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_codes(body: Mapping[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


def only_error(body: Mapping[str, Any], code: str) -> dict[str, Any]:
    """The single error of a GraphQL answer, checked to carry ``code`` and a message."""
    errors = body.get("errors")
    assert errors and len(errors) == 1, body
    error: dict[str, Any] = errors[0]
    assert error["extensions"]["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    return error


def poll(check: Callable[[], T | None], *, timeout: float = 20, every: float = 0.02,
         what: str = "the condition") -> T:
    """``check()``'s first truthy result, or AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(every)


# --- the example's data --------------------------------------------------------------------------

APPLE, SAP, TOTAL = "US0378331005", "DE0007164600", "FR0000120271"
BAE, ASML = "GB0002634946", "NL0010273215"
EXTRA_SECURITIES = {BAE: ("BAE Systems plc", "GBP"), ASML: ("ASML Holding N.V.", "EUR")}
CURRENCIES = {APPLE: "USD", SAP: "EUR", TOTAL: "EUR", BAE: "GBP", ASML: "EUR"}
NAMES = {APPLE: "Apple Inc.", SAP: "SAP SE", TOTAL: "TotalEnergies SE", BAE: "BAE Systems plc",
         ASML: "ASML Holding N.V."}
HISTORY_ACCOUNT = "ACC-HIST"
STATUSES = ("validated", "announced", "rejected", "cancelled")


def utc_today() -> date:
    """The date movements are valued at: the UTC date of their ``recorded_at``."""
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class Movement:
    account_number: str
    isin: str
    value_date: date
    delta: int


@dataclass(frozen=True)
class ActionSpec:
    """A corporate action sent through the write path, and where its life ends."""

    action_id: str
    isin: str
    record_date: date
    terms: dict[str, Any]
    status: str  # validated | announced | rejected | cancelled
    payment_date: date | None = None
    reasons: tuple[str, ...] = ()
    cancellation_reason: str | None = None
    entitled_before_cancel: bool = False  # cancelled after its entitlements were recorded

    @property
    def kind(self) -> str:
        return str(self.terms["kind"])


def demo_movements(today: date) -> list[Movement]:
    """What ``example_app.demo`` credits, debits and transfers (all valued today)."""
    return [
        Movement("ACC-1001", APPLE, today, 1000), Movement("ACC-1002", APPLE, today, 250),
        Movement("ACC-1003", SAP, today, 400), Movement("ACC-1001", APPLE, today, -300),
        Movement("ACC-1003", APPLE, today, 300),
    ]


def demo_actions(today: date) -> list[ActionSpec]:
    record = today + timedelta(days=14)
    return [
        ActionSpec("CA-APPLE-DIV", APPLE, record,
                   {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "USD"}, "validated",
                   payment_date=record + timedelta(days=7)),
        ActionSpec("CA-SAP-SPLIT", SAP, record, {"kind": "stock_split", "new_units": 2, "old_units": 1},
                   "cancelled", cancellation_reason="The issuer withdrew the split", entitled_before_cancel=True),
        ActionSpec("CA-TTE-DIV", TOTAL, record,
                   {"kind": "cash_dividend", "amount_per_unit": "0.79", "currency": "EUR"}, "rejected",
                   reasons=("Terms do not match the issuer's notice",)),
    ]


def history_movements(today: date) -> list[Movement]:
    """The history account's ASML movements, valued in the past."""
    return [
        Movement(HISTORY_ACCOUNT, ASML, today - timedelta(days=20), 100),
        Movement(HISTORY_ACCOUNT, ASML, today - timedelta(days=10), 50),
        Movement(HISTORY_ACCOUNT, ASML, today - timedelta(days=5), -30),
    ]


def extra_actions(today: date, count: int = 45) -> list[ActionSpec]:
    """Actions over five securities, four statuses, record dates from 11 days ago to 11 days ahead."""
    isins = (APPLE, SAP, TOTAL, BAE, ASML)
    specs = []
    for i in range(count):
        isin = isins[i % len(isins)]
        status = STATUSES[(i // len(isins) + i) % len(STATUSES)]  # every security gets every status
        record = today + timedelta(days=(i * 2) % 23 - 11)
        if i % 3 == 0:
            terms: dict[str, Any] = {"kind": "stock_split", "new_units": 3, "old_units": 2}
        else:
            kind = "coupon" if i % 7 == 0 else "cash_dividend"
            terms = {"kind": kind, "amount_per_unit": f"0.{10 + i}", "currency": CURRENCIES[isin]}
        specs.append(ActionSpec(
            f"CA-T-{i:02d}", isin, record, terms, status,
            payment_date=record + timedelta(days=5) if i % 2 == 0 else None,
            reasons=(f"reason {i}", "second reason") if status == "rejected" else (),
            cancellation_reason=f"withdrawn {i}" if status == "cancelled" else None,
        ))
    return specs


def action_commands(spec: ActionSpec) -> list[Command]:
    """The commands giving an action its life (a cancellation here comes straight after the announcement)."""
    announce = AnnounceCorporateAction.model_validate({
        "action_id": spec.action_id, "isin": spec.isin, "record_date": spec.record_date,
        "payment_date": spec.payment_date, "terms": spec.terms,
    })
    then: list[Command] = []
    if spec.status == "validated":
        then = [ValidateCorporateAction(action_id=spec.action_id)]
    elif spec.status == "rejected":
        then = [RejectCorporateAction(action_id=spec.action_id, reasons=list(spec.reasons))]
    elif spec.status == "cancelled":
        assert spec.cancellation_reason is not None
        then = [CancelCorporateAction(action_id=spec.action_id, reason=spec.cancellation_reason)]
    return [announce, *then]


def append_history(store: EventStore, today: date) -> int:
    """Open the history account and move ASML in and out, each event recorded on a chosen past day."""
    account = Account.id_for(HISTORY_ACCOUNT)
    opened = (AccountOpened(account_number=HISTORY_ACCOUNT, holder_name="Historic Holder"),
              today - timedelta(days=30))
    moves: list[tuple[Event, date]] = [opened]
    for m in history_movements(today):
        moved: Event = (SecuritiesCredited(isin=m.isin, quantity=m.delta, reference=None) if m.delta > 0
                        else SecuritiesDebited(isin=m.isin, quantity=-m.delta, reference=None))
        moves.append((moved, m.value_date))
    stored = [
        to_stored(EventEnvelope(
            aggregate_type=Account.aggregate_name, aggregate_id=account, version=version, event=event,
            metadata=EventMetadata(recorded_at=datetime.combine(day, datetime.min.time(), UTC)
                                   + timedelta(hours=12), actor="test-history"),
        ))
        for version, (event, day) in enumerate(moves, start=1)
    ]
    return store.append(stored)[-1]


@dataclass
class Expectations:
    """What the read models must say about the data sent."""

    today: date
    actions: list[ActionSpec]
    movements: list[Movement]

    def action(self, action_id: str) -> ActionSpec:
        return next(a for a in self.actions if a.action_id == action_id)

    def holdings_at(self, isin: str, day: date | None = None) -> dict[str, int]:
        held: dict[str, int] = defaultdict(int)
        for m in self.movements:
            if m.isin == isin and (day is None or m.value_date <= day):
                held[m.account_number] += m.delta
        return {a: q for a, q in sorted(held.items()) if q > 0}

    def holdings(self, account: str, day: date | None = None) -> list[dict[str, Any]]:
        isins = sorted({m.isin for m in self.movements if m.account_number == account})
        rows = [{"isin": i, "quantity": self.holdings_at(i, day).get(account, 0)} for i in isins]
        return [r for r in rows if r["quantity"]]

    def entitlements(self, spec: ActionSpec) -> list[dict[str, Any]]:
        """An action's entitlements as the ``Entitlement`` type shows them, by account."""
        if spec.status == "validated" or spec.entitled_before_cancel:
            status = "cancelled" if spec.status == "cancelled" else "active"
            return [_entitlement(spec, account, held, status)
                    for account, held in self.holdings_at(spec.isin, spec.record_date).items()]
        return []

    def entitled_accounts(self, spec: ActionSpec) -> int | None:
        if spec.status == "validated" or spec.entitled_before_cancel:
            return len(self.entitlements(spec))
        return None

    def card(self, spec: ActionSpec) -> dict[str, Any]:
        return {
            "actionId": spec.action_id, "isin": spec.isin, "securityName": NAMES[spec.isin],
            "kind": spec.kind, "recordDate": spec.record_date.isoformat(),
            "paymentDate": spec.payment_date.isoformat() if spec.payment_date else None,
            "terms": spec.terms, "status": spec.status, "reasons": list(spec.reasons),
            "cancellationReason": spec.cancellation_reason, "entitledAccounts": self.entitled_accounts(spec),
        }

    def account_entitlements(self, account: str) -> list[dict[str, Any]]:
        """A depositor's entitlements, newest record date first (ties: action id, descending)."""
        rows = [e for spec in self.actions for e in self.entitlements(spec) if e["accountNumber"] == account]
        return sorted(rows, key=lambda e: (e["recordDate"], e["actionId"]), reverse=True)

    def notifications(self, account: str) -> set[tuple[str, str]]:
        """(action id, kind) of every notification a depositor must have received, once each."""
        sent = set()
        for spec in self.actions:
            if any(e["accountNumber"] == account for e in self.entitlements(spec)):
                sent.add((spec.action_id, "entitlement"))
                if spec.status == "cancelled":
                    sent.add((spec.action_id, "cancellation"))
        return sent

    @property
    def accounts(self) -> list[str]:
        return sorted({m.account_number for m in self.movements})


def _entitlement(spec: ActionSpec, account: str, held: int, status: str) -> dict[str, Any]:
    terms = spec.terms
    if spec.kind == "stock_split":
        cash, currency, units = None, None, held * terms["new_units"] // terms["old_units"] - held
    else:
        cash = str((Decimal(terms["amount_per_unit"]) * held).quantize(Decimal("0.01")))
        currency, units = terms["currency"], None
    return {"actionId": spec.action_id, "accountNumber": account, "recordDate": spec.record_date.isoformat(),
            "holding": held, "cashAmount": cash, "currency": currency, "newUnits": units, "status": status}


# --- running the read side in process ------------------------------------------------------------


class ReadSide:
    """The example's projectors and process manager over one event store and one view store."""

    def __init__(self, store: EventStore, views: ViewStore) -> None:
        self.store, self.views = store, views
        self.bus = CommandBus(build_router(), store)
        self.workers = [ProjectionWorker(p, views, store, self.bus) for p in build_projectors()]
        self.dispatchers = [Dispatcher(w, self.bus) for w in self.workers if isinstance(w.projector, ProcessManager)]

    def catch_up(self) -> None:
        """Every projection catches up, then the process manager's outbox is dispatched."""
        for worker in self.workers:
            worker.catch_up()
        for dispatcher in self.dispatchers:
            while dispatcher.run_once():
                pass

    def settle(self, timeout: float = 60) -> int:
        """Catch up until nothing is left: no projection behind and no command issued meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.store.head()
            self.catch_up()
            if self.store.head() == head and all(w.position >= head for w in self.workers):
                return head
            if time.monotonic() > deadline:
                raise AssertionError(f"the projections did not settle within {timeout}s")

    def execute(self, commands: Sequence[Command], *, key_prefix: str) -> int:
        position = 0
        for index, command in enumerate(commands):
            context = CommandContext(idempotency_key=f"{key_prefix}-{index}", actor="graphql-tests")
            position = self.bus.execute(command, context).result.position or position
        return position

    @contextmanager
    def catching_up(self) -> Iterator[None]:
        """Projections catching up in a thread, as a live worker would (the demo seed waits for them)."""
        stop = threading.Event()
        failures: list[BaseException] = []

        def loop() -> None:
            while not stop.is_set():
                try:
                    self.catch_up()
                except BaseException as error:  # reported by the caller's thread
                    failures.append(error)
                    return
                stop.wait(0.02)

        thread = threading.Thread(target=loop, name="catch-up", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not failures, failures


def fill_example(side: ReadSide, *, extra: int = 45) -> Expectations:
    """The demo seed, the history account, two more securities and ``extra`` actions; settled."""
    today = utc_today()
    with side.catching_up():
        seed(side.bus, today)
    append_history(side.store, today)
    registrations = [RegisterSecurity(isin=i, name=n, currency=c) for i, (n, c) in EXTRA_SECURITIES.items()]
    side.execute(registrations, key_prefix="securities")
    actions = extra_actions(today, extra)
    side.execute([c for spec in actions for c in action_commands(spec)], key_prefix="actions")
    side.settle()
    return Expectations(today, demo_actions(today) + actions, demo_movements(today) + history_movements(today))


class LiveProjections:
    """The relay and every projection, live over the memory bus, on an event loop in a thread."""

    def __init__(self, side: ReadSide) -> None:
        self._side = side
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-projections", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        events = MemoryBus()
        tasks = [asyncio.create_task(run_relay(self._side.store, MemoryPublisher(events), self._stop,
                                               poll_seconds=0.05))]
        tasks += [asyncio.create_task(run_projection(w, MemoryConsumer(events, w.name), self._stop,
                                                     fetch_seconds=0.05))
                  for w in self._side.workers]
        self._ready.set()
        await asyncio.gather(*tasks)

    def __enter__(self) -> LiveProjections:
        self._thread.start()
        assert self._ready.wait(10), "the live projections did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the live projections did not stop"
        self._loop.close()


# --- counting SQL statements ---------------------------------------------------------------------


class _CountingConnection:
    def __init__(self, conn: Any, record: Callable[[Any], None]) -> None:
        self._conn, self._record = conn, record

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self._record(query)
        return self._conn.execute(query, *args, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("queries are expected to run statements on the connection")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class CountingViewStore(PostgresViewStore):
    """Records every statement run while ``counting()`` is on (statements run in worker threads)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._statements: list[str] | None = None

    @contextmanager
    def counting(self) -> Iterator[list[str]]:
        statements: list[str] = []
        with self._lock:
            self._statements = statements
        try:
            yield statements
        finally:
            with self._lock:
                self._statements = None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with super()._connection() as conn:
            with self._lock:
                recording = self._statements
            if recording is None:
                yield conn
                return

            def record(query: Any) -> None:
                text = query if isinstance(query, str | bytes) else query.as_string(conn)
                recording.append(text.decode() if isinstance(text, bytes) else text)

            yield _CountingConnection(conn, record)


    async def get_many_async(self, name: str, model: Any, keys: Sequence[tuple[Any, ...]]) -> Any:
        """Rows by key on the event loop: recorded as the statement it runs (not through ``_connection``)."""
        with self._lock:
            recording = self._statements
        if recording is not None and keys:
            version = self._active_cache.get(name, (1, 0.0))[0]
            recording.append(self._get_many_statement(name, version, model, len(keys) == 1,
                                                       _read_as_json(model)).decode())
        return await super().get_many_async(name, model, keys)


    async def query_async(self, name: str, model: Any, where: Sequence[Condition] = (), sort: Sort = BY_KEY, *,
                          after: tuple[Any, ...] | None = None, limit: int | None = None) -> Any:
        """Pages on the event loop: recorded as the statement they run (not through ``_connection``)."""
        with self._lock:
            recording = self._statements
        if recording is not None:
            version = self._active_cache.get(name, (1, 0.0))[0]
            shape = _shape(check_conditions(model, where), sort, after, limit)
            recording.append(self._select_statement(name, version, model, shape, _read_as_json(model)).decode())
        return await super().query_async(name, model, where, sort, after=after, limit=limit)


def read_model_statements(statements: Sequence[str]) -> list[str]:
    """Statements on read-model tables (``rm_*``), leaving out bookkeeping lookups (active version,
    positions) that are cached or depend on time rather than on the query."""
    return [s for s in statements if '"rm_' in s]


# --- subprocesses --------------------------------------------------------------------------------


@dataclass
class Role:
    """``eventfold ARGS`` in a subprocess; output in files; stopped by its own pid (TERM, then KILL)."""

    args: Sequence[str]
    env: Mapping[str, str]
    logs: Path
    name: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def stdout_path(self) -> Path:
        return self.logs / f"{self.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.logs / f"{self.name}.err"

    def command(self) -> list[str]:
        return [eventfold_executable(), *self.args]

    def start(self) -> Role:
        self.logs.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(self.command(), env=dict(self.env), stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL)
        return self

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        return self.process.returncode

    def describe(self) -> str:
        return f"{self.name} (exit {self.process.poll() if self.process else None}): {self.stderr()[-2000:]}"


@dataclass
class Server(Role):
    """A role serving HTTP on a port of its own."""

    port: int = field(default_factory=free_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [*super().command(), "--host", "127.0.0.1", "--port", str(self.port)]

    def wait_healthy(self, timeout: float = 30) -> None:
        assert self.process is not None
        try:
            wait_until_healthy(self.base_url, timeout=timeout, process=self.process)  # type: ignore[arg-type]
        except RuntimeError as error:
            raise AssertionError(f"{error}: {self.describe()}") from None


@contextmanager
def running(*roles: Role) -> Iterator[None]:
    """Start the roles (servers waited for), stop every one of them afterwards."""
    try:
        for role in roles:
            role.start()
        for role in roles:
            if isinstance(role, Server):
                role.wait_healthy()
        yield
    finally:
        for role in reversed(roles):
            role.stop()


def send_command(http: httpx.Client, base_url: str, name: str, body: Mapping[str, Any]) -> int:
    """POST a command to the write API; the position of its last event."""
    response = http.post(f"{base_url}/commands/{name}", json=dict(body))
    assert response.status_code == 200, (name, response.status_code, response.text)
    position = response.json()["position"]
    assert isinstance(position, int) and position > 0, response.json()
    return position


def wait_settled(client: GraphQLClient, *, timeout: float = 30) -> int:
    """Poll ``projections`` until every one has applied the head, twice in a row at the same head
    (a command a process manager issued between reading the head and the positions shows then); the head."""
    seen: list[int] = []

    def settled() -> int | None:
        rows = client.data("{ projections { name position head } }")["projections"]
        heads = {r["head"] for r in rows}
        if rows and len(heads) == 1 and all(r["position"] >= r["head"] for r in rows):
            seen.append(heads.pop())
            return seen[-1] if len(seen) > 1 and seen[-1] == seen[-2] else None
        seen.clear()
        return None

    return poll(settled, timeout=timeout, every=0.05, what="the projections settling")


# --- comparing answers ---------------------------------------------------------------------------

VOLATILE = frozenset({"announcedAt", "updatedAt", "notifiedAt"})


def without(value: Any, keys: frozenset[str] = VOLATILE) -> Any:
    """``value`` with every mapping's ``keys`` dropped, recursively (timestamps that legitimately differ)."""
    if isinstance(value, Mapping):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


_CURL = re.compile(r"^\s*curl\s")


def printed_queries(output: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """The curl commands a process printed: (url, headers, JSON body) of each."""
    found = []
    for line in output.splitlines():
        if not _CURL.match(line):
            continue
        words = shlex.split(line)
        url = next(w for w in words if w.startswith("http"))
        headers: dict[str, str] = {}
        body: dict[str, Any] = {}
        for flag, value in itertools.pairwise(words):
            if flag == "-H":
                name, _, text = value.partition(":")
                headers[name.strip()] = text.strip()
            elif flag in ("-d", "--data"):
                body = json.loads(value)
        found.append((url, headers, body))
    return found
