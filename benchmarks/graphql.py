#!/usr/bin/env python
"""Query-path benchmark: Eventfold's GraphQL API over real HTTP against raw baselines of the same run.

Phases, one after the other, each at ``--connections`` (16) concurrent HTTP/1.1 keep-alive
connections:

1. baselines, served by one uvicorn process started by this script with the same settings as
   ``eventfold query-api`` (uvicorn's default loop and HTTP parser, access log off):
   ``json``   a bare Starlette endpoint answering JSON;
   ``hello0`` plain Strawberry ``{ hello }``, no extensions (for reference);
   ``hello``  plain Strawberry ``{ hello }`` with ``ParserCache`` + ``ValidationCache`` passed as
              factories (``lambda: ParserCache(...)``), as Eventfold passes them;
2. Eventfold: a real ``eventfold query-api`` subprocess on PostgreSQL, its read models filled by
   seeding the event store (``--actions`` corporate actions through the example's commands on
   ``CommandBus`` + ``PostgresEventStore``) and a catch-up of every projection
   (``ProjectionWorker`` on ``PostgresViewStore``):
   ``card``   (a) one card by id ``{ card(actionId: "...") { actionId status kind recordDate } }``,
              the ids rotating over every seeded action;
   ``cards``  (b) a page of 20 cards with a nested, batched field
              ``{ cards(first: 20) { edges { node { actionId status security { name } } } } }``.

3. under a write load (``card_w``, ``cards_w``): the same questions, also asking for each card's
   ``position``, while a writer subprocess (``--role writer``) sends ``--write-rate`` (200) commands/s
   through the example's ``CommandBus`` (announce, then validate, new cards, each heading the page of
   (b)) and a projector subprocess (``--role projector``: every projection's ``ProjectionWorker``)
   commits the changes, NOTIFYing the query API as ``eventfold project`` does. The rotation of (a)
   mixes the seeded cards with the ones being written. Each document is sent twice in a row: plainly
   (its answer may be kept by the response cache), then with ``Eventfold-Position: 1``, so that the
   answer claims positions (``extensions.consistency``) and a kept one is checked. (Until 2026-12-07
   every second request claimed while the rotation moved one document a request: with an even number of
   documents the claiming ones never asked for a document the plain ones had kept.)
   Cache honesty: every answer is recorded and every claiming one checked:
   a card showing position c while the cards projection is claimed at P is stale when its card is
   known to have changed at some x with c < x <= P (known: the writer's log, every position any answer
   showed, the final rows read directly); "newer than claimed" is allowed (the claim is "at least").
4. ``subs``: ``--subscriptions`` (1,000) card subscriptions over graphql-transport-ws, one WebSocket
   each, ``--per-key`` (2) on each of the cards the writer then announces and validates at
   ``--write-rate``; the latency of each update runs from the moment the cards projection's commit is
   heard (this script LISTENs on the channel the query API listens on, in a thread of its own, not on
   the clients' loop) to the subscriber's message. Also counted: updates out of order, subscribers
   whose last update is not their card's final row. Messages over the target are grouped into stalls,
   each shown with what the server's and the clients' event-loop threads did meanwhile (time on a CPU,
   time runnable but waiting for one, from /proc/<pid>/task/*/schedstat): a loop waiting for a CPU is
   a machine busy with other processes, not the server's doing.

Targets (issue 14): (a) >= 1.0x the cached Strawberry baseline's requests/s with p99 <= 20 ms; (b) >= 0.5x;
both also under the write load, every answer honest; subscriptions p99 <= 50 ms at 200 changes/s.
The older target (a) >= 0.7x with p99 <= 30 ms is still judged on its own line.

Before each phase's timed warm-up every document of its rotation is asked once (``prime``): a
document's first execution is start-up work. On a machine loaded by other work (load average 10-30 on
2 cores) a phase could otherwise "stall" at tens of req/s (2026-12-07, issue 14): the server's event
loop waited for a CPU 45-75% of the phase (the kernel's run-queue wait, the ``starved%`` column) and
the first window after a start cost ~2x the server CPU per request (every document's first parse,
validation and plan, each pooled connection's prepared statements). PostgreSQL was not the cause:
the query API's backends sat idle (ClientRead) and waited on no lock. The servers and the write
load's processes also run in sessions of their own: with autogroup scheduling a session shares one
slice of the machine, and the write load would take the server's (EVENTFOLD_BENCH_SAME_SESSION=1: as before).

The driver is ``wrk`` (Debian's package: C, one thread, Lua only to rotate bodies and check
answers) when it is on PATH, else raw asyncio streams in this process (``--driver raw``). Every
answer is checked: a status other than 200 or a body with ``"errors"`` counts as an error.
The script creates its own database (``eventfold_bench_<pid>_graphql``) on the server named by
``EVENTFOLD_BENCH_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
drops it at the end, and stops the servers it started. It prints figures, ratios and a verdict,
and never asserts: speed is reported, not tested.

    python benchmarks/graphql.py                 # full run, 5 s per phase (about a minute)
    python benchmarks/graphql.py --quick         # smoke run
    python benchmarks/graphql.py --only hello,card --duration 10
    python benchmarks/graphql.py --only hello,card_w,cards_w,subs   # under writes, and subscriptions
    python benchmarks/graphql.py --py-spy /path/to/py-spy   # and where (a) spends the server's CPU
    EVENTFOLD_GRAPHQL_RESPONSE_CACHE=0 python benchmarks/graphql.py   # every answer computed (no kept answers)

The query API keeps answers while the read models they came from stand still (docs/graphql.md): with
the read models idle, (a) and (b) are served from kept answers after their first request; the
environment passes to the server, so EVENTFOLD_GRAPHQL_RESPONSE_CACHE=0 measures execution itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# This file is named graphql.py: with its folder on sys.path, Strawberry's `import graphql` would
# import this script instead of graphql-core. The folder comes off before anything is imported.
for _entry in [p for p in sys.path if Path(p or ".").resolve() == _HERE]:
    sys.path.remove(_entry)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import suppress  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import date, timedelta  # noqa: E402
from importlib import metadata  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import psycopg  # noqa: E402


def _sibling(name: str) -> ModuleType:
    """A module of this folder, loaded by path (the folder is not on sys.path, see above)."""
    spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


wp = _sibling("write_path")  # databases, CPU accounting, the raw HTTP client, the server helpers

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEMA = "bench_read"  # EVENTFOLD_DB_SCHEMA of the query API: not the default schema
TARGET_RATIO = 0.7
TARGET_P99_MS = 30.0
ISINS = {"US0378331005": ("Apple Inc.", "USD"), "DE0007164600": ("SAP SE", "EUR"),
         "FR0000120271": ("TotalEnergies SE", "EUR")}
HELLO = '{ hello }'
CARD = '{ card(actionId: "%s") { actionId status kind recordDate } }'
CARDS = "{ cards(first: 20) { edges { node { actionId status security { name } } } } }"

# The baselines' server: run as `python -P -c BASELINE_SERVER` (-P: no script folder or cwd on
# sys.path, so this folder's graphql.py cannot shadow graphql-core), served like `eventfold
# query-api` serves (framework/cli/serve.py `_serve`): uvicorn.run defaults, access log off.
BASELINE_SERVER = """
import os
import strawberry
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache

@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"

cached = strawberry.Schema(query=Query, extensions=[
    lambda: ParserCache(maxsize=1024), lambda: ValidationCache(maxsize=1024)])
plain = strawberry.Schema(query=Query)

async def bare_json(request):
    await request.body()
    return JSONResponse({"data": {"hello": "world"}})

async def healthz(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[
    Route("/json", bare_json, methods=["GET", "POST"]),
    Route("/graphql", GraphQL(cached, graphql_ide=None), methods=["GET", "POST"]),
    Route("/graphql-plain", GraphQL(plain, graphql_ide=None), methods=["GET", "POST"]),
    Route("/healthz", healthz),
])
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), access_log=False,
            log_level="info")
