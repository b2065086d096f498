#!/usr/bin/env python
"""Streaming benchmark: relay, projection from JetStream, replay and end-to-end latency, each beside
raw baselines measured in the same run.

Phases, one after the other so they never compete for the machine's cores:

1. ``relay``   events/s from the PostgreSQL event store to JetStream: ``framework.runner.run_relay``
               with ``JetStreamPublisher`` over ``--stream-events`` stored events (seeded with
               ``PostgresEventStore.append`` of ``framework.mapper.to_stored`` example events), against
               raw nats-py ``js.publish_async`` pipelining of the same payloads and headers into a
               scratch stream of the same configuration. Target: >= 0.5x raw.
2. ``project`` events/s from a JetStream stream that already holds the events into the PostgreSQL
               read model of ``HoldingsProjector``: ``framework.runner.run_projection`` with a
               ``deliver_all`` ``JetStreamConsumer``; the worker's catch-up from the event store is
               switched off (on the instance), so the measured path is fetch -> apply -> commit -> ack.
               Raw baseline: a pull consumer on the same stream, ``fetch(1000)`` + one ack per fetch
               (ack policy ALL, as Eventfold's consumer). Target (issue 13): >= 0.7x raw.
3. ``replay``  ``framework.replay.rebuild`` of ``HoldingsProjector`` from ``--events`` (1,000,000)
               stored events, one partition, in a child process whose peak RSS (``ru_maxrss``) is
               reported; then the same split into 4 partitions rebuilt 4 in parallel (``parallel=4``),
               in another child (divided among processes as ``eventfold replay`` does by default;
               the what-if variant ``parts4+threads`` keeps them on threads of one process). Beside
               them, raw batched inserts (``unnest`` of binary arrays, 1000 rows per transaction)
               into a table shaped like the projection's largest one, and a raw
               read of the store. Targets (issue 13): one partition >= 0.6x the raw insert with peak
               RSS <= 150 MB; 4 partitions in parallel >= 1.0x the raw insert. Seeding is timed and
               reported separately.
4. ``e2e``     latency from "command accepted" (the HTTP response of a real ``eventfold write-api``
               subprocess) to "read model updated" (its tracking position, committed in the same
               transaction as the rows, polled every ``--poll-ms``), at a steady ``--rate`` (200)
               commands/s for ``--e2e-seconds`` (20) with ``eventfold relay`` and
               ``eventfold project holdings`` as subprocesses. Raw baseline: the same hops by hand
               (INSERT + NOTIFY, a LISTEN relay publishing to JetStream, a pull consumer writing a
               table and its position in one transaction), each role its own process.
               Target: p99 accepted -> visible <= 100 ms.
5. ``scaleout`` one partitioned projection of ``scale_app.py`` (``--partitions``, 8) caught up over
               ``--scale-events`` (200,000) events, already published by ``eventfold relay``, by 1, 2
               and 4 ``eventfold project`` processes started together; its handler keeps a row per
               account and waits ``--io-ms`` (20) ms per 100 events it handles (an I/O-bound read
               model). Reported: events/s from the processes' start until every partition is at the
               head (their start-up included), and the ratio to one process. Targets (issue 13):
               >= 1.7x with 2, >= 3x with 4. One process applies all its partitions concurrently (a
               thread each), so its waits already overlap: the ratios measure CPU, which 2 cores cap,
               and the waits set a floor no number of processes goes below (events / 100 x io_ms /
               partitions: 5 s for 200,000 events), printed with the ceiling it puts on the ratios.
               Then rebalance, default settings: while one process catches ``scale_rb`` up, a second
               is started (seconds to its first applied batch, from its log), then killed with
               SIGKILL (seconds until the first holds every partition lease). Target: <= 5 s each.

The script creates its own databases (``eventfold_bench_<pid>_*``) on the server named by
``EVENTFOLD_BENCH_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) and its
own JetStream streams (``efbench_<pid>_*``, subjects ``efbench.<pid>.*``) on ``EVENTFOLD_BENCH_NATS_URL``
(default ``nats://127.0.0.1:4222``), and removes all of them at the end; it stops the processes it
started by their pid. It prints figures, ratios and verdicts, and never asserts.

    python benchmarks/streaming.py                      # full run (1M events for replay; ~10 min)
    python benchmarks/streaming.py --quick              # smoke run
    python benchmarks/streaming.py --only replay --events 200000
    python benchmarks/streaming.py --only scaleout --scale-events 50000
    python benchmarks/streaming.py --only project --py-spy /path/to/py-spy   # where the time goes
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import gc
import io
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import write_path as wp  # sibling script: databases, CPU accounting, the raw HTTP client

DEFAULT_NATS = "nats://127.0.0.1:4222"
ISINS = ("US0378331005", "US5949181045", "DE0007164600", "GB0002634946")
RELAY_TARGET = 0.5
PROJECT_TARGET = 0.7  # issue 13
REPLAY_TARGET_RATIO = 0.6  # issue 13: one partition, x the raw unnest insert
REPLAY_TARGET_RSS_MB = 150.0
PARTED_TARGET_RATIO = 1.0  # issue 13: 4 partitions rebuilt in parallel, x the raw unnest insert
E2E_TARGET_P99_MS = 100.0
SEED_BATCH = 5000
PHASES = ("relay", "project", "replay", "e2e", "scaleout")
RUN_ID = f"{os.getpid()}"


# --------------------------------------------------------------------------- CPU accounting


def _nats_pids() -> list[int]:
    """The local nats-server process(es): read-only, for CPU accounting."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "nats-server":
                    pids.append(int(entry.name))
    return pids


class Meter:
    """CPU seconds per role (this process, child processes, nats-server, PostgreSQL) and the rest
    of the machine ('other') between ``start()`` and ``stop()``."""

    pg_pids: Callable[[], list[int]] = staticmethod(lambda: [])  # set by run()

    def __init__(self, roles: dict[str, Callable[[], list[int]]] | None = None) -> None:
        self.roles: dict[str, Callable[[], list[int]]] = {
            "bench": lambda: [os.getpid()], "nats": _nats_pids, "pg": Meter.pg_pids, **(roles or {}),
        }
        self.cpu: dict[str, float] = {}
        self.seconds = 0.0
        self._before: dict[str, dict[int, float]] = {}
        self._machine = 0.0
        self._t0 = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {role: {pid: wp._cpu_of(pid) for pid in pids()} for role, pids in self.roles.items()}

    def start(self) -> Meter:
        self._before = self._sample()
        self._seen: dict[str, dict[int, float]] = {}
        self._machine = wp._machine_busy()
        self._t0 = time.perf_counter()
        return self

    def watch(self) -> None:
        """Remember every process's CPU now: one that ends before ``stop()`` (a backend of a child
        that exited) still counts with what it had used when last seen."""
        for role, pids in self._sample().items():
            self._seen.setdefault(role, {}).update(pids)

    def stop(self, extra: dict[str, float] | None = None) -> Meter:
        """``extra``: CPU seconds of roles measured another way (a child that already exited)."""
        after = self._sample()
        self.seconds = time.perf_counter() - self._t0
        machine = wp._machine_busy() - self._machine
        for role, seen in getattr(self, "_seen", {}).items():
            after[role] = {**seen, **after.get(role, {})}
        for role, pids in after.items():
            before = self._before.get(role, {})
            self.cpu[role] = sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in pids.items())
        self.cpu.update(extra or {})
        self.cpu["other"] = max(0.0, machine - sum(self.cpu.values()))
        return self

    def other_pct(self) -> float:
        return self.cpu.get("other", 0.0) / (self.seconds * (os.cpu_count() or 1)) * 100 if self.seconds else 0.0


@contextlib.contextmanager
def metered(roles: dict[str, Callable[[], list[int]]] | None = None) -> Iterator[Meter]:
    meter = Meter(roles).start()
    yield meter
    if not meter.seconds:
        meter.stop()


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    label: str
    events: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    other_pct: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @classmethod
    def of(cls, label: str, events: int, meter: Meter, seconds: float | None = None, note: str = "") -> Row:
        return cls(label, events, seconds if seconds is not None else meter.seconds, dict(meter.cpu),
                   meter.other_pct(), note)


@dataclass
class Verdict:
    phase: str
    figure: str
    target: str
    passed: bool | None  # None: not measured
    other_pct: float = 0.0  # load from outside the benchmark while the Eventfold side was measured

    @property
    def word(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "FALLS SHORT")


ROLE_ORDER = ("bench", "child", "nats", "pg", "write-api", "relay", "project", "raw-relay", "raw-consume")


def print_rows(rows: Sequence[Row]) -> None:
    roles = [r for r in ROLE_ORDER if any(r in row.cpu for row in rows)]
    header = f"  {'':<60} {'events':>10} {'seconds':>8} {'events/s':>10}   CPU us/event: " + " ".join(
        f"{r:>7}" for r in roles) + f"  {'other%':>6}"
    print(header)
    for row in rows:
        cpu = " ".join(
            f"{row.cpu[r] / row.events * 1e6:>7.0f}" if r in row.cpu and row.events else f"{'-':>7}"
            for r in roles)
        other = f"{row.other_pct:>6.0f}" if row.other_pct is not None else f"{'-':>6}"
        print(f"  {row.label:<60} {row.events:>10,} {row.seconds:>8.2f} {row.rate:>10,.0f}   "
              f"{'':14}{cpu}  {other}{('  ' + row.note) if row.note else ''}")


