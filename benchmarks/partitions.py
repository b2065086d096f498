#!/usr/bin/env python
"""Scale-out benchmark (issue 13): one partitioned projection caught up by 1, 2 and 4 worker processes.

``--events`` (default 200,000) example events are seeded into a fresh database and published to a
fresh JetStream stream by ``eventfold relay``. Then, for each worker count N, a fresh projection
(``scale_N``, ``--partitions`` partitions, default 8) is caught up by N ``eventfold project scale_N``
processes started together: its handler writes one row per account and waits ``--io-ms`` (20) per
100 events it handles, an I/O-bound read model, so what is measured is how well the workers divide
the partitions, not the machine's 2 cores. Reported: events/s from the workers' start until every
partition has passed the head (process start-up included), and the ratio to one worker.
Targets (issue 13): >= 1.7x with 2 workers, >= 3x with 4.

The databases (``eventfold_bench_<pid>_*``) and the stream (``efbench_<pid>_*``) are removed at the end;
only the processes it started are stopped (by pid). It prints figures and never asserts.

    python benchmarks/partitions.py                   # 200,000 events
    python benchmarks/partitions.py --events 50000    # quicker
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import streaming as sb  # sibling scripts: databases, seeding, processes
import write_path as wp

WORKERS = (1, 2, 4)
TARGETS = {2: 1.7, 4: 3.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--io-ms", type=float, default=20.0, help="the handler's wait per 100 events")
    parser.add_argument("--database-url", default=os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", wp.DEFAULT_URL))
    parser.add_argument("--nats-url", default=os.environ.get("EVENTFOLD_BENCH_NATS_URL", sb.DEFAULT_NATS))
    args = parser.parse_args(argv)
    scratch = sb.Scratch(wp.Databases(args.database_url), args.nats_url)
    try:
        run(args, scratch)
    finally:
        scratch.cleanup()
    return 0


def run(args: argparse.Namespace, scratch: sb.Scratch) -> None:
    url = scratch.databases.create("parts")
    settings = scratch.stream_settings("parts")
    env = wp.eventfold_env(
        PYTHONUNBUFFERED="1", EVENTFOLD_APP="scale_app:app",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), str(wp.REPOSITORY)]),
        EVENTFOLD_DATABASE_URL=url, EVENTFOLD_DB_SCHEMA="efbench", EVENTFOLD_NATS_URL=args.nats_url,
        EVENTFOLD_STREAM=settings.stream, EVENTFOLD_SUBJECT_PREFIX=settings.subject_prefix,
        EVENTFOLD_CONSUMER_PREFIX=settings.consumer_prefix, EVENTFOLD_LOG_FORMAT="text",
        EFBENCH_PARTITIONS=str(args.partitions), EFBENCH_IO_MS=str(args.io_ms),
    )
    eventfold = wp._eventfold_command()
    done = subprocess.run([*eventfold, "init-db"], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"eventfold init-db failed: {done.stderr.strip()[-500:]}")
    store = _store(url)
    print(f"== scale-out: {args.events:,} events, {args.partitions} partitions, {args.io_ms:g} ms per 100 events")
    sb.print_rows([sb.seed(store, args.events)])
    head = store.head()
    relay = scratch.spawn("relay", [*eventfold, "relay"], env)
    _wait(lambda: _published(url) >= head, relay, "the relay to publish everything")
    rates: dict[int, float] = {}
    for workers in WORKERS:
        name = f"scale_{workers}"
        started = time.perf_counter()
        roles = [scratch.spawn(f"project-{name}-{i}", [*eventfold, "project", name], env) for i in range(workers)]
        _wait(lambda n=name: _lowest(url, n) >= head, roles[0], f"{name} at the head")  # type: ignore[misc]
        seconds = time.perf_counter() - started
        rates[workers] = head / seconds
        for role in roles:
            sb.stop_process(role.popen)
        print(f"  {workers} worker(s): {seconds:6.1f} s  {rates[workers]:9,.0f} events/s"
              f"  {rates[workers] / rates[1]:.2f}x one worker"
              + (f"  target >= {TARGETS[workers]}x" if workers in TARGETS else ""))
    store.close()


def _store(url: str) -> Any:
    from framework.adapters.postgres import PostgresEventStore
    from framework.settings import PostgresSettings

    settings = PostgresSettings.from_url(url)
    return PostgresEventStore(PostgresSettings(**{**settings.__dict__, "schema": "efbench"}))


def _query(url: str, statement: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _published(url: str) -> int:
    return _query(url, "SELECT coalesce(max(position), 0) FROM efbench.relay_checkpoints")


def _lowest(url: str, name: str) -> int:
    return _query(url, "SELECT CASE WHEN count(*) = 0 THEN 0 ELSE min(position) END"
                       f" FROM efbench.eventfold_partition_positions WHERE name = '{name}'")


def _wait(condition: Any, process: sb.Process, what: str, timeout: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        process.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
