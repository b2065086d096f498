"""Batched pulls from a JetStream pull consumer, cheaper per message than nats-py's ``fetch``.

nats-py's ``PullSubscription.fetch`` waits for each message with ``next_msg`` (a future and a
timeout per message). ``BatchPull`` keeps one plain core-NATS subscription on a private inbox
whose callback only appends each message to a list; a fetch publishes one pull request to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` (``{"batch": n, "no_wait": true, "expires": ns}``:
the server waits for the first message until ``expires``, then sends what it has and ends the
request) and waits once, until the batch is full, a status ends the request, or its timer fires.

Each request has a reply subject of its own (``<inbox>.<n>``): the server sends the request's
status there (404 no messages, 408 request timeout/expired: the request is over; 409 consumer
deleted, exceeded max waiting, ...; 503 no responders: ``PullRefused``), while the messages
arrive with their stream subject. A status of an earlier request is ignored.

Messages that arrive after their fetch ended (a request that was still open on the server when
the timer fired) stay queued for the next fetch; ``close()`` returns them (to be handed back with
a NAK). A fetch nobody answered (no status, no message) says so (``Pulled.answered``): the caller
checks whether its consumer still exists. The subscription is kept either way: messages may
still be on their way to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import NamedTuple

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

__all__ = ["BatchPull", "PullRefused", "Pulled"]

_STATUS = Header.STATUS.value  # "Status"
_DESCRIPTION = Header.DESCRIPTION  # the key nats-py stores a status' description under
_OVER = frozenset({"404", "408"})  # no messages / request timeout (expired, or no_wait with some delivered)
_HEARTBEAT = "100"
_EXPIRES_MARGIN = 0.05  # a lingering request expires this long before the fetch's timer: its 408 comes first
_DRAIN_SECONDS = 2.0


class PullRefused(Exception):
    """The server refused a pull request (409: consumer deleted, too many waiting requests, ...;
    503: no responders): the consumer should be checked (created again) before the next fetch."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"pull refused: {status} {description}".strip())
        self.status = status
        self.description = description


class Pulled(NamedTuple):
    """What one fetch got; ``answered`` is False when nothing came back at all (no message, no status)."""

    messages: list[Msg]
    answered: bool


class BatchPull:
    """Pull requests on one durable consumer, answered into one subscription (see the module)."""

    def __init__(self, client: NATS, stream: str, consumer: str, *, api_prefix: str = "$JS.API") -> None:
        self._client = client
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = client.new_inbox()
        self._status_prefix = self._inbox + "."
        self._subscription: Subscription | None = None
        self._queued: list[Msg] = []  # delivered, not taken by a fetch yet (in arrival order)
        self._requests = 0
        self._reply = ""  # the current request's reply subject: statuses of others are ignored
        self._wanted = 0  # how many queued messages end the current request's wait
        self._waiter: asyncio.Future[None] | None = None
        self._answered = False  # the current request got a status (404/408: it is over; else refused)
        self._refused: PullRefused | None = None

    @property
    def queued(self) -> int:
        """How many delivered messages wait for the next fetch."""
        return len(self._queued)

    async def start(self) -> None:
        """Subscribe to the inbox (once)."""
        if self._subscription is None:
            self._subscription = await self._client.subscribe(self._inbox + ".*", cb=self._on_message)

    async def _on_message(self, message: Msg) -> None:
        if message.subject.startswith(self._status_prefix):
            self._on_status(message)
            return
        queued = self._queued
        queued.append(message)
        waiter = self._waiter
        if waiter is not None and len(queued) >= self._wanted and not waiter.done():
            waiter.set_result(None)

    def _on_status(self, message: Msg) -> None:
        if message.subject != self._reply:
            return  # an earlier request's end (or refusal): that request is over anyway
        headers = message.headers or {}
        status = headers.get(_STATUS, "")
        if status == _HEARTBEAT:
            return
        self._answered = True
        if status not in _OVER:
            self._refused = PullRefused(status or "?", str(headers.get(_DESCRIPTION, "")))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self, count: int) -> list[Msg]:
        queued = self._queued
        if len(queued) <= count:
            self._queued = []
            return queued
        taken = queued[:count]
        del queued[:count]
        return taken

    async def fetch(self, batch: int, timeout: float, *, expires: float | None = None) -> Pulled:
        """Up to ``batch`` messages within ``timeout`` seconds: what is queued, then what one request
        gets. The request (``no_wait`` with ``expires``) waits on the server for the first message
        (until ``expires``: by default a little less than ``timeout``), then takes what is there and
        ends (408), or fills the batch; with messages queued already it does not wait at all (404).

        Raises ``PullRefused`` (the messages it got stay queued) and nats-py's errors of a publish.
        One fetch at a time: the current request's answer is told apart from the earlier ones'.
        """
        if self._waiter is not None:
            raise RuntimeError("BatchPull: a fetch is already waiting; fetch one at a time")
        await self.start()
        taken = self._take(batch)
        if len(taken) >= batch:
            return Pulled(taken, True)
        deadline = asyncio.get_running_loop().time() + timeout
        if taken:
            pulled = await self._request(batch - len(taken), deadline)
            return Pulled(taken + pulled.messages, True)
        lifetime = expires if expires is not None else timeout - min(_EXPIRES_MARGIN, timeout / 4)
        return await self._request(batch, deadline, expires=lifetime)

    async def _request(self, wanted: int, deadline: float, *, expires: float | None = None) -> Pulled:
        self._requests += 1
        reply = self._reply = f"{self._status_prefix}{self._requests}"
        self._wanted, self._answered, self._refused = wanted, False, None
        body: dict[str, object] = {"batch": wanted, "no_wait": True}
        if expires is not None:
            body["expires"] = int(expires * 1e9)
        await self._client.publish(self._next_subject, json.dumps(body).encode(), reply=reply)
        if len(self._queued) < wanted and not self._answered:
            await self._wait(deadline)
        # Messages already queued when the timer fired are an answer, and delivered: under policy ALL
        # a later acknowledgement would cover them, so they must never be left behind.
        subscription = self._subscription
        answered = self._answered or bool(self._queued) or (
            subscription is not None and subscription.pending_msgs > 0)
        messages = self._take(wanted)
        refused = self._refused
        if refused is not None:
            self._queued[:0] = messages  # kept for the next fetch (dropped if the consumer is made again)
            raise refused
        return Pulled(messages, answered)

    async def _wait(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(deadline, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def discard(self) -> int:
        """Forget the queued messages (their consumer is gone: they can be neither acknowledged nor
        handed back); how many there were."""
        dropped, self._queued = len(self._queued), []
        return dropped

    def take_queued(self) -> list[Msg]:
        """The queued messages, taken (to be handed back)."""
        return self._take(len(self._queued))

    async def close(self) -> list[Msg]:
        """Unsubscribe after the messages already sent to the inbox were queued; returns every queued
        message, which the caller hands back (NAK) rather than leaving it to the ack wait."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):  # a closed or broken connection: what came is queued
                await asyncio.wait_for(subscription.drain(), _DRAIN_SECONDS)  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return self.take_queued()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