def ratio_line(label: str, ratio: float, target: float) -> bool:
    passed = ratio >= target
    print(f"  {label}: {ratio:.2f}x   target >= {target:.2f}x   {'PASS' if passed else 'FALLS SHORT'}")
    return passed


# --------------------------------------------------------------------------- example events


def example_events(count: int, accounts: int = 1000) -> Iterator[Any]:
    """``count`` stored events of the example domain, through ``framework.mapper.to_stored``:
    ``accounts`` AccountOpened first, then credits (and some debits) round-robin over the accounts
    and four ISINs. Every balance stays positive, so a HoldingsProjector accepts every event."""
    from example_app.accounts import Account, AccountOpened, SecuritiesCredited, SecuritiesDebited
    from framework.events import EventEnvelope, EventMetadata
    from framework.mapper import to_stored

    accounts = max(1, min(accounts, count))
    ids = [Account.id_for(f"BENCH-{i:05d}") for i in range(accounts)]
    versions = [0] * accounts
    held: dict[tuple[int, str], int] = {}
    for i in range(count):
        a = i % accounts
        event: Any
        if i < accounts:
            event = AccountOpened(account_number=f"BENCH-{a:05d}", holder_name=f"Holder {a}")
        else:
            isin = ISINS[(i // accounts) % len(ISINS)]
            balance = held.get((a, isin), 0)
            if balance >= 10 and i % 4 == 0:
                event, held[(a, isin)] = SecuritiesDebited(isin=isin, quantity=5), balance - 5
            else:
                event, held[(a, isin)] = SecuritiesCredited(isin=isin, quantity=10), balance + 10
        versions[a] += 1
        meta = EventMetadata(correlation_id=f"bench-{i}", causation_id=f"bench-{i}", actor="benchmark")
        yield to_stored(EventEnvelope("Account", ids[a], versions[a], event, meta))


def seed(store: Any, count: int, *, batch: int = SEED_BATCH) -> Row:
    """Append ``count`` example events in batches; generation overlaps the previous append."""
    import queue

    batches: queue.Queue[list[Any] | None] = queue.Queue(maxsize=3)

    def produce() -> None:
        chunk: list[Any] = []
        for stored in example_events(count):
            chunk.append(stored)
            if len(chunk) == batch:
                batches.put(chunk)
                chunk = []
        batches.put(chunk or None)
        if chunk:
            batches.put(None)

    meter = Meter().start()
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    appended = 0
    while (chunk := batches.get()) is not None:
        store.append(chunk)
        appended += len(chunk)
    producer.join()
    meter.stop()
    return Row.of(f"seeding: to_stored + PostgresEventStore.append, {batch:,}/batch", appended, meter)


def read_everything(store: Any, *, batch: int = 5000) -> list[Any]:
    out: list[Any] = []
    while chunk := store.read_all(out[-1].id if out else 0, batch):
        out.extend(chunk)
    return out


# --------------------------------------------------------------------------- resources of a run


@dataclass
class Scratch:
    """Everything a run creates, removed at the end: databases, JetStream streams, processes."""

    databases: wp.Databases
    nats_url: str
    streams: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    seeded: dict[str, Any] = field(default_factory=dict)  # shared between phases 1 and 2

    def stream_settings(self, suffix: str, **overrides: Any) -> Any:
        from framework.adapters.nats import JetStreamSettings

        name = f"efbench_{RUN_ID}_{suffix}"
        self.streams.append(name)
        return JetStreamSettings(servers=(self.nats_url,), stream=name,
                                 subject_prefix=f"efbench.{RUN_ID}.{suffix}",
                                 consumer_prefix=f"efbench-{RUN_ID}-", **overrides)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        log = tempfile.NamedTemporaryFile("w+b", prefix=f"efbench-{name}-", suffix=".log")  # noqa: SIM115
        self.logs.append(log)
        popen = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.processes.append(popen)
        return Process(name, popen, log)

    def cleanup(self) -> None:
        for popen in self.processes:
            stop_process(popen)
        self.processes.clear()
        if self.streams:
            with contextlib.suppress(Exception):
                asyncio.run(_delete_streams(self.nats_url, self.streams))
            self.streams.clear()
        self.databases.drop_all()
        for log in self.logs:
            with contextlib.suppress(OSError):
                log.close()


async def _delete_streams(url: str, names: list[str]) -> None:
    import nats
    import nats.js.errors

    client = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        js = client.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Any

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 1500) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {self.tail()}")


def stop_process(popen: subprocess.Popen[bytes]) -> None:
    """SIGINT (graceful), then SIGKILL, to this pid only."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGINT)
        try:
            popen.wait(15)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


def _stores(url: str, *, views_schema: str | None = None) -> tuple[Any, Any]:
    from framework.adapters.postgres import PostgresEventStore
    from framework.settings import PostgresSettings

    settings = PostgresSettings.from_url(url)
    store = PostgresEventStore(settings)
    views = None
    if views_schema:
        from framework.adapters.postgres_views import PostgresViewStore

        views = PostgresViewStore(PostgresSettings(**{**settings.__dict__, "schema": views_schema}))
    return store, views


# --------------------------------------------------------------------------- phase 1: relay


def stream_source(scratch: Scratch, count: int) -> tuple[str, Any]:
    """The database holding ``count`` seeded events (seeded once per run)."""
    if "url" not in scratch.seeded:
        url = scratch.databases.create("stream")
        store, _ = _stores(url)
        store.create_schema()
        row = seed(store, count)
        scratch.seeded.update(url=url, store=store, seeding=row)
    return scratch.seeded["url"], scratch.seeded["store"]


class _PublishUntil:
    """An ``EventPublisher`` that sets ``stop`` once position ``last`` was published."""

    def __init__(self, inner: Any, last: int, stop: asyncio.Event) -> None:
        self._inner, self._last, self._stop = inner, last, stop

    async def publish(self, notifications: Sequence[Any]) -> None:
        await self._inner.publish(notifications)
        if notifications and notifications[-1].id >= self._last:
            self._stop.set()

    async def last_published_position(self) -> int:
        return int(await self._inner.last_published_position())

    async def close(self) -> None:
        await self._inner.close()


async def raw_publish(nats_url: str, settings: Any, messages: list[tuple[str, bytes, dict[str, str]]],
                      meter: Meter) -> Meter:
    """nats-py ``publish_async`` of every message without waiting (nats-py bounds the pending acks
    at 4000), then one wait for all acks."""
    import nats

    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await js.add_stream(settings.stream_config())
        meter.start()
        futures = [await js.publish_async(s, p, stream=settings.stream, headers=dict(h)) for s, p, h in messages]
        await asyncio.gather(*futures)
        meter.stop()
    finally:
        await client.close()
    return meter


async def eventfold_relay(store: Any, settings: Any, last: int, meter: Meter) -> Meter:
    from framework.adapters.nats import JetStreamPublisher, connect
    from framework.runner import run_relay

    connection = await connect(settings)
    try:
        await connection.ensure_stream()
        stop = asyncio.Event()
        publisher = _PublishUntil(JetStreamPublisher(connection), last, stop)
        meter.start()
        await run_relay(store, publisher, stop, name=f"bench-{RUN_ID}")
        meter.stop()
    finally:
        await connection.close()
    return meter


def phase_relay(args: argparse.Namespace, scratch: Scratch) -> Verdict:
    from framework.adapters.nats import message_for

    count = args.stream_events
    print(f"== 1. relay: PostgreSQL event store -> JetStream ({count:,} events, file storage, 1 replica)")
    _, store = stream_source(scratch, count)
    print_rows([scratch.seeded["seeding"]])
    notifications = read_everything(store)
    warm = scratch.stream_settings("warm")
    raw = scratch.stream_settings("raw")
    relay = scratch.stream_settings("relay")
    scratch.seeded["relay_stream"] = relay

    def messages(settings: Any, subset: Sequence[Any]) -> list[tuple[str, bytes, dict[str, str]]]:
        out = []
        for n in subset:
            subject, headers = message_for(n, settings.subject_prefix)
            out.append((subject, n.state, headers))
        return out

    asyncio.run(raw_publish(scratch.nats_url, warm, messages(warm, notifications[:5000]), Meter()))
    raw_meter = asyncio.run(raw_publish(scratch.nats_url, raw, messages(raw, notifications), Meter()))
    with py_spy(args.py_spy):
        ef_meter = asyncio.run(eventfold_relay(store, relay, notifications[-1].id, Meter()))
    rows = [Row.of("raw: nats-py publish_async, pipelined, same payload+headers", count, raw_meter),
            Row.of("Eventfold: run_relay + JetStreamPublisher (batch 1000)", count, ef_meter)]
    print_rows(rows)
    ratio = rows[1].rate / rows[0].rate
    passed = ratio_line("Eventfold relay / raw publish_async", ratio, RELAY_TARGET)
    print()
    return Verdict("relay", f"{rows[1].rate:,.0f} ev/s = {ratio:.2f}x raw", f">= {RELAY_TARGET:.2f}x raw", passed,
                   ef_meter.other_pct())


# --------------------------------------------------------------------------- phase 2: projection


class _AckUntil:
    """An ``EventConsumer`` that records when position ``last`` was acknowledged and then sets ``stop``."""

    def __init__(self, inner: Any, last: int, stop: asyncio.Event) -> None:
        self._inner, self._last, self._stop = inner, last, stop
        self.done_at: float | None = None
        self.batches = 0

    async def bind(self) -> None:
        await self._inner.bind()

    async def fetch(self, max_events: int, timeout: float) -> Any:
        return self._counted(await self._inner.fetch(max_events, timeout))

    async def fetch_ahead(self, max_events: int, timeout: float) -> Any:
        return self._counted(await self._inner.fetch_ahead(max_events, timeout))

    async def hand_back(self) -> None:
        await self._inner.hand_back()

    def _counted(self, delivery: Any) -> Any:
        from framework.streaming import Delivery

        if not delivery.notifications:
            return delivery
        top = max(n.id for n in delivery.notifications)

        async def ack() -> None:
            await delivery.ack()
            self.batches += 1
            if top >= self._last:
                self.done_at = time.perf_counter()
                self._stop.set()

        return Delivery(delivery.notifications, ack)

    async def close(self) -> None:
        await self._inner.close()


async def raw_consume(nats_url: str, settings: Any, count: int, meter: Meter, *, ack_each: bool) -> tuple[Meter, int]:
    """A pull consumer from the start of the stream: fetch(1000), then ack (the last message of
    each fetch under ack policy ALL, or every message under policy EXPLICIT)."""
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    client = await nats.connect(nats_url)
    received = 0
    try:
        js = client.jetstream()
        durable = f"efbench-{RUN_ID}-raw-{'each' if ack_each else 'all'}"
        config = ConsumerConfig(durable_name=durable, deliver_policy=DeliverPolicy.ALL,
                                ack_policy=AckPolicy.EXPLICIT if ack_each else AckPolicy.ALL,
                                ack_wait=30, max_ack_pending=20_000, filter_subject=settings.subjects)
        meter.start()
        sub = await js.pull_subscribe(settings.subjects, durable=durable, stream=settings.stream, config=config)
        while received < count:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            received += len(msgs)
            if ack_each:
                for msg in msgs:
                    await msg.ack()
                await client.flush()
            else:
                await msgs[-1].ack_sync()
        meter.stop()
        await sub.unsubscribe()
        await js.delete_consumer(settings.stream, durable)
    finally:
        await client.close()
    return meter, received


async def eventfold_project(store: Any, views: Any, settings: Any, last: int, meter: Meter,
                            *, prefetch: bool = True) -> tuple[Meter, Any]:
    from framework.adapters.nats import JetStreamConsumer, connect
    from framework.runner import run_projection
    from framework.worker import ProjectionWorker
    from projections.holdings import HoldingsProjector

    worker = ProjectionWorker(HoldingsProjector(), views, store)
    # The stream already holds every event: skip the catch-up from the store, so every event
    # takes the bus path (fetch -> apply -> commit -> ack).
    worker.catch_up = lambda until=None, progress=None: worker.position  # type: ignore[method-assign]
    connection = await connect(settings)
    try:
        stop = asyncio.Event()
        consumer = _AckUntil(JetStreamConsumer(connection, "holdings", deliver_all=True), last, stop)
        meter.start()
        await run_projection(worker, consumer, stop, prefetch=prefetch)
        meter.stop()
        if consumer.done_at is not None:
            meter.seconds = consumer.done_at - meter._t0  # up to the last ack, not the clean-up
    finally:
        await connection.close()
    return meter, worker


def phase_project(args: argparse.Namespace, scratch: Scratch) -> Verdict:
    from framework.adapters.nats import JetStreamPublisher, connect

    count = args.stream_events
    print(f"== 2. projection catch-up from JetStream into PostgreSQL ({count:,} events, HoldingsProjector)")
    print("  collector: " + ("the interpreter's defaults (--project-defaultgc)" if args.project_defaultgc else
                             "as `eventfold project` sets it at start (start-up frozen, youngest every 50,000)"))
    url, store = stream_source(scratch, count)
    settings = scratch.seeded.get("relay_stream")
    if settings is None:  # phase 1 did not run: fill a stream with the same events, untimed
        settings = scratch.stream_settings("relay")
        scratch.seeded["relay_stream"] = settings

        async def fill() -> None:
            connection = await connect(settings)
            try:
                publisher = JetStreamPublisher(connection)
                position = 0
                while batch := store.read_all(position, 5000):
                    await publisher.publish(batch)
                    position = batch[-1].id
            finally:
                await connection.close()

        print_rows([scratch.seeded["seeding"]])
        asyncio.run(fill())
    last = store.head()
    with collector_as_project(default=args.project_defaultgc):  # the baselines too: the same process, alike
        each_meter, each_received = asyncio.run(raw_consume(scratch.nats_url, settings, count, Meter(),
                                                            ack_each=True))
        all_meter, all_received = asyncio.run(raw_consume(scratch.nats_url, settings, count, Meter(),
                                                          ack_each=False))
        _, views = _stores(url, views_schema=f"efviews_{RUN_ID}")
        views.create_schema()
        with py_spy(args.py_spy):
            meter, worker = asyncio.run(eventfold_project(store, views, settings, last, Meter(),
                                                          prefetch=not args.no_prefetch))
    check = _holdings_check(url, f"efviews_{RUN_ID}", worker.version, count)
    views.close()
    rows = [
        Row.of("raw: pull fetch(1000) + ack every message (EXPLICIT)", each_received, each_meter,
               note="reference"),
        Row.of("raw: pull fetch(1000) + one ack per fetch (policy ALL)", all_received, all_meter),
        Row.of("Eventfold, no prefetch: run_projection + JetStream, holdings" if args.no_prefetch
               else "Eventfold: run_projection + JetStreamConsumer, holdings", worker.position, meter, note=check),
    ]
    print_rows(rows)
    ratio = rows[2].rate / rows[1].rate
    passed = ratio_line("Eventfold projection / raw fetch+ack (policy ALL)", ratio, PROJECT_TARGET)
    print(f"  (against the per-message-ack reference: {rows[2].rate / rows[0].rate:.2f}x)")
    print()
    return Verdict("project", f"{rows[2].rate:,.0f} ev/s = {ratio:.2f}x raw", f">= {PROJECT_TARGET:.2f}x raw",
                   passed, meter.other_pct())


@contextlib.contextmanager
def collector_as_project(*, default: bool = False) -> Iterator[None]:
    """The cyclic collector as ``eventfold project`` sets it at start (framework.cli.startup), since this
    phase runs the worker in this process rather than in ``eventfold project``; put back afterwards.
    ``default``: the interpreter's settings, as before (``--project-defaultgc``)."""
    if default:
        yield
        return
    from framework.cli.startup import tune_collector_for_catch_up

    thresholds = gc.get_threshold()
    tune_collector_for_catch_up()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _holdings_check(url: str, schema: str, version: int, events: int) -> str:
    """Movements written vs. events that move holdings (every event but the AccountOpened ones)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            f'SELECT (SELECT count(*) FROM "{schema}"."rm_holdings_v{version}_holding_movements"),'
            f' (SELECT count(*) FROM "{schema}"."rm_holdings_v{version}_accounts")').fetchone()
    assert row is not None
    movements, accounts = int(row[0]), int(row[1])
    ok = movements + accounts == events
    return f"check: {movements:,} movements + {accounts:,} accounts {'=' if ok else '!='} {events:,} events"


# --------------------------------------------------------------------------- phase 3: replay


# What-if variants of the replay, applied in the child process only (no framework file changes):
# each names a suggestion of the report and lets a framework change be A/B-tested against it.
VARIANTS = {
    "defaultgc": "the interpreter's default collector thresholds, without the tuning `eventfold replay` and"
                 " `eventfold project` apply at start (framework.cli.startup)",
    "nocache": "HoldingMovement rows (written, never read back) kept out of the RowCache (now the"
               " default: only models looked up by key are cached)",
    "parts4": "the projection split into 4 partitions, rebuilt 4 in parallel (framework.replay rebuild(parallel=4))",
    "threads": "with parts4: the partitions on threads of one process (rebuild(processes=1),"
               " `eventfold replay --processes 1`), not divided among processes as `eventfold replay` does"
               " by default",
    "binary": "binary (%%b) parameters for the text fallback of the bulk upserts too (the default"
              " flush already sends binary arrays when every column's values share one type)",
}


def _apply_variants(names: list[str]) -> None:
    if "defaultgc" not in names:  # as `eventfold replay` starts
        from framework.cli.startup import tune_collector_for_replay

        tune_collector_for_replay()
    if "nocache" in names:
        import framework.staging as staging
        from projections.holdings import HoldingMovement

        def publish(self: Any) -> None:
            if self._cache is not None:
                self._cache.read.discard(HoldingMovement)
                self._cache.read.update(m for m, _ in self._changes if m is not HoldingMovement)
                self._cache.publish(self._changes)

        staging.StagedViews.publish = publish  # type: ignore[method-assign]
    if "binary" in names:
        from psycopg import sql

        import framework.adapters.postgres_views as postgres_views

        def arrays(columns: Sequence[str], kinds: dict[str, str]) -> sql.Composed:
            return sql.SQL(", ").join(sql.SQL("%b::{}[]").format(sql.SQL(kinds[c])) for c in columns)

        postgres_views._arrays = arrays


def replay_child(url: str, views_schema: str, variants: str = "") -> int:
    """Runs in a child process: ``rebuild`` the holdings projection, report time and memory as JSON."""
    from framework.projector import with_partitions
    from framework.replay import default_processes, rebuild
    from projections.holdings import HoldingsProjector

    names = [v for v in variants.split("+") if v]
    _apply_variants(names)
    partitions = 4 if "parts4" in names else 1  # one partition: as before issue 13
    projector = with_partitions(HoldingsProjector(), partitions)
    processes = 1 if "threads" in names else default_processes(projector)  # as `eventfold replay` does
    store, views = _stores(url, views_schema=views_schema)
    rss_start = _rss_kb()
    started, cpu0 = time.perf_counter(), _cpu_seconds()
    opener = functools.partial(_open_replay, url, views_schema, partitions, variants)
    version = rebuild(projector, views, store, parallel=partitions,
                      processes=processes, opener=opener)
    seconds = time.perf_counter() - started
    usage, cpu = resource.getrusage(resource.RUSAGE_SELF), _cpu_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    position = views.position("holdings", version)
    views.close()
    store.close()
    print(json.dumps({
        "seconds": seconds, "version": version, "position": position, "rss_start_kb": rss_start,
        "maxrss_kb": usage.ru_maxrss, "children_maxrss_kb": children.ru_maxrss, "processes": processes,
        "cpu": cpu - cpu0, "cpu_total": cpu,
    }))
    return 0


def _cpu_seconds() -> float:
    """This process's CPU and its ended children's (the replay processes of a partitioned rebuild)."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _open_replay(url: str, views_schema: str, partitions: int, variants: str) -> tuple[Any, Any, Any]:
    """A replay process's projector, views and store (``framework.replay.ReplayOpener``)."""
    from framework.projector import with_partitions
    from projections.holdings import HoldingsProjector

    _apply_variants([v for v in variants.split("+") if v])
    store, views = _stores(url, views_schema=views_schema)
    return with_partitions(HoldingsProjector(), partitions), views, store


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raw_insert(url: str, rows: int, meter: Meter, table: str = "raw_movements") -> Meter:
    """unnest() of binary arrays, 1000 rows per transaction, into a table shaped like
    rm_holdings_*_holding_movements (same columns, primary key and index)."""
    from datetime import date

    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE {table} (account_number text NOT NULL, isin text NOT NULL,"
                     " position bigint NOT NULL, value_date date NOT NULL, delta bigint NOT NULL,"
                     " balance bigint NOT NULL, PRIMARY KEY (account_number, isin, position))")
        conn.execute(f"CREATE INDEX ON {table} (isin, value_date)")
        conn.commit()
        sql = (f"INSERT INTO {table} SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[],"
               " %b::date[], %b::bigint[], %b::bigint[])")
        today = date.today()
        meter.start()
        for start in range(0, rows, 1000):
            ids = range(start, min(rows, start + 1000))
            conn.execute(sql, ([f"BENCH-{i % 1000:05d}" for i in ids], [ISINS[i % 4] for i in ids],
                               list(ids), [today] * len(ids), [10] * len(ids), list(ids)), prepare=True)
            conn.commit()
        meter.stop()
    return meter


def phase_replay(args: argparse.Namespace, scratch: Scratch) -> Verdict:
    count = args.events
    print(f"== 3. replay: rebuild HoldingsProjector from {count:,} stored events (child process)")
    url = scratch.databases.create("replay")
    store, views = _stores(url, views_schema="efviews")
    store.create_schema()
    views.create_schema()
    from projections.holdings import HoldingsProjector

    projector = HoldingsProjector()
    views.ensure_tables(projector.name, 1, projector.read_models)  # what `eventfold init-db` does
    views.close()
    seeding = seed(store, count)
    print_rows([seeding])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE stored_events")

    read_meter = Meter().start()
    read = 0
    position = 0
    while batch := store.read_all(position, 5000):
        read += len(batch)
        position = batch[-1].id
    read_meter.stop()
    store.close()
    insert_rows = min(count, args.raw_rows)
    insert_meter = raw_insert(url, insert_rows, Meter())

    row, report, peak_sampled = replay_in_child(args, scratch, url, count)
    parted, parted_report, _ = replay_in_child(args, scratch, url, count, "parts4")
    parted.label = f"Eventfold: rebuild, 4 partitions, parallel=4, {parted_report['processes']} process(es)"
    # The raw insert again after the replays: on a shared machine one short run is at the mercy of the
    # moment's load; the ratios use the mean of the two.
    again = Row.of("raw: the same insert again, after the replays", insert_rows,
                   raw_insert(url, insert_rows, Meter(), "raw_movements_again"))
    rows = [
        Row.of("raw: store.read_all, 5,000/batch (read only)", read, read_meter, note="reference"),
        Row.of("raw: INSERT ... unnest(%b arrays), 1000 rows/txn", insert_rows, insert_meter),
        row,
    ]
    variants = [replay_in_child(args, scratch, url, count, v)[0] for v in args.replay_variants]
    print_rows([*rows, parted, again, *variants])
    rate, rss_mb, raw = rows[2].rate, report["maxrss_kb"] / 1024, (rows[1].rate + again.rate) / 2
    print(f"  raw insert, mean of the two runs: {raw:,.0f} rows/s")
    print(f"  peak RSS of the replaying process: {rss_mb:,.0f} MB (ru_maxrss; sampled peak"
          f" {peak_sampled / 1024:,.0f} MB; {report['rss_start_kb'] / 1024:,.0f} MB after imports)")
    print(f"  Eventfold replay / raw insert: {rate / raw:.2f}x; / raw read: {rate / rows[0].rate:.2f}x")
    passed = ratio_line("replay, one partition / raw insert", rate / raw, REPLAY_TARGET_RATIO)
    rss_ok = rss_mb <= REPLAY_TARGET_RSS_MB
    print(f"  peak RSS {rss_mb:,.0f} MB   target <= {REPLAY_TARGET_RSS_MB:.0f} MB"
          f"   {'PASS' if rss_ok else 'FALLS SHORT'}")
    parted_ok = ratio_line("replay, 4 partitions in parallel / raw insert", parted.rate / raw, PARTED_TARGET_RATIO)
    print()
    return Verdict("replay", f"{rate / raw:.2f}x raw, {rss_mb:,.0f} MB; 4 parts {parted.rate / raw:.2f}x",
                   f">= {REPLAY_TARGET_RATIO}x, <= {REPLAY_TARGET_RSS_MB:.0f} MB; >= {PARTED_TARGET_RATIO}x",
                   passed and rss_ok and parted_ok, row.other_pct or 0.0)


def replay_in_child(args: argparse.Namespace, scratch: Scratch, url: str, count: int,
                    variant: str = "") -> tuple[Row, dict[str, Any], int]:
    """One rebuild in a child process (optionally a what-if variant): its row, report, sampled RSS."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--replay-child", url, "efviews", variant]
    child = scratch.spawn("replay", argv, {**os.environ, "PYTHONUNBUFFERED": "1"})
    meter = Meter({"child": lambda: [child.pid] if child.popen.poll() is None else []}).start()
    with py_spy(None if variant else args.py_spy, {"the replaying process": child.pid}):
        peak_sampled = _watch_rss(child, meter)
    meter.stop()
    out = child.tail(100_000).strip().splitlines()
    if child.popen.returncode != 0 or not out:
        raise RuntimeError(f"replay child failed: {child.tail()}")
    report = json.loads(out[-1])
    meter.cpu["child"] = report["cpu"]  # its own getrusage: the /proc figures end with the process
    meter.cpu["other"] = max(0.0, meter.cpu["other"] - report["cpu_total"])
    check = _holdings_check(url, "efviews", report["version"], count)
    if variant:
        label = f"what-if: rebuild + {variant}"
        note = f"RSS {report['maxrss_kb'] / 1024:,.0f} MB; {check}"
    else:
        label, note = "Eventfold: framework.replay.rebuild (child process)", check
    return Row.of(label, report["position"], meter, seconds=report["seconds"], note=note), report, peak_sampled


def _watch_rss(child: Process, meter: Meter) -> int:
    peak, tick = 0, 0
    while child.popen.poll() is None:
        if tick % 5 == 0:
            meter.watch()  # once a second: its backends' CPU, before they end with the child
        tick += 1
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]))
        time.sleep(0.2)
    return peak


# --------------------------------------------------------------------------- phase 4: end to end


@dataclass
class Sample:
    scheduled: float
    accepted: float | None = None
    position: int | None = None
    error: str | None = None
    visible: float | None = None
    on_bus: float | None = None  # when a plain NATS subscriber saw the relay's publish


class PositionPoller(threading.Thread):
    """Polls one position (a SELECT returning one bigint) every ``interval`` seconds and keeps
    (time seen, position) whenever it moved."""

    def __init__(self, url: str, query: str, interval: float) -> None:
        super().__init__(daemon=True)
        self._url, self._query, self._interval = url, query, interval
        self.times: list[float] = []
        self.positions: list[int] = []
        self.polls = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(self._query, prepare=True).fetchone()
                seen = time.perf_counter()
                self.polls += 1
                position = int(row[0]) if row and row[0] is not None else 0
                if not self.positions or position > self.positions[-1]:
                    self.times.append(seen)
                    self.positions.append(position)
                self.stop.wait(self._interval)

    def seen_at(self, position: int) -> float | None:
        index = bisect.bisect_left(self.positions, position)
        return self.times[index] if index < len(self.times) else None

    def wait_for(self, position: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.positions and self.positions[-1] >= position:
                return True
            time.sleep(0.01)
        return False


async def open_loop(rate: float, seconds: float, send: Callable[[], Awaitable[int]]) -> list[Sample]:
    """``send`` started every 1/rate s on schedule, whatever the earlier ones are doing; each
    sample keeps its scheduled start (no coordinated omission)."""
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(sample: Sample) -> None:
        try:
            sample.position = await send()
            sample.accepted = time.perf_counter()
        except Exception as error:  # reported, not raised
            sample.error = type(error).__name__ + (f": {error}" if str(error) else "")

    start = time.perf_counter() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sample = Sample(due)
        samples.append(sample)
        task = asyncio.create_task(one(sample))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return samples


class Pool:
    """At most ``size`` connections, opened when all are busy; a caller waits when none is free
    (the wait counts in its latency: samples start at their scheduled time)."""

    def __init__(self, open_one: Callable[[], Awaitable[Any]], size: int) -> None:
        self._open, self._size = open_one, size
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        self.all: list[Any] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> Any:
        if self._idle.empty() and len(self.all) < self._size:
            self.all.append(None)  # reserve the slot before awaiting
            connection = await self._open()
            self.all[self.all.index(None)] = connection
        else:
            connection = await self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        for connection in self.all:
            if connection is not None:
                await _maybe_await(connection.close())


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


@dataclass
class LatencyResult:
    label: str
    samples: list[Sample]
    window: tuple[float, float]
    meter: Meter
    poll_interval: float
    polls: int
    connections: int = 0

    def measured(self) -> list[Sample]:
        start, end = self.window
        return [s for s in self.samples if start <= s.scheduled < end]

    def visible_ms(self) -> list[float]:
        return [(s.visible - s.accepted) * 1000 for s in self.measured()
                if s.visible is not None and s.accepted is not None]

    def to_bus_ms(self) -> list[float]:
        return [(s.on_bus - s.accepted) * 1000 for s in self.measured()
                if s.on_bus is not None and s.accepted is not None]

    def bus_to_visible_ms(self) -> list[float]:
        return [(s.visible - s.on_bus) * 1000 for s in self.measured()
                if s.visible is not None and s.on_bus is not None]

    def accept_ms(self) -> list[float]:
        return [(s.accepted - s.scheduled) * 1000 for s in self.measured() if s.accepted is not None]

    def total_ms(self) -> list[float]:
        return [(s.visible - s.scheduled) * 1000 for s in self.measured() if s.visible is not None]

    def errors(self) -> int:
        return sum(1 for s in self.measured() if s.error)

    def unseen(self) -> int:
        return sum(1 for s in self.measured() if s.error is None and s.visible is None)


def print_latency(results: list[LatencyResult]) -> None:
    def cells(values: list[float], *ps: float) -> str:
        return " ".join(f"{_pct(values, p):>6.1f}" for p in ps)

    print(f"  {'':<46} {'cmds':>5} {'err':>3} {'unseen':>6}  {'accept ms':^13}  {'accepted->visible ms':^27}"
          f"  {'of which: ->bus':^13}  {'bus->visible':^13}  {'sent->visible':^13}")
    print(f"  {'':<46} {'':>5} {'':>3} {'':>6}  {'p50':>6} {'p99':>6}  {'p50':>6} {'p99':>6} {'p99.9':>6} {'max':>6}"
          + f"  {'p50':>6} {'p99':>6}" * 3)
    for res in results:
        vis = res.visible_ms()
        print(f"  {res.label:<46} {len(res.measured()):>5} {res.errors():>3} {res.unseen():>6}"
              f"  {cells(res.accept_ms(), 50, 99)}  {cells(vis, 50, 99, 99.9)} {max(vis, default=float('nan')):>6.1f}"
              f"  {cells(res.to_bus_ms(), 50, 99)}  {cells(res.bus_to_visible_ms(), 50, 99)}"
              f"  {cells(res.total_ms(), 50, 99)}")
    print("  CPU in the measured window, % of one core:")
    for res in results:
        cpu = ", ".join(f"{role} {res.meter.cpu[role] / res.meter.seconds * 100:.0f}"
                        for role in ROLE_ORDER if role in res.meter.cpu)
        print(f"    {res.label.split(':')[0]:<10} {cpu}; other: {res.meter.other_pct():.0f}% of all CPUs")
    for res in results:
        errors = [s.error for s in res.measured() if s.error]
        if errors:
            print(f"  {res.label}: {len(errors)} errors, first: {errors[0]}")


class BusWatcher:
    """A plain NATS subscription on the stream's subjects: when each position went over the bus."""

    def __init__(self, header: str) -> None:
        self._header = header
        self.seen: dict[int, float] = {}
        self._client: Any = None

    async def start(self, nats_url: str, subjects: str) -> None:
        import nats

        self._client = await nats.connect(nats_url)

        async def record(msg: Any) -> None:
            position = int((msg.headers or {}).get(self._header, 0))
            self.seen.setdefault(position, time.perf_counter())

        await self._client.subscribe(subjects, cb=record)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.drain()

    def apply(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.position is not None:
                sample.on_bus = self.seen.get(sample.position)


def _finish(samples: list[Sample], poller: PositionPoller, timeout: float = 15.0) -> None:
    positions = [s.position for s in samples if s.position is not None]
    if positions:
        poller.wait_for(max(positions), timeout)
    for sample in samples:
        if sample.position is not None:
            sample.visible = poller.seen_at(sample.position)


# raw pipeline ------------------------------------------------------------------------------------

RAW_SCHEMA = [
    "CREATE TABLE raw_events (position bigserial PRIMARY KEY, account text NOT NULL,"
    " quantity int NOT NULL, payload bytea NOT NULL)",
    "CREATE TABLE raw_relay_checkpoint (name text PRIMARY KEY, position bigint NOT NULL)",
    "INSERT INTO raw_relay_checkpoint VALUES ('raw', 0)",
    "CREATE TABLE raw_holdings (account text PRIMARY KEY, quantity bigint NOT NULL)",
    "CREATE TABLE raw_movements (position bigint PRIMARY KEY, account text NOT NULL,"
    " delta bigint NOT NULL, balance bigint NOT NULL)",
    "CREATE TABLE raw_positions (name text PRIMARY KEY, position bigint NOT NULL)",
    "INSERT INTO raw_positions VALUES ('raw', 0)",
    # the append in one round trip, as eventfold_append: table lock (commit order = position order)
    "CREATE FUNCTION raw_append(a text, q int, p bytea) RETURNS bigint LANGUAGE plpgsql AS $$"
    " DECLARE pos bigint; BEGIN LOCK TABLE raw_events IN EXCLUSIVE MODE; NOTIFY raw_events;"
    " INSERT INTO raw_events (account, quantity, payload) VALUES (a, q, p) RETURNING position INTO pos;"
    " RETURN pos; END $$",
]
RAW_PAYLOAD = b"x" * 240  # about the size of one stored example event


async def raw_relay_role(url: str, nats_url: str, stream: str, prefix: str) -> None:
    """LISTEN for appends, publish what is new (pipelined), move a checkpoint: the relay by hand."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    stop = _stop_on_signals()
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"], storage=StorageType.FILE,
                                     duplicate_window=120))
    listen = await psycopg.AsyncConnection.connect(url, autocommit=True)
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listen.execute("LISTEN raw_events")
    last = 0
    while not stop.is_set():
        cursor = await conn.execute("SELECT position, account, quantity, payload FROM raw_events"
                                    " WHERE position > %s ORDER BY position LIMIT 1000", (last,), prepare=True)
        rows = await cursor.fetchall()
        if not rows:
            async for _ in listen.notifies(timeout=1.0, stop_after=1):
                pass
            continue
        futures = [await js.publish_async(f"{prefix}.{account}", bytes(payload), headers={
            "Nats-Msg-Id": str(position), "Raw-Position": str(position), "Raw-Quantity": str(quantity)})
            for position, account, quantity, payload in rows]
        await asyncio.gather(*futures)
        last = rows[-1][0]
        await conn.execute("UPDATE raw_relay_checkpoint SET position = %s WHERE name = 'raw'", (last,),
                           prepare=True)
    await client.close()


async def raw_consume_role(url: str, nats_url: str, stream: str, prefix: str) -> None:
    """Pull fetch(1000, 1 s) -> upsert holdings + insert movements + move the position in one
    transaction -> ack the last message (policy ALL): the projection worker by hand."""
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    stop = _stop_on_signals()
    client = await nats.connect(nats_url)
    js = client.jetstream()
    durable = f"efbench-{RUN_ID}-rawe2e"
    while True:  # the relay creates the stream
        try:
            sub = await js.pull_subscribe(f"{prefix}.>", durable=durable, stream=stream, config=ConsumerConfig(
                durable_name=durable, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.ALL,
                ack_wait=30, max_ack_pending=20_000))
            break
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.1)
    conn = await psycopg.AsyncConnection.connect(url)
    balances: dict[str, int] = {}
    while not stop.is_set():
        try:
            msgs = await sub.fetch(1000, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        positions, accounts, deltas, after = [], [], [], []
        for msg in msgs:
            account = msg.subject.rsplit(".", 1)[1]
            delta = int((msg.headers or {})["Raw-Quantity"])
            balances[account] = balances.get(account, 0) + delta
            positions.append(int((msg.headers or {})["Raw-Position"]))
            accounts.append(account)
            deltas.append(delta)
            after.append(balances[account])
        latest = {a: b for a, b in zip(accounts, after, strict=True)}
        async with conn.transaction():
            await conn.execute("INSERT INTO raw_movements SELECT * FROM unnest(%s::bigint[], %s::text[],"
                               " %s::bigint[], %s::bigint[]) ON CONFLICT DO NOTHING",
                               (positions, accounts, deltas, after), prepare=True)
            await conn.execute("INSERT INTO raw_holdings SELECT * FROM unnest(%s::text[], %s::bigint[])"
                               " ON CONFLICT (account) DO UPDATE SET quantity = excluded.quantity",
                               (list(latest), list(latest.values())), prepare=True)
            await conn.execute("UPDATE raw_positions SET position = %s WHERE name = 'raw' AND position < %s",
                               (max(positions), max(positions)), prepare=True)
        await msgs[-1].ack_sync()
    await conn.close()
    await client.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def run_raw_e2e(args: argparse.Namespace, scratch: Scratch) -> LatencyResult:
    url = scratch.databases.create("rawe2e")
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in RAW_SCHEMA:
            conn.execute(statement)
    settings = scratch.stream_settings("rawe2e")
    me = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = [url, scratch.nats_url, settings.stream, settings.subject_prefix]
    relay = scratch.spawn("raw-relay", [sys.executable, me, "--raw-role", "relay", *common], env)
    consume = scratch.spawn("raw-consume", [sys.executable, me, "--raw-role", "consume", *common], env)
    poller = PositionPoller(url, "SELECT position FROM raw_positions WHERE name = 'raw'", args.poll_ms / 1000)
    poller.start()

    async def main() -> LatencyResult:
        watcher = BusWatcher("Raw-Position")
        await watcher.start(scratch.nats_url, settings.subjects)
        pool = Pool(lambda: psycopg.AsyncConnection.connect(url, autocommit=True), 16)
        accounts = [f"RAW-{i:04d}" for i in range(64)]
        counter = iter(range(10**9))

        async def send() -> int:
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT raw_append(%s, 1, %s)",
                                            (accounts[next(counter) % len(accounts)], RAW_PAYLOAD), prepare=True)
                row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        await open_loop(args.rate, 1.0, send)  # the roles connect, the stream and consumer exist
        relay.check_alive()
        consume.check_alive()
        meter = Meter({"raw-relay": lambda: [relay.pid], "raw-consume": lambda: [consume.pid]})
        window_start = time.perf_counter() + args.e2e_warmup
        timer = asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + args.e2e_warmup, meter.start)
        samples = await open_loop(args.rate, args.e2e_warmup + args.e2e_seconds, send)
        timer.cancel()
        meter.stop()
        await pool.close()
        await asyncio.sleep(0.5)
        await watcher.stop()
        watcher.apply(samples)
        return LatencyResult("raw: append fn -> LISTEN relay -> pull + txn", samples,
                             (window_start, window_start + args.e2e_seconds), meter,
                             args.poll_ms / 1000, 0, len(pool.all))

    try:
        result = asyncio.run(main())
        _finish(result.samples, poller)
    finally:
        poller.stop.set()
        poller.join(5)
        for process in (relay, consume):
            stop_process(process.popen)
    result.polls = poller.polls
    return result


# Eventfold pipeline ------------------------------------------------------------------------------


def run_eventfold_e2e(args: argparse.Namespace, scratch: Scratch) -> LatencyResult:
    url = scratch.databases.create("e2e")
    settings = scratch.stream_settings("e2e")
    schema = "efbench"
    port = wp._free_port()
    env = wp.eventfold_env(
        PYTHONUNBUFFERED="1",
        EVENTFOLD_DATABASE_URL=url, EVENTFOLD_DB_SCHEMA=schema, EVENTFOLD_NATS_URL=scratch.nats_url,
        EVENTFOLD_STREAM=settings.stream, EVENTFOLD_SUBJECT_PREFIX=settings.subject_prefix,
        EVENTFOLD_CONSUMER_PREFIX=settings.consumer_prefix,
        EVENTFOLD_PARTITIONS="holdings=1",  # one worker, one position row: what the poller reads
    )
    eventfold = wp._eventfold_command()
    done = subprocess.run([*eventfold, "init-db"], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"eventfold init-db failed: {done.stderr.strip()[-500:]}")
    api = scratch.spawn("write-api", [*eventfold, "write-api", "--host", "127.0.0.1", "--port", str(port)], env)
    relay = scratch.spawn("relay", [*eventfold, "relay"], env)
    project = scratch.spawn("project", [*eventfold, "project", "holdings"], env)
    _wait_healthy(api, port)
    accounts = [wp.account_number("E2E", i) for i in range(64)]
    wp.http_setup(_PortOnly(port), accounts)
    poller = PositionPoller(url, f"SELECT position FROM \"{schema}\".eventfold_projection_positions"
                                 " WHERE name = 'holdings' AND version = 1", args.poll_ms / 1000)
    poller.start()
    with psycopg.connect(url, autocommit=True) as conn:
        head = conn.execute(f'SELECT max(notification_id) FROM "{schema}".stored_events').fetchone()
    if not poller.wait_for(int(head[0]) if head and head[0] else 0, 60):
        raise RuntimeError(f"the holdings projection did not catch up with the set-up: {project.tail()}")

    async def main() -> LatencyResult:
        from framework.adapters.nats import HEADER_POSITION

        watcher = BusWatcher(HEADER_POSITION)
        await watcher.start(scratch.nats_url, settings.subjects)
        pool = Pool(lambda: _http_client(port), 64)
        bodies = [json.dumps(wp.credit_body(a)).encode() for a in accounts]
        counter = iter(range(10**9))

        async def send() -> int:
            async with pool.connection() as client:
                status, data = await client.post("/commands/CreditHoldings", bodies[next(counter) % len(bodies)])
            if status != 200:
                raise RuntimeError(f"HTTP {status} {data[:200]!r}")
            return int(json.loads(data)["position"])

        await open_loop(args.rate, 1.0, send)  # warm connections and caches
        for process in (api, relay, project):
            process.check_alive()
        meter = Meter({"write-api": lambda: [api.pid], "relay": lambda: [relay.pid],
                       "project": lambda: [project.pid]})
        window_start = time.perf_counter() + args.e2e_warmup
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + args.e2e_warmup, meter.start)
        with py_spy(args.py_spy, {"eventfold write-api": api.pid, "eventfold relay": relay.pid,
                                  "eventfold project holdings": project.pid}):
            samples = await open_loop(args.rate, args.e2e_warmup + args.e2e_seconds, send)
        timer.cancel()
        meter.stop()
        await pool.close()
        await asyncio.sleep(0.5)
        await watcher.stop()
        watcher.apply(samples)
        return LatencyResult("Eventfold: write-api -> relay -> project", samples,
                             (window_start, window_start + args.e2e_seconds), meter,
                             args.poll_ms / 1000, 0, len(pool.all))

    try:
        result = asyncio.run(main())
        _finish(result.samples, poller)
        for process in (api, relay, project):
            process.check_alive()
    finally:
        poller.stop.set()
        poller.join(5)
        for process in (api, relay, project):
            stop_process(process.popen)
    result.polls = poller.polls
    scratch.seeded["e2e_logs"] = {p.name: p.tail(600) for p in (api, relay, project)}
    return result


async def _http_client(port: int) -> wp.RawHttpClient:
    return wp.RawHttpClient("127.0.0.1", port)


@dataclass
class _PortOnly:
    port: int


def _wait_healthy(api: Process, port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        api.check_alive()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"write-api did not come up: {api.tail()}")


def phase_e2e(args: argparse.Namespace, scratch: Scratch) -> Verdict:
    print(f"== 4. end-to-end latency at {args.rate:.0f} commands/s for {args.e2e_seconds:.0f} s"
          f" (after {args.e2e_warmup:.0f} s warm-up), read model polled every {args.poll_ms:g} ms")
    raw = run_raw_e2e(args, scratch)
    ours = run_eventfold_e2e(args, scratch)
    print_latency([raw, ours])
    rate = len(ours.measured()) / args.e2e_seconds
    print(f"  offered {rate:.0f} commands/s; HTTP connections opened: {ours.connections};"
          f" polls: raw {raw.polls:,}, Eventfold {ours.polls:,} (each adds up to {args.poll_ms:g} ms)")
    p99, raw_p99 = _pct(ours.visible_ms(), 99), _pct(raw.visible_ms(), 99)
    print(f"  Eventfold p99 accepted->visible / raw: {p99 / raw_p99:.2f}x ({p99 - raw_p99:+.1f} ms)")
    passed = p99 <= E2E_TARGET_P99_MS and not ours.unseen() and not ours.errors()
    print(f"  target: p99 accepted->visible <= {E2E_TARGET_P99_MS:.0f} ms -> {p99:.1f} ms"
          f"{'' if not ours.unseen() and not ours.errors() else ' (with errors or unseen commands)'}"
          f"   {'PASS' if passed else 'FALLS SHORT'}")
    print()
    return Verdict("e2e", f"p99 {p99:.1f} ms (p50 {_pct(ours.visible_ms(), 50):.1f} ms)",
                   f"p99 <= {E2E_TARGET_P99_MS:.0f} ms", passed, ours.meter.other_pct())


# --------------------------------------------------------------------------- phase 5: scale-out


SCALE_WORKERS = (1, 2, 4)
SCALE_TARGETS = {2: 1.7, 4: 3.0}
REBALANCE_TARGET_SECONDS = 5.0


@dataclass
class ScaleRun:
    """One database and stream with ``--scale-events`` example events published by ``eventfold relay``,
    and the environment of ``eventfold`` processes of ``scale_app`` on them."""

    url: str
    env: dict[str, str]
    head: int

    def query(self, statement: str, params: Sequence[Any] = ()) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(statement, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def lowest(self, name: str) -> int:
        """The projection's lowest partition position (0 until every partition has a row)."""
        return self.query("SELECT CASE WHEN count(*) = 0 THEN 0 ELSE min(position) END"
                          " FROM efbench.eventfold_partition_positions WHERE name = %s", (name,))

    def partitions_held(self, name: str, *, pid: int | None = None, live_except: int | None = None) -> int:
        """Unexpired partition leases of ``name`` (held by ``pid``, or by any owner but ``live_except``)."""
        where = "name LIKE %s AND expires_at > now()"
        params: list[Any] = [f"{name}/partition/%"]
        if pid is not None:
            where, params = where + " AND owner LIKE %s", [*params, f"%:{pid}:%"]
        if live_except is not None:
            where, params = where + " AND owner NOT LIKE %s", [*params, f"%:{live_except}:%"]
        return self.query(f"SELECT count(*) FROM efbench.eventfold_projection_leases WHERE {where}", params)


def _scale_run(args: argparse.Namespace, scratch: Scratch) -> ScaleRun:
    url = scratch.databases.create("scale")
    settings = scratch.stream_settings("scale")
    env = wp.eventfold_env(
        PYTHONUNBUFFERED="1", EVENTFOLD_APP="scale_app:app",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), str(wp.REPOSITORY)]),
        EVENTFOLD_DATABASE_URL=url, EVENTFOLD_DB_SCHEMA="efbench", EVENTFOLD_NATS_URL=args.nats_url,
        EVENTFOLD_STREAM=settings.stream, EVENTFOLD_SUBJECT_PREFIX=settings.subject_prefix,
        EVENTFOLD_CONSUMER_PREFIX=settings.consumer_prefix, EVENTFOLD_LOG_FORMAT="text",
        EFBENCH_PARTITIONS=str(args.partitions), EFBENCH_IO_MS=str(args.io_ms),
    )
    done = subprocess.run([*wp._eventfold_command(), "init-db"], env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"eventfold init-db failed: {done.stderr.strip()[-500:]}")
    from framework.adapters.postgres import PostgresEventStore
    from framework.settings import PostgresSettings

    store = PostgresEventStore(PostgresSettings(**{**PostgresSettings.from_url(url).__dict__, "schema": "efbench"}))
    try:
        print_rows([seed(store, args.scale_events)])
        head = store.head()
    finally:
        store.close()
    run = ScaleRun(url, env, head)
    relay = scratch.spawn("relay", [*wp._eventfold_command(), "relay"], env)
    _wait_for(lambda: run.query("SELECT coalesce(max(position), 0) FROM efbench.relay_checkpoints") >= head,
              relay, "the relay to publish everything")
    return run


