#!/usr/bin/env python
"""Write-path benchmark on PostgreSQL: Eventfold over real HTTP against raw baselines of the same run.

Phases, run one after the other so they never compete for the machine's cores:

1. plain psycopg 3 ``INSERT`` + ``COMMIT`` per row, 1 connection and 4 connections (threads);
2. the plain ``eventsourcing`` library: ``Application.save()`` of a trivial aggregate, one event
   per save, one thread, on its PostgreSQL persistence module;
3. Eventfold's ``CommandBus`` in this process, no HTTP, one thread (``CreditHoldings``);
4. Eventfold over HTTP: ``eventfold write-api`` (uvicorn, access log off) in a subprocess,
   driven with ``CreditHoldings`` commands by 1 client, 16 and 32 clients on different accounts,
   and 16 and 32 clients on one account (contended);
5. the same 16 clients on distinct accounts against ``eventfold write-api --workers 2`` (two
   processes on one port), to compare with one process;
6. the phases of 4. (``threads*``) against a ``write-api`` with ``EVENTFOLD_WRITE_ASYNC=off``: every
   command on a thread, where 4. runs the default (commands decided and appended on the event loop).

Every phase warms up, then measures for ``--duration`` seconds. The script creates its own
databases (``eventfold_bench_<pid>_*``) on the server named by ``EVENTFOLD_BENCH_DATABASE_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``) and drops them at the end.
It prints figures and ratios and never asserts: speed is reported, not tested.

    python benchmarks/write_path.py            # full run, ~5 s per phase
    python benchmarks/write_path.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate as EsAggregate
from eventsourcing.domain import event as es_event

# The example application (example_app/, projections/) lives in the repository, not in the installed
# package: this process and every `eventfold` subprocess import it from here, whatever the cwd.
REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLE_APP = "example_app.app:app"  # the App every `eventfold` subprocess runs (EVENTFOLD_APP)


def import_from_repository() -> None:
    """Put the repository first on ``sys.path`` (a script's own folder is there, the root is not)."""
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))


def eventfold_env(base: Mapping[str, str] | None = None, /, **variables: str) -> dict[str, str]:
    """``base`` (default: this environment) for an ``eventfold`` subprocess, plus ``variables``: the
    example App, the repository on ``PYTHONPATH`` and anonymous access (the benchmarks send no tokens)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPOSITORY), env.get("PYTHONPATH", "")] if p)
    env.update({"EVENTFOLD_APP": EXAMPLE_APP, "EVENTFOLD_ANONYMOUS_ROLES": "*", **variables})
    return env


import_from_repository()

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ISIN = "US0378331005"  # a valid ISIN (check digit included)
TARGET_RATIO = 1.0  # HTTP 1 client / eventsourcing save()
TARGET_32_RATIO = 0.8  # HTTP 32 clients, distinct accounts / psycopg commit per row, 1 conn
TARGET_32_P99_MS = 25.0
TARGET_HOT_RATIO = 0.3  # HTTP 32 clients on one account / 32 clients on distinct accounts
TARGET_CPU_MS = 0.4  # server CPU per command at 16 clients, distinct accounts
PAYLOAD = b"x" * 200  # about the size of one of Eventfold's stored events
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of the operations that succeeded
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds in the window

    @property
    def ops(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies) * 1000 if self.latencies else float("nan")

    def other_load(self) -> float | None:
        """Percent of the machine's CPUs busy with processes not in this benchmark."""
        if "other" not in self.cpu or not self.seconds:
            return None
        return self.cpu["other"] / (self.seconds * (os.cpu_count() or 1)) * 100

    def cpu_ms_per_op(self, role: str) -> float | None:
        if role not in self.cpu or not self.ops:
            return None
        return self.cpu[role] / self.ops * 1000


@dataclass
class Window:
    """The measured part of a phase: after the warm-up, ``duration`` seconds long."""

    start: float
    end: float

    @classmethod
    def after(cls, warmup: float, duration: float) -> Window:
        start = time.perf_counter() + warmup
        return cls(start, start + duration)

    def holds(self, began: float, ended: float) -> bool:
        return began >= self.start and ended <= self.end


