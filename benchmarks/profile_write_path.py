#!/usr/bin/env python
"""Where one write-path command spends its time: round trips, store calls, Python CPU.

Companion of ``write_path.py`` (same database rules: a fresh ``eventfold_bench_<pid>_*``
database on ``EVENTFOLD_BENCH_DATABASE_URL``, dropped at the end). For ``CreditHoldings``
at one client it reports:

1. SQL round trips, statements, transactions and bytes per command, counted by a TCP proxy
   put between the event store and PostgreSQL (and, for comparison, per ``eventsourcing``
   ``Application.save()``);
2. per store call (read_stream, latest_snapshot, append, ...): calls and wall ms per command;
3. the top functions of a cProfile of ``CommandBus.execute`` in process;
4. with ``--py-spy PATH``: a py-spy sample of the real ``eventfold write-api`` server under a
   one-client load, folded into inclusive/self shares per function (threads included).

    python benchmarks/profile_write_path.py [--commands 2000] [--py-spy /path/to/py-spy]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import write_path as wp

# --------------------------------------------------------------------------- counting proxy


_UNTYPED_REQUESTS = {80877102, 80877103, 80877104}  # cancel, SSLRequest, GSSENCRequest


class _Wire:
    """Splits one connection's PostgreSQL protocol stream into messages and counts their types."""

    def __init__(self, counts: Counter[str], trace: list[str] | None) -> None:
        self._counts = counts
        self._trace = trace
        self._up = bytearray()
        self._down = bytearray()
        self._started = False  # the client's StartupMessage has been seen
        self._single_byte_replies = 0  # 'N'/'S' answers owed to SSL/GSS requests

    def client(self, data: bytes) -> None:
        self._up += data
        while True:
            if not self._started:
                if len(self._up) < 8 or len(self._up) < int.from_bytes(self._up[:4], "big"):
                    return
                length, code = int.from_bytes(self._up[:4], "big"), int.from_bytes(self._up[4:8], "big")
                if code in _UNTYPED_REQUESTS:
                    self._single_byte_replies += 1
                else:
                    self._started = True
                del self._up[:length]
                continue
            if not self._take(self._up, "client "):
                return

    def server(self, data: bytes) -> None:
        self._down += data
        while self._single_byte_replies and self._down:
            del self._down[:1]
            self._single_byte_replies -= 1
        while self._take(self._down, "server "):
            pass

    def _take(self, buffer: bytearray, side: str) -> bool:
        if len(buffer) < 5:
            return False
        total = 1 + int.from_bytes(buffer[1:5], "big")
        if len(buffer) < total:
            return False
        kind = chr(buffer[0])
        self._counts[side + kind] += 1
        if self._trace is not None:
            detail = ""
            if side == "client " and kind in "QP":  # show which statement
                body = bytes(buffer[5:total])
                if kind == "P":
                    body = body.split(b"\0", 1)[1] if b"\0" in body else body
                detail = "(" + " ".join(body.split(b"\0", 1)[0].decode(errors="replace").split()[:3]) + ")"
            self._trace.append(("> " if side == "client " else "< ") + kind + detail)
        del buffer[:total]
        return True


