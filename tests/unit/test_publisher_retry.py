"""The JetStream publisher publishing a batch again after a failure: within the stream's duplicate window it
sends the whole batch (the server drops what the failed attempt stored); later than the window allows, it
sends only what lies beyond the stream's last position, so a long outage doubles nothing either.

A fake stream stands in for JetStream (it drops a ``Nats-Msg-Id`` it remembers, and can forget them, as the
server does once the window has passed); the clock is injected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import nats.errors
import pytest

from framework.adapters.nats import HEADER_POSITION, JetStreamPublisher, JetStreamSettings
from framework.errors import BusUnavailable
from framework.store import Notification

WINDOW = 120.0


class FakeStream:
    """Publishes stored in order, ``Nats-Msg-Id`` duplicates dropped while remembered."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.sent: list[int] = []
        self.remembered: set[str] = set()
        self.fail_after: int | None = None  # the n-th next publish fails (no responders)

    def forget(self) -> None:
        """The duplicate window passed: the server no longer knows the ids it stored."""
        self.remembered.clear()

    async def publish_async(self, subject: str, payload: bytes, *, stream: str, headers: dict[str, str]
                            ) -> asyncio.Future[Any]:
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise nats.errors.NoRespondersError
            self.fail_after -= 1
        self.sent.append(int(headers[HEADER_POSITION]))
        if headers["Nats-Msg-Id"] not in self.remembered:
            self.remembered.add(headers["Nats-Msg-Id"])
            self.messages.append(headers)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def stream_info(self, stream: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(last_seq=len(self.messages)))

    async def get_msg(self, stream: str, *, seq: int) -> Any:
        return SimpleNamespace(headers=self.messages[seq - 1])

    def positions(self) -> list[int]:
        return [int(m[HEADER_POSITION]) for m in self.messages]


class FakeConnection:
    def __init__(self, stream: FakeStream) -> None:
        self.js, self.settings = stream, JetStreamSettings(duplicate_window_seconds=WINDOW)

    def check_connected(self) -> None:
        return None

    async def ensure_stream(self, *, update: bool = True) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def batch(first: int, last: int) -> list[Notification]:
    aggregate = uuid4()
    return [Notification(id=p, originator_id=aggregate, originator_version=p, topic="Credited",
                         state=b'{"agg": "Account"}') for p in range(first, last + 1)]


def fail_part_way(publisher: JetStreamPublisher, stream: FakeStream, notifications: Sequence[Notification],
                  stored: int) -> None:
    stream.fail_after = stored
    with pytest.raises(BusUnavailable):
        asyncio.run(publisher.publish(notifications))
    stream.fail_after = None


def test_a_retry_within_the_window_sends_the_whole_batch_and_the_server_drops_the_duplicates() -> None:
    stream, clock = FakeStream(), Clock()
    publisher = JetStreamPublisher(FakeConnection(stream), clock=clock)  # type: ignore[arg-type]
    asyncio.run(publisher.publish(batch(1, 5)))
    fail_part_way(publisher, stream, batch(6, 15), stored=4)
    clock.now += 30  # a leader election and some backoff later
    asyncio.run(publisher.publish(batch(6, 15)))
    assert stream.sent[-10:] == list(range(6, 16))  # everything sent again...
    assert stream.positions() == list(range(1, 16))  # ...and stored once


def test_a_retry_later_than_the_window_sends_only_what_the_stream_lacks() -> None:
    stream, clock = FakeStream(), Clock()
    publisher = JetStreamPublisher(FakeConnection(stream), clock=clock)  # type: ignore[arg-type]
    asyncio.run(publisher.publish(batch(1, 5)))
    fail_part_way(publisher, stream, batch(6, 15), stored=4)
    clock.now += 60
    fail_part_way(publisher, stream, batch(6, 15), stored=0)  # still away: the window counts from the first try
    clock.now += WINDOW
    stream.forget()  # the server forgot the ids of 6..9
    asyncio.run(publisher.publish(batch(6, 15)))
    assert stream.sent[-6:] == list(range(10, 16))
    assert stream.positions() == list(range(1, 16))  # nothing doubled


def test_a_new_batch_after_a_success_is_sent_whole() -> None:
    stream, clock = FakeStream(), Clock()
    publisher = JetStreamPublisher(FakeConnection(stream), clock=clock)  # type: ignore[arg-type]
    fail_part_way(publisher, stream, batch(1, 5), stored=2)
    asyncio.run(publisher.publish(batch(1, 5)))
    clock.now += 10 * WINDOW
    asyncio.run(publisher.publish(batch(6, 8)))  # no failed attempt behind it: no question asked
    assert stream.sent == [1, 2, 1, 2, 3, 4, 5, 6, 7, 8]
    assert stream.positions() == list(range(1, 9))