# --------------------------------------------------------------------------- CPU accounting


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _cpu_of_tree(pid: int) -> float:
    """CPU of a process and its live descendants (``write-api --workers N``: the parent and its workers)."""
    return _cpu_of(pid) + sum(_cpu_of_tree(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy (all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


class PostgresPids:
    """The PostgreSQL processes working for this benchmark: backends of its databases and the
    server's own background processes (WAL writer, checkpointer, ...), not other users' backends."""

    def __init__(self, admin_url: str, prefix: str) -> None:
        self._admin_url, self._prefix = admin_url, prefix

    def __call__(self) -> list[int]:
        try:
            with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=2) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                    " AND (datname LIKE %s OR backend_type <> 'client backend')",
                    (self._prefix + "%",),
                ).fetchall()
        except psycopg.Error:
            return []
        return [int(row[0]) for row in rows]


class CpuSampler(threading.Thread):
    """CPU seconds spent in the measured window by this process ('driver'), the server, the
    benchmark's PostgreSQL processes ('postgres') and everything else on the machine ('other')."""

    pg_pids: Callable[[], list[int]] = staticmethod(lambda: [])  # set by run()

    def __init__(self, window: Window, server_pid: int | None) -> None:
        super().__init__(daemon=True)
        self._window, self._server = window, server_pid
        self._pg: list[int] = []
        self.cpu: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {"driver": _cpu_of(os.getpid()), "postgres": sum(_cpu_of(p) for p in self._pg),
                  "machine": _machine_busy()}
        if self._server is not None:
            sample["server"] = _cpu_of_tree(self._server)
        return sample

    def run(self) -> None:
        lead = min(0.2, max(0.0, self._window.start - time.perf_counter()) / 2)
        time.sleep(max(0.0, self._window.start - lead - time.perf_counter()))
        self._pg = CpuSampler.pg_pids()  # connections are open by now: the warm-up made them
        time.sleep(max(0.0, self._window.start - time.perf_counter()))
        before = self._sample()
        time.sleep(max(0.0, self._window.end - time.perf_counter()))
        after = self._sample()
        cpu = {role: after[role] - before[role] for role in before}
        ours = sum(v for role, v in cpu.items() if role != "machine")
        cpu["other"] = max(0.0, cpu.pop("machine") - ours)
        self.cpu = cpu


# --------------------------------------------------------------------------- thread runner


def run_threads(
    name: str, ops: list[Callable[[], object]], warmup: float, duration: float,
    server_pid: int | None = None,
) -> Result:
    """Each op runs in its own thread, back to back, until the window closes."""
    window = Window.after(warmup, duration)
    result = Result(name, duration)
    lock = threading.Lock()

    def loop(op: Callable[[], object]) -> None:
        mine: list[float] = []
        while (began := time.perf_counter()) < window.end:
            try:
                op()
            except Exception as error:  # a benchmark reports failures, it does not stop on them
                with lock:
                    result.errors[type(error).__name__] += 1
                continue
            ended = time.perf_counter()
            if window.holds(began, ended):
                mine.append(ended - began)
        with lock:
            result.latencies.extend(mine)

    sampler = CpuSampler(window, server_pid)
    threads = [threading.Thread(target=loop, args=(op,), daemon=True) for op in ops]
    for thread in [sampler, *threads]:
        thread.start()
    for thread in [sampler, *threads]:
        thread.join()
    result.cpu = sampler.cpu
    return result


# --------------------------------------------------------------------------- databases


def _with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


class Databases:
    """Fresh databases of this run, dropped at the end even when the run fails."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def create(self, suffix: str) -> str:
        name = f"eventfold_bench_{os.getpid()}_{suffix}"
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _with_dbname(self.admin_url, name)

    def drop_all(self) -> None:
        with self._admin() as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    def server_facts(self) -> dict[str, str]:
        with self._admin() as conn:
            version = conn.execute("SHOW server_version").fetchone()
            sync = conn.execute("SHOW synchronous_commit").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        return {
            "version": str(version[0]) if version else "?",
            "synchronous_commit": str(sync[0]) if sync else "?",
            "fsync": str(fsync[0]) if fsync else "?",
        }


# --------------------------------------------------------------------------- baseline 1: psycopg


def bench_psycopg(url: str, connections: int, warmup: float, duration: float) -> Result:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_rows (id bigserial PRIMARY KEY, originator_id uuid,"
            " originator_version int, topic text, state bytea)"
        )
    conns = [psycopg.connect(url) for _ in range(connections)]
    sql = "INSERT INTO bench_rows (originator_id, originator_version, topic, state) VALUES (%s, %s, %s, %s)"

    def op_for(conn: psycopg.Connection[tuple[object, ...]]) -> Callable[[], None]:
        originator, version = uuid4(), iter(range(1, 10**9))

        def op() -> None:
            conn.execute(sql, (originator, next(version), "bench:Event", PAYLOAD), prepare=True)
            conn.commit()

        return op

    try:
        label = f"psycopg INSERT+commit per row, {connections} conn"
        return run_threads(label, [op_for(c) for c in conns], warmup, duration)
    finally:
        for conn in conns:
            conn.close()


# --------------------------------------------------------------------------- baseline 2: eventsourcing


class Counter1(EsAggregate):
    """The trivial aggregate of the ``eventsourcing`` baseline."""

    @es_event("Bumped")
    def bump(self) -> None:
        pass


class BenchApplication(Application[object]):
    name = "BenchApplication"


def _eventsourcing_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
        "CREATE_TABLE": "y",
    }


def bench_eventsourcing(url: str, warmup: float, duration: float) -> Result:
    os.environ.pop("POSTGRES_ENABLE_DB_FUNCTIONS", None)  # that path skips the table lock
    app = BenchApplication(env=_eventsourcing_env(url))
    counter = Counter1()
    app.save(counter)

    def op() -> None:
        counter.bump()
        app.save(counter)  # one event per save

    try:
        return run_threads("eventsourcing Application.save(), 1 event, 1 thread", [op],
                           warmup, duration)
    finally:
        app.close()


# --------------------------------------------------------------------------- Eventfold in process


def account_number(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


def credit_body(account: str) -> dict[str, object]:
    return {"account_number": account, "isin": ISIN, "quantity": 1}


def bench_in_process(url: str, accounts: int, warmup: float, duration: float) -> Result:
    from example_app.app import build_router
    from framework.adapters.postgres import PostgresEventStore
    from framework.bus import CommandBus, CommandContext
    from framework.settings import PostgresSettings

    store = PostgresEventStore(PostgresSettings.from_url(url))
    router = build_router()
    bus = CommandBus(router, store)
    try:
        store.create_schema()  # what `eventfold init-db` does
        bus.execute(router.parse("RegisterSecurity",
                                 {"isin": ISIN, "name": "Apple", "currency": "USD"}))
        numbers = [account_number("PROC", i) for i in range(accounts)]
        for number in numbers:
            bus.execute(router.parse("OpenAccount", {"account_number": number, "holder_name": "B"}))
        cycle = iter(range(10**12))

        def op() -> None:
            command = router.parse("CreditHoldings", credit_body(numbers[next(cycle) % accounts]))
            request_id = str(uuid4())
            bus.execute(command, CommandContext(correlation_id=request_id, causation_id=request_id))

        return run_threads("Eventfold CommandBus in-process, 1 thread", [op], warmup, duration)
    finally:
        store.close()


# --------------------------------------------------------------------------- HTTP clients


class RawHttpClient:
    """HTTP/1.1 over one keep-alive asyncio stream: the leanest driver this script has."""

    kind = "raw asyncio streams, HTTP/1.1 keep-alive, one connection per client"

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        try:
            return await self._exchange(path, body)
        except BaseException:
            await self.close()  # a half-read response leaves the stream unusable
            raise

    async def _exchange(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (path.encode(), self._host.encode(), self._port, len(body), body)
        )
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        length = 0
        while (header := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await self._reader.readexactly(length) if length else b""
        return int(status_line.split(b" ", 2)[1]), data

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()


class HttpxClient:
    """httpx.AsyncClient with keep-alive: heavier on the driver's CPU than the raw client."""

    kind = "httpx.AsyncClient, HTTP/1.1 keep-alive, one client per concurrent driver"

    def __init__(self, host: str, port: int) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30.0)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        response = await self._client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        return response.status_code, response.content

    async def close(self) -> None:
        await self._client.aclose()