class CountingProxy:
    """Forwards TCP to PostgreSQL; counts protocol messages and client turns after a server reply."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # "turns", "bytes up", "client S", "server Z", ...
        self.trace: list[str] | None = None  # set to a list to record every message
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        server_spoke = True  # the first client message counts as a turn
        wire = _Wire(self.counts, None)
        with client, server:
            while True:
                readable, _, _ = select.select([client, server], [], [])
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (server if sock is client else client).sendall(data)
                    with self._lock:
                        wire._trace = self.trace
                        if sock is client:
                            self.counts["bytes up"] += len(data)
                            self.counts["turns"] += server_spoke
                            wire.client(data)
                        else:
                            self.counts["bytes down"] += len(data)
                            wire.server(data)
                    server_spoke = sock is not client

    def close(self) -> None:
        self._listener.close()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


# --------------------------------------------------------------------------- statement counting


class StatementCounter:
    """Counts psycopg execute() calls and commits in this process, by the statement's first words."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self._originals: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        cursor_execute = psycopg.Cursor.execute
        conn_commit = psycopg.Connection.commit
        counter = self

        def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            counter.kinds[_kind(query)] += 1
            return cursor_execute(cursor, query, *args, **kwargs)

        def commit(conn: Any) -> Any:
            counter.kinds["COMMIT (conn.commit)"] += 1
            return conn_commit(conn)

        self._originals = [(psycopg.Cursor, "execute", cursor_execute),
                           (psycopg.Connection, "commit", conn_commit)]
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        psycopg.Connection.commit = commit  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for owner, name, original in self._originals:
            setattr(owner, name, original)


def _kind(query: Any) -> str:
    if isinstance(query, bytes):
        text = query.decode(errors="replace")
    elif isinstance(query, str):
        text = query
    else:
        try:
            text = query.as_string(None)
        except Exception:  # a composed statement that needs a connection to render
            text = type(query).__name__
    words = text.strip().split()
    head = " ".join(words[:2]).upper() if words else "?"
    if head.startswith("SELECT") and "FROM" in text.upper():
        table = text.upper().split("FROM", 1)[1].split()[0].strip('"').lower()
        return f"SELECT ... FROM {table.split('.')[-1].strip(chr(34))}"
    return head


