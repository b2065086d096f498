"""CPU per message of a projection worker's bus path alone (no read model): raw nats-py vs ``JetStreamConsumer``.

Publishes ``--messages`` events (Eventfold subjects, headers and payloads, ``JetStreamPublisher``) to a
memory stream of its own, then consumes them all, ``--rounds`` times each, alternating:

* raw: a nats-py pull consumer, ``fetch(1000)`` + ``ack_sync()`` of the last message (policy ALL), as
  ``streaming.py``'s baseline;
* Eventfold: ``JetStreamConsumer.fetch(1000)`` (the notifications built) + ``Delivery.ack()``.

Reported: this process's CPU time per message (``time.process_time``), which other load on the machine
disturbs far less than events/s. To compare two checkouts, run it with each on ``PYTHONPATH``. The
stream (``efbench_fetch_<pid>``) is deleted at the end.

    .venv/bin/python benchmarks/fetch_path.py [--messages 50000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import framework
from framework.adapters.nats import (
    JetStreamConnection,
    JetStreamConsumer,
    JetStreamPublisher,
    JetStreamSettings,
    connect,
)
from framework.testing.bus_conformance import notifications

DEFAULT_NATS = "nats://127.0.0.1:4222"


async def fill(connection: JetStreamConnection, count: int) -> None:
    publisher = JetStreamPublisher(connection)
    for start in range(1, count + 1, 5000):
        await publisher.publish(notifications(range(start, min(count, start + 4999) + 1)))


async def raw(connection: JetStreamConnection, settings: JetStreamSettings, count: int, durable: str) -> float:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(durable_name=durable, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.ALL,
                            max_ack_pending=20_000, filter_subject=settings.subjects)
    started, received = time.process_time(), 0
    subscription = await connection.js.pull_subscribe(settings.subjects, durable=durable, stream=settings.stream,
                                                      config=config)
    while received < count:
        messages = await subscription.fetch(1000, timeout=1.0)
        received += len(messages)
        await messages[-1].ack_sync()
    cpu = time.process_time() - started
    await subscription.unsubscribe()
    return cpu / count


async def eventfold(connection: JetStreamConnection, count: int, durable: str) -> float:
    consumer = JetStreamConsumer(connection, durable, deliver_all=True)
    await consumer.bind()
    started, received = time.process_time(), 0
    while received < count:
        delivery = await consumer.fetch(1000, 1.0)
        received += len(delivery.notifications)
        await delivery.ack()
    cpu = time.process_time() - started
    await consumer.close()
    return cpu / count


async def main(args: argparse.Namespace) -> None:
    settings = JetStreamSettings(servers=(args.nats_url,), stream=f"efbench_fetch_{os.getpid()}",
                                 subject_prefix=f"efbench.fetch{os.getpid()}", storage="memory",
                                 consumer_prefix="efbench-")
    connection = await connect(settings)
    try:
        await fill(connection, args.messages)
        rows: dict[str, list[float]] = {"raw: nats-py fetch(1000) + ack_sync (policy ALL)": [],
                                        "Eventfold: JetStreamConsumer.fetch(1000) + ack": []}
        for round_ in range(args.rounds):
            rows["raw: nats-py fetch(1000) + ack_sync (policy ALL)"].append(
                await raw(connection, settings, args.messages, f"raw{round_}"))
            rows["Eventfold: JetStreamConsumer.fetch(1000) + ack"].append(
                await eventfold(connection, args.messages, f"ef{round_}"))
        print(f"{args.messages:,} messages, framework from {Path(framework.__file__).parent}")
        for label, values in rows.items():
            print(f"  {label:<52} " + " ".join(f"{v * 1e6:6.1f}" for v in values) + "  us of CPU per message")
    finally:
        await connection.delete_stream()
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nats-url", default=os.environ.get("EVENTFOLD_BENCH_NATS_URL", DEFAULT_NATS))
    asyncio.run(main(parser.parse_args()))