CLIENTS: dict[str, type[RawHttpClient] | type[HttpxClient]] = {
    "raw": RawHttpClient,
    "httpx": HttpxClient,
}


async def _drive(
    clients: list[RawHttpClient | HttpxClient], bodies: list[list[bytes]], result: Result,
    window: Window,
) -> None:
    path = "/commands/CreditHoldings"

    async def one(client: RawHttpClient | HttpxClient, mine: list[bytes]) -> None:
        index = 0
        while (began := time.perf_counter()) < window.end:
            try:
                status, _ = await client.post(path, mine[index % len(mine)])
            except Exception as error:  # reported, not raised
                result.errors[type(error).__name__] += 1
                continue
            finally:
                index += 1
            ended = time.perf_counter()
            if status != 200:
                result.errors[f"HTTP {status}"] += 1
            elif window.holds(began, ended):
                result.latencies.append(ended - began)

    await asyncio.gather(*(one(c, b) for c, b in zip(clients, bodies, strict=True)))


def bench_http(
    name: str, server: Server, client_type: type[RawHttpClient] | type[HttpxClient],
    bodies: list[list[bytes]], warmup: float, duration: float,
) -> Result:
    async def main() -> Result:
        clients = [client_type("127.0.0.1", server.port) for _ in bodies]
        window = Window.after(warmup, duration)
        result = Result(name, duration)
        sampler = CpuSampler(window, server.pid)
        sampler.start()
        try:
            await _drive(clients, bodies, result, window)
        finally:
            for client in clients:
                await client.close()
        sampler.join()
        result.cpu = sampler.cpu
        return result

    return asyncio.run(main())