def _wait_for(condition: Callable[[], bool], process: Process, what: str, timeout: float = 1800.0,
              tick: float = 0.1) -> float:
    """Poll ``condition`` until it holds; the seconds waited. ``process`` must stay alive meanwhile."""
    started = time.perf_counter()
    while not condition():
        process.check_alive()
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(tick)
    return time.perf_counter() - started


def _applied(process: Process) -> bool:
    """Whether the process has logged a committed batch ("...: applied N events ..." with N > 0)."""
    text = process.tail(200_000)
    return any(": applied " in line and ": applied 0 events" not in line for line in text.splitlines())


def phase_scaleout(args: argparse.Namespace, scratch: Scratch) -> Verdict:
    print(f"== 5. scale-out: one projection, {args.partitions} partitions, {args.scale_events:,} events,"
          f" handler waits {args.io_ms:g} ms per 100 events; 1, 2, 4 `eventfold project` processes")
    run = _scale_run(args, scratch)
    eventfold = wp._eventfold_command()
    rates: dict[int, float] = {}
    rows: list[Row] = []
    for workers in SCALE_WORKERS:
        name = f"scale_{workers}"
        roles: list[Process] = []
        meter = Meter({"project": lambda r=roles: [p.pid for p in r if p.popen.poll() is None]}).start()  # type: ignore[misc]
        roles += [scratch.spawn(f"project-{name}-{i}", [*eventfold, "project", name], run.env)
                  for i in range(workers)]
        _wait_for(lambda n=name: run.lowest(n) >= run.head, roles[0], f"{name} at the head")  # type: ignore[misc]
        meter.stop()
        for role in roles:
            stop_process(role.popen)
        rates[workers] = run.head / meter.seconds
        rows.append(Row.of(f"{workers} worker process(es), from their start to every partition at the head",
                           run.head, meter, note=f"{rates[workers] / rates[1]:.2f}x one worker"))
    print_rows(rows)
    scaled = [ratio_line(f"{w} workers / 1 worker", rates[w] / rates[1], t) for w, t in SCALE_TARGETS.items()]
    _print_io_floor(args, run.head, rates[1])
    joined, taken = rebalance(run, scratch, eventfold)
    rebalance_ok = joined <= REBALANCE_TARGET_SECONDS and taken <= REBALANCE_TARGET_SECONDS
    print(f"  rebalance (default settings): new worker start -> its first applied batch {joined:.1f} s;"
          f" kill -9 -> all its partitions taken over {taken:.1f} s   target <= {REBALANCE_TARGET_SECONDS:g} s"
          f" each   {'PASS' if rebalance_ok else 'FALLS SHORT'}")
    print()
    figure = f"2: {rates[2] / rates[1]:.2f}x, 4: {rates[4] / rates[1]:.2f}x; {joined:.1f}/{taken:.1f} s"
    return Verdict("scaleout", figure, ">= 1.7x, >= 3x; <= 5 s", all(scaled) and rebalance_ok, rows[0].other_pct or 0.0)


