#!/usr/bin/env python
"""Hostile GraphQL documents: the query API's server CPU per refused document, beside a cached Strawberry
``{ hello }`` measured in the same run.

Each member of the fan-out family (fragments that each spread the next twice, thousands of aliases or
directives, the same field repeated, connections nested in connections, deep nesting, deep JSON) is
sent to a real ``eventfold query-api`` (PostgreSQL read models, empty) one request at a time over one
keep-alive connection, for ``--seconds`` or ``--requests``, whichever comes first. Every request
carries a different trailing ``# n`` comment (or variable value), so no cache answers it: what is
measured is the uncached path, parse and checks included. The server's CPU (utime + stime from
/proc) over the run, divided by the requests, is the figure; the target is at most 50 ms per refused
document. Documents that are accepted (padding up to the body limit, a long string) are measured too.

Baselines of the same run, measured the same way: Strawberry ``{ hello }`` with ``ParserCache`` +
``ValidationCache`` (``graphql.py``'s baseline server) and Eventfold's own ``{ __typename }``, cached.
Connections nested in connections need a schema that has them: a second server (``create_query_app``
over a tree of items, in memory) serves those members.

The script creates its own database (``eventfold_bench_<pid>_hostile``), drops it at the end, stops
the servers it started, prints figures and ratios, and never asserts.

    python benchmarks/graphql_hostile.py             # about a minute
    python benchmarks/graphql_hostile.py --quick     # smoke run
    python benchmarks/graphql_hostile.py --only doubling-20,aliases
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# graphql.py in this folder would shadow graphql-core: the folder comes off sys.path first.
for _entry in [p for p in sys.path if Path(p or ".").resolve() == _HERE]:
    sys.path.remove(_entry)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from types import ModuleType  # noqa: E402


def _load(name: str, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, _HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("graphql", "bench_graphql")  # servers, the baseline, init-db; it loads write_path.py
wp = bench.wp

BODY_LIMIT = 65_536  # QueryApiOptions.max_body_bytes
TARGET_MS = 50.0
APPLE = "US0378331005"

# A query API over a tree whose connections nest (the example's do not), served like query-api.
TREE_SERVER = """
import os
import strawberry
import uvicorn
from framework.adapters.memory_views import MemoryViewStore
from framework.graphql import Connection, Edge, GraphQLSpec, PageInfo, create_query_app, page_request

@strawberry.type
class Item:
    id: str

    @strawberry.field
    def children(self, first: int | None = None, after: str | None = None, last: int | None = None,
                 before: str | None = None) -> Connection["Item"]:
        size = page_request(first, after, last, before).size()
        edges = [Edge(cursor=str(i), node=Item(id=f"{self.id}.{i}")) for i in range(size)]
        return Connection(edges=edges, page_info=PageInfo(has_next_page=False, has_previous_page=False,
                                                          start_cursor=None, end_cursor=None))

@strawberry.type
class Query:
    @strawberry.field
    def root(self) -> Item:
        return Item(id="r")

app = create_query_app(GraphQLSpec(Query, {}), MemoryViewStore())
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), access_log=False, log_level="warning")
"""


# --------------------------------------------------------------------------- the documents


def doubling(levels: int, leaf: str = "__typename") -> str:
    parts = ["query { ...F0 }"]
    parts += [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    return "\n".join([*parts, f"fragment F{levels} on Query {{ {leaf} }}"])


def largest(make: Callable[[int], str]) -> str:
    """The largest ``make(n)`` whose JSON body (with room for the per-request comment) fits the limit."""
    def fits(n: int) -> bool:
        return len(json.dumps({"query": make(n)}).encode()) <= BODY_LIMIT - 64

    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return make(low)


def nest(depth: int) -> str:
    return "name" if depth == 0 else " ".join(["ofType { " + nest(depth - 1) + " }"] * 3)


@dataclass(frozen=True)
class Member:
    key: str
    what: str
    query: str
    server: str = "eventfold"  # or "tree"
    variables: dict[str, object] | None = None
    raw: bytes | None = None  # a body sent as is (not a document)

    def body(self, n: int) -> bytes:
        """The n-th request's body: a different text each time, so no cache answers it."""
        if self.raw is not None:
            return self.raw.replace(b"@N@", str(n).encode())
        body: dict[str, object] = {"query": f"{self.query}\n# {n}"}
        if self.variables is not None:
            body["variables"] = self.variables
        return json.dumps(body).encode()


