#!/usr/bin/env python
"""CPU per command of the write path in process (no HTTP): what handing out cached aggregates costs.

Runs ``CreditHoldings`` on distinct accounts, all cached, from ``--concurrency`` tasks on one event loop
through ``CommandBus.execute_async`` and the async PostgreSQL appender (the ``EVENTFOLD_WRITE_ASYNC``
path), and from as many threads through ``CommandBus.execute`` (the threaded path), and reports the
process's CPU (all threads) per command. Also times one cached ``Account``'s copy: ``model_copy(deep=True)``
against ``Aggregate.detached`` when the imported framework has it.

Uses a fresh ``eventfold_bench_<pid>_*`` database on ``EVENTFOLD_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), dropped at the end. To compare with another
checkout, put its root first: ``PYTHONPATH=/path/to/checkout python benchmarks/cache_copy_cpu.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import timeit
from uuid import uuid4

from example_app.accounts import Account
from example_app.app import build_router
from framework.adapters.pg_async import AsyncPostgresAppender
from framework.adapters.postgres import PostgresEventStore
from framework.bus import CommandBus, CommandContext
from framework.commands import Command
from framework.settings import PostgresSettings

ISIN = "US0378331005"


def copy_costs() -> str:
    account = Account(id=uuid4(), version=9, account_number="ACC-1", holder_name="Ann",
                      holdings={ISIN: 10, "DE0007164600": 3})
    runs = 20_000
    deep = timeit.timeit(lambda: account.model_copy(deep=True), number=runs) / runs * 1e6
    line = f"Account copy: model_copy(deep=True) {deep:.1f} µs"
    detached = getattr(account, "detached", None)
    if detached is not None:
        line += f", detached() {timeit.timeit(detached, number=runs) / runs * 1e6:.1f} µs"
    return line


def commands(bus: CommandBus, accounts: list[str], count: int) -> list[Command]:
    return [bus.router.parse("CreditHoldings", {"account_number": accounts[i % len(accounts)], "isin": ISIN,
                                                "quantity": 1}) for i in range(count)]


def run_async(bus: CommandBus, settings: PostgresSettings, lanes: list[list[Command]]) -> float:
    async def main() -> float:
        appender = AsyncPostgresAppender(settings)

        async def offload(function: object, *args: object) -> object:
            return await asyncio.to_thread(function, *args)  # type: ignore[arg-type]

        async def lane(work: list[Command]) -> None:
            for command in work:
                await bus.execute_async(command, CommandContext(), appender, offload)

        try:
            await asyncio.gather(*(lane(w[:20]) for w in lanes))  # warm: pool open, statements prepared
            started = time.process_time()
            await asyncio.gather(*(lane(w[20:]) for w in lanes))
            return time.process_time() - started
        finally:
            await appender.close()

    return asyncio.run(main())


def run_threads(bus: CommandBus, lanes: list[list[Command]]) -> float:
    def lane(work: list[Command]) -> None:
        for command in work:
            bus.execute(command, CommandContext())

    for part, measured in ((slice(0, 20), False), (slice(20, None), True)):
        threads = [threading.Thread(target=lane, args=(w[part],)) for w in lanes]
        started = time.process_time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if measured:
            return time.process_time() - started
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--commands", type=int, default=200, help="measured commands per task/thread")
    args = parser.parse_args()
    import write_path as wp  # only now: it puts this repository first on sys.path

    import framework

    print("framework from", os.path.dirname(framework.__file__))
    print(copy_costs())
    databases = wp.Databases(os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", wp.DEFAULT_URL))
    try:
        settings = PostgresSettings.from_url(databases.create("cachecopy"))
        store = PostgresEventStore(settings)
        store.create_schema()
        bus = CommandBus(build_router(), store)
        bus.execute(bus.router.parse("RegisterSecurity", {"isin": ISIN, "name": "Apple", "currency": "USD"}))
        lanes = []
        for lane in range(args.concurrency):
            accounts = [f"CPU-{lane:02d}-{i}" for i in range(4)]
            for number in accounts:
                bus.execute(bus.router.parse("OpenAccount", {"account_number": number, "holder_name": "B"}))
            lanes.append(commands(bus, accounts, args.commands + 20))
        total = args.concurrency * args.commands
        for name, seconds in (("async", run_async(bus, settings, lanes)), ("threads", run_threads(bus, lanes))):
            print(f"{name:8} {args.concurrency} concurrent: {seconds / total * 1000:.3f} ms CPU per command")
        store.close()
    finally:
        databases.drop_all()


if __name__ == "__main__":
    main()
