"""``BatchPull`` and ``JetStreamConsumer`` on a real JetStream: the cases a cheaper fetch must not lose.

* a message queued when a fetch's timer fires is delivered (under policy ALL a later
  acknowledgement covers it: left behind, it would be lost);
* an unanswered fetch keeps its subscription (the request may still be open on the server,
  and what it delivers later comes to this inbox);
* messages queued for the next fetch are handed back (NAK) on close, not left to the ack wait;
* a consumer deleted under a worker is made again after the last acknowledged stream sequence
  (not "new from now": what was published meanwhile is delivered, not skipped);
* a projection run while its consumer is deleted twice equals a replay of the store, and the
  bus skipped nothing (the worker never had to fill a gap from the store).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.msg import Msg
from streaming_helpers import InProcessRoles, assert_matches_replay, wait_settled, write_backlog
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase

from example_app.app import build_router
from framework.adapters.nats import (
    JetStreamConnection,
    JetStreamConsumer,
    JetStreamPublisher,
    JetStreamSettings,
    connect,
)
from framework.adapters.nats_pull import BatchPull, Pulled
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.bus import CommandBus
from framework.errors import BusUnavailable
from framework.store import Notification
from framework.testing.bus_conformance import drain, notifications
from framework.worker import ProjectionWorker
from projections.holdings import HoldingsProjector

pytestmark = [pytest.mark.nats]


def _ids(items: list[Notification]) -> list[int]:
    return [n.id for n in items]


def _positions(messages: list[Msg]) -> list[int]:
    return [int((m.headers or {})["Eventfold-Position"]) for m in messages]


async def _opened(settings: JetStreamSettings, **options: Any) -> tuple[JetStreamConnection, JetStreamPublisher,
                                                                         JetStreamConsumer]:
    connection = await connect(settings)
    await connection.ensure_stream()
    consumer = JetStreamConsumer(connection, "w", **options)
    await consumer.bind()
    return connection, JetStreamPublisher(connection), consumer


def _slow_to_answer(consumer: JetStreamConsumer, expires: float = 5.0) -> None:
    """The consumer's pull requests live longer on the server than its fetch waits (a server slow to
    answer): a fetch ends unanswered while its request is still open, and what that request gets
    later arrives after the fetch."""
    pull = consumer._pull
    assert pull is not None
    fetch = pull.fetch

    def later(batch: int, timeout: float, *, expires_: float | None = None) -> Awaitable[Pulled]:
        return fetch(batch, timeout, expires=expires)

    pull.fetch = later  # type: ignore[method-assign]


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


class _LateStatuses(BatchPull):
    """Statuses reach this pull only after its fetch's timer fired (they are dropped here)."""

    def _on_status(self, message: Msg) -> None:
        return None