def members() -> list[Member]:
    deep_json = b"[" * 10_000 + b"]" * 10_000
    return [
        Member("doubling-20", "fragments spreading the next twice, 20 levels (the issue's 837 bytes)", doubling(20)),
        Member("doubling-max", "the same, as many levels as the body limit holds", largest(doubling)),
        Member("aliases", "aliases up to the body limit", largest(
            lambda n: "{ " + " ".join(f"a{i}: __typename" for i in range(n)) + " }")),
        Member("aliases-2000", "2,000 aliases", "{ " + " ".join(f"a{i}: __typename" for i in range(2_000)) + " }"),
        Member("same-field", "one field with a selection 220 times (1,982 tokens)",
               "{ " + f'security(isin: "{APPLE}") {{ name }} ' * 220 + "}"),
        Member("fragments-100", "100 fragments, each the same field, spread in one place",
               "{ " + " ".join(f"...F{i}" for i in range(100)) + " } "
               + " ".join(f'fragment F{i} on Query {{ security(isin: "{APPLE}") {{ name }} }}' for i in range(100))),
        Member("ofType-3x5", "introspection ofType repeated 3 times, 5 levels", '{ __type(name: "Card") { '
               + nest(5) + " } }"),
        Member("directives", "@include(if: true) up to the body limit", largest(
            lambda n: "{ __typename " + "@include(if: true) " * n + "}")),
        Member("pages-aliased", "4 aliased pages of 100 cards with 12 fields", "{ " + " ".join(
            f"p{i}: cards(first: 100) {{ nodes {{ actionId isin securityName kind recordDate paymentDate terms "
            "status reasons cancellationReason entitledAccounts announcedAt } }" for i in range(4)) + " }"),
        Member("nested-pages", "first: 100 inside first: 100 inside first: 100", "{ root { "
               + "children(first: 100) { nodes { " * 3 + "id" + " } }" * 3 + " } }", server="tree"),
        Member("nested-pages-max", "connections nested as deep as the body limit allows", largest(
            lambda n: "{ root { " + "children(first: 100) { nodes { " * n + "id" + " } }" * n + " } }"),
               server="tree"),
        Member("deep-selections", "ofType nested up to the body limit", largest(
            lambda n: '{ __type(name: "Card") { ' + "ofType { " * n + "name" + " }" * n + " } }")),
        Member("deep-values", "a list value nested up to the body limit", largest(
            lambda n: '{ card(actionId: ' + "[" * n + '"x"' + "]" * n + ") { actionId } }")),
        Member("deep-json", "variables nested 10,000 levels deep (JSON)", "",
               raw=b'{"query": "{ __typename } # @N@", "variables": {"a": ' + deep_json + b"}}"),
        Member("padded", "{ __typename } padded with spaces to the body limit (accepted)",
               largest(lambda n: "{ __typename " + " " * n + "}")),
        Member("long-string", "a string argument up to the body limit (accepted, reads PostgreSQL)",
               largest(lambda n: '{ card(actionId: "' + "x" * n + '") { actionId } }')),
    ]


# --------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    key: str
    what: str
    bytes: int
    requests: int = 0
    server_cpu: float = 0.0
    worst_ms: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu / self.requests * 1000 if self.requests else float("nan")


def outcome(status: int, data: bytes) -> str:
    try:
        answer = json.loads(data)
    except ValueError:
        return f"{status} not JSON"
    errors = answer.get("errors") or []
    if not errors:
        return f"{status} answered"
    return f"{status} {errors[0].get('extensions', {}).get('code')}"