def http_setup(server: Server, accounts: list[str]) -> None:
    """Register the security and open the accounts, over the same HTTP API."""

    async def main() -> None:
        client = RawHttpClient("127.0.0.1", server.port)
        try:
            requests = [("RegisterSecurity", {"isin": ISIN, "name": "Apple", "currency": "USD"})]
            requests += [("OpenAccount", {"account_number": a, "holder_name": "B"}) for a in accounts]
            for command, body in requests:
                status, data = await client.post(f"/commands/{command}", json.dumps(body).encode())
                if status != 200:
                    raise RuntimeError(f"set-up {command} failed: HTTP {status} {data[:300]!r}")
        finally:
            await client.close()

    asyncio.run(main())


def spread_bodies(accounts: list[str], clients: int) -> list[list[bytes]]:
    """Client i sends to accounts i, i+clients, ...: no two clients share an account."""
    return [
        [json.dumps(credit_body(a)).encode() for a in accounts[i::clients]] for i in range(clients)
    ]


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _eventfold_command() -> list[str]:
    script = Path(sys.executable).with_name("eventfold")
    if script.exists():
        return [str(script)]
    found = shutil.which("eventfold")
    return [found] if found else [sys.executable, "-m", "framework.cli"]


class Server:
    """``eventfold write-api`` (or ``command``) in a subprocess, on a free port, access log off."""

    def __init__(self, url: str, command: list[str] | None = None, *, app: str = EXAMPLE_APP,
                 workers: int = 1, write_async: bool = True) -> None:
        self.port = _free_port()
        self._command = command or [*_eventfold_command(), "write-api", "--host", "127.0.0.1",
                                    "--port", str(self.port), "--workers", str(workers)]
        self._env = eventfold_env(EVENTFOLD_DATABASE_URL=url, PYTHONUNBUFFERED="1", BENCH_PORT=str(self.port),
                                  EVENTFOLD_APP=app, EVENTFOLD_WRITE_ASYNC="on" if write_async else "off")
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            "w+", prefix="eventfold-bench-", suffix=".log")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def init_db(self) -> None:
        done = subprocess.run([*_eventfold_command(), "init-db"], env=self._env,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"eventfold init-db failed: {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._command, env=self._env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self._command[-1]} exited: {self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self._command[-1]} did not come up: {self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def log_tail(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-1500:]

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(2)  # SIGINT: uvicorn shuts down gracefully
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None
        self._log.close()


@contextmanager
def running_server(url: str, *, app: str = EXAMPLE_APP, workers: int = 1,
                   write_async: bool = True) -> Iterator[Server]:
    server = Server(url, app=app, workers=workers, write_async=write_async)
    server.init_db()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str = ",.1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _errors(result: Result) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(result.errors.items())) or "0"


def print_table(results: list[Result]) -> None:
    header = (f"{'phase':<58} {'ops/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7}"
              f"  {'CPU ms/op: driver':>17} {'server':>6} {'pg':>6}  {'other%':>6}  errors")
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<58} {_fmt(r.rate):>9} {_fmt(r.percentile_ms(50), '.2f'):>7}"
            f" {_fmt(r.percentile_ms(99), '.2f'):>7} {_fmt(r.mean_ms(), '.2f'):>7}"
            f"  {_fmt(r.cpu_ms_per_op('driver'), '.2f'):>17}"
            f" {_fmt(r.cpu_ms_per_op('server'), '.2f'):>6}"
            f" {_fmt(r.cpu_ms_per_op('postgres'), '.2f'):>6}  {_fmt(r.other_load(), '.0f'):>6}"
            f"  {_errors(r)}"
        )