def _print_io_floor(args: argparse.Namespace, events: int, one_worker_rate: float) -> None:
    """The ceiling the handler's waits set: one process already applies its partitions side by side (a thread
    each), so the waits overlap ``--partitions`` ways with one process as with four, and no number of
    processes finishes before the waits of the busiest partition are done."""
    floor = events / 100 * args.io_ms / 1000 / args.partitions
    if floor <= 0:
        return
    print(f"  the handler's waits alone take {floor:.1f} s with any number of processes ({events:,} events / 100"
          f" x {args.io_ms:g} ms, {args.partitions} partitions side by side); so at most"
          f" {events / one_worker_rate / floor:.2f}x one worker, before start-up and uneven partitions")


def rebalance(run: ScaleRun, scratch: Scratch, eventfold: list[str]) -> tuple[float, float]:
    """While one worker catches ``scale_rb`` up: start a second (seconds to its first applied batch),
    then ``kill -9`` it (seconds until the first holds every partition again)."""
    first = scratch.spawn("project-rb-0", [*eventfold, "project", "scale_rb"], run.env)
    _wait_for(lambda: _applied(first), first, "the first worker's first batch")
    second = scratch.spawn("project-rb-1", [*eventfold, "project", "scale_rb"], run.env)
    joined = _wait_for(lambda: _applied(second), second, "the new worker's first batch", timeout=120)
    _wait_for(lambda: run.partitions_held("scale_rb", pid=second.pid) > 0, second, "the new worker's share")
    os.kill(second.pid, signal.SIGKILL)
    killed = time.perf_counter()
    second.popen.wait(10)
    partitions = int(run.env["EFBENCH_PARTITIONS"])
    _wait_for(lambda: run.partitions_held("scale_rb", pid=first.pid) == partitions, first,
              "the takeover of the killed worker's partitions", timeout=120, tick=0.05)
    taken = time.perf_counter() - killed
    stop_process(first.popen)
    return joined, taken