"""


# Servers and the write load's processes each in a session of their own (see the docstring);
# EVENTFOLD_BENCH_SAME_SESSION=1 keeps them in this script's session, as before 2026-12-07.
OWN_SESSIONS = os.environ.get("EVENTFOLD_BENCH_SAME_SESSION") != "1"


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    key: str
    name: str
    server: str  # "baseline" or "eventfold"
    path: str
    queries: list[str]  # rotated over by every connection
    load: bool = False  # under the write load: every second request claims (Eventfold-Position: 1), answers kept


def phases(action_ids: list[str], loaded: list[str] | None = None) -> dict[str, Phase]:
    cards = [CARD % a for a in action_ids] or [CARD % "CA-0000"]
    # Under load: the seeded cards and, as many, the cards the writer creates and changes meanwhile.
    # At most 200 documents in all, as for (a): the parse and validation caches keep 256 (an alias names the id).
    spread = (loaded or [])[:: max(1, len(loaded or []) // 100)][:100]
    mixed = [card_w(a) for pair in zip(action_ids[:100], spread, strict=False) for a in pair] or [card_w("CA-0000")]
    return {
        "json": Phase("json", "Starlette JSON endpoint (bare)", "baseline", "/json", [HELLO]),
        "hello0": Phase("hello0", "Strawberry { hello }, no extensions", "baseline", "/graphql-plain", [HELLO]),
        "hello": Phase("hello", "Strawberry { hello }, ParserCache+ValidationCache", "baseline", "/graphql",
                       [HELLO]),
        "card": Phase("card", "(a) Eventfold card(actionId) by id", "eventfold", "/graphql", cards),
        "cards": Phase("cards", "(b) Eventfold cards(first: 20) + security{name}", "eventfold", "/graphql",
                       [CARDS]),
        "card_w": Phase("card_w", f"(a) card by id, writes {WRITE_RATE:.0f}/s", "eventfold", "/graphql", mixed,
                        load=True),
        "cards_w": Phase("cards_w", f"(b) cards(first: 20), writes {WRITE_RATE:.0f}/s", "eventfold", "/graphql",
                         [CARDS_W], load=True),
        "cardsd_w": Phase("cardsd_w", f"(b') cards descending, writes {WRITE_RATE:.0f}/s beyond", "eventfold",
                          "/graphql", [CARDSD_W], load=True),
    }


ORDER = ["json", "hello0", "hello", "card", "cards", "card_w", "cards_w", "cardsd_w", "subs"]
LOADED = ["card_w", "cards_w", "cardsd_w"]


def body_of(query: str) -> bytes:
    return json.dumps({"query": query}).encode()


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    name: str
    seconds: float
    ok: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds in the window
    answers: list[str] = field(default_factory=list)  # a load phase's good answers (JSON texts)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def cpu_ms_per_op(self, role: str) -> float | None:
        if role not in self.cpu or not self.ok:
            return None
        return self.cpu[role] / self.ok * 1000

    def other_load(self) -> float | None:
        if "other" not in self.cpu or not self.seconds:
            return None
        return self.cpu["other"] / (self.seconds * (os.cpu_count() or 1)) * 100

    def starved(self) -> float | None:
        """Share of the phase the server's event loop was ready to run but waited for a CPU (the
        kernel's run-queue wait): above ~30% the figure is the machine's, not the server's."""
        if "server_wait" not in self.cpu or not self.seconds:
            return None
        return self.cpu["server_wait"] / self.seconds * 100