def test_messages_queued_when_the_timer_fires_are_delivered(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection, publisher, consumer = await _opened(jetstream_settings, deliver_all=True)
        pull = _LateStatuses(connection.client, jetstream_settings.stream, consumer.name)
        try:
            fetching = asyncio.ensure_future(pull.fetch(10, 0.8))
            await asyncio.sleep(0.2)
            await publisher.publish(notifications([1, 2]))
            pulled = await fetching  # the timer ends it: no status came
            assert _positions(pulled.messages) == [1, 2]
            assert pulled.answered  # messages are an answer: no consumer check needed
            await pulled.messages[-1].ack_sync()  # policy ALL: covers 1 and 2
            await publisher.publish(notifications([3]))
            again = await pull.fetch(10, 0.8)
            assert _positions(again.messages) == [3]
        finally:
            await pull.close()
            await consumer.close()
            await connection.close()

    asyncio.run(scenario())


def test_the_end_of_an_earlier_request_does_not_end_the_next_fetch(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection, publisher, consumer = await _opened(jetstream_settings, deliver_all=True)
        pull = BatchPull(connection.client, jetstream_settings.stream, consumer.name)
        try:
            first = await pull.fetch(10, 0.1, expires=0.4)  # its 408 comes during the next fetch
            assert first == Pulled([], False)
            fetching = asyncio.ensure_future(pull.fetch(10, 3.0))
            await asyncio.sleep(0.8)  # past the first request's end
            assert not fetching.done()
            await publisher.publish(notifications([1]))
            assert _positions((await fetching).messages) == [1]
        finally:
            await pull.close()
            await consumer.close()
            await connection.close()

    asyncio.run(scenario())


def test_an_unanswered_fetch_keeps_its_subscription(jetstream_settings: JetStreamSettings) -> None:  # noqa: F811
    async def scenario() -> None:
        connection, publisher, consumer = await _opened(jetstream_settings, deliver_all=True, ack_wait=30.0)
        try:
            _slow_to_answer(consumer)
            pull = consumer._pull
            assert pull is not None
            check = consumer._check_consumer

            async def check_while_messages_arrive() -> None:
                # Delivered to the request still open on the server, while the consumer is checked.
                await publisher.publish(notifications([1, 2, 3]))
                await _until(lambda: pull.queued >= 1)  # the first or all (a server may end the request at one)
                await check()

            consumer._check_consumer = check_while_messages_arrive  # type: ignore[method-assign]
            empty = await consumer.fetch(10, 0.3)  # unanswered: the consumer is checked (it exists)
            assert empty.notifications == ()
            started = time.monotonic()
            delivery = await consumer.fetch(10, 3.0)
            assert _ids(list(delivery.notifications)) == [1, 2, 3]  # not lost until the ack wait (30 s)
            assert time.monotonic() - started < 2.0
            await delivery.ack()
            await publisher.publish(notifications([4]))
            assert _ids(list((await consumer.fetch(10, 3.0)).notifications)) == [4]
        finally:
            await consumer.close()
            await connection.close()

    asyncio.run(scenario())


def test_messages_queued_for_the_next_fetch_are_handed_back_on_close(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection, publisher, consumer = await _opened(jetstream_settings, deliver_all=True, ack_wait=30.0)
        successor = None
        try:
            _slow_to_answer(consumer)
            assert (await consumer.fetch(10, 0.3)).notifications == ()
            await publisher.publish(notifications([1, 2, 3]))
            pull = consumer._pull
            assert pull is not None
            await _until(lambda: pull.queued >= 1)
            await consumer.close()  # NAKs them: the next consumer gets them now, not after 30 s
            successor = JetStreamConsumer(connection, "w", ack_wait=30.0)
            assert _ids(await drain(successor, 3, timeout=5.0)) == [1, 2, 3]
        finally:
            if successor is not None:
                await successor.close()
            await consumer.close()
            await connection.close()

    asyncio.run(scenario())


async def _drain_retrying(consumer: JetStreamConsumer, count: int, timeout: float = 15.0) -> list[int]:
    received: list[int] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        try:
            delivery = await consumer.fetch(count - len(received), 0.5)
            received += _ids(list(delivery.notifications))
            await delivery.ack()
        except BusUnavailable:
            await asyncio.sleep(0.1)
    return received


def test_a_deleted_consumer_is_made_again_after_the_last_acknowledged_message(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection, publisher, consumer = await _opened(jetstream_settings)  # deliver policy NEW
        try:
            await publisher.publish(notifications([1, 2, 3]))
            assert _ids(await drain(consumer, 3)) == [1, 2, 3]
            assert await connection.delete_consumer("w")
            await publisher.publish(notifications([4, 5, 6]))  # while there is no consumer
            assert await _drain_retrying(consumer, 3) == [4, 5, 6]  # neither skipped nor from the start
            info = await connection.js.consumer_info(jetstream_settings.stream, consumer.name)
            assert info.config.filter_subject == jetstream_settings.subjects
        finally:
            await consumer.close()
            await connection.close()

    asyncio.run(scenario())


def test_a_consumer_deleted_during_a_fetch_redelivers_what_was_not_acknowledged(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection, publisher, consumer = await _opened(jetstream_settings, deliver_all=True)
        try:
            await publisher.publish(notifications([1, 2, 3]))
            assert _ids(await drain(consumer, 2)) == [1, 2]
            unacknowledged = await consumer.fetch_ahead(10, 1.0)
            assert _ids(list(unacknowledged.notifications)) == [3]
            waiting = asyncio.ensure_future(consumer.fetch_ahead(10, 3.0))
            await asyncio.sleep(0.2)
            assert await connection.delete_consumer("w")
            with pytest.raises(BusUnavailable, match="409"):  # the waiting request: "Consumer Deleted"
                await waiting
            await unacknowledged.ack()  # the old consumer's: not sent (it would move the new one's floor)
            await publisher.publish(notifications([4, 5]))
            assert await _drain_retrying(consumer, 3) == [3, 4, 5]
        finally:
            await consumer.close()
            await connection.close()

    asyncio.run(scenario())


class _CountingStore(PostgresEventStore):
    """Counts the reads a worker makes once ``counting`` is set: the gaps it fills from the store."""

    counting = False
    gap_reads = 0

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        if self.counting:
            self.gap_reads += 1
        return super().read_all(after_position, limit)


@pytest.mark.postgres
def test_a_projection_whose_consumer_is_deleted_twice_equals_a_replay(
    pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    settings = pg_database.settings(pg_schema, pool_size=4)
    store, views = PostgresEventStore(settings), PostgresViewStore(settings)
    worker_store = _CountingStore(pg_database.settings(pg_schema, pool_size=2))
    try:
        store.create_schema()
        views.create_schema()
        projectors = [HoldingsProjector()]
        roles = InProcessRoles(store, views, CommandBus(build_router(), store), jetstream_settings, projectors)
        roles.workers = [ProjectionWorker(p, views, worker_store) for p in projectors]
        consumer = jetstream_settings.consumer_name(projectors[0].name)
        with roles:
            write_backlog(store, "US0378331005", accounts=50, credits_each=2)
            wait_settled(views, store, [projectors[0].name])
            worker_store.counting = True  # caught up: from now on every event comes over the bus
            for _ in range(2):
                write_backlog(store, "US0378331005", accounts=200, credits_each=10)
                time.sleep(0.3)  # the relay is publishing and the worker applying
                assert asyncio.run(_delete_consumer(jetstream_settings, consumer))
                wait_settled(views, store, [projectors[0].name])
        assert_matches_replay(views, store, projectors)
        assert worker_store.gap_reads == 0  # nothing published while the consumer was missing was skipped
    finally:
        worker_store.close()
        views.close()
        store.close()


async def _delete_consumer(settings: JetStreamSettings, name: str) -> bool:
    connection = await connect(settings)
    try:
        return bool(await connection.js.delete_consumer(settings.stream, name))
    finally:
        await connection.close()