def _ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or not b.rate:
        return None
    return a.rate / b.rate


def print_ratios(by_key: dict[str, Result]) -> None:
    http1, es, pg1 = by_key.get("http1"), by_key.get("es"), by_key.get("pg1")
    proc = by_key.get("proc")
    print()
    print("ratios")
    rows = [
        ("Eventfold HTTP 1 client / eventsourcing save()", _ratio(http1, es)),
        ("Eventfold HTTP 1 client / psycopg commit, 1 conn", _ratio(http1, pg1)),
        ("Eventfold in-process 1 thread / eventsourcing save()", _ratio(proc, es)),
        ("Eventfold HTTP 1 client / Eventfold in-process 1 thread", _ratio(http1, proc)),
        ("Eventfold HTTP 16 clients / HTTP 1 client", _ratio(by_key.get("http16"), http1)),
        ("Eventfold HTTP 16 clients / psycopg commit, 1 conn", _ratio(by_key.get("http16"), pg1)),
        ("Eventfold HTTP 32 clients / psycopg commit, 1 conn", _ratio(by_key.get("http32"), pg1)),
        ("Eventfold HTTP 16 clients, one account / distinct", _ratio(by_key.get("http16same"),
                                                                     by_key.get("http16"))),
        ("Eventfold HTTP 32 clients, one account / distinct", _ratio(by_key.get("http32same"),
                                                                     by_key.get("http32"))),
        ("Eventfold HTTP 16 clients: 2 write-api processes / 1", _ratio(by_key.get("http16x2"),
                                                                          by_key.get("http16"))),
        ("Eventfold HTTP 1 client, threaded path / eventsourcing save()", _ratio(by_key.get("threads1"), es)),
        ("Eventfold HTTP 32 clients, threaded path / psycopg commit, 1 conn", _ratio(by_key.get("threads32"), pg1)),
        ("Eventfold HTTP 32 clients, threaded path, one account / distinct", _ratio(by_key.get("threads32same"),
                                                                                    by_key.get("threads32"))),
        ("eventsourcing save() / psycopg commit, 1 conn", _ratio(es, pg1)),
    ]
    for label, value in rows:
        print(f"  {label:<58} {'-' if value is None else f'{value:.2f}x'}")
    if http1 is not None and proc is not None and http1.latencies and proc.latencies:
        overhead = http1.mean_ms() - proc.mean_ms()
        print(f"  {'HTTP overhead per command at 1 client (mean latency)':<58} +{overhead:.2f} ms")
    print_targets(by_key)


def _verdict(met: bool) -> str:
    return "met" if met else "SHORT"


def print_targets(by_key: dict[str, Result]) -> None:
    """The write path's targets (issue 12), each from this run's own figures."""
    lines = []
    ratio = _ratio(by_key.get("http1"), by_key.get("es"))
    if ratio is not None:
        lines.append(f"HTTP 1 client >= {TARGET_RATIO:.1f}x eventsourcing save(): {ratio:.2f}x"
                     f"  {_verdict(ratio >= TARGET_RATIO)}")
    http32 = by_key.get("http32")
    ratio = _ratio(http32, by_key.get("pg1"))
    if ratio is not None and http32 is not None:
        p99 = http32.percentile_ms(99)
        met = ratio >= TARGET_32_RATIO and p99 <= TARGET_32_P99_MS
        lines.append(f"HTTP 32 clients >= {TARGET_32_RATIO:.1f}x psycopg 1 conn, p99 <= {TARGET_32_P99_MS:.0f} ms:"
                     f" {ratio:.2f}x, p99 {p99:.1f} ms  {_verdict(met)}")
    hot = by_key.get("http32same")
    ratio = _ratio(hot, http32)
    if ratio is not None and hot is not None:
        conflicts = hot.errors.get("HTTP 409", 0)
        met = ratio >= TARGET_HOT_RATIO and conflicts == 0
        lines.append(f"HTTP 32 clients on one account >= {TARGET_HOT_RATIO:.1f}x distinct, no 409:"
                     f" {ratio:.2f}x, {conflicts} x 409  {_verdict(met)}")
    http16 = by_key.get("http16")
    cpu = http16.cpu_ms_per_op("server") if http16 is not None else None
    if cpu is not None:
        lines.append(f"server CPU per command at 16 clients <= {TARGET_CPU_MS:.1f} ms: {cpu:.2f} ms"
                     f"  {_verdict(cpu <= TARGET_CPU_MS)}")
    if lines:
        print()
        print("targets (this run)")
        for line in lines:
            print(f"  {line}")


