#!/usr/bin/env python
"""Process-manager benchmark: the corporate-action process's outbox and dispatcher, and the standby
takeover of a projection, each beside raw figures measured in the same run.

Phases, one after the other so they never compete for the machine's cores:

1. ``throughput`` commands/s the corporate-action process executes while catching up from scratch over
               a store where 20,000 depositor notifications are due: ``--accounts`` accounts (4,000)
               each credited once with a security, then ``--actions`` (5) validated cash dividends on
               it, appended in bulk (``framework.mapper.to_stored`` of the example's own aggregates).
               ``eventfold relay`` and ``eventfold project corporate_action_process`` then run as
               subprocesses on a fresh stream: the process records each action's entitlements
               (``RecordEntitlements``, one command per action), and, when the ``EntitlementsCalculated``
               events come back over JetStream, notifies every entitled depositor (``NotifyDepositor``,
               through its outbox and ``Dispatcher``, 16 at a time). Beside it, in the same run,
               ``eventfold write-api`` with 16 HTTP clients (``write_path.py``'s phase: ``CreditHoldings``,
               distinct accounts), and the same API with 16 clients sending ``NotifyDepositor`` with an
               ``Idempotency-Key`` each (the very command and key handling the dispatcher uses), and
               without the key (what the key costs). ``NotifyDepositor`` is internal (no route), so
               this write API serves ``bench_app.py``'s application, where a public twin of it has a route.
               Target: the process's commands/s >= 0.8x the write API's at 16 clients.
2. ``lag``     how far the process lags behind a steady ``--rate`` (200) commands/s over HTTP for
               ``--lag-seconds`` (60): ``eventfold write-api``, ``eventfold relay`` and ``eventfold
               project corporate_action_process`` as subprocesses; the load opens accounts and credits
               them, credits a traded security, and every ``--action-every`` seconds announces and
               validates a cash dividend on a security the holders hold, so the process notifies
               depositors steadily. Lag of each command the process issued = ``recorded_at`` of the event
               it wrote (``DepositorNotified``, ``EntitlementsCalculated``) minus ``recorded_at`` of the
               event that made the process issue it (its causation), both read from the store.
               Reference: the write API's own latency (scheduled -> accepted) in the same run.
               Target: p99 of the notification hop <= 1 s.
3. ``takeover`` two ``eventfold project corporate_action_process`` on one projection with commands
               flowing; the active one (the lease holder in ``eventfold_projection_leases``) is
               killed with SIGKILL, and the time until the standby holds the lease and until the
               projection's position moves again is measured; ``--takeovers`` (5) times, the killed
               worker restarted as the next standby each time. Reference: the lease's bound
               (``EVENTFOLD_LEASE_SECONDS`` + the standby's poll). Target: <= 5 s.

The script creates its own databases (``eventfold_bench_<pid>_*``) on ``EVENTFOLD_BENCH_DATABASE_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``) and its own JetStream streams
(``efbench_<pid>_*``) on ``EVENTFOLD_BENCH_NATS_URL`` (default ``nats://127.0.0.1:4222``), removes them at
the end, and stops the processes it started by their pid. It prints figures and verdicts, never asserts.

    python benchmarks/process_manager.py            # full run (~4 min)
    python benchmarks/process_manager.py --quick    # smoke run
    python benchmarks/process_manager.py --only lag --lag-seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import psycopg
import streaming as sb  # sibling script: CPU meter, scratch resources, open-loop load, percentiles
import write_path as wp  # sibling script: databases, the write API server, HTTP clients and phases

THROUGHPUT_TARGET = 0.8
LAG_TARGET_P99_S = 1.0
TAKEOVER_TARGET_S = 5.0
PROCESS = "corporate_action_process"
PM_ACTOR = f"process-manager:{PROCESS}"
SCHEMA = "efbench"
TRADED = "US5949181045"  # credited by the lag phase's load; no action on it
DIVIDEND = "US0378331005"  # the security the holders hold and the actions are announced on
PHASES = ("throughput", "lag", "takeover")
TWIN_APP = "benchmarks.bench_app:app"  # the example, plus a route for a twin of its internal NotifyDepositor


# --------------------------------------------------------------------------- shared pieces


def role_env(url: str, settings: Any, nats_url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``eventfold`` subprocess of this run (anonymous: no tokens are sent)."""
    kept = ("EVENTFOLD_LEASE_SECONDS", "EVENTFOLD_DISPATCH_CONCURRENCY")  # what a run may want to vary
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_") or k in kept}
    return wp.eventfold_env(env, **{
        "PYTHONUNBUFFERED": "1", "EVENTFOLD_DATABASE_URL": url, "EVENTFOLD_DB_SCHEMA": SCHEMA,
        "EVENTFOLD_NATS_URL": nats_url, "EVENTFOLD_STREAM": settings.stream,
        "EVENTFOLD_SUBJECT_PREFIX": settings.subject_prefix, "EVENTFOLD_CONSUMER_PREFIX": settings.consumer_prefix,
        **extra,
    })