def _percentile_ms(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000


class Sampler(threading.Thread):
    """CPU seconds in a window: the driver (when it is a process we can sample), the server, this
    benchmark's PostgreSQL processes, and everything else on the machine ('other')."""

    def __init__(self, window: Any, server_pid: int | None, driver_pid: int | None,
                 pg_pids: Callable[[], list[int]]) -> None:
        super().__init__(daemon=True)
        self._window, self._server, self._driver, self._pg_pids = window, server_pid, driver_pid, pg_pids
        self._pg: list[int] = []
        self.cpu: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {"postgres": sum(wp._cpu_of(p) for p in self._pg), "machine": wp._machine_busy()}
        if self._server is not None:
            sample["server"] = wp._cpu_of(self._server)
            sample["server_wait"] = _runqueue_wait(self._server)
        if self._driver is not None:
            sample["driver"] = wp._cpu_of(self._driver)
        return sample

    def run(self) -> None:
        self._pg = self._pg_pids()
        time.sleep(max(0.0, self._window.start - time.perf_counter()))
        before = self._sample()
        time.sleep(max(0.0, self._window.end - time.perf_counter()))
        after = self._sample()
        cpu = {role: after[role] - before[role] for role in before}
        wait = cpu.pop("server_wait", None)
        cpu["other"] = max(0.0, cpu.pop("machine") - sum(cpu.values()))
        if wait is not None:
            cpu["server_wait"] = wait
        self.cpu = cpu


def _runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread (a server's event loop) has spent runnable but not running."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


# --------------------------------------------------------------------------- drivers


class RawDriver:
    """HTTP/1.1 keep-alive over raw asyncio streams, in this process (write_path.py's client)."""

    kind = "raw asyncio streams in the benchmark process (its CPU is the 'driver' column)"

    def __init__(self, pg_pids: Callable[[], list[int]]) -> None:
        self._pg_pids = pg_pids

    def run(self, phase: Phase, port: int, server_pid: int | None, connections: int,
            warmup: float, duration: float) -> Result:
        if phase.load:
            raise RuntimeError(f"phase {phase.key} checks every answer: it needs wrk (Debian: apt-get install wrk)")
        return asyncio.run(self._main(phase, port, server_pid, connections, warmup, duration))

    async def _main(self, phase: Phase, port: int, server_pid: int | None, connections: int,
                    warmup: float, duration: float) -> Result:
        bodies = [body_of(q) for q in phase.queries]
        window = wp.Window.after(warmup, duration)
        result = Result(phase.name, duration)
        latencies: list[float] = []
        sampler = Sampler(window, server_pid, os.getpid(), self._pg_pids)
        sampler.start()

        async def one(index: int) -> None:
            client = wp.RawHttpClient("127.0.0.1", port)
            try:
                while (began := time.perf_counter()) < window.end:
                    body = bodies[index % len(bodies)]
                    index += 1
                    try:
                        status, data = await client.post(phase.path, body)
                    except Exception as error:  # reported, not raised
                        result.errors[type(error).__name__] += 1
                        continue
                    ended = time.perf_counter()
                    if not window.holds(began, ended):
                        continue
                    if status != 200 or b'"errors"' in data:
                        result.errors[f"HTTP {status}" if status != 200 else "GraphQL errors"] += 1
                    else:
                        latencies.append(ended - began)
            finally:
                await client.close()

        await asyncio.gather(*(one(i * 7) for i in range(connections)))
        sampler.join()
        latencies.sort()
        result.ok = len(latencies)
        result.p50_ms, result.p99_ms = _percentile_ms(latencies, 50), _percentile_ms(latencies, 99)
        result.mean_ms = statistics.fmean(latencies) * 1000 if latencies else float("nan")
        result.cpu = sampler.cpu
        return result


WRK_SCRIPT = """
local bodies = { %(bodies)s }
local count = #bodies
local index = 0
bad = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = {}

function setup(thread)
  thread:set("offset", #threads * 7)
  table.insert(threads, thread)
end

wrk.path = "%(path)s"
wrk.body = bodies[1]
local claim = %(claim)s
local out = nil
if %(record)s ~= nil then out = io.open(%(record)s, "w") end
local plain = { ["Content-Type"] = "application/json" }
local claiming = { ["Content-Type"] = "application/json", ["Eventfold-Position"] = "1" }
if count > 1 or claim then
  function request()
    index = index + 1
    local headers = nil
    local asked = index
    if claim then  -- each body twice in a row: plain (its answer may be kept), then claiming (checked)
      if index %% 2 == 0 then headers = claiming else headers = plain end
      asked = math.floor(index / 2)
    end
    return wrk.format(nil, nil, headers, bodies[((asked + offset) %% count) + 1])
  end
end

function response(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then
    bad = bad + 1
  elseif out then
    out:write(body, "\\n")
  end
end

function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(threads) do failed = failed + thread:get("bad") end
  local e = summary.errors
  io.write(string.format(
    "EVENTFOLD requests=%%.0f duration_us=%%.0f bad=%%.0f p50_us=%%.0f p99_us=%%.0f mean_us=%%.1f"
    .. " connect=%%.0f read=%%.0f write=%%.0f timeout=%%.0f\\n",
    summary.requests, summary.duration, failed, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.timeout))
end
"""


class WrkDriver:
    """``wrk`` in a subprocess: one thread, N keep-alive connections; Lua rotates bodies and checks
    answers. Its CPU (the 'driver' column) is the measured run's, from the kernel (wait4)."""

    kind = "wrk (1 thread, Lua body rotation + answer check), a subprocess"

    def __init__(self, wrk: str, pg_pids: Callable[[], list[int]]) -> None:
        self._wrk, self._pg_pids = wrk, pg_pids

    def run(self, phase: Phase, port: int, server_pid: int | None, connections: int,
            warmup: float, duration: float) -> Result:
        seconds = max(1, round(duration))  # wrk takes whole seconds
        with tempfile.TemporaryDirectory(prefix="eventfold-bench-wrk-") as folder:
            script, recorded = Path(folder) / "phase.lua", Path(folder) / "answers.txt"
            bodies = ", ".join(_lua_string(body_of(q).decode()) for q in phase.queries)
            claim = "true" if phase.load else "false"
            script.write_text(WRK_SCRIPT % {"bodies": bodies, "path": phase.path, "claim": claim, "record": "nil"})
            if warmup > 0:
                self._wrk_run(script, port, connections, max(1, round(warmup)), None)
            if phase.load:
                script.write_text(WRK_SCRIPT % {"bodies": bodies, "path": phase.path, "claim": claim,
                                                "record": _lua_string(str(recorded))})
            output = Path(folder) / "out.txt"
            result = self._measured(phase, script, output, port, server_pid, connections, seconds)
            if phase.load and recorded.exists():
                result.answers = recorded.read_text().splitlines()
            return result

    def _command(self, script: Path, port: int, connections: int, seconds: int) -> list[str]:
        return [self._wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
                f"http://127.0.0.1:{port}/"]

    def _wrk_run(self, script: Path, port: int, connections: int, seconds: int, out: Path | None) -> None:
        with open(out or os.devnull, "w") as sink:
            subprocess.run(self._command(script, port, connections, seconds), stdout=sink,
                           stderr=subprocess.STDOUT, check=False, timeout=seconds + 60)

    def _measured(self, phase: Phase, script: Path, output: Path, port: int, server_pid: int | None,
                  connections: int, seconds: int) -> Result:
        with open(output, "w") as sink:
            process = subprocess.Popen(self._command(script, port, connections, seconds), stdout=sink,
                                       stderr=subprocess.STDOUT)
            start = time.perf_counter()
            window = wp.Window(start, start + seconds)
            sampler = Sampler(window, server_pid, None, self._pg_pids)
            sampler.start()
            _, _, usage = os.wait4(process.pid, 0)
            process.returncode = 0  # reaped by wait4 above
        sampler.join()
        text = output.read_text()
        line = next((x for x in text.splitlines() if x.startswith("EVENTFOLD ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no summary: {text[-500:]}")
        values = {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}
        result = Result(phase.name, values["duration_us"] / 1e6)
        result.ok = int(values["requests"] - values["bad"])
        result.p50_ms, result.p99_ms = values["p50_us"] / 1000, values["p99_us"] / 1000
        result.mean_ms = values["mean_us"] / 1000
        if values["bad"]:
            result.errors["bad answer (status/GraphQL errors)"] = int(values["bad"])
        for kind in ("connect", "read", "write", "timeout"):
            if values[kind]:
                result.errors[f"socket {kind}"] = int(values[kind])
        result.cpu = dict(sampler.cpu)
        result.cpu["driver"] = usage.ru_utime + usage.ru_stime
        result.cpu["other"] = max(0.0, result.cpu.get("other", 0.0) - result.cpu["driver"])
        return result


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


# --------------------------------------------------------------------------- servers


class Server:
    """A server subprocess on a free port (cwd: the repository), up when /healthz answers 200."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name, self.port = name, wp._free_port()
        self._command = [c.replace("{port}", str(self.port)) for c in command]
        self._env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "BENCH_PORT": str(self.port)}
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            "w+", prefix="eventfold-bench-", suffix=".log")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> Server:
        self._process = subprocess.Popen(self._command, env=self._env, cwd=_HERE.parent,
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=OWN_SESSIONS)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            if self._healthy():
                return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not come up: {self.log_tail()}")

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

    def __exit__(self, *_: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(2)  # SIGINT: uvicorn shuts down gracefully
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._log.close()


def baseline_server() -> Server:
    return Server("baseline server", [sys.executable, "-P", "-c", BASELINE_SERVER], {})


def query_api(url: str, command: str | None) -> Server:
    """``eventfold query-api``, or ``command`` (to compare a patched server) with the same
    environment and ``--host``/``--port`` arguments."""
    program = shlex.split(command) if command else [*wp._eventfold_command(), "query-api"]
    return Server("eventfold query-api", [*program, "--host", "127.0.0.1", "--port", "{port}"],
                  _eventfold_env(url))


def _eventfold_env(url: str) -> dict[str, str]:
    return wp.eventfold_env(EVENTFOLD_DATABASE_URL=url, EVENTFOLD_DB_SCHEMA=SCHEMA)


def check_answer(port: int, phase: Phase) -> str:
    """One request before measuring: the phase must get the data it asks for, not errors."""

    async def ask() -> tuple[int, bytes]:
        client = wp.RawHttpClient("127.0.0.1", port)
        try:
            result: tuple[int, bytes] = await client.post(phase.path, body_of(phase.queries[0]))
            return result
        finally:
            await client.close()

    status, data = asyncio.run(ask())
    answer = json.loads(data) if data.startswith(b"{") else {}
    problem = ""
    if status != 200 or answer.get("errors") or not answer.get("data"):
        problem = f"HTTP {status} {data[:300]!r}"
    elif phase.key == "card" and not answer["data"].get("card"):
        problem = f"no card found: {data[:300]!r}"
    elif phase.key == "cards" and len(answer["data"]["cards"]["edges"]) != 20:
        problem = f"not a page of 20: {data[:300]!r}"
    if problem:
        raise RuntimeError(f"{phase.key}: unexpected answer: {problem}")
    return data.decode()


# --------------------------------------------------------------------------- the read models


@dataclass
class Seeded:
    action_ids: list[str]
    commands: int
    events: int
    cards: int
    seconds_commands: float
    seconds_catch_up: float
    positions: dict[str, int]


def init_db(url: str) -> None:
    done = subprocess.run([*wp._eventfold_command(), "init-db"], env=_eventfold_env(url),
                          cwd=_HERE.parent, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"eventfold init-db failed: {done.stderr.strip()[-500:]}")


def seed_commands(actions: int, accounts: int) -> list[Any]:
    """Securities, accounts holding them, then ``actions`` corporate actions in every state:
    7 in 10 validated (their entitlements recorded and notified by the process manager),
    1 rejected, 1 cancelled, 1 left announced."""
    from example_app.commands import (
        AnnounceCorporateAction,
        CancelCorporateAction,
        CreditHoldings,
        OpenAccount,
        RegisterSecurity,
        RejectCorporateAction,
        ValidateCorporateAction,
    )

    isins = list(ISINS)
    commands: list[Any] = [RegisterSecurity(isin=i, name=n, currency=c) for i, (n, c) in ISINS.items()]
    for a in range(accounts):
        number = f"ACC-{a:04d}"
        commands.append(OpenAccount(account_number=number, holder_name=f"Holder {a}"))
        commands.append(CreditHoldings(account_number=number, isin=isins[a % len(isins)], quantity=100 + a))
    today = date.today()
    for i in range(actions):
        action_id, isin = f"CA-{i:04d}", isins[i % len(isins)]
        record = today + timedelta(days=1 + i % 90)
        if i % 2:
            terms: dict[str, Any] = {"kind": "cash_dividend", "amount_per_unit": "0.25",
                                     "currency": ISINS[isin][1]}
        else:
            terms = {"kind": "stock_split", "new_units": 2, "old_units": 1}
        commands.append(AnnounceCorporateAction.model_validate({
            "action_id": action_id, "isin": isin, "record_date": record,
            "payment_date": record + timedelta(days=7), "terms": terms}))
        fate = i % 10
        if fate < 7:
            commands.append(ValidateCorporateAction(action_id=action_id))
        elif fate == 7:
            commands.append(RejectCorporateAction(action_id=action_id, reasons=["Terms do not match"]))
        elif fate == 8:
            commands.append(CancelCorporateAction(action_id=action_id, reason="Withdrawn by the issuer"))
    return commands


def seed(url: str, actions: int, accounts: int) -> Seeded:
    """Fill the event store through the command bus, then catch every projection up (the process
    manager's own commands included) until nothing new is written."""
    from example_app.app import build_router
    from framework.adapters.postgres import PostgresEventStore
    from framework.adapters.postgres_views import PostgresViewStore
    from framework.bus import CommandBus, CommandContext
    from framework.settings import Settings
    from framework.worker import ProjectionWorker
    from projections import build_projectors
    from projections.cards import CorporateActionCard

    postgres = Settings(database_url=url, db_schema=SCHEMA).postgres()
    assert postgres is not None
    store, views = PostgresEventStore(postgres), PostgresViewStore(postgres)
    try:
        bus = CommandBus(build_router(), store)
        commands = seed_commands(actions, accounts)
        began = time.perf_counter()
        for command in commands:
            bus.execute(command, CommandContext(correlation_id="bench-seed", actor="bench"))
        seconds_commands = time.perf_counter() - began
        began = time.perf_counter()
        workers = [ProjectionWorker(p, views, store, bus) for p in build_projectors()]
        for _ in range(20):
            head = store.head()
            for worker in workers:
                worker.catch_up()
            if store.head() == head:
                break
        seconds_catch_up = time.perf_counter() - began
        cards = views.query("cards", CorporateActionCard)
        return Seeded([c.action_id for c in cards], len(commands), store.head(), len(cards),
                      seconds_commands, seconds_catch_up, {w.name: w.position for w in workers})
    finally:
        views.close()
        store.close()


# --------------------------------------------------------------------------- under write load (cache honesty)

# The write-load phases ask for `position` too (the position of the event that last changed the card), so
# that every answer can be checked against the positions it claims.
CARD_W = '{ %s: card(actionId: "%s") { actionId status kind recordDate position } }'  # alias: the id asked
CARDS_W = "{ cards(first: 20) { edges { node { actionId status position security { name } } } } }"
# The same page in the other order: the writer's cards (ever earlier record dates) land beyond it, so a
# kept page outlives their commits (a page is dropped only by a commit that can change it).
CARDSD_W = "{ cards(first: 20, descending: true) { edges { node { actionId status position security { name } } } } }"
SUB_CARD = 'subscription { card(actionId: "%s") { position card { actionId status } } }'
WRITE_RATE = 200.0  # commands per second
TARGET_SUB_P99_MS = 50.0
POSITION_HEADER = "Eventfold-Position"


def write_load_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{k:06d}" for k in range(count)]


def writer_main(url: str, prefix: str, count: int, rate: float, out: str) -> int:
    """The write load (a subprocess: ``--role writer``): for k = 0, 1, ... announce ``{prefix}-k`` with a
    record date k days before today (so that each new card heads the page of (b)), then validate it
    (its process manager then records entitlements: more changes of the card); ``rate`` commands per
    second over 4 threads (each takes an action and sends both of its commands), paced, until
    ``count`` actions or SIGINT/SIGTERM. Writes ``[[action_id, command, position,
    unix time], ...]`` to ``out``."""
    import signal

    from example_app.app import build_router
    from example_app.commands import AnnounceCorporateAction, ValidateCorporateAction
    from framework.adapters.postgres import PostgresEventStore
    from framework.bus import CommandBus, CommandContext
    from framework.settings import Settings

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    postgres = Settings(database_url=url, db_schema=SCHEMA).postgres()
    assert postgres is not None
    store = PostgresEventStore(postgres)
    bus, context = CommandBus(build_router(), store), CommandContext(correlation_id="bench-load", actor="bench")
    isins, today, log = list(ISINS), date.today(), []
    ids = iter(enumerate(write_load_ids(prefix, count)))
    pace, interval = threading.Lock(), 1.0 / rate
    due = [time.perf_counter()]

    def wait_turn() -> None:  # one command every `interval` seconds over all threads
        with pace:
            at = due[0]
            due[0] = max(at + interval, time.perf_counter() - 0.5)  # no burst after a stall
        time.sleep(max(0.0, at - time.perf_counter()))

    def work() -> None:  # each thread announces, then validates, the actions it takes
        while not stop.is_set():
            with pace:
                taken = next(ids, None)
            if taken is None:
                return
            k, action_id = taken
            isin, record = isins[k % len(isins)], today - timedelta(days=k)
            announce = AnnounceCorporateAction.model_validate({
                "action_id": action_id, "isin": isin, "record_date": record,
                "payment_date": record + timedelta(days=7),
                "terms": {"kind": "cash_dividend", "amount_per_unit": "0.10", "currency": ISINS[isin][1]}})
            for command in (announce, ValidateCorporateAction(action_id=action_id)):
                if stop.is_set():
                    return
                wait_turn()
                executed = bus.execute(command, context)
                log.append([action_id, command.command_name, executed.result.position, time.time()])

    # Threads: a command mostly waits for PostgreSQL's commit; one thread alone falls behind 200/s on a busy machine.
    threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        log.sort(key=lambda entry: entry[3])
        Path(out).write_text(json.dumps(log))
        store.close()
    return 0


def projector_main(url: str) -> int:
    """Every projection of the example, kept caught up (a subprocess: ``--role projector``): the worker
    commits NOTIFY the query API's position watch, as ``eventfold project`` does."""
    import signal

    from example_app.app import build_router
    from framework.adapters.postgres import PostgresEventStore
    from framework.adapters.postgres_views import PostgresViewStore
    from framework.bus import CommandBus
    from framework.settings import Settings
    from framework.worker import ProjectionWorker
    from projections import build_projectors

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    postgres = Settings(database_url=url, db_schema=SCHEMA).postgres()
    assert postgres is not None
    store, views = PostgresEventStore(postgres), PostgresViewStore(postgres)
    bus = CommandBus(build_router(), store)
    workers = [ProjectionWorker(p, views, store, bus) for p in build_projectors()]
    try:
        while not stop.is_set():
            before = [w.position for w in workers]
            for worker in workers:
                worker.catch_up(interrupted=stop.is_set)
            if [w.position for w in workers] == before:
                stop.wait(0.002)
    finally:
        views.close()
        store.close()
    return 0


def _role_command(role: str, *arguments: str) -> list[str]:
    return [sys.executable, str(_HERE / "graphql.py"), "--role", role, *arguments]


class Helper:
    """A ``--role`` subprocess of this script (the writer, the projector); stopped with SIGINT."""

    def __init__(self, role: str, *arguments: str, url: str) -> None:
        self.role = role
        self._log = tempfile.NamedTemporaryFile("w+", prefix=f"eventfold-bench-{role}-",  # noqa: SIM115
                                                suffix=".log")
        env = {**_eventfold_env(url), "PYTHONUNBUFFERED": "1"}
        # Its own session, as the server's: with the kernel's autogroup scheduling (Debian's default) a
        # session shares one slice of the machine, and a write load in the server's session takes the
        # server's CPU (a 'stall' of tens of req/s on a busy machine; docstring).
        self.process = subprocess.Popen(_role_command(role, *arguments, url), env=env, cwd=_HERE.parent,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=OWN_SESSIONS)

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.returncode not in (0, -2, 130):
            self._log.seek(0)
            print(f"  ({self.role} exited {self.process.returncode}: {self._log.read()[-600:]})", file=sys.stderr)
        self._log.close()


@dataclass
class Honesty:
    """Every answer of a write-load phase checked against the positions it claims."""

    answers: int = 0
    claimed: int = 0  # answers carrying extensions.consistency (sent with Eventfold-Position)
    cards_checked: int = 0
    stale: int = 0  # a card older than a change at or before the claimed position: a lie
    newer: int = 0  # a card newer than the claim (allowed: the claim is "at least")
    unreached: int = 0  # claimed reached: false
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        verdict = "HONEST" if not self.stale and not self.unreached else "DISHONEST"
        return (f"{verdict}: {self.answers} answers recorded, {self.claimed} with claimed positions, "
                f"{self.cards_checked} cards checked; stale {self.stale}, claimed unreached {self.unreached};"
                f" newer than claimed (allowed) {self.newer}")


def card_w(action_id: str) -> str:
    return CARD_W % ("c_" + action_id.replace("-", "_"), action_id)


def _cards_of(data: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(the id asked, the card or None) of an answer of (a) or (b) under load."""
    if "cards" in data:
        return [(edge["node"]["actionId"], edge["node"]) for edge in data["cards"]["edges"]]
    return [(alias[2:].replace("_", "-"), card) for alias, card in data.items()]


def check_honesty(lines: list[str], changes: dict[str, set[int]]) -> Honesty:
    """``changes``: action id -> positions at which its card is known to have changed (the writer's log,
    every position any answer showed, the final rows). An answer claiming the cards projection at P is
    stale when one of its cards shows position c and a known change x has c < x <= P; a card asked by
    id and answered null (c = 0) is stale when it was announced at or before P."""
    honesty = Honesty()
    parsed = []
    for text in lines:
        with suppress(ValueError):
            parsed.append(json.loads(text))
    for answer in parsed:  # everything any answer showed is a change that happened
        for _, card in _cards_of(answer.get("data") or {}):
            if card:
                changes.setdefault(card["actionId"], set()).add(int(card["position"]))
    for answer in parsed:
        honesty.answers += 1
        consistency = (answer.get("extensions") or {}).get("consistency")
        if consistency is None:
            continue
        honesty.claimed += 1
        if not consistency.get("reached"):
            honesty.unreached += 1
        claimed = consistency["positions"].get("cards")
        if claimed is None:
            continue
        cards = [(a, int(c["position"]) if c else 0) for a, c in _cards_of(answer.get("data") or {})]
        for action_id, shown in cards:
            honesty.cards_checked += 1
            later = [x for x in changes.get(action_id, ()) if shown < x <= claimed]
            if later:
                honesty.stale += 1
                if len(honesty.examples) < 3:
                    honesty.examples.append(f"{action_id} at {shown} claimed cards {claimed}, changed at {min(later)}")
            elif shown > claimed:
                honesty.newer += 1
    return honesty


@dataclass
class Stall:
    """Messages over the target answering commits heard close together, and what the event loops did."""

    at: float  # seconds into the phase (its first commit heard)
    messages: int
    worst: float  # seconds
    # ms: the loop thread on a CPU, the loop thread waiting for a CPU, the other threads on a CPU, the span
    server: tuple[float, float, float, float] | None
    client: tuple[float, float, float, float] | None  # the same for this process (the clients' loop)

    def line(self) -> str:
        def side(name: str, clock: tuple[float, float, float, float] | None) -> str:
            if clock is None:
                return f"{name} -"
            return (f"{name} loop {clock[0]:.0f} on CPU / {clock[1]:.0f} waiting, others {clock[2]:.0f}"
                    f" (of {clock[3]:.0f})")

        return (f"{self.at:5.1f} s: {self.messages:4} messages, worst {self.worst * 1000:5.0f} ms | "
                f"{side('server', self.server)} | {side('clients', self.client)} ms")


@dataclass
class Live:
    """The subscriptions phase's figures."""

    subscriptions: int = 0
    opened_seconds: float = 0.0
    commands: int = 0
    seconds: float = 0.0
    messages: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, commit heard -> message received
    slow: list[tuple[float, float]] = field(default_factory=list)  # (commit heard, received) of those over the target
    stalls: list[Stall] = field(default_factory=list)
    unnamed: list[float] = field(default_factory=list)  # when commits of cards naming no rows were heard
    unmatched: int = 0  # a message whose commit was not heard (should be 0)
    out_of_order: int = 0  # a subscriber's positions not strictly increasing
    missed_final: int = 0  # subscribers whose last message is not their card's final row
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu: float = 0.0
    other_load: float | None = None

    def percentile_ms(self, p: float) -> float:
        return _percentile_ms(sorted(self.latencies), p)


async def _subscriber(port: int, query: str, got: list[tuple[int, float]], ready: asyncio.Event,
                      errors: Counter[str], stop: asyncio.Event) -> None:
    import websockets

    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"],
                                      open_timeout=60, max_queue=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            ack = json.loads(await ws.recv())
            if ack.get("type") != "connection_ack":
                errors[f"init: {ack.get('type')}"] += 1
                return
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            ready.set()
            async for raw in ws:
                received = time.time()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "next":
                    payload = message["payload"]
                    if payload.get("errors"):
                        errors[f"GraphQL error: {payload['errors'][0].get('message', '')[:80]}"] += 1
                    else:
                        got.append((int(payload["data"]["card"]["position"]), received))
                elif kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif kind in ("error", "complete"):
                    errors[f"{kind}: {json.dumps(message.get('payload'))[:80]}"] += 1
                    return
                if stop.is_set():
                    return
    except Exception as error:  # counted and shown: a subscriber's socket failing is a result
        errors[type(error).__name__] += 1
        ready.set()


def _listen_commits(url: str, heard: list[tuple[int, float]], unnamed: list[float], started: threading.Event,
                    stop: threading.Event) -> None:
    """The cards projection's commits, as the query API hears them (the same NOTIFY), with the time heard.
    A thread of its own, not the clients' event loop: 1,000 WebSockets keeping that loop busy would make
    commits look heard later, and latencies shorter, than they are."""
    from framework.adapters.postgres_views import parse_notice, position_channel

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'LISTEN "{position_channel(SCHEMA)}"')
        started.set()
        while not stop.is_set():
            for notice in conn.notifies(timeout=0.2):
                at = time.time()
                change = parse_notice(notice.payload)
                if change is not None and change.projection == "cards":
                    heard.append((change.position, at))
                    if change.touched is None:
                        unnamed.append(at)


class ThreadClock:
    """Samples, every few ms, how the server's threads spent their time (``/proc/<pid>/task/*/schedstat``:
    ns on a CPU, ns runnable but waiting for one): a stall of the subscriptions phase is then told apart
    as the event loop waiting for a CPU (other processes had them), the server computing (the loop
    thread, or another thread holding the GIL: a collection run by a read's thread), or neither."""

    def __init__(self, pid: int | None, every: float = 0.005) -> None:
        self._pid, self._every = pid, every
        # (time, loop on a CPU, loop waiting for one, other threads on a CPU), in ms
        self.samples: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadClock:
        if self._pid is not None and Path(f"/proc/{self._pid}/task").is_dir():
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1)

    def _run(self) -> None:
        tasks = Path(f"/proc/{self._pid}/task")
        while not self._stop.wait(self._every):
            loop = others = wait = 0.0
            with suppress(OSError, ValueError):
                for task in tasks.iterdir():
                    run, waited, _ = (task / "schedstat").read_text().split()
                    if task.name == str(self._pid):  # the main thread runs uvicorn's event loop
                        loop, wait = int(run) / 1e6, int(waited) / 1e6
                    else:
                        others += int(run) / 1e6
                self.samples.append((time.time(), loop, wait, others))

    def between(self, start: float, end: float) -> tuple[float, float, float, float] | None:
        """(loop on CPU, loop waiting for a CPU, other threads on CPU, the span sampled) in ms, over the
        samples around ``start`` and ``end`` (on a starved machine the sampler wakes late: the span says)."""
        import bisect

        times = [s[0] for s in self.samples]
        a, b = bisect.bisect_right(times, start) - 1, bisect.bisect_left(times, end)
        if a < 0 or b >= len(self.samples):
            return None
        first, last = self.samples[a], self.samples[b]
        return last[1] - first[1], last[2] - first[2], last[3] - first[3], (last[0] - first[0]) * 1000


def run_live(url: str, port: int, server_pid: int | None, subscriptions: int, per_key: int,
             rate: float, pg_pids: Callable[[], list[int]]) -> Live:
    """``subscriptions`` card subscriptions (``per_key`` on each action id; one WebSocket each) on the
    query API, then the writer announces and validates those actions at ``rate`` commands/s: the latency
    of each update is from the moment the cards projection's commit is heard (LISTEN on the channel the
    query API listens on) to the subscriber's message."""
    keys = write_load_ids("CS", max(1, subscriptions // per_key))
    live = Live(subscriptions=len(keys) * per_key)
    got: dict[int, list[tuple[int, float]]] = {i: [] for i in range(live.subscriptions)}
    heard: list[tuple[int, float]] = []

    listening, stop_listening = threading.Event(), threading.Event()
    listener = threading.Thread(target=_listen_commits, args=(url, heard, live.unnamed, listening, stop_listening),
                                daemon=True)
    listener.start()
    server_clock, client_clock = ThreadClock(server_pid), ThreadClock(os.getpid())

    async def main() -> None:
        stop = asyncio.Event()
        began = time.perf_counter()
        readies = [asyncio.Event() for _ in range(live.subscriptions)]
        tasks = []
        for i in range(live.subscriptions):  # opened in waves, not 1,000 handshakes at once
            query = SUB_CARD % keys[i % len(keys)]
            tasks.append(asyncio.create_task(_subscriber(port, query, got[i], readies[i], live.errors, stop)))
            if i % 50 == 49:
                await asyncio.gather(*(r.wait() for r in readies[: i + 1]))
        await asyncio.gather(*(r.wait() for r in readies), asyncio.to_thread(listening.wait, 30))
        await asyncio.sleep(1.0)  # the last subscribe messages reach their generators
        live.opened_seconds = time.perf_counter() - began
        out = Path(tempfile.gettempdir()) / f"eventfold-bench-live-{os.getpid()}.json"
        writer = Helper("writer", "--prefix", "CS", "--count", str(len(keys)), "--rate", str(rate),
                        "--out", str(out), url=url)
        window_start = time.perf_counter()
        before_server = wp._cpu_of(server_pid) if server_pid else 0.0
        before_machine, before_pg = wp._machine_busy(), sum(wp._cpu_of(p) for p in pg_pids())
        with server_clock, client_clock:
            while writer.process.poll() is None:
                await asyncio.sleep(0.1)
            live.seconds = time.perf_counter() - window_start
            await asyncio.sleep(2.0)  # the last commits reach the subscribers
        server = (wp._cpu_of(server_pid) - before_server) if server_pid else 0.0
        live.server_cpu = server
        machine = wp._machine_busy() - before_machine
        pg = sum(wp._cpu_of(p) for p in pg_pids()) - before_pg
        elapsed = time.perf_counter() - window_start
        live.other_load = max(0.0, machine - server - pg) / (elapsed * (os.cpu_count() or 1)) * 100
        writer.stop()
        with suppress(OSError, ValueError):
            log = json.loads(out.read_text())
            out.unlink()
            live.commands = len(log)
            live.seconds = log[-1][3] - log[0][3] if len(log) > 1 else live.seconds  # from its first command
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        stop_listening.set()
        listener.join(5)
    final = _final_positions(url, keys)
    heard.sort()
    positions = [p for p, _ in heard]
    import bisect

    for i, messages in got.items():
        last = 0
        for position, received in messages:
            live.messages += 1
            if position <= last:
                live.out_of_order += 1
            last = max(last, position)
            at = bisect.bisect_left(positions, position)
            if at == len(positions):
                live.unmatched += 1
                continue
            live.latencies.append(received - heard[at][1])
            if received - heard[at][1] > TARGET_SUB_P99_MS / 1000:
                live.slow.append((heard[at][1], received))
        if final.get(keys[i % len(keys)], 0) != last:
            live.missed_final += 1
    live.stalls = _stalls(live.slow, heard[0][1] if heard else 0.0, server_clock, client_clock)
    return live


def _stalls(slow: list[tuple[float, float]], start: float, server: ThreadClock, client: ThreadClock
            ) -> list[Stall]:
    """Messages over the target grouped by the commits they answer (heard within 0.2 s of each other),
    each group told by what the server's and this process's event-loop threads did meanwhile."""
    groups: list[list[tuple[float, float]]] = []
    for heard_at, received in sorted(slow):
        if groups and heard_at - groups[-1][-1][0] <= 0.2:
            groups[-1].append((heard_at, received))
        else:
            groups.append([(heard_at, received)])
    stalls = []
    for group in groups:
        first, last = group[0][0], max(r for _, r in group)
        stalls.append(Stall(first - start, len(group), max(r - h for h, r in group), server.between(first, last),
                            client.between(first, last)))
    return stalls


def _final_positions(url: str, keys: list[str] | None = None) -> dict[str, int]:
    """The cards' positions now, read directly from the view store (``keys`` None: every card)."""
    from framework.adapters.postgres_views import PostgresViewStore
    from framework.read import Condition
    from framework.settings import Settings
    from projections.cards import CorporateActionCard

    postgres = Settings(database_url=url, db_schema=SCHEMA).postgres()
    assert postgres is not None
    views = PostgresViewStore(postgres)
    try:
        conditions = [] if keys is None else [Condition("action_id", "in", keys)]
        return {c.action_id: c.position for c in views.query("cards", CorporateActionCard, conditions)}
    finally:
        views.close()


# --------------------------------------------------------------------------- py-spy of (a)


def profile_card(py_spy: str, driver: RawDriver | WrkDriver, server: Server, phase: Phase,
                 connections: int, seconds: float, top: int) -> None:
    raw = Path(tempfile.gettempdir()) / f"eventfold-graphql-pyspy-{os.getpid()}.txt"
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--output", str(raw),
         "--duration", str(int(seconds)), "--rate", "250", "--gil", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    result = driver.run(phase, server.port, server.pid, connections, 0.3, seconds)
    _, err = spy.communicate(timeout=120)
    print()
    if spy.returncode != 0:
        print(f"py-spy failed: {err.decode(errors='replace')[-400:]}")
        return
    print(f"py-spy of `eventfold query-api` under {phase.key}, {connections} connections, {seconds:.0f} s,"
          f" {result.rate:,.0f} req/s while sampled (sampling slows it); raw stacks: {raw}")
    _fold(raw, top)


def _fold(path: Path, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        threads["worker threads" if frames[0].startswith("Thread._bootstrap") else "event loop"] += count
        names = [_short(f) for f in frames]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    if not total:
        print("   (no samples)")
        return
    split = ", ".join(f"{k} {v / total * 100:.0f}%" for k, v in threads.most_common())
    print(f"   {total} samples of the thread holding the GIL (Python CPU, not waits): {split}")
    print("   inclusive share (a function and what it calls):")
    for name, count in inclusive.most_common(top):
        print(f"   {count / total * 100:5.1f}%  {name}")
    print(f"   -- own time (leaf frames), top {top}:")
    for name, count in own.most_common(top):
        print(f"   {count / total * 100:5.1f}%  {name}")


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str = ",.1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _errors(result: Result) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(result.errors.items())) or "0"


def print_table(results: list[Result]) -> None:
    header = (f"{'phase':<52} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7}"
              f"  {'CPU ms/req: driver':>18} {'server':>6} {'pg':>6}  {'other%':>6} {'starved%':>8}  errors")
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<52} {_fmt(r.rate):>9} {_fmt(r.p50_ms, '.2f'):>7} {_fmt(r.p99_ms, '.2f'):>7}"
            f" {_fmt(r.mean_ms, '.2f'):>7}  {_fmt(r.cpu_ms_per_op('driver'), '.3f'):>18}"
            f" {_fmt(r.cpu_ms_per_op('server'), '.3f'):>6} {_fmt(r.cpu_ms_per_op('postgres'), '.3f'):>6}"
            f"  {_fmt(r.other_load(), '.0f'):>6} {_fmt(r.starved(), '.0f'):>8}  {_errors(r)}"
        )


def _ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or not b.rate:
        return None
    return a.rate / b.rate


def _cpu_ratio(a: Result | None, b: Result | None) -> float | None:
    """What ``a``'s req/s over ``b``'s would be if the server's CPU were the only limit."""
    mine, theirs = a and a.cpu_ms_per_op("server"), b and b.cpu_ms_per_op("server")
    return theirs / mine if mine and theirs else None


def print_ratios(results: dict[str, Result]) -> None:
    card, cards, hello = results.get("card"), results.get("cards"), results.get("hello")
    json_, hello0 = results.get("json"), results.get("hello0")
    rows = [
        ("(a) card by id / Strawberry cached { hello }", _ratio(card, hello)),
        ("(b) page of 20 + nested / Strawberry cached { hello }", _ratio(cards, hello)),
        ("(a) card by id / Starlette JSON", _ratio(card, json_)),
        ("(b) page of 20 / (a) card by id", _ratio(cards, card)),
        ("Strawberry cached / Strawberry no extensions", _ratio(hello, hello0)),
        ("Strawberry cached / Starlette JSON", _ratio(hello, json_)),
        ("(a) by server CPU/req: Strawberry cached ms / (a) ms", _cpu_ratio(card, hello)),
        ("(b) by server CPU/req: Strawberry cached ms / (b) ms", _cpu_ratio(cards, hello)),
        ("(a) under writes / Strawberry cached { hello }", _ratio(results.get("card_w"), hello)),
        ("(b) under writes / Strawberry cached { hello }", _ratio(results.get("cards_w"), hello)),
        ("(a) under writes by server CPU/req", _cpu_ratio(results.get("card_w"), hello)),
        ("(b) under writes by server CPU/req", _cpu_ratio(results.get("cards_w"), hello)),
        ("(b') descending, writes beyond the page / Strawberry cached", _ratio(results.get("cardsd_w"), hello)),
        ("(b') under writes by server CPU/req", _cpu_ratio(results.get("cardsd_w"), hello)),
    ]
    print()
    print("ratios (requests/s; the last two from server CPU per request, steadier on a busy machine)")
    for label, value in rows:
        print(f"  {label:<58} {'-' if value is None else f'{value:.2f}x'}")
    ratio = _ratio(card, hello)
    if card is not None and ratio is not None:
        fast, quick = ratio >= TARGET_RATIO, card.p99_ms <= TARGET_P99_MS
        verdict = "PASS" if fast and quick else "FALLS SHORT"
        print()
        print(f"target: (a) req/s >= {TARGET_RATIO:.1f}x Strawberry cached {{ hello }} -> {ratio:.2f}x"
              f" ({'met' if fast else 'missed'}); (a) p99 <= {TARGET_P99_MS:.0f} ms -> {card.p99_ms:.2f} ms"
              f" ({'met' if quick else 'missed'})  {verdict}")
    elif card is not None:
        print()
        print("target: not judged (run the `hello` phase with `card` for the ratio)")


def print_loaded(results: dict[str, Result], live: Live | None) -> None:
    """Targets of issue 14 for the phases under load, cache honesty, and the subscriptions phase."""
    hello = results.get("hello")
    if HONESTY:
        writes = HONESTY.get("writes")
        print()
        print(f"write load: {writes.answers if writes else 0} commands written by the writer during the load phases,"
              f" {WRITES.get('rate', 0.0):.0f}/s achieved (announce + validate of new cards, each heading the"
              " page of (b); their process manager writes more)")
        for key in LOADED:
            if key in HONESTY:
                print(f"  cache honesty {key:<8}: {HONESTY[key].line()}")
                for example in HONESTY[key].examples:
                    print(f"      e.g. {example}")
    for key, floor in (("card_w", 1.0), ("cards_w", 0.5)):
        result, ratio = results.get(key), _ratio(results.get(key), hello)
        if result is None or ratio is None:
            continue
        p99 = f"; p99 {result.p99_ms:.1f} ms (target <= {TARGET_P99_MS_14:.0f} ms)" if key == "card_w" else ""
        print(f"target: {key} req/s >= {floor:.1f}x Strawberry cached {{ hello }} -> {ratio:.2f}x"
              f" ({'met' if ratio >= floor else 'missed'}){p99}")
    if live is not None:
        p50, p99 = live.percentile_ms(50), live.percentile_ms(99)
        rate = live.commands / live.seconds if live.seconds else 0.0
        print()
        print(f"subscriptions: {live.subscriptions} open (one WebSocket each, opened in {live.opened_seconds:.1f} s),"
              f" {live.commands} commands in {live.seconds:.1f} s ({rate:.0f}/s) changing their cards")
        print(f"  {live.messages} messages; latency commit heard -> message: p50 {_fmt(p50, '.1f')} ms,"
              f" p99 {_fmt(p99, '.1f')} ms, max {_fmt(live.percentile_ms(100), '.1f')} ms"
              f" (target p99 <= {TARGET_SUB_P99_MS:.0f} ms: {'met' if p99 <= TARGET_SUB_P99_MS else 'missed'})")
        per_message = live.server_cpu / live.messages * 1000 if live.messages else float("nan")
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(live.errors.items())) or "0"
        print(f"  server CPU {live.server_cpu:.2f} s = {_fmt(per_message, '.2f')} ms per message;"
              f" other load {_fmt(live.other_load, '.0f')}%; out of order {live.out_of_order},"
              f" unmatched {live.unmatched}, missed final state {live.missed_final}, errors {errors}")
        if live.unnamed:
            print(f"  {len(live.unnamed)} commits of cards named no rows (a batch too big to describe: every"
                  " subscriber reads again)")
        if live.stalls:
            print(f"  {len(live.slow)} messages over {TARGET_SUB_P99_MS:.0f} ms in {len(live.stalls)} stall(s);"
                  " the worst,"
                  " with what each event loop's thread did from the commit heard to the last late message (a loop"
                  " waiting for a CPU: other processes had them; on a CPU: the process computing, e.g. a collection;"
                  " neither: blocked, e.g. on the GIL held by another thread):")
            for stall in sorted(live.stalls, key=lambda s: -s.messages * s.worst)[:6]:
                print(f"    {stall.line()}")


TARGET_P99_MS_14 = 20.0  # issue 14's target for (a)


def _versions() -> str:
    names = ["strawberry-graphql", "graphql-core", "starlette", "uvicorn", "uvloop", "httptools",
             "psycopg", "psycopg-pool", "pydantic"]
    found = []
    for name in names:
        with suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def _revision() -> str:
    """The commit measured, and whether the code the servers import differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_HERE.parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "framework", "projections", "example_app"],
                                 cwd=_HERE.parent, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "? (not a git checkout)"
    return head + (f" + uncommitted changes in {len(changed.splitlines())} file(s) of the app" if changed else "")


def print_header(args: argparse.Namespace, admin_url: str, facts: dict[str, str], driver_kind: str) -> None:
    where = urlsplit(admin_url)
    print("Eventfold GraphQL query benchmark")
    print(f"  machine      : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"  load average : {os.getloadavg()[0]:.2f} (1 min) at start")
    print(f"  PostgreSQL   : {facts['version']} at {where.hostname}:{where.port or 5432}"
          f" (synchronous_commit={facts['synchronous_commit']}, fsync={facts['fsync']})")
    print(f"  packages     : {_versions()}")
    print(f"  revision     : {_revision()}")
    print(f"  servers      : one uvicorn process each ({wp._uvicorn_flavour()}), access log off:"
          " the baselines' app, and `eventfold query-api` (default pool size)")
    if args.query_api:
        print(f"  query API    : {args.query_api!r} instead of `eventfold query-api`")
    print(f"  HTTP driver  : {driver_kind}; {args.connections} keep-alive connections")
    print(f"  phases       : warm-up {args.warmup:.1f} s then {args.duration:.1f} s measured, one at a time"
          + (f", best of {args.repeat}" if args.repeat > 1 else ""))
    print()


def print_seeded(seeded: Seeded, sample: dict[str, str]) -> None:
    positions = ", ".join(f"{k} {v}" for k, v in seeded.positions.items())
    print(f"read models  : {seeded.commands} seed commands in {seeded.seconds_commands:.1f} s, {seeded.events}"
          f" events after the process manager's; catch-up of every projection {seeded.seconds_catch_up:.1f} s"
          f" ({positions}); {seeded.cards} cards")
    for key, text in sample.items():
        print(f"  answer {key:<5}: {text[:150]}{'...' if len(text) > 150 else ''}")
    print()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per phase")
    parser.add_argument("--quick", action="store_true", help="short smoke run (1 s phases)")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=set(),
                        help=f"run only these phases (comma-separated: {','.join(ORDER)})")
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--driver", choices=["auto", "wrk", "raw"], default="auto",
                        help="wrk (when on PATH, the default) or raw asyncio streams in this process")
    parser.add_argument("--actions", type=int, default=200, help="corporate actions to seed")
    parser.add_argument("--accounts", type=int, default=12, help="accounts holding the securities")
    parser.add_argument("--repeat", type=int, default=1, help="run every phase N times, report the best")
    parser.add_argument("--py-spy", dest="py_spy", help="py-spy binary: profile the server under (a) at the end")
    parser.add_argument("--py-spy-seconds", type=float, default=8.0)
    parser.add_argument("--py-spy-phase", choices=["card", "cards"], default="card", help="the phase profiled")
    parser.add_argument("--query-api", dest="query_api", metavar="COMMAND",
                        help="serve (a) and (b) with COMMAND instead of `eventfold query-api` (an A/B of a"
                             " patch); it gets the same environment and --host/--port")
    parser.add_argument("--top", type=int, default=25, help="functions listed by the profile")
    parser.add_argument("--write-rate", dest="write_rate", type=float, default=WRITE_RATE,
                        help="commands/s of the write load (phases card_w, cards_w, subs)")
    parser.add_argument("--subscriptions", type=int, default=1000, help="open subscriptions of phase subs")
    parser.add_argument("--per-key", dest="per_key", type=int, default=2,
                        help="subscriptions on each card of phase subs")
    # The write load's own processes (this script started with --role): not for use by hand.
    parser.add_argument("--role", choices=["writer", "projector"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="CW", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=10**6, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=WRITE_RATE, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("url", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 1.0)
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else max(1.0, args.duration * 0.3)
    unknown = args.only - set(ORDER)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; phases: {', '.join(ORDER)}")
    args.repeat = max(1, args.repeat)
    return args


def make_driver(choice: str, pg_pids: Callable[[], list[int]]) -> RawDriver | WrkDriver:
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk); or use --driver raw")
    if choice != "raw" and wrk is not None:
        return WrkDriver(wrk, pg_pids)
    return RawDriver(pg_pids)


def prime(port: int, phase: Phase, connections: int = 4) -> None:
    """Ask every document of the phase once (plainly, and claiming in a load phase) before the timed
    warm-up: a document's first execution (its parse, validation and plan; the prepared statements of
    each pooled connection) is start-up work. Left to the timed warm-up, on a busy machine it ran into
    the measured window: the first window after a start measured ~2x the server CPU per request."""
    variants = [(b"", body_of(q)) for q in phase.queries]
    if phase.load:
        variants += [(b"%s: 1\r\n" % POSITION_HEADER.encode(), body) for _, body in variants]

    async def ask(share: list[tuple[bytes, bytes]]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for extra, body in share:
                writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                             b"Content-Length: %d\r\n\r\n%s" % (phase.path.encode(), extra, len(body), body))
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
        finally:
            writer.close()

    async def main() -> None:
        await asyncio.gather(*(ask(variants[i::connections]) for i in range(connections)))

    asyncio.run(main())


def run_phases(keys: list[str], table: dict[str, Phase], server: Server, driver: RawDriver | WrkDriver,
               args: argparse.Namespace, results: dict[str, list[Result]]) -> None:
    for key in keys:
        phase = table[key]
        check_answer(server.port, phase)
        prime(server.port, phase)
        for _ in range(args.repeat):
            print(f"  running: {key} ...", file=sys.stderr, flush=True)
            before = cache_counts(server.port) if phase.server == "eventfold" else {}
            results.setdefault(key, []).append(
                driver.run(phase, server.port, server.pid, args.connections, args.warmup, args.duration))
            if phase.server == "eventfold":
                after = cache_counts(server.port)
                CACHE_COUNTS[key] = {k: after.get(k, 0) - before.get(k, 0) for k in after}


CACHE_COUNTS: dict[str, dict[str, int]] = {}  # phase -> the response cache's answers (kept/shared/computed)


def cache_counts(port: int) -> dict[str, int]:
    """``eventfold_graphql_response_cache_total`` by outcome, from the query API's /metrics (empty: none)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    counts = {}
    for line in text.splitlines():
        if line.startswith('eventfold_graphql_response_cache_total{outcome="'):
            outcome = line.split('"')[1]
            counts[outcome] = int(float(line.split()[-1]))
    return counts


def run(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", DEFAULT_URL)
    databases = wp.Databases(admin_url)
    pg_pids = wp.PostgresPids(admin_url, f"eventfold_bench_{os.getpid()}_")
    driver = make_driver(args.driver, pg_pids)
    print_header(args, admin_url, databases.server_facts(), driver.kind)
    wanted = [k for k in ORDER if not args.only or k in args.only]
    results: dict[str, list[Result]] = {}
    baselines = [k for k in wanted if k in phases([]) and phases([])[k].server == "baseline"]
    ours = [k for k in wanted if k in ("card", "cards")]
    loaded = [k for k in wanted if k in LOADED]
    if baselines:
        with baseline_server() as server:
            run_phases(baselines, phases([]), server, driver, args, results)
    if not ours and not loaded and "subs" not in wanted and not args.py_spy:
        report(results)
        return 0
    try:
        url = databases.create("graphql")
        init_db(url)
        print("  seeding the event store and catching the projections up ...", file=sys.stderr, flush=True)
        seeded = seed(url, args.actions, args.accounts)
        # The writer makes about rate/2 new cards a second; the rotation of (a) under load reaches as far.
        expected = int(args.write_rate / 2 * (3 + 2 * (args.warmup + args.duration + 1) * args.repeat))
        table = phases(seeded.action_ids, write_load_ids("CW", expected))
        with query_api(url, args.query_api) as server:
            print_seeded(seeded, {k: check_answer(server.port, table[k]) for k in ("card", "cards")})
            run_phases(ours, table, server, driver, args, results)
            live = run_loaded(url, loaded, "subs" in wanted, table, server, driver, args, results, pg_pids)
            report(results, live)
            if args.py_spy:
                profile_card(args.py_spy, driver, server, table[args.py_spy_phase], args.connections,
                             args.py_spy_seconds, args.top)
    finally:
        databases.drop_all()
    return 0


def run_loaded(url: str, loaded: list[str], subs: bool, table: dict[str, Phase], server: Server,
               driver: RawDriver | WrkDriver, args: argparse.Namespace, results: dict[str, list[Result]],
               pg_pids: Callable[[], list[int]]) -> Live | None:
    """The phases under the write load, and the subscriptions phase, with the projector running."""
    if not loaded and not subs:
        return None
    projector = Helper("projector", url=url)
    live = None
    try:
        if loaded:
            out = Path(tempfile.gettempdir()) / f"eventfold-bench-writes-{os.getpid()}.json"
            writer = Helper("writer", "--prefix", "CW", "--rate", str(args.write_rate), "--out", str(out), url=url)
            try:
                time.sleep(2.0)
                run_phases(loaded, table, server, driver, args, results)
            finally:
                writer.stop()
            time.sleep(2.0)  # the projector catches up: the final rows are the last changes
            log = json.loads(out.read_text()) if out.exists() else []
            out.unlink(missing_ok=True)
            changes: dict[str, set[int]] = {}
            for action_id, _, position, _ in log:
                changes.setdefault(action_id, set()).add(int(position))
            for action_id, position in _final_positions(url).items():
                changes.setdefault(action_id, set()).add(position)
            HONESTY.clear()
            for key in loaded:
                for result in results.get(key, []):
                    HONESTY[key] = check_honesty(result.answers, changes)
            HONESTY["writes"] = Honesty(answers=len(log))
            WRITES["rate"] = len(log) / (log[-1][3] - log[0][3]) if len(log) > 1 else 0.0
        if subs:
            behind = _caught_up(url)  # the load phases' backlog (their process manager's work) is done first
            if behind:
                print(f"  (the projector was still {behind} events behind after 120 s)", file=sys.stderr)
            print("  running: subs ...", file=sys.stderr, flush=True)
            live = run_live(url, server.port, server.pid, args.subscriptions, args.per_key, args.write_rate, pg_pids)
            if live.errors:
                print(f"  (subscriptions failed; the query API's log ends: {server.log_tail()[-1200:]})",
                      file=sys.stderr)
    finally:
        projector.stop()
    return live


def _caught_up(url: str, timeout: float = 120.0) -> int:
    """Wait until every projection has applied the store's head and the head stands still (the process
    manager's commands written too); the events still to apply at ``timeout`` (0: caught up)."""
    from framework.adapters.postgres import PostgresEventStore
    from framework.adapters.postgres_views import PostgresViewStore
    from framework.settings import Settings
    from projections import build_projectors

    postgres = Settings(database_url=url, db_schema=SCHEMA).postgres()
    assert postgres is not None
    store, views = PostgresEventStore(postgres), PostgresViewStore(postgres)
    names, deadline, behind = [p.name for p in build_projectors()], time.monotonic() + timeout, 0
    try:
        while time.monotonic() < deadline:
            head = store.head()
            behind = head - min(views.active_position(n) for n in names)
            if not behind and store.head() == head:
                return 0
            time.sleep(0.2)
        return behind
    finally:
        views.close()
        store.close()


HONESTY: dict[str, Honesty] = {}
WRITES: dict[str, float] = {}


def _repetition(r: Result) -> str:
    return (f"{r.rate:9,.1f} ({_fmt(r.other_load(), '.0f')}%, {_fmt(r.starved(), '.0f')}%,"
            f" {_fmt(r.cpu_ms_per_op('server'), '.2f')})")


def report(runs: dict[str, list[Result]], live: Live | None = None) -> None:
    if any(len(r) > 1 for r in runs.values()):
        print("each repetition (req/s, other%, starved%, server CPU ms/req); the table shows the best per phase")
        for key in ORDER:
            if key in runs:
                print(f"  {key:<7}" + "  ".join(_repetition(r) for r in runs[key]))
        print()
    results = {key: max(rs, key=lambda r: r.rate) for key, rs in runs.items()}
    print_table([results[k] for k in ORDER if k in results])
    print_ratios(results)
    print_loaded(results, live)
    if CACHE_COUNTS:
        print()
        print("response cache answers per phase (warm-up included; the last repetition):")
        for key, counts in CACHE_COUNTS.items():
            shown = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("kept", "shared", "computed"))
            print(f"  {key:<8} {shown}")
    print()
    print(f"  load average : {os.getloadavg()[0]:.2f} (1 min) at end")
    print("  notes        : CPU ms/req is CPU time in the measured window divided by good answers;")
    print("                 'pg' = backends of this benchmark's database + PostgreSQL's background")
    print("                 processes; 'other%' = share of all CPUs used by anything else on the machine")
    print("                 during the phase: above ~10% that phase is disturbed (rerun, or --repeat);")
    print("                 server CPU per request moves much less with other load than req/s does.")
    print("                 'starved%' = share of the phase the server's event loop was ready to run but")
    print("                 waited for a CPU (/proc schedstat): above ~30% req/s and latency measure the")
    print("                 machine, not the server (a 'stall' of tens of req/s is this; see the docstring).")
    print("                 The driver, the server and PostgreSQL share the machine's cores.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "writer":
        return writer_main(args.url, args.prefix, args.count, args.rate, args.out)
    if args.role == "projector":
        return projector_main(args.url)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (psycopg.Error, RuntimeError) as error:
        print(f"graphql benchmark: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