def _versions() -> str:
    names = ["eventsourcing", "psycopg", "uvicorn", "starlette", "pydantic", "httpx"]
    found = []
    for name in names:
        with suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def _uvicorn_flavour() -> str:
    loop = "uvloop" if _importable("uvloop") else "asyncio"
    http = "httptools" if _importable("httptools") else "h11"
    return f"{loop} loop, {http} parser"


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def print_header(args: argparse.Namespace, admin_url: str, facts: dict[str, str], client: str) -> None:
    where = urlsplit(admin_url)
    print("Eventfold write-path benchmark")
    print(f"  machine      : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"  load average : {os.getloadavg()[0]:.2f} (1 min) at start")
    print(f"  PostgreSQL   : {facts['version']} at {where.hostname}:{where.port or 5432}"
          f" (synchronous_commit={facts['synchronous_commit']}, fsync={facts['fsync']})")
    print(f"  packages     : {_versions()}")
    print(f"  server       : `eventfold write-api` subprocess, uvicorn ({_uvicorn_flavour()}),"
          " access log off, default pool size")
    print(f"  HTTP driver  : {client}, in the benchmark process (its CPU is the 'driver' column)")
    print(f"  phases       : warm-up {args.warmup:.1f} s then {args.duration:.1f} s measured, one at a time"
          + (f", best of {args.repeat} runs" if args.repeat > 1 else ""))
    print("  command      : CreditHoldings (loads Security + Account, appends 1 event)")
    print()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per phase")
    parser.add_argument("--quick", action="store_true", help="short smoke run (1 s phases)")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                        help="HTTP driver: raw asyncio streams (default, leanest) or httpx")
    parser.add_argument("--accounts", type=int, default=64, help="accounts to spread credits over")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every phase N times and report the best of N (a busy machine)")
    parser.add_argument("--no-contended", action="store_true",
                        help="skip the phases with many clients on one account")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=set(),
                        help=f"run only these phases (comma-separated: {','.join(ORDER)})")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 1.0)
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else max(1.0, args.duration * 0.3)
    args.accounts = max(args.accounts, 16)
    args.repeat = max(args.repeat, 1)
    if args.no_contended:
        args.only = (args.only or set(ORDER)) - {"http16same", "http32same"}
    return args


ORDER = ["pg1", "pg4", "es", "proc", "http1", "http16", "http16same", "http32", "http32same", "http16x2",
         "threads1", "threads16", "threads32", "threads32same"]
# The same HTTP phases against a write-api with EVENTFOLD_WRITE_ASYNC=off (every command on a thread);
# the http* phases run the default, commands on the event loop.
THREADS = {"threads1", "threads16", "threads32", "threads32same"}
ONE_PROCESS = {"http1", "http16", "http16same", "http32", "http32same"}


def run_once(args: argparse.Namespace, databases: Databases) -> dict[str, Result]:
    """Every phase once, in order, each on fresh databases that are dropped afterwards."""
    client_type = CLIENTS[args.client]
    results: dict[str, Result] = {}

    def phase(key: str, make: Callable[[], Result]) -> None:
        if args.only and key not in args.only:
            return
        print(f"  running: {key} ...", file=sys.stderr, flush=True)
        results[key] = make()

    w, d = args.warmup, args.duration
    try:
        raw_url = databases.create("raw")
        phase("pg1", lambda: bench_psycopg(raw_url, 1, w, d))
        phase("pg4", lambda: bench_psycopg(raw_url, 4, w, d))
        es_url = databases.create("es")
        phase("es", lambda: bench_eventsourcing(es_url, w, d))
        proc_url = databases.create("proc")
        phase("proc", lambda: bench_in_process(proc_url, args.accounts, w, d))
        if not args.only or args.only & ONE_PROCESS:
            run_one_process(args, databases, phase)
        if not args.only or "http16x2" in args.only:
            with running_server(databases.create("http2"), workers=2) as server:
                accounts = [account_number("ACC", i) for i in range(args.accounts)]
                http_setup(server, accounts)
                phase("http16x2", lambda: bench_http(
                    "Eventfold HTTP write API, 2 processes, 16 clients, distinct", server, client_type,
                    spread_bodies(accounts, 16), w, d))
        if not args.only or args.only & THREADS:
            run_threaded_process(args, databases, phase)
    finally:
        databases.drop_all()
    return results