def init_db(env: dict[str, str]) -> None:
    import subprocess

    done = subprocess.run([*wp._eventfold_command(), "init-db"], env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"eventfold init-db failed: {done.stderr.strip()[-500:]}")


def open_store(url: str) -> Any:
    from framework.adapters.postgres import PostgresEventStore
    from framework.settings import PostgresSettings

    settings = PostgresSettings.from_url(url)
    return PostgresEventStore(PostgresSettings(**{**settings.__dict__, "schema": SCHEMA, "pool_size": 4}))


class Poll:
    """One connection kept open to read a figure of the run's database cheaply, again and again."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)

    def one(self, statement: str, params: Sequence[Any] = ()) -> Any:
        row = self._conn.execute(statement, params, prepare=True).fetchone()
        return row[0] if row else None

    def position(self) -> int:
        return int(self.one(f'SELECT coalesce(max(position), 0) FROM "{SCHEMA}".eventfold_projection_positions'
                            " WHERE name = %s", (PROCESS,)))

    def head(self) -> int:
        return int(self.one(f'SELECT coalesce(max(notification_id), 0) FROM "{SCHEMA}".stored_events'))

    def lease_owner(self) -> str | None:
        owner = self.one(f'SELECT owner FROM "{SCHEMA}".eventfold_projection_leases'
                         " WHERE name = %s AND expires_at > clock_timestamp()", (PROCESS,))
        return str(owner) if owner is not None else None

    def outbox(self) -> int:
        return int(self.one(f'SELECT count(*) FROM "{SCHEMA}".eventfold_outbox WHERE projection = %s', (PROCESS,)))

    def count(self, topic: str) -> int:
        return int(self.one(f'SELECT count(*) FROM "{SCHEMA}".stored_events WHERE topic = %s', (topic,)))

    def close(self) -> None:
        self._conn.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.1,
             alive: Sequence[sb.Process] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for process in alive:
            process.check_alive()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def owner_pid(owner: str | None) -> int | None:
    """The pid in a lease owner (``host:pid:suffix``, see ``framework.runner.worker_identity``)."""
    match = re.match(r"^.*:(\d+):[0-9a-f]+$", owner or "")
    return int(match.group(1)) if match else None


def record_date() -> date:
    return date.today() + timedelta(days=30)


def cash_terms() -> dict[str, Any]:
    return {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "USD"}


@dataclass
class PmEvent:
    name: str
    event_id: str
    causation: str | None
    recorded_at: float  # epoch seconds
    actor: str | None
    data: dict[str, Any]


def read_events(store: Any, after: int = 0) -> list[PmEvent]:
    """Every stored event after ``after``, with what the lag computations need."""
    from framework.mapper import from_stored

    out: list[PmEvent] = []
    position = after
    while batch := store.read_all(position, 5000):
        for notification in batch:
            envelope = from_stored(notification)
            meta = envelope.metadata
            out.append(PmEvent(envelope.event_name, str(meta.event_id), meta.causation_id,
                               meta.recorded_at.timestamp(), meta.actor, envelope.event.model_dump()))
        position = batch[-1].id
    return out


def notifications_check(events: Sequence[PmEvent], due: int | None = None) -> str:
    """Notifications sent vs distinct (action, account, kind), and vs the number due if known."""
    sent = [(e.data["action_id"], e.data["account_number"], e.data["kind"]) for e in events
            if e.name == "DepositorNotified"]
    distinct = len(set(sent))
    ok = distinct == len(sent) and (due is None or distinct == due)
    return (f"check: {len(sent):,} notified, {distinct:,} distinct" + (f", {due:,} due" if due is not None else "")
            + ("" if ok else "  MISMATCH"))


# --------------------------------------------------------------------------- HTTP with headers


class HeaderClient(wp.RawHttpClient):
    """``write_path``'s raw keep-alive client, with extra request headers (an Idempotency-Key)."""

    async def post_with(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None and self._writer is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        try:
            self._writer.write(
                b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%s"
                b"Content-Length: %d\r\n\r\n%s"
                % (path.encode(), self._host.encode(), self._port, extra, len(body), body))
            status_line = await self._reader.readline()
            if not status_line:
                raise ConnectionError("the server closed the connection")
            length = 0
            while (header := await self._reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            data = await self._reader.readexactly(length) if length else b""
        except BaseException:
            await self.close()
            raise
        return int(status_line.split(b" ", 2)[1]), data


def bench_http_notify(server: wp.Server, accounts: list[str], clients: int, warmup: float,
                      duration: float, *, keyed: bool = True) -> wp.Result:
    """16 clients sending NotifyDepositor (each a new notification), each with its own Idempotency-Key
    (as the dispatcher sends every command) unless not ``keyed``."""
    run = uuid4().hex[:8]
    label = "NotifyDepositor + Idempotency-Key" if keyed else "NotifyDepositor, no key"

    async def main() -> wp.Result:
        window = wp.Window.after(warmup, duration)
        result = wp.Result(f"write API, {clients} clients, {label}", duration)
        sampler = wp.CpuSampler(window, server.pid)
        sampler.start()

        async def one(index: int) -> None:
            client = HeaderClient("127.0.0.1", server.port)
            sent = 0
            try:
                while (began := time.perf_counter()) < window.end:
                    account = accounts[(index + sent * clients) % len(accounts)]
                    action = f"HTTP-{run}-{index}-{sent}"
                    body = json.dumps({"account_number": account, "action_id": action, "kind": "entitlement",
                                       "message": f"Corporate action {action}: 0.25 USD on 1 units held"}).encode()
                    sent += 1
                    try:
                        status, _ = await client.post_with("/commands/NotifyDepositorOverHttp", body,
                                                           {"Idempotency-Key": f"bench:{action}"} if keyed else {})
                    except Exception as error:  # reported, not raised
                        result.errors[type(error).__name__] += 1
                        continue
                    ended = time.perf_counter()
                    if status != 200:
                        result.errors[f"HTTP {status}"] += 1
                    elif window.holds(began, ended):
                        result.latencies.append(ended - began)
            finally:
                await client.close()

        await asyncio.gather(*(one(i) for i in range(clients)))
        sampler.join()
        result.cpu = sampler.cpu
        return result

    return asyncio.run(main())


# --------------------------------------------------------------------------- phase 1: throughput


def backlog(accounts: int, actions: int, prefix: str) -> list[Any]:
    """Stored events: ``accounts`` opened and credited once with DIVIDEND, then ``actions`` validated
    cash dividends on it (every account entitled to each: ``accounts * actions`` notifications due)."""
    from example_app.accounts import Account
    from example_app.corporate_actions import CashTerms, CorporateAction
    from framework.events import EventEnvelope, EventMetadata
    from framework.mapper import to_stored

    stored: list[Any] = []

    def take(aggregate: Any) -> None:
        events = aggregate.collect_events()
        first = aggregate.version - len(events) + 1
        for offset, event in enumerate(events):
            meta = EventMetadata(correlation_id="backlog", actor="benchmark")
            stored.append(to_stored(EventEnvelope(type(aggregate).aggregate_name, aggregate.id, first + offset,
                                                  event, meta)))

    for index in range(accounts):
        account = Account.open(f"{prefix}-{index:05d}", f"Holder {index}")
        account.credit(DIVIDEND, 1 + index % 7)
        take(account)
    terms = CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.25"), currency="USD")
    for number in range(actions):
        action = CorporateAction.announce(f"{prefix}-CA{number}", DIVIDEND, record_date(), None, terms)
        action.validate_action()
        take(action)
    return stored


@dataclass
class Throughput:
    label: str
    commands: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    other_pct: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0


def run_catch_up(args: argparse.Namespace, scratch: sb.Scratch) -> tuple[list[Throughput], sb.Row]:
    url = scratch.databases.create("pm")
    settings = scratch.stream_settings("pm")
    env = role_env(url, settings, scratch.nats_url)
    init_db(env)
    store = open_store(url)
    poll = Poll(url)
    try:
        from example_app.app import build_router
        from framework.bus import CommandBus

        router = build_router()
        CommandBus(router, store).execute(router.parse(
            "RegisterSecurity", {"isin": DIVIDEND, "name": "Dividend payer", "currency": "USD"}))
        meter = sb.Meter().start()
        events = backlog(args.accounts, args.actions, "PM")
        for start in range(0, len(events), 2000):
            store.append(events[start:start + 2000])
        meter.stop()
        seeding = sb.Row.of("seeding: to_stored + PostgresEventStore.append, 2,000/batch", len(events), meter)
        seeded_head = store.head()
        due: int = args.accounts * args.actions
        eventfold = wp._eventfold_command()
        relay = scratch.spawn("relay", [*eventfold, "relay"], env)
        meter = sb.Meter({"relay": lambda: [relay.pid]}).start()
        started = time.time()
        project = scratch.spawn("project", [*eventfold, "project", PROCESS], env)
        meter.roles["project"] = lambda: [project.pid]  # started after the meter: all its CPU counts
        wait_for(poll.lease_owner, 60, "the process manager to start", interval=0.01, alive=[project])
        active = time.time()

        def done() -> bool:
            meter.watch()
            return poll.count("DepositorNotified") >= due

        wait_for(done, args.catch_up_timeout, f"{due:,} notifications", interval=0.2, alive=[relay, project])
        meter.stop()
        pm_events = [e for e in read_events(store, seeded_head) if e.actor == PM_ACTOR]
        notified = [e for e in pm_events if e.name == "DepositorNotified"]
        last = max(e.recorded_at for e in pm_events)
        first_notified = min(e.recorded_at for e in notified)
        check = notifications_check(pm_events, due)
        commands = len(pm_events)
        rows = [
            Throughput(f"PM: from `eventfold project` started, over {len(events):,} stored events",
                       commands, last - started, dict(meter.cpu), meter.other_pct(), "(with the interpreter's start)"),
            Throughput("PM: from its lease taken to the last notification (all commands)",
                       commands, last - active, dict(meter.cpu), meter.other_pct(), check),
            Throughput("PM: NotifyDepositor only, first to last notification", len(notified) - 1,
                       max(e.recorded_at for e in notified) - first_notified, dict(meter.cpu), meter.other_pct()),
        ]
        for row in rows:
            row.cpu = {k: v * row.commands / commands for k, v in meter.cpu.items()}  # per command, as measured
        for process in (relay, project):
            process.check_alive()
            sb.stop_process(process.popen)
        return rows, seeding
    finally:
        poll.close()
        store.close()


def phase_throughput(args: argparse.Namespace, scratch: sb.Scratch) -> sb.Verdict:
    print(f"== 1. process-manager throughput: {args.accounts:,} accounts x {args.actions} validated dividends"
          f" = {args.accounts * args.actions:,} notifications due, caught up from scratch")
    w, d = args.warmup, args.duration
    with wp.running_server(scratch.databases.create("http"), app=TWIN_APP) as server:
        accounts = [wp.account_number("ACC", i) for i in range(64)]
        wp.http_setup(server, accounts)
        credit = wp.bench_http("write API, 16 clients, CreditHoldings (write_path.py's http16)", server,
                               wp.RawHttpClient, wp.spread_bodies(accounts, 16), w, d)
        notify = bench_http_notify(server, accounts, 16, w, d)
        unkeyed = bench_http_notify(server, accounts, 16, w, d, keyed=False)
    rows, seeding = run_catch_up(args, scratch)
    sb.print_rows([seeding])
    print_throughput([Throughput(r.name, r.ops, r.seconds, r.cpu, r.other_load(), _errors(r))
                      for r in (credit, notify, unkeyed)], rows)
    headline = rows[1]
    ratio = headline.rate / credit.rate if credit.rate else float("nan")
    print(f"  PM from its lease / write API 16 clients NotifyDepositor: "
          f"{headline.rate / notify.rate if notify.rate else float('nan'):.2f}x")
    print(f"  PM NotifyDepositor only / write API 16 clients CreditHoldings: "
          f"{rows[2].rate / credit.rate if credit.rate else float('nan'):.2f}x")
    passed = sb.ratio_line("PM from its lease / write API 16 clients CreditHoldings", ratio, THROUGHPUT_TARGET)
    print()
    return sb.Verdict("pm rate", f"{headline.rate:,.0f} cmds/s = {ratio:.2f}x write API",
                      f">= {THROUGHPUT_TARGET:.1f}x write API 16 cl", passed, headline.other_pct or 0.0)


def _errors(result: wp.Result) -> str:
    return ("errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(result.errors.items()))) if result.errors else ""


def print_throughput(baselines: list[Throughput], rows: list[Throughput]) -> None:
    roles = ("driver", "server", "postgres", "bench", "relay", "project", "pg", "nats")
    print(f"  {'':<66} {'commands':>8} {'seconds':>7} {'cmds/s':>7}   CPU ms/command by role; other%")
    for row in [*baselines, *rows]:
        cpu = ", ".join(f"{'pg' if role == 'postgres' else role} {row.cpu[role] / row.commands * 1000:.2f}"
                        for role in roles if role in row.cpu and row.commands)
        other = f"{row.other_pct:.0f}%" if row.other_pct is not None else "-"
        print(f"  {row.label:<66} {row.commands:>8,} {row.seconds:>7.2f} {row.rate:>7,.0f}   {cpu}; other {other}"
              + (f"\n  {'':<66} {row.note}" if row.note else ""))


# --------------------------------------------------------------------------- phase 2: lag


@dataclass
class LagLoad:
    """What the steady load sends, slot by slot: mostly credits of the traded security; twice a second a
    new account credited with the dividend payer (more holders); every ``action_every`` s an action."""

    rate: float
    action_every: float
    holders: list[str]
    prefix: str = field(default_factory=lambda: f"LAG{uuid4().hex[:4].upper()}")
    slot: int = 0
    actions: list[str] = field(default_factory=list)
    opened: int = 0

    def next(self) -> list[tuple[str, dict[str, Any]]]:
        slot, self.slot = self.slot, self.slot + 1
        per_action = max(1, round(self.rate * self.action_every))
        if slot % per_action == per_action - 1:
            action = f"{self.prefix}-CA{len(self.actions)}"
            self.actions.append(action)
            return [("AnnounceCorporateAction", {"action_id": action, "isin": DIVIDEND,
                                                 "record_date": record_date().isoformat(), "terms": cash_terms()}),
                    ("ValidateCorporateAction", {"action_id": action})]
        if slot % max(1, round(self.rate / 2)) == 7:
            number = f"{self.prefix}-N{self.opened:05d}"
            self.opened += 1
            self.holders.append(number)
            return [("OpenAccount", {"account_number": number, "holder_name": "New holder"}),
                    ("CreditHoldings", {"account_number": number, "isin": DIVIDEND, "quantity": 3})]
        account = self.holders[(slot * 7919) % len(self.holders)]
        return [("CreditHoldings", {"account_number": account, "isin": TRADED, "quantity": 1 + slot % 9})]


def run_lag(args: argparse.Namespace, scratch: sb.Scratch) -> tuple[sb.LatencyResult, list[PmEvent], int, float]:
    url = scratch.databases.create("lag")
    settings = scratch.stream_settings("lag")
    env = role_env(url, settings, scratch.nats_url)
    init_db(env)
    port = wp._free_port()
    eventfold = wp._eventfold_command()
    api = scratch.spawn("write-api", [*eventfold, "write-api", "--host", "127.0.0.1", "--port", str(port)], env)
    relay = scratch.spawn("relay", [*eventfold, "relay"], env)
    project = scratch.spawn("project", [*eventfold, "project", PROCESS], env)
    processes = [api, relay, project]
    sb._wait_healthy(api, port)
    holders = [f"H-{i:05d}" for i in range(args.holders)]
    setup: list[tuple[str, dict[str, Any]]] = [("RegisterSecurity", {"isin": isin, "name": name, "currency": "USD"})
             for isin, name in ((TRADED, "Traded"), (DIVIDEND, "Dividend payer"))]
    for number in holders:
        setup += [("OpenAccount", {"account_number": number, "holder_name": "Holder"}),
                  ("CreditHoldings", {"account_number": number, "isin": DIVIDEND, "quantity": 5})]
    load = LagLoad(args.rate, args.action_every, holders)

    async def main() -> sb.LatencyResult:
        pool = sb.Pool(lambda: sb._http_client(port), 64)

        async def post(command: str, body: dict[str, Any]) -> int:
            async with pool.connection() as client:
                status, data = await client.post(f"/commands/{command}", json.dumps(body).encode())
            if status != 200:
                raise RuntimeError(f"{command}: HTTP {status} {data[:200]!r}")
            return int(json.loads(data)["position"])

        for command, body in setup:
            await post(command, body)

        async def send() -> int:
            position = 0
            for command, body in load.next():  # an announcement before its validation: in order
                position = await post(command, body)
            return position

        poll = Poll(url)
        try:
            head = poll.head()
            await asyncio.to_thread(wait_for, lambda: poll.position() >= head, 60, "the set-up to be processed",
                                    alive=processes)
        finally:
            poll.close()
        await sb.open_loop(args.rate, 1.0, send)  # warm connections and caches
        meter = sb.Meter({"write-api": lambda: [api.pid], "relay": lambda: [relay.pid],
                          "project": lambda: [project.pid]})
        window_start = time.perf_counter() + args.lag_warmup
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + args.lag_warmup, meter.start)
        samples = await sb.open_loop(args.rate, args.lag_warmup + args.lag_seconds, send)
        timer.cancel()
        meter.stop()
        await pool.close()
        return sb.LatencyResult("write API: scheduled -> accepted", samples,
                                (window_start, window_start + args.lag_seconds), meter, 0.0, 0, len(pool.all))

    window_epoch = time.time() - time.perf_counter()  # perf_counter -> epoch seconds
    result = asyncio.run(main())
    for process in processes:
        process.check_alive()
    poll = Poll(url)
    try:
        head = poll.head()
        wait_for(lambda: poll.position() >= head and poll.outbox() == 0, 120,
                 "the process to finish after the load", alive=processes)
        wait_for(lambda: poll.position() >= poll.head() and poll.outbox() == 0, 60,
                 "the process to settle", alive=processes)
    finally:
        poll.close()
    store = open_store(url)
    try:
        events = read_events(store)
    finally:
        store.close()
    for process in processes:
        sb.stop_process(process.popen)
    return result, events, len(load.actions), window_epoch + result.window[0]


def lags(events: Sequence[PmEvent], name: str, since: float) -> list[float]:
    """Seconds from the causing event's recorded_at to each process-issued ``name`` event's."""
    recorded = {e.event_id: e.recorded_at for e in events}
    out = []
    for event in events:
        if event.name == name and event.actor == PM_ACTOR and event.causation in recorded:
            cause = recorded[event.causation]
            if cause >= since:
                out.append(event.recorded_at - cause)
    return out


def action_spans(events: Sequence[PmEvent], since: float) -> list[float]:
    """Per action validated after ``since``: validation -> its last depositor notified."""
    validated = {e.data["action_id"]: e.recorded_at for e in events if e.name == "CorporateActionValidated"}
    last: dict[str, float] = {}
    for event in events:
        if event.name == "DepositorNotified":
            action = event.data["action_id"]
            last[action] = max(last.get(action, 0.0), event.recorded_at)
    return [last[a] - t for a, t in validated.items() if t >= since and a in last]


def phase_lag(args: argparse.Namespace, scratch: sb.Scratch) -> sb.Verdict:
    print(f"== 2. process-manager lag behind {args.rate:.0f} commands/s over HTTP for {args.lag_seconds:.0f} s"
          f" (after {args.lag_warmup:.0f} s warm-up); {args.holders} holders at start (+2/s),"
          f" an action every {args.action_every:g} s")
    result, events, actions, since = run_lag(args, scratch)
    accept = [(s.accepted - s.scheduled) for s in result.measured() if s.accepted is not None]
    rows = [
        ("reference: write API command, scheduled -> accepted (same run)", accept),
        ("RecordEntitlements: CorporateActionValidated -> EntitlementsCalculated",
         lags(events, "EntitlementsCalculated", since)),
        ("NotifyDepositor: EntitlementsCalculated -> DepositorNotified", lags(events, "DepositorNotified", since)),
        ("whole process: CorporateActionValidated -> last depositor notified", action_spans(events, since)),
    ]
    print(f"  {'':<74} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, values in rows:
        print(f"  {label:<74} {len(values):>7,} {sb._pct(values, 50) * 1000:>8.1f} {sb._pct(values, 99) * 1000:>8.1f}"
              f" {max(values, default=float('nan')) * 1000:>8.1f}")
    measured = result.measured()
    print(f"  offered {len(measured) / args.lag_seconds:.0f} slots/s ({sum(1 for _ in measured)} slots,"
          f" {result.errors()} errors), {actions} actions announced and validated;"
          f" {notifications_check(events)}")
    cpu = ", ".join(f"{role} {result.meter.cpu[role] / result.meter.seconds * 100:.0f}"
                    for role in sb.ROLE_ORDER if role in result.meter.cpu)
    print(f"  CPU in the measured window, % of one core: {cpu}; other: {result.meter.other_pct():.0f}% of all CPUs")
    errors = [s.error for s in measured if s.error]
    if errors:
        print(f"  first error: {errors[0]}")
    notify = rows[2][1]
    p99 = sb._pct(notify, 99)
    passed = bool(notify) and p99 <= LAG_TARGET_P99_S and not errors
    print(f"  target: p99 EntitlementsCalculated -> DepositorNotified <= {LAG_TARGET_P99_S:.0f} s"
          f" -> {p99 * 1000:.0f} ms   {'PASS' if passed else 'FALLS SHORT'}")
    print()
    return sb.Verdict("pm lag", f"p99 {p99 * 1000:.0f} ms (p50 {sb._pct(notify, 50) * 1000:.0f} ms)",
                      f"p99 <= {LAG_TARGET_P99_S * 1000:.0f} ms", passed, result.meter.other_pct())


# --------------------------------------------------------------------------- phase 3: takeover


class Writer(threading.Thread):
    """Credits through an in-process ``CommandBus`` at about ``rate`` commands/s until stopped."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(name="writer", daemon=True)
        self.url, self.rate = url, rate
        self.stop_event = threading.Event()
        self.sent = 0
        self.errors: list[str] = []

    def run(self) -> None:
        from example_app.app import build_router
        from framework.bus import CommandBus

        store = open_store(self.url)
        router = build_router()
        bus = CommandBus(router, store)
        try:
            bus.execute(router.parse("RegisterSecurity", {"isin": TRADED, "name": "Traded", "currency": "USD"}))
            accounts = [f"T-{i:03d}" for i in range(16)]
            for number in accounts:
                bus.execute(router.parse("OpenAccount", {"account_number": number, "holder_name": "T"}))
            while not self.stop_event.is_set():
                try:
                    bus.execute(router.parse("CreditHoldings", {"account_number": accounts[self.sent % 16],
                                                                "isin": TRADED, "quantity": 1}))
                    self.sent += 1
                except Exception as error:  # reported, not raised
                    self.errors.append(f"{type(error).__name__}: {error}")
                self.stop_event.wait(1 / self.rate)
        finally:
            store.close()


@dataclass
class Takeover:
    lease_s: float
    applied_s: float
    killed_pid: int
    new_pid: int | None


def run_takeovers(args: argparse.Namespace, scratch: sb.Scratch) -> tuple[list[Takeover], float]:
    url = scratch.databases.create("takeover")
    settings = scratch.stream_settings("takeover")
    env = role_env(url, settings, scratch.nats_url)
    init_db(env)
    lease_seconds = float(os.environ.get("EVENTFOLD_LEASE_SECONDS", "3"))
    eventfold = wp._eventfold_command()
    relay = scratch.spawn("relay", [*eventfold, "relay"], env)
    workers = {}
    for name in ("project-a", "project-b"):
        worker = scratch.spawn(name, [*eventfold, "project", PROCESS], env)
        workers[worker.pid] = worker
    writer = Writer(url, args.takeover_rate)
    writer.start()
    poll = Poll(url)
    results: list[Takeover] = []
    try:
        for _ in range(args.takeovers):
            result, killed = takeover_once(poll, relay, workers)
            results.append(result)
            del workers[killed.pid]
            restarted = scratch.spawn(killed.name, [*eventfold, "project", PROCESS], env)
            workers[restarted.pid] = restarted
        writer.stop_event.set()
        writer.join(10)
        if writer.errors:
            print(f"  writer: {len(writer.errors)} errors, first: {writer.errors[0]}")
    finally:
        writer.stop_event.set()
        poll.close()
        for process in [relay, *workers.values()]:
            sb.stop_process(process.popen)
    return results, lease_seconds


def takeover_once(poll: Poll, relay: sb.Process, workers: dict[int, sb.Process]) -> tuple[Takeover, sb.Process]:
    """Kill the lease holder once both workers run (one active, one standing by); time the takeover."""
    alive = [relay, *workers.values()]
    wait_for(lambda: owner_pid(poll.lease_owner()) in workers, 60, "an active worker", alive=alive)
    active = workers[owner_pid(poll.lease_owner()) or 0]
    moving_from = poll.position()
    wait_for(lambda: poll.position() > moving_from, 60, "the active worker to apply events", alive=alive)
    standby = next(w for w in workers.values() if w is not active)
    wait_for(lambda: "standing by" in standby.tail(20000), 60, "the other worker to stand by", alive=alive)
    active.popen.kill()  # SIGKILL to its own pid: a crash, no clean-up
    killed = time.perf_counter()
    active.popen.wait(10)
    frozen = poll.position()  # nothing moves it now until the standby takes over
    lease_at = applied_at = None
    new_pid = None
    while applied_at is None or lease_at is None:
        now = time.perf_counter()
        if now - killed > 60:
            raise RuntimeError(f"no takeover within 60 s: {standby.tail()}")
        if lease_at is None:
            pid = owner_pid(poll.lease_owner())
            if pid is not None and pid != active.pid:
                lease_at, new_pid = now, pid
        if applied_at is None and poll.position() > frozen:
            applied_at = now
        time.sleep(0.005)
    return Takeover(lease_at - killed, applied_at - killed, active.pid, new_pid), active


def phase_takeover(args: argparse.Namespace, scratch: sb.Scratch) -> sb.Verdict:
    print(f"== 3. standby takeover after SIGKILL of the active `eventfold project {PROCESS}`"
          f" ({args.takeovers} times, ~{args.takeover_rate:.0f} commands/s flowing)")
    results, lease_seconds = run_takeovers(args, scratch)
    print(f"  {'#':>3} {'killed pid':>10} {'new pid':>8} {'lease taken s':>14} {'new event applied s':>20}")
    for number, r in enumerate(results, 1):
        print(f"  {number:>3} {r.killed_pid:>10} {r.new_pid or '-':>8} {r.lease_s:>14.2f} {r.applied_s:>20.2f}")
    worst = max((r.applied_s for r in results), default=float("nan"))
    bound = lease_seconds + min(0.5, lease_seconds / 6)
    print(f"  max {worst:.2f} s; reference: the lease's bound after the last renewal = EVENTFOLD_LEASE_SECONDS"
          f" {lease_seconds:g} s + standby poll {min(0.5, lease_seconds / 6):g} s = {bound:.2f} s")
    passed = bool(results) and worst <= TAKEOVER_TARGET_S
    print(f"  target: takeover (lease taken and a new event applied) <= {TAKEOVER_TARGET_S:.0f} s -> {worst:.2f} s"
          f"   {'PASS' if passed else 'FALLS SHORT'}")
    print()
    return sb.Verdict("takeover", f"max {worst:.2f} s over {len(results)} kills", f"<= {TAKEOVER_TARGET_S:.0f} s",
                      passed)


# --------------------------------------------------------------------------- main


def print_header(args: argparse.Namespace, admin_url: str, facts: dict[str, str], nats_version: str) -> None:
    where = urlsplit(admin_url)
    print("Eventfold process-manager benchmark")
    print(f"  machine      : {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} (1 min) at start")
    print(f"  PostgreSQL   : {facts['version']} at {where.hostname}:{where.port or 5432}"
          f" (synchronous_commit={facts['synchronous_commit']}, fsync={facts['fsync']})")
    print(f"  NATS         : nats-server {nats_version} at {args.nats_url}")
    print(f"  packages     : {sb._versions()}")
    print(f"  code         : {sb._code_state()}")
    print(f"  settings     : EVENTFOLD_DISPATCH_CONCURRENCY {os.environ.get('EVENTFOLD_DISPATCH_CONCURRENCY', '16')},"
          f" EVENTFOLD_LEASE_SECONDS {os.environ.get('EVENTFOLD_LEASE_SECONDS', '3')} (defaults unless set)")
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, short phases")
    parser.add_argument("--only", type=lambda v: v.split(","), default=list(PHASES),
                        help=f"comma-separated phases: {','.join(PHASES)}")
    parser.add_argument("--accounts", type=int, default=None, help="accounts holding the security (4,000)")
    parser.add_argument("--actions", type=int, default=5, help="validated dividends in the backlog (5)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds of each HTTP baseline (5)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds of each HTTP baseline")
    parser.add_argument("--catch-up-timeout", type=float, default=900.0, help="give up on the catch-up after (s)")
    parser.add_argument("--rate", type=float, default=200.0, help="lag: commands per second")
    parser.add_argument("--lag-seconds", type=float, default=None, help="lag: measured seconds (60)")
    parser.add_argument("--lag-warmup", type=float, default=None, help="lag: warm-up seconds (3)")
    parser.add_argument("--holders", type=int, default=100, help="lag: accounts holding the security at start")
    parser.add_argument("--action-every", type=float, default=1.0, help="lag: seconds between actions")
    parser.add_argument("--takeovers", type=int, default=None, help="takeover: kills (5)")
    parser.add_argument("--takeover-rate", type=float, default=50.0, help="takeover: commands/s flowing")
    parser.add_argument("--nats-url", default=os.environ.get("EVENTFOLD_BENCH_NATS_URL", sb.DEFAULT_NATS))
    args = parser.parse_args(argv)
    unknown = [p for p in args.only if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase {unknown[0]!r}; phases: {', '.join(PHASES)}")
    args.accounts = args.accounts or (400 if args.quick else 4000)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.5)
    args.lag_seconds = args.lag_seconds or (8.0 if args.quick else 60.0)
    args.lag_warmup = args.lag_warmup if args.lag_warmup is not None else (1.0 if args.quick else 3.0)
    args.takeovers = args.takeovers or (2 if args.quick else 5)
    return args


RUNNERS: dict[str, Callable[[argparse.Namespace, sb.Scratch], sb.Verdict]] = {
    "throughput": phase_throughput, "lag": phase_lag, "takeover": phase_takeover,
}


def run(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", wp.DEFAULT_URL)
    databases = wp.Databases(admin_url)
    pg_pids = wp.PostgresPids(admin_url, f"eventfold_bench_{os.getpid()}_")
    sb.Meter.pg_pids = pg_pids
    wp.CpuSampler.pg_pids = pg_pids
    print_header(args, admin_url, databases.server_facts(), asyncio.run(sb._nats_version(args.nats_url)))
    scratch = sb.Scratch(databases, args.nats_url)
    verdicts: list[sb.Verdict] = []
    try:
        for phase in PHASES:
            if phase in args.only:
                print(f"  running: {phase} ...", file=sys.stderr, flush=True)
                verdicts.append(RUNNERS[phase](args, scratch))
    finally:
        scratch.cleanup()
    print("summary")
    for v in verdicts:
        disturbed = f"  (other load {v.other_pct:.0f}%: disturbed, rerun)" if v.other_pct > 10 else ""
        print(f"  {v.phase:<9} {v.figure:<38} target {v.target:<28} {v.word}{disturbed}")
    print()
    print(f"  load average : {os.getloadavg()[0]:.2f} (1 min) at end")
    print("  notes        : CPU per command by role: driver = the HTTP clients (this process), server = the write")
    print("                 API, relay / project = the subprocesses, pg = this run's PostgreSQL backends and the")
    print("                 server's background processes, nats = nats-server (shared); 'other' is the share of all")
    print("                 CPUs used by anything else meanwhile (above ~10% the row is disturbed).")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (psycopg.Error, RuntimeError) as error:
        print(f"process_manager: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