async def drive(port: int, pid: int, path: str, bodies: Callable[[int], bytes], seconds: float,
                requests: int) -> tuple[int, float, float, Counter[str]]:
    client = wp.RawHttpClient("127.0.0.1", port)
    outcomes: Counter[str] = Counter()
    try:
        for n in range(3):  # warm-up: connection, code paths
            await client.post(path, bodies(-1 - n))
        started, cpu_before, worst, done = time.perf_counter(), wp._cpu_of(pid), 0.0, 0
        while done < requests and time.perf_counter() - started < seconds:
            sent = time.perf_counter()
            status, data = await client.post(path, bodies(done))
            worst = max(worst, time.perf_counter() - sent)
            outcomes[outcome(status, data)] += 1
            done += 1
        return done, wp._cpu_of(pid) - cpu_before, worst, outcomes
    finally:
        await client.close()


def measure(key: str, what: str, port: int, pid: int, path: str, bodies: Callable[[int], bytes],
            args: argparse.Namespace) -> Measured:
    done, cpu, worst, outcomes = asyncio.run(drive(port, pid, path, bodies, args.seconds, args.requests))
    result = Measured(key, what, len(bodies(0)), done, cpu, worst * 1000, outcomes)
    print(f"  {key:18s} {result.cpu_ms:8.2f} ms CPU/request  ({done} requests)", flush=True)
    return result


def healthz_ms(port: int) -> float:
    async def one() -> float:
        client = wp.RawHttpClient("127.0.0.1", port)
        try:
            started = time.perf_counter()
            await client.post("/healthz", b"")  # POST is 405: still a full trip through the app
            return (time.perf_counter() - started) * 1000
        finally:
            await client.close()

    return asyncio.run(one())


# --------------------------------------------------------------------------- report


def print_report(baselines: list[Measured], results: list[Measured], hello: Measured) -> None:
    print()
    print(f"{'document':18s} {'bytes':>7s} {'server CPU ms/req':>17s} {'x hello':>9s} {'worst wall ms':>13s}  "
          f"{'<= 50 ms':8s}  outcome")
    for row in baselines + results:
        ratio = row.cpu_ms / hello.cpu_ms if hello.cpu_ms else float("nan")
        verdict = "" if row in baselines else ("PASS" if row.cpu_ms <= TARGET_MS else "FALLS SHORT")
        outcomes = ", ".join(f"{k} x{v}" if len(row.outcomes) > 1 else k for k, v in row.outcomes.most_common())
        print(f"{row.key:18s} {row.bytes:7,d} {row.cpu_ms:17.2f} {ratio:9.1f} {row.worst_ms:13.1f}  "
              f"{verdict:8s}  {outcomes}")
    print()
    for row in results:
        print(f"  {row.key}: {row.what}")
    print("\nserver CPU: utime + stime of the server process over the run / requests (10 ms ticks, so runs of")
    print("at least ~1 s); every request is a new text (a trailing comment), so parse and checks are uncached.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="longest run per document")
    parser.add_argument("--requests", type=int, default=400, help="most requests per document")
    parser.add_argument("--quick", action="store_true", help="smoke run (0.5 s per document)")
    parser.add_argument("--only", help="these documents only (comma-separated keys)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.requests = 0.5, 50
    return args


def run(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", bench.DEFAULT_URL)
    databases = wp.Databases(admin_url)
    chosen = [m for m in members() if not args.only or m.key in args.only.split(",")]
    try:
        url = databases.create("hostile")
        bench.init_db(url)
        baselines, results = [], []
        with bench.baseline_server() as baseline:
            print("baselines:", flush=True)
            hello = measure("hello (Strawberry)", "cached Strawberry { hello }", baseline.port, baseline.pid,
                            "/graphql", lambda n: b'{"query": "{ hello }"}', args)
            baselines.append(hello)
        with bench.query_api(url, None) as api, bench.Server(
                "tree server", [sys.executable, "-P", "-c", TREE_SERVER], {}) as tree:
            baselines.append(measure("__typename (ours)", "cached { __typename }", api.port, api.pid, "/graphql",
                                     lambda n: b'{"query": "{ __typename }"}', args))
            print("hostile documents, each request a new text:", flush=True)
            for member in chosen:
                server = tree if member.server == "tree" else api
                results.append(measure(member.key, member.what, server.port, server.pid, "/graphql",
                                       member.body, args))
                print(f"  {'':18s} /healthz after it: {healthz_ms(server.port):.1f} ms", flush=True)
        print_report(baselines, results, hello)
    finally:
        databases.drop_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