def run_one_process(args: argparse.Namespace, databases: Databases,
                    phase: Callable[[str, Callable[[], Result]], None]) -> None:
    """The HTTP phases against one ``write-api`` process."""
    client_type = CLIENTS[args.client]
    w, d = args.warmup, args.duration
    with running_server(databases.create("http")) as server:
        accounts = [account_number("ACC", i) for i in range(args.accounts)]
        http_setup(server, accounts)
        phase("http1", lambda: bench_http(
            "Eventfold HTTP write API, 1 client", server, client_type,
            spread_bodies(accounts, 1), w, d))
        phase("http16", lambda: bench_http(
            "Eventfold HTTP write API, 16 clients, distinct accounts", server, client_type,
            spread_bodies(accounts, 16), w, d))
        same = [json.dumps(credit_body(accounts[0])).encode()]
        phase("http16same", lambda: bench_http(
            "Eventfold HTTP write API, 16 clients, SAME account", server, client_type,
            [same] * 16, w, d))
        phase("http32", lambda: bench_http(
            "Eventfold HTTP write API, 32 clients, distinct accounts", server, client_type,
            spread_bodies(accounts, 32), w, d))
        phase("http32same", lambda: bench_http(
            "Eventfold HTTP write API, 32 clients, SAME account", server, client_type,
            [same] * 32, w, d))


def run_threaded_process(args: argparse.Namespace, databases: Databases,
                         phase: Callable[[str, Callable[[], Result]], None]) -> None:
    """HTTP phases against one ``write-api`` process with ``EVENTFOLD_WRITE_ASYNC=off``."""
    client_type = CLIENTS[args.client]
    w, d = args.warmup, args.duration
    with running_server(databases.create("threads"), write_async=False) as server:
        accounts = [account_number("ACC", i) for i in range(args.accounts)]
        http_setup(server, accounts)
        for clients in (1, 16, 32):
            phase(f"threads{clients}", lambda n=clients: bench_http(
                f"Eventfold HTTP write API, threaded path, {n} clients, distinct", server, client_type,
                spread_bodies(accounts, n), w, d))
        same = [json.dumps(credit_body(accounts[0])).encode()]
        phase("threads32same", lambda: bench_http(
            "Eventfold HTTP write API, threaded path, 32 clients, SAME account", server, client_type,
            [same] * 32, w, d))


def best_of(runs: list[dict[str, Result]]) -> dict[str, Result]:
    best: dict[str, Result] = {}
    for results in runs:
        for key, result in results.items():
            if key not in best or result.rate > best[key].rate:
                best[key] = result
    return best


def run(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", DEFAULT_URL)
    databases = Databases(admin_url)
    CpuSampler.pg_pids = PostgresPids(admin_url, f"eventfold_bench_{os.getpid()}_")
    print_header(args, admin_url, databases.server_facts(), CLIENTS[args.client].kind)
    runs = []
    for _ in range(args.repeat):
        runs.append(run_once(args, databases))
    if args.repeat > 1:
        print(f"each repetition (ops/s); the table shows the best of {args.repeat} per phase")
        for key in ORDER:
            if key in runs[0]:
                rates = "  ".join(f"{r[key].rate:9,.1f}" for r in runs if key in r)
                print(f"  {key:<11} {rates}")
        print()
    results = best_of(runs)
    print_table([results[k] for k in ORDER if k in results])
    print_ratios(results)
    print()
    print(f"  load average : {os.getloadavg()[0]:.2f} (1 min) at end")
    print("  notes        : CPU ms/op is CPU time in the measured window divided by successful ops;")
    print("                 'pg' = backends of this benchmark's databases + PostgreSQL's background")
    print("                 processes; 'other%' = share of all CPUs used by anything else on the")
    print("                 machine during the phase (other users' tests...): above ~10% the figures")
    print("                 of that phase are disturbed. The driver shares the cores with the server")
    print("                 and PostgreSQL.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (psycopg.Error, RuntimeError) as error:
        print(f"write_path: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
