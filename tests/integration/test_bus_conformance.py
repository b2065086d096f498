"""Every bus adapter against the shared conformance suite, and JetStream's own behaviour.

The JetStream tests need a NATS server with JetStream (found or started by
``support.nats``); each test has its own stream, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from nats.js.api import AckPolicy, DeliverPolicy
from support.nats import (  # noqa: F401 - fixtures
    NatsServer,
    ThrowawayNats,
    jetstream_settings,
    nats_server,
    private_nats,
    settings_for,
)

from framework.adapters.memory_bus import MemoryBus, MemoryConsumer, MemoryPublisher
from framework.adapters.nats import (
    JetStreamConnection,
    JetStreamConsumer,
    JetStreamPublisher,
    JetStreamSettings,
    connect,
)
from framework.errors import BusUnavailable, ConfigurationError
from framework.partitions import bucket_tokens
from framework.store import Notification
from framework.streaming import EventConsumer, EventPublisher
from framework.testing.bus_conformance import BusConformance, BusHarness, drain, notifications


class MemoryHarness(BusHarness):
    def __init__(self) -> None:
        self.bus = MemoryBus()

    async def make_publisher(self) -> EventPublisher:
        return MemoryPublisher(self.bus)

    async def make_consumer(self, durable_name: str, *, deliver_all: bool) -> EventConsumer:
        consumer = MemoryConsumer(self.bus, durable_name, deliver_all=deliver_all)
        await consumer.bind()
        return consumer


class TestMemoryBus(BusConformance):
    def make_harness(self) -> BusHarness:
        return MemoryHarness()


class JetStreamHarness(BusHarness):
    """Every publisher and consumer on a connection of its own, like separate processes."""

    def __init__(self, settings: JetStreamSettings) -> None:
        self.settings = settings

    async def make_publisher(self) -> EventPublisher:
        return await JetStreamPublisher.open(self.settings)

    async def make_consumer(self, durable_name: str, *, deliver_all: bool) -> EventConsumer:
        consumer = await JetStreamConsumer.open(self.settings, durable_name, deliver_all=deliver_all)
        await consumer.bind()
        return consumer


class TestJetStreamBus(BusConformance):
    @pytest.fixture
    def harness(self, jetstream_settings: JetStreamSettings) -> Iterator[BusHarness]:  # noqa: F811
        yield JetStreamHarness(jetstream_settings)


# --- JetStream specifics -----------------------------------------------------------------------


async def _stream_messages(connection: JetStreamConnection) -> list[tuple[str, dict[str, str], bytes]]:
    js, stream = connection.js, connection.settings.stream
    info = await js.stream_info(stream)
    messages = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await js.get_msg(stream, seq=seq)
        messages.append((str(raw.subject), dict(raw.headers or {}), bytes(raw.data or b"")))
    return messages


def test_messages_carry_subject_headers_and_the_stored_document(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection = await connect(jetstream_settings)
        try:
            sent = notifications([1, 2])
            await JetStreamPublisher(connection).publish(sent)
            messages = await _stream_messages(connection)
        finally:
            await connection.close()
        subject, headers, payload = messages[0]
        bucket = ".".join(bucket_tokens(str(sent[0].originator_id)))
        assert subject == f"{jetstream_settings.subject_prefix}.Thing.{sent[0].originator_id}.{bucket}"
        assert payload == sent[0].state
        assert headers["Nats-Msg-Id"] == headers["Eventfold-Position"] == "1"
        assert headers["Eventfold-Event"] == sent[0].topic
        assert headers["Eventfold-Aggregate-Id"] == str(sent[0].originator_id)
        assert headers["Eventfold-Aggregate-Version"] == str(sent[0].originator_version)
        assert headers["Eventfold-Correlation-Id"] == "corr-1"
        assert "Eventfold-Causation-Id" not in headers  # null in the document

    asyncio.run(scenario())


def test_the_stream_is_created_and_updated_to_the_settings(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection = await connect(jetstream_settings)
        try:
            await connection.ensure_stream()
            await connection.ensure_stream()  # idempotent
            changed = JetStreamSettings(**{**jetstream_settings.__dict__, "max_age_seconds": 3600.0})
            updated = JetStreamConnection(connection.client, changed)
            await updated.ensure_stream()
            info = await connection.js.stream_info(jetstream_settings.stream)
            assert info.config.max_age == 3600
            assert info.config.subjects == [f"{jetstream_settings.subject_prefix}.>"]
            assert info.config.duplicate_window == 120
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_a_durable_consumer_is_created_with_deliver_policy_new_and_ack_all(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        connection = await connect(jetstream_settings)
        try:
            consumer = JetStreamConsumer(connection, "holdings")
            await consumer.bind()
            info = await connection.js.consumer_info(jetstream_settings.stream, consumer.name)
            assert consumer.name == f"{jetstream_settings.consumer_prefix}holdings"
            assert DeliverPolicy(info.config.deliver_policy) is DeliverPolicy.NEW
            assert AckPolicy(info.config.ack_policy) is AckPolicy.ALL
            assert info.config.filter_subject == f"{jetstream_settings.subject_prefix}.>"
            await consumer.close()
            assert await connection.delete_consumer("holdings") is True
            assert await connection.delete_consumer("holdings") is False
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_a_delivery_of_a_consumer_that_died_is_redelivered_after_ack_wait(
    jetstream_settings: JetStreamSettings,  # noqa: F811
) -> None:
    async def scenario() -> None:
        publisher = await JetStreamPublisher.open(jetstream_settings)
        crashed = await JetStreamConsumer.open(jetstream_settings, "w", deliver_all=True, ack_wait=1.0)
        survivor = None
        try:
            await publisher.publish(notifications(range(1, 6)))
            # A fetch's pull request lives on the server until it expires (its timeout), even
            # after its client died; ack_wait is longer, as in production (30s vs 1s).
            delivery = await crashed.fetch(10, 0.3)
            assert [n.id for n in delivery.notifications] == [1, 2, 3, 4, 5]
            await crashed._connection.close()  # dies without acknowledging or handing back
            survivor = await JetStreamConsumer.open(jetstream_settings, "w", ack_wait=1.0)
            await survivor.bind()
            # Redelivery lands in whichever pull request is waiting; one expiring at that very
            # moment can lose it (a gap the worker back-fills from the store), so wait it out.
            await asyncio.sleep(1.5)
            received: list[int] = []
            deadline = time.monotonic() + 15
            while set(received) != {1, 2, 3, 4, 5} and time.monotonic() < deadline:
                again = await survivor.fetch(10, 1.0)
                received += [n.id for n in again.notifications]
                await again.ack()
            assert sorted(set(received)) == [1, 2, 3, 4, 5]  # at least once
        finally:
            for closing in (survivor, crashed, publisher):
                if closing is not None:
                    await closing.close()

    asyncio.run(scenario())


def test_connect_to_nothing_is_bus_unavailable() -> None:
    settings = JetStreamSettings(servers=("nats://127.0.0.1:1",))
    with pytest.raises(BusUnavailable, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        asyncio.run(connect(settings, timeout=1.0))


def test_publisher_and_consumer_survive_nats_going_away(private_nats: ThrowawayNats) -> None:  # noqa: F811
    """While the server is down both raise BusUnavailable; once it is back they carry on."""
    settings = settings_for(private_nats.url, storage="file")

    async def scenario() -> None:
        publisher = await JetStreamPublisher.open(settings, ack_timeout=2.0)
        consumer = await JetStreamConsumer.open(settings, "w", deliver_all=True, request_timeout=2.0)
        try:
            await publisher.publish(notifications(range(1, 4)))
            assert [n.id for n in await drain(consumer, 3)] == [1, 2, 3]

            await asyncio.to_thread(private_nats.stop)
            await asyncio.sleep(0.3)
            with pytest.raises(BusUnavailable):
                await publisher.publish(notifications([4]))
            with pytest.raises(BusUnavailable):
                await consumer.fetch(10, 0.5)

            await asyncio.to_thread(private_nats.start)
            await _until_published(publisher, notifications(range(4, 7)))
            assert await publisher.last_published_position() == 6
            assert [n.id for n in await _drain_retrying(consumer, 3)] == [4, 5, 6]
        finally:
            await consumer.close()
            await publisher.close()

    asyncio.run(scenario())


async def _until_published(publisher: JetStreamPublisher, batch: list[Notification], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await publisher.publish(batch)
            return
        except BusUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _drain_retrying(consumer: JetStreamConsumer, count: int, timeout: float = 20) -> list[Notification]:
    deadline = time.monotonic() + timeout
    received: list[Notification] = []
    while len(received) < count and time.monotonic() < deadline:
        try:
            delivery = await consumer.fetch(count - len(received), 1.0)
            received.extend(delivery.notifications)
            await delivery.ack()
        except BusUnavailable:
            await asyncio.sleep(0.2)
    return received


def test_the_session_server(nats_server: NatsServer) -> None:  # noqa: F811
    print(f"NATS for the tests: {nats_server.origin}")  # shown with -s or -rP
    assert nats_server.url.startswith("nats://")


def test_a_server_that_comes_back_empty_gets_its_stream_and_consumer_again(
    private_nats: ThrowawayNats,  # noqa: F811
) -> None:
    """Memory storage: a restart loses the stream; the publisher and consumer recreate it."""
    settings = settings_for(private_nats.url, storage="memory")

    async def scenario() -> None:
        publisher = await JetStreamPublisher.open(settings, ack_timeout=2.0)
        consumer = await JetStreamConsumer.open(settings, "w", deliver_all=True, request_timeout=2.0)
        try:
            await publisher.publish(notifications(range(1, 4)))
            assert [n.id for n in await drain(consumer, 3)] == [1, 2, 3]
            await asyncio.to_thread(private_nats.kill)
            await asyncio.to_thread(private_nats.start)
            await _until_published(publisher, notifications(range(4, 7)))
            assert [n.id for n in await _drain_retrying(consumer, 3)] == [4, 5, 6]
        finally:
            await consumer.close()
            await publisher.close()

    asyncio.run(scenario())


# --- settings (no server needed) ---------------------------------------------------------------


def test_settings_defaults_and_every_variable() -> None:
    assert JetStreamSettings.from_env({}) == JetStreamSettings()
    settings = JetStreamSettings.from_env({
        "EVENTFOLD_NATS_URL": " nats://a:4222, nats://user:secret@b:4223 ,",
        "EVENTFOLD_STREAM": "events_v2",
        "EVENTFOLD_SUBJECT_PREFIX": "acme.events",
        "EVENTFOLD_STREAM_STORAGE": "Memory",
        "EVENTFOLD_STREAM_REPLICAS": "3",
        "EVENTFOLD_STREAM_RETENTION": "interest",
        "EVENTFOLD_STREAM_MAX_AGE_SECONDS": "86400",
        "EVENTFOLD_STREAM_DUPLICATE_WINDOW_SECONDS": "300",
        "EVENTFOLD_CONSUMER_PREFIX": "",
    })
    assert settings == JetStreamSettings(
        servers=("nats://a:4222", "nats://user:secret@b:4223"), stream="events_v2",
        subject_prefix="acme.events", storage="memory", replicas=3, retention="interest",
        max_age_seconds=86400.0, duplicate_window_seconds=300.0, consumer_prefix="",
    )
    assert settings.subjects == "acme.events.>"
    assert settings.consumer_name("holdings.v2") == "holdings_v2"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENTFOLD_NATS_URL", "http://localhost:4222"),
        ("EVENTFOLD_NATS_URL", "nats://localhost:notaport"),
        ("EVENTFOLD_NATS_URL", " , "),
        ("EVENTFOLD_STREAM", "bad.name"),
        ("EVENTFOLD_SUBJECT_PREFIX", "a..b"),
        ("EVENTFOLD_SUBJECT_PREFIX", "a.>"),
        ("EVENTFOLD_STREAM_STORAGE", "disk"),
        ("EVENTFOLD_STREAM_REPLICAS", "0"),
        ("EVENTFOLD_STREAM_REPLICAS", "three"),
        ("EVENTFOLD_STREAM_RETENTION", "workqueue"),
        ("EVENTFOLD_STREAM_MAX_AGE_SECONDS", "-1"),
        ("EVENTFOLD_STREAM_DUPLICATE_WINDOW_SECONDS", "soon"),
        ("EVENTFOLD_CONSUMER_PREFIX", "a b"),
    ],
)
def test_a_bad_setting_names_the_variable_and_the_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        JetStreamSettings.from_env({variable: value})
    assert variable in str(raised.value)
    assert repr(value.strip()) in str(raised.value) or repr(value) in str(raised.value)


def test_a_duplicate_window_longer_than_max_age_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="EVENTFOLD_STREAM_DUPLICATE_WINDOW_SECONDS"):
        JetStreamSettings.from_env({"EVENTFOLD_STREAM_MAX_AGE_SECONDS": "60"})


def test_a_password_in_a_bad_url_is_not_repeated() -> None:
    with pytest.raises(ConfigurationError) as raised:
        JetStreamSettings.from_env({"EVENTFOLD_NATS_URL": "nats://u:hunter2@ok:4222,bogus"})
    assert "hunter2" not in str(raised.value)