def _xact_commits(admin_url: str, dbname: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- store-call timing


@contextmanager
def timed_store(store: Any) -> Iterator[dict[str, list[float]]]:
    """Wraps the store's public methods on the instance and records each call's wall time."""
    calls: dict[str, list[float]] = defaultdict(list)
    names = ["read_stream", "latest_snapshot", "append", "save_snapshot",
             "claim_idempotency_key", "release_idempotency_key"]

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                calls[name].append(time.perf_counter() - began)
        return timed

    for name in names:
        setattr(store, name, wrap(name, getattr(store, name)))
    try:
        yield calls
    finally:
        for name in names:
            with suppress(AttributeError):
                delattr(store, name)


# --------------------------------------------------------------------------- set-up


def build_bus(url: str, accounts: int) -> tuple[Any, Any, Any, list[str]]:
    from example_app.app import build_router
    from framework.adapters.postgres import PostgresEventStore
    from framework.bus import CommandBus
    from framework.errors import AlreadyExists
    from framework.settings import PostgresSettings

    store = PostgresEventStore(PostgresSettings.from_url(url))
    store.create_schema()
    router = build_router()
    bus = CommandBus(router, store)
    with suppress(AlreadyExists):
        bus.execute(router.parse("RegisterSecurity",
                                 {"isin": wp.ISIN, "name": "Apple", "currency": "USD"}))
    numbers = [wp.account_number("PROF", i) for i in range(accounts)]
    for number in numbers:
        with suppress(AlreadyExists):
            bus.execute(router.parse("OpenAccount", {"account_number": number, "holder_name": "B"}))
    return store, router, bus, numbers


def command_runner(router: Any, bus: Any, numbers: list[str], *, keyed: bool) -> Callable[[int], None]:
    from framework.bus import CommandContext

    def run(i: int) -> None:
        command = router.parse("CreditHoldings", wp.credit_body(numbers[i % len(numbers)]))
        request_id = str(uuid4())
        bus.execute(command, CommandContext(correlation_id=request_id, causation_id=request_id,
                                            idempotency_key=request_id if keyed else None))

    return run


# --------------------------------------------------------------------------- reports


def report_round_trips(admin_url: str, url: str, commands: int, accounts: int) -> None:
    parts = urlsplit(url)
    dbname = parts.path.lstrip("/")
    proxy = CountingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxied = _via(url, proxy.port)
    store, router, bus, numbers = build_bus(proxied, accounts)
    print("1. database traffic per operation, seen by a TCP proxy that parses the wire protocol")
    print("   waits = Sync + simple Query + Flush messages (each makes the client wait for the server);")
    print("   turns = client sends after a server reply; txns from pg_stat_database;")
    print("   stmts = Execute + simple Query messages")
    print(f"   {'what':<44} {'waits':>5} {'turns':>5} {'txns':>5} {'stmts':>5} {'B up':>5} {'B down':>6}"
          "  client messages")
    breakdowns: list[tuple[str, Counter[str]]] = []
    try:
        for keyed in (False, True):
            label = f"Eventfold CreditHoldings{' + Idempotency-Key' if keyed else ''}"
            run = command_runner(router, bus, numbers, keyed=keyed)
            for i in range(200):  # warm: pool filled, statements prepared, cache loaded
                run(i)
            breakdowns.append((label, _measure_traffic(label, commands, run, proxy, admin_url, dbname)))
        traces = [(f"Eventfold CreditHoldings{' + Idempotency-Key' if keyed else ''}",
                   _trace(proxy, command_runner(router, bus, numbers, keyed=keyed)))
                  for keyed in (False, True)]
    finally:
        store.close()
    label, kinds, es_trace = _eventsourcing_traffic(admin_url, proxied, dbname, commands, proxy)
    breakdowns.append((label, kinds))
    traces.append((label, es_trace))
    proxy.close()
    _print_traces(traces)
    for label, kinds in breakdowns:
        print(f"   psycopg execute()/commit() calls per operation, {label}:")
        for kind, count in kinds.most_common():
            print(f"     {count / commands:6.2f}  {kind}")


def _trace(proxy: CountingProxy, run: Callable[[int], None]) -> list[str]:
    """One operation's messages, one line per client turn (client batch, then the replies)."""
    run(0)
    proxy.trace = []
    run(1)
    time.sleep(0.05)  # let the proxy forward the last replies
    trace, proxy.trace = proxy.trace, None
    while trace and trace[0].startswith("<"):  # a late reply to the operation before
        trace.pop(0)
    groups: list[tuple[str, list[str]]] = []
    for item in trace:
        direction, kind = item[0], item[2:]
        if groups and groups[-1][0] == direction:
            groups[-1][1].append(kind)
        else:
            groups.append((direction, [kind]))
    lines: list[str] = []
    for direction, kinds in groups:
        text = f"{direction} {' '.join(kinds)}"
        if direction == ">" or not lines:
            lines.append(text)
        else:
            lines[-1] += "   " + text
    return lines


def _print_traces(traces: list[tuple[str, list[str]]]) -> None:
    print("   message traces of one operation (> client, < server; one line per client turn;")
    print("   P=Parse B=Bind D=Describe E=Execute S=Sync H=Flush Q=Query;"
          " 1/2=Parse/BindComplete n/T/D=row info C=done Z=ready A=notify)")
    for label, lines in traces:
        print(f"   {label}:")
        for line in lines:
            print("     " + line)


def _measure_traffic(label: str, n: int, run: Callable[[int], None], proxy: CountingProxy,
                     admin_url: str, dbname: str) -> Counter[str]:
    counter = StatementCounter()
    before, xact = proxy.snapshot(), _xact_commits(admin_url, dbname)
    counter.install()
    try:
        for i in range(n):
            run(i)
    finally:
        counter.uninstall()
    after, xact_after = proxy.snapshot(), _xact_commits(admin_url, dbname)
    d = after - before
    xacts = xact_after - xact - 1  # the stats query itself is one transaction
    waits = d["client S"] + d["client Q"] + d["client H"]
    stmts = d["client E"] + d["client Q"]
    messages = " ".join(f"{k[-1]}={v / n:.1f}" for k, v in sorted(d.items()) if k.startswith("client"))
    print(f"   {label:<44} {waits / n:5.2f} {d['turns'] / n:5.2f} {xacts / n:5.2f} {stmts / n:5.2f}"
          f" {d['bytes up'] / n:5.0f} {d['bytes down'] / n:6.0f}  {messages}")
    return counter.kinds


def _eventsourcing_traffic(admin_url: str, proxied: str, dbname: str, n: int,
                           proxy: CountingProxy) -> tuple[str, Counter[str], list[str]]:
    app = wp.BenchApplication(env=wp._eventsourcing_env(proxied))
    aggregate = wp.Counter1()
    app.save(aggregate)

    def run(_: int) -> None:
        aggregate.bump()
        app.save(aggregate)

    label = "eventsourcing Application.save(), 1 event"
    try:
        for i in range(200):
            run(i)
        kinds = _measure_traffic(label, n, run, proxy, admin_url, dbname)
        return label, kinds, _trace(proxy, run)
    finally:
        app.close()


def report_store_calls(url: str, commands: int, accounts: int) -> None:
    store, router, bus, numbers = build_bus(url, accounts)
    run = command_runner(router, bus, numbers, keyed=False)
    try:
        for i in range(300):
            run(i)
        with timed_store(store) as calls:
            began = time.perf_counter()
            for i in range(commands):
                run(i)
            total = time.perf_counter() - began
    finally:
        store.close()
    in_store = sum(sum(v) for v in calls.values())
    print()
    print(f"2. store calls per command, in process, 1 thread ({commands} commands,"
          f" {total / commands * 1000:.3f} ms/command wall)")
    for name, times in sorted(calls.items(), key=lambda kv: -sum(kv[1])):
        print(f"   {name:<24} {len(times) / commands:5.2f} calls  {sum(times) / commands * 1000:6.3f} ms")
    print(f"   {'outside the store':<24} {'':>11}  {(total - in_store) / commands * 1000:6.3f} ms"
          " (handler, pydantic, mapper, bus)")


def report_cprofile(url: str, commands: int, accounts: int, top: int) -> None:
    store, router, bus, numbers = build_bus(url, accounts)
    run = command_runner(router, bus, numbers, keyed=False)
    try:
        for i in range(300):
            run(i)
        profile = cProfile.Profile()
        profile.enable()
        for i in range(commands):
            run(i)
        profile.disable()
    finally:
        store.close()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    print()
    print(f"3. cProfile of {commands} in-process commands (cumulative, top {top});"
          " ms below are per whole run, divide by the command count")
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    for line in lines[start:]:
        if line.strip():
            print("   " + line[:160])
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    print(f"   -- by own time (tottime), top {top}")
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    for line in lines[start + 1:]:
        if line.strip():
            print("   " + line[:160])


# --------------------------------------------------------------------------- py-spy of the server


def report_py_spy(py_spy: str, url: str, seconds: float, accounts: int, top: int) -> None:
    with wp.running_server(url) as server:
        numbers = [wp.account_number("SPY", i) for i in range(accounts)]
        wp.http_setup(server, numbers)
        bodies = wp.spread_bodies(numbers, 1)
        wp.bench_http("warm-up", server, wp.RawHttpClient, bodies, 0.0, 1.0)
        with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as raw:
            pass  # py-spy writes it
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--output", raw.name,
             "--duration", str(int(seconds)), "--rate", "500", "--gil", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        result = wp.bench_http("profiled", server, wp.RawHttpClient, bodies, 0.3, seconds)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            print(f"\n4. py-spy failed: {err.decode(errors='replace')[-400:]}")
            return
    print()
    print(f"4. py-spy of the `eventfold write-api` server, 1 client, {seconds:.0f} s,"
          f" {result.rate:.0f} cmds/s while sampled (sampling slows it a little)")
    _fold(Path(raw.name), top)
    os.unlink(raw.name)


def _fold(path: Path, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        names = [_short(f) for f in frames[1:]]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    if not total:
        print("   (no samples)")
        return
    print(f"   {total} samples of the thread holding the GIL (py-spy --gil: Python CPU, not waits);")
    print("   inclusive share (a function and what it calls):")
    for name, count in inclusive.most_common(top):
        print(f"   {count / total * 100:5.1f}%  {name}")
    print(f"   -- own time (leaf frames), top {top}:")
    for name, count in own.most_common(top):
        print(f"   {count / total * 100:5.1f}%  {name}")


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"


# --------------------------------------------------------------------------- HTTP stack cost


MEMORY_SERVER = """
import os, uvicorn
from example_app.app import build_router
from framework.adapters.memory import MemoryEventStore
from framework.bus import CommandBus
from framework.http.write_api import create_write_app
store = MemoryEventStore()
store.create_schema()
app = create_write_app(CommandBus(build_router(), store))
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), access_log=False,
            log_level="warning")
"""


def report_http_stack(seconds: float, accounts: int) -> None:
    """The same write app and bus on the in-memory store: what HTTP costs without a database."""
    from example_app.app import build_router
    from framework.adapters.memory import MemoryEventStore
    from framework.bus import CommandBus

    store = MemoryEventStore()
    store.create_schema()
    router = build_router()
    bus = CommandBus(router, store)
    bus.execute(router.parse("RegisterSecurity", {"isin": wp.ISIN, "name": "A", "currency": "USD"}))
    numbers = [wp.account_number("MEM", i) for i in range(accounts)]
    for number in numbers:
        bus.execute(router.parse("OpenAccount", {"account_number": number, "holder_name": "B"}))
    run = command_runner(router, bus, numbers, keyed=False)
    counter = iter(range(10**12))
    direct = wp.run_threads("in-process", [lambda: run(next(counter))], 0.5, seconds)
    with wp.Server("postgresql://unused/x", [sys.executable, "-c", MEMORY_SERVER]) as server:
        wp.http_setup(server, numbers)
        http1 = wp.bench_http("http", server, wp.RawHttpClient, wp.spread_bodies(numbers, 1),
                              0.5, seconds)
    print()
    print(f"5. HTTP stack cost without a database (MemoryEventStore), 1 client, uvicorn"
          f" ({wp._uvicorn_flavour()})")
    print(f"   CommandBus in process        {direct.rate:8,.0f} cmds/s  {direct.mean_ms():.3f} ms/cmd")
    print(f"   same app over HTTP, 1 client {http1.rate:8,.0f} cmds/s  {http1.mean_ms():.3f} ms/cmd,"
          f" server CPU {wp._fmt(http1.cpu_ms_per_op('server'), '.3f')} ms/cmd,"
          f" driver CPU {wp._fmt(http1.cpu_ms_per_op('driver'), '.3f')} ms/cmd")
    print(f"   => HTTP + thread hop adds {http1.mean_ms() - direct.mean_ms():.3f} ms per command"
          f" (other load {wp._fmt(http1.other_load(), '.0f')}%)")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=2000, help="commands per measurement")
    parser.add_argument("--accounts", type=int, default=64)
    parser.add_argument("--top", type=int, default=30, help="functions listed per profile")
    parser.add_argument("--py-spy", dest="py_spy", help="path of a py-spy binary (optional)")
    parser.add_argument("--py-spy-seconds", type=float, default=8.0)
    parser.add_argument("--http-seconds", type=float, default=4.0,
                        help="measured seconds of the HTTP-stack (no database) comparison")
    args = parser.parse_args(argv)
    admin_url = os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", wp.DEFAULT_URL)
    databases = wp.Databases(admin_url)
    try:
        url = databases.create("prof")
        report_round_trips(admin_url, url, args.commands, args.accounts)
        report_store_calls(url, args.commands, args.accounts)
        report_cprofile(url, args.commands, args.accounts, args.top)
        report_http_stack(args.http_seconds, args.accounts)
        if args.py_spy:
            report_py_spy(args.py_spy, databases.create("spy"), args.py_spy_seconds,
                          args.accounts, args.top)
    finally:
        databases.drop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