# --------------------------------------------------------------------------- py-spy


PROFILES: list[str] = []


@contextlib.contextmanager
def py_spy(path: str | None, targets: dict[str, int] | None = None) -> Iterator[None]:
    """Samples the named processes (all threads; default: this one) while the block runs, then
    prints each one's hottest functions."""
    if not path:
        yield
        return
    spies = []
    for label, pid in (targets or {"benchmark process": os.getpid()}).items():
        out = Path(tempfile.gettempdir()) / f"efbench-{RUN_ID}-{pid}.txt"
        spy = subprocess.Popen([path, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                                "--threads", "--nonblocking", "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((label, spy, out))
    try:
        yield
    finally:
        for label, spy, out in spies:
            stop_process(spy)
            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                print(f"  py-spy of {label}:")
                summarise_py_spy(out)
            PROFILES.append(text.getvalue())  # printed after the phase's figures


def summarise_py_spy(path: Path, top: int = 15) -> None:
    """Self and inclusive shares per function from py-spy's collapsed stacks (all threads)."""
    if not path.exists():
        print("    (py-spy wrote nothing)")
        return
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = [f.split(" (")[0] + " [" + f.rsplit("(", 1)[-1].split(":")[0] + "]"
                  for f in stack.split(";") if not f.startswith(("thread ", "process "))]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    if not total:
        print("    (no samples)")
        return
    ours = ("[framework/", "[projections/", "[example_app/")
    print(f"    {total:,} samples (all threads, idle ones too); hottest functions by self time:")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"      self {n / total * 100:5.1f}%  incl {inclusive[name] / total * 100:5.1f}%  {name}")
    print("    Eventfold's own functions by inclusive time:")
    mine = [(name, n) for name, n in inclusive.items() if any(tag in name for tag in ours)]
    for name, n in sorted(mine, key=lambda kv: -kv[1])[:top]:
        print(f"      incl {n / total * 100:5.1f}%  self {own.get(name, 0) / total * 100:5.1f}%  {name}")
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- main


def _versions() -> str:
    found = []
    for name in ("eventsourcing", "psycopg", "nats-py", "pydantic", "uvicorn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def _code_state() -> str:
    """The commit measured, and whether the library's files differ from it (others may be editing)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "framework", "projections", "example_app"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head or '?'}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


async def _nats_version(url: str) -> str:
    import nats

    client = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        return str(client._server_info.get("version", "?"))
    finally:
        await client.close()


def print_header(args: argparse.Namespace, admin_url: str, facts: dict[str, str], nats_version: str) -> None:
    where = urlsplit(admin_url)
    print("Eventfold streaming benchmark")
    print(f"  machine      : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"  load average : {os.getloadavg()[0]:.2f} (1 min) at start")
    print(f"  PostgreSQL   : {facts['version']} at {where.hostname}:{where.port or 5432}"
          f" (synchronous_commit={facts['synchronous_commit']}, fsync={facts['fsync']})")
    print(f"  NATS         : nats-server {nats_version} at {args.nats_url}")
    print(f"  packages     : {_versions()}")
    print(f"  code         : {_code_state()}")
    print(f"  events       : {args.stream_events:,} for relay/project, {args.events:,} for replay;"
          f" accounts open first, then credits/debits over 1,000 accounts x 4 ISINs")
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, short e2e")
    parser.add_argument("--only", type=lambda v: v.split(","), default=list(PHASES),
                        help=f"comma-separated phases: {','.join(PHASES)}")
    parser.add_argument("--events", type=int, default=None, help="stored events to replay (1,000,000)")
    parser.add_argument("--stream-events", type=int, default=None, help="events to relay/project (100,000)")
    parser.add_argument("--scale-events", type=int, default=None, help="events of the scale-out phase (200,000)")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of the scale-out projection")
    parser.add_argument("--io-ms", type=float, default=20.0, help="scale-out handler's wait per 100 events")
    parser.add_argument("--raw-rows", type=int, default=200_000, help="rows of the raw insert baseline")
    parser.add_argument("--rate", type=float, default=200.0, help="e2e commands per second")
    parser.add_argument("--e2e-seconds", type=float, default=None, help="measured e2e seconds (20)")
    parser.add_argument("--e2e-warmup", type=float, default=None, help="e2e warm-up seconds (3)")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="read-model poll interval (e2e)")
    parser.add_argument("--nats-url", default=os.environ.get("EVENTFOLD_BENCH_NATS_URL", DEFAULT_NATS))
    parser.add_argument("--no-prefetch", action="store_true",
                        help="project with run_projection(prefetch=False): no fetch ahead (A/B)")
    parser.add_argument("--project-defaultgc", action="store_true",
                        help="phase 2 with the interpreter's collector settings, not those of `eventfold project`")
    parser.add_argument("--py-spy", metavar="PATH", help="sample the Eventfold side of each phase with py-spy")
    parser.add_argument("--replay-variants", type=lambda v: [x for x in v.split(",") if x], default=[],
                        help="after the replay, replay again with what-if changes applied in the child"
                             " (comma-separated; '+' combines): "
                             + ", ".join(f"{k} = {d}" for k, d in VARIANTS.items()))
    parser.add_argument("--replay-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--raw-role", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bad = [v for vs in args.replay_variants for v in vs.split("+") if v not in VARIANTS]
    if bad:
        parser.error(f"unknown replay variant {bad[0]!r}; variants: {', '.join(VARIANTS)}")
    unknown = [p for p in args.only if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase {unknown[0]!r}; phases: {', '.join(PHASES)}")
    args.events = args.events or (20_000 if args.quick else 1_000_000)
    args.scale_events = args.scale_events or (10_000 if args.quick else 200_000)
    args.stream_events = args.stream_events or (10_000 if args.quick else 100_000)
    args.e2e_seconds = args.e2e_seconds or (3.0 if args.quick else 20.0)
    args.e2e_warmup = args.e2e_warmup if args.e2e_warmup is not None else (1.0 if args.quick else 3.0)
    args.raw_rows = min(args.raw_rows, 20_000) if args.quick else args.raw_rows
    return args


RUNNERS: dict[str, Callable[[argparse.Namespace, Scratch], Verdict]] = {
    "relay": phase_relay, "project": phase_project, "replay": phase_replay, "e2e": phase_e2e,
    "scaleout": phase_scaleout,
}


def run(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", wp.DEFAULT_URL)
    databases = wp.Databases(admin_url)
    Meter.pg_pids = wp.PostgresPids(admin_url, f"eventfold_bench_{os.getpid()}_")
    print_header(args, admin_url, databases.server_facts(), asyncio.run(_nats_version(args.nats_url)))
    scratch = Scratch(databases, args.nats_url)
    verdicts: list[Verdict] = []
    try:
        for phase in PHASES:
            if phase in args.only:
                print(f"  running: {phase} ...", file=sys.stderr, flush=True)
                verdicts.append(RUNNERS[phase](args, scratch))
                for profile in PROFILES:
                    print(profile)
                PROFILES.clear()
    finally:
        if "store" in scratch.seeded:
            scratch.seeded["store"].close()
        scratch.cleanup()
    print("summary")
    for v in verdicts:
        disturbed = f"  (other load {v.other_pct:.0f}%: disturbed, rerun)" if v.other_pct > 10 else ""
        print(f"  {v.phase:<8} {v.figure:<34} target {v.target:<28} {v.word}{disturbed}")
    print()
    print(f"  load average : {os.getloadavg()[0]:.2f} (1 min) at end")
    print("  notes        : 'CPU us/event' is CPU time in the measured part divided by its events: bench = this")
    print("                 process, child = the replaying process, nats = nats-server (shared: its other clients")
    print("                 count too), pg = this run's PostgreSQL backends + the server's background processes;")
    print("                 'other%' is the share of all CPUs used by anything else meanwhile (above ~10%, the row")
    print("                 is disturbed).")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay_child:
        return replay_child(*args.replay_child)
    if args.raw_role:
        role, url, nats_url, stream, prefix = args.raw_role
        roles = {"relay": raw_relay_role, "consume": raw_consume_role}
        asyncio.run(roles[role](url, nats_url, stream, prefix))
        return 0
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (psycopg.Error, RuntimeError) as error:
        print(f"streaming: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
