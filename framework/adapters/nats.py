"""The bus port on NATS JetStream: with ``nats_pull`` (its fetches) and ``nats_headers`` (its client), the only
modules of Eventfold that import ``nats``.

One stream (default ``eventfold``) captures ``{prefix}.>``; every stored event
is published to ``{prefix}.{aggregate_type}.{aggregate_id}.{b0}.….{b7}`` (the
aggregate id's partition bucket as eight bit tokens, ``framework.partitions``:
one partition of a partitioned projection is one filter subject) with its stored
JSON document as the payload, unchanged, and its position, name and identity
in headers. ``Nats-Msg-Id`` is the global position, so JetStream drops the
duplicates a relay re-publishes after a crash (within the stream's duplicate
window; the relay's checkpoint covers the rest).

Workers read through durable pull consumers over all of ``{prefix}.>`` (they
need every position to notice gaps) with ``AckPolicy.ALL``: acknowledging the
last message of a fetch acknowledges the whole fetch.

Every nats error is translated into ``BusUnavailable`` (or ``ConfigurationError``
for a stream the server refuses to create) at this boundary.

    connection = await connect(JetStreamSettings.from_settings(settings))
    await connection.ensure_stream()
    publisher = JetStreamPublisher(connection)
    consumer = JetStreamConsumer(connection, "holdings")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast
from uuid import UUID

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    Placement,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from framework.adapters.nats_headers import HeaderClient
from framework.adapters.nats_pull import BatchPull, PullRefused
from framework.errors import BusUnavailable, ConfigurationError
from framework.mapper import stored_header
from framework.partitions import Partition, bucket_tokens
from framework.settings import DEFAULT_NATS_URL, Settings
from framework.store import Notification
from framework.store import notification as _notification
from framework.streaming import Delivery
from framework.tracing import TracedNotification, trace_context_of

__all__ = [
    "HEADER_AGGREGATE_ID",
    "HEADER_AGGREGATE_VERSION",
    "HEADER_CAUSATION_ID",
    "HEADER_CORRELATION_ID",
    "HEADER_EVENT",
    "HEADER_POSITION",
    "HEADER_TRACEPARENT",
    "HEADER_TRACESTATE",
    "JetStreamConnection",
    "JetStreamConsumer",
    "JetStreamPublisher",
    "JetStreamSettings",
    "connect",
    "message_for",
    "notification_from",
    "partition_filter",
    "subject_token",
]

log = logging.getLogger(__name__)

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_POSITION = "Eventfold-Position"
HEADER_EVENT = "Eventfold-Event"
HEADER_AGGREGATE_ID = "Eventfold-Aggregate-Id"
HEADER_AGGREGATE_VERSION = "Eventfold-Aggregate-Version"
HEADER_CORRELATION_ID = "Eventfold-Correlation-Id"
HEADER_CAUSATION_ID = "Eventfold-Causation-Id"
HEADER_TRACEPARENT = "traceparent"  # W3C trace context: the relay's span, else the command's
HEADER_TRACESTATE = "tracestate"

DEFAULT_URL = DEFAULT_NATS_URL
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014
_STREAM_NAME_IN_USE = 10058

# How long to wait for a stream's answer after a publish it did not answer: while its replicas elect a
# leader nobody answers, and a short wait retries (with the caller's backoff) soon after the election.
_ELECTION_CHECK_SECONDS = 1.0

# Everything nats-py raises when the server cannot be reached or does not answer in time.
_NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, asyncio.TimeoutError, OSError)
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*_NATS_ERRORS, AttributeError, ValueError)

# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JetStreamSettings:
    """Where the NATS servers are and how the event stream is configured.

    ``storage="file"`` and ``replicas>=3`` (on a cluster) make an acknowledged
    publish durable; JetStream acks do not mean fsync by default. The event
    store stays the source of truth either way.
    """

    servers: tuple[str, ...] = (DEFAULT_URL,)
    stream: str = "eventfold"
    subject_prefix: str = "eventfold.events"
    storage: Literal["file", "memory"] = "file"
    replicas: int = 1
    retention: Literal["limits", "interest"] = "limits"
    max_age_seconds: float = 0.0
    duplicate_window_seconds: float = 120.0
    consumer_prefix: str = "eventfold-"
    placement_cluster: str | None = None  # the JetStream cluster the stream's replicas go to
    placement_tags: tuple[str, ...] = ()  # ...on servers carrying every one of these tags

    @property
    def subjects(self) -> str:
        """The wildcard every event subject matches."""
        return f"{self.subject_prefix}.>"

    @classmethod
    def from_settings(cls, settings: Settings) -> JetStreamSettings:
        """The stream's part of ``Settings`` (``EVENTFOLD_NATS_URL`` and ``EVENTFOLD_STREAM*``, read and
        checked by ``framework.settings``)."""
        return cls(
            servers=settings.nats_servers(),
            stream=settings.stream,
            subject_prefix=settings.subject_prefix,
            storage=cast(Literal["file", "memory"], settings.stream_storage),
            replicas=settings.stream_replicas,
            retention=cast(Literal["limits", "interest"], settings.stream_retention),
            max_age_seconds=settings.stream_max_age_seconds,
            duplicate_window_seconds=settings.stream_duplicate_window_seconds,
            consumer_prefix=settings.consumer_prefix,
            placement_cluster=settings.stream_placement_cluster,
            placement_tags=settings.stream_placement_tags,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> JetStreamSettings:
        """``from_settings(Settings.from_env(env))``: the variables are read where all settings are."""
        return cls.from_settings(Settings.from_env(env))

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[self.subjects],
            storage=StorageType.FILE if self.storage == "file" else StorageType.MEMORY,
            num_replicas=self.replicas,
            retention=RetentionPolicy.LIMITS if self.retention == "limits" else RetentionPolicy.INTEREST,
            max_age=self.max_age_seconds,
            duplicate_window=self.duplicate_window_seconds,
            discard=DiscardPolicy.OLD,
            placement=self.placement(),
        )

    def placement(self) -> Placement | None:
        """Where the stream's replicas go (None: wherever the server puts them)."""
        if self.placement_cluster is None and not self.placement_tags:
            return None
        return Placement(cluster=self.placement_cluster, tags=list(self.placement_tags) or None)

    @property
    def effective_duplicate_window(self) -> float:
        """The duplicate window the server applies (0 asks for its default, two minutes)."""
        return self.duplicate_window_seconds or 120.0

    def consumer_name(self, durable_name: str) -> str:
        """The server-side name of a durable consumer (prefixed; characters NATS refuses become '_')."""
        if not durable_name:
            raise ConfigurationError("a durable consumer needs a non-empty name")
        return _NOT_TOKEN.sub("_", self.consumer_prefix + durable_name)


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# --- connection --------------------------------------------------------------------------------


def _unavailable(action: str, error: BaseException) -> BusUnavailable:
    reason = str(error).strip() or type(error).__name__
    return BusUnavailable(f"NATS JetStream unavailable ({action}): {reason}")


def _api_code(error: BaseException) -> int | None:
    return getattr(error, "err_code", None) if isinstance(error, nats.js.errors.APIError) else None


class JetStreamConnection:
    """One NATS connection (reconnecting forever) and its JetStream contexts.

    Shared by publishers and consumers of one process; ``close()`` it last.
    """

    def __init__(self, client: NATS, settings: JetStreamSettings, *, api_timeout: float = 5.0) -> None:
        self.client = client
        self.settings = settings
        self.js: JetStreamContext = client.jetstream(timeout=api_timeout)

    @property
    def is_connected(self) -> bool:
        return bool(self.client.is_connected)

    @property
    def reconnects(self) -> int:
        """How many times the client reconnected so far."""
        return int(self.client.stats["reconnects"])

    def check_connected(self) -> None:
        """Raise ``BusUnavailable`` while the client is disconnected or reconnecting."""
        if not self.client.is_connected:
            state = "closed" if self.client.is_closed else "reconnecting"
            raise BusUnavailable(f"NATS JetStream unavailable: connection {state}")

    async def ensure_stream(self, *, update: bool = True) -> None:
        """Create the event stream, or (``update=True``) bring an existing one to the settings."""
        config = self.settings.stream_config()
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as error:
            if _api_code(error) != _STREAM_NAME_IN_USE:
                raise self._refused(error) from error
            if update:
                await self._update_stream(config)
        except _NATS_ERRORS as error:
            raise _unavailable("creating the stream", error) from error

    async def _update_stream(self, config: StreamConfig) -> None:
        try:
            await self.js.update_stream(config)
        except nats.js.errors.BadRequestError as error:
            raise self._refused(error) from error
        except _NATS_ERRORS as error:
            raise _unavailable("updating the stream", error) from error

    def _refused(self, error: nats.js.errors.APIError) -> ConfigurationError:
        return ConfigurationError(
            f"NATS refused stream {self.settings.stream!r} with subjects {self.settings.subjects!r}, "
            f"storage={self.settings.storage}, replicas={self.settings.replicas}, "
            f"retention={self.settings.retention}{self._placement_words()}: {error.description or error}"
        )

    def _placement_words(self) -> str:
        cluster, tags = self.settings.placement_cluster, self.settings.placement_tags
        words = f", placement cluster={cluster}" if cluster else ""
        return words + (f", placement tags={','.join(tags)}" if tags else "")

    async def stream_exists(self, *, timeout: float | None = None) -> bool:
        """Whether the stream exists (``timeout``: seconds to wait for the answer, else the API's own)."""
        try:
            await asyncio.wait_for(self.js.stream_info(self.settings.stream), timeout)
        except nats.js.errors.NotFoundError:
            return False
        except _NATS_ERRORS as error:
            raise _unavailable("reading the stream", error) from error
        return True

    async def delete_stream(self) -> bool:
        """Delete the event stream and its consumers; False if it did not exist."""
        try:
            return bool(await self.js.delete_stream(self.settings.stream))
        except nats.js.errors.NotFoundError:
            return False
        except _NATS_ERRORS as error:
            raise _unavailable("deleting the stream", error) from error

    async def delete_consumer(self, durable_name: str) -> bool:
        """Delete a durable consumer (by its unprefixed name); False if it did not exist."""
        name = self.settings.consumer_name(durable_name)
        try:
            return bool(await self.js.delete_consumer(self.settings.stream, name))
        except nats.js.errors.NotFoundError:
            return False
        except _NATS_ERRORS as error:
            raise _unavailable("deleting a consumer", error) from error

    async def close(self) -> None:
        if not self.client.is_closed:
            try:
                await self.client.close()
            except _NATS_ERRORS as error:
                log.debug("closing the NATS connection: %s", error)


async def connect(
    settings: JetStreamSettings,
    *,
    timeout: float = 5.0,
    name: str = "eventfold",
    reconnect_wait: float = 0.5,
) -> JetStreamConnection:
    """Connect to the first server that answers within ``timeout``, else raise ``BusUnavailable``.

    Once connected the client reconnects forever (``max_reconnect_attempts=-1``)
    with a short wait: while it is away, publishes and fetches raise
    ``BusUnavailable`` and the caller's loop retries.
    """
    client = HeaderClient()  # nats-py's client, parsing each message's headers sooner
    last_error: list[BaseException] = []

    async def on_error(error: Exception) -> None:
        last_error[:] = [error]
        level = logging.WARNING if client.is_connected else logging.DEBUG
        log.log(level, "NATS: %s", str(error) or type(error).__name__)

    async def on_disconnected() -> None:
        if not client.is_closed:
            log.warning("NATS: disconnected; reconnecting to %s", ", ".join(map(_redact, settings.servers)))

    async def on_reconnected() -> None:
        url = client.connected_url
        log.warning("NATS: reconnected to %s", _redact(url.geturl()) if url is not None else "?")

    options: dict[str, Any] = {
        "servers": list(settings.servers), "name": name, "allow_reconnect": True,
        "max_reconnect_attempts": -1, "reconnect_time_wait": reconnect_wait,
        "connect_timeout": min(timeout, 2.0), "ping_interval": 10, "max_outstanding_pings": 3,
        "error_cb": on_error, "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected,
    }
    try:
        await asyncio.wait_for(client.connect(**options), timeout)
    except asyncio.CancelledError:
        await _abandon(client)
        raise
    except _NATS_ERRORS as error:
        await _abandon(client)
        cause = last_error[0] if last_error else error
        servers = ", ".join(_redact(url) for url in settings.servers)
        raise BusUnavailable(
            f"cannot connect to NATS at {servers} within {timeout:g}s: {str(cause) or type(cause).__name__}"
        ) from cause
    return JetStreamConnection(client, settings)


async def _abandon(client: NATS) -> None:
    with contextlib.suppress(*_CLOSE_ERRORS):  # a half-built client
        await client.close()


# --- publisher ---------------------------------------------------------------------------------


def subject_token(value: str) -> str:
    """``value`` made safe as one subject token (no '.', '*', '>' or whitespace)."""
    return _NOT_TOKEN.sub("_", value) or "_"


def _header_safe(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    return None if ("\r" in text or "\n" in text) else text


def message_for(notification: Notification, subject_prefix: str) -> tuple[str, dict[str, str]]:
    """The subject and headers of one notification (its payload is ``notification.state``)."""
    header = stored_header(notification)
    aggregate_type = header.aggregate_type or "unknown"
    aggregate_id = str(notification.originator_id)
    headers = {
        HEADER_MSG_ID: str(notification.id),
        HEADER_POSITION: str(notification.id),
        HEADER_EVENT: notification.topic,
        HEADER_AGGREGATE_ID: aggregate_id,
        HEADER_AGGREGATE_VERSION: str(notification.originator_version),
    }
    for name, stored in ((HEADER_CORRELATION_ID, header.correlation_id), (HEADER_CAUSATION_ID, header.causation_id)):
        value = _header_safe(stored)
        if value is not None:
            headers[name] = value
    trace = trace_context_of(notification) or header.trace_context
    if isinstance(trace, Mapping):
        for key in (HEADER_TRACEPARENT, HEADER_TRACESTATE):
            value = _header_safe(trace.get(key))
            if value:
                headers[key] = value
    bucket = ".".join(bucket_tokens(aggregate_id))
    return f"{subject_prefix}.{subject_token(aggregate_type)}.{subject_token(aggregate_id)}.{bucket}", headers


def partition_filter(subject_prefix: str, partition: Partition) -> str:
    """The filter subject of one partition's events (partitioned by aggregate id), see ``message_for``."""
    bits = partition.bucket_prefix()
    if not bits:
        return f"{subject_prefix}.>"
    rest = "" if len(bits) == 8 else ".>"
    return f"{subject_prefix}.*.*.{'.'.join(bits)}{rest}"


class JetStreamPublisher:
    """``EventPublisher`` on JetStream: pipelined publishes (up to ``window`` unacknowledged),
    then one wait for the remaining acks; any failure or an ack later than ``ack_timeout``
    raises ``BusUnavailable``, and the relay publishes the batch again (duplicates dropped).

    Creates the stream (or brings it to the settings) before its first publish.
    ``close()`` closes the connection only if the publisher was opened with ``open()``.

    A batch published again after a failure (a leader election on a cluster, a server gone away)
    relies on the stream's duplicate window to drop what the failed attempt did store. When the
    retry comes later than that window allows (an outage longer than it), the window cannot be
    trusted any more: the publisher then first asks the stream for its last position and sends only
    what lies beyond it (a hole the failed attempt left below that is filled by the workers' gap
    back-fill from the store), so a long outage doubles nothing either.
    """

    def __init__(self, connection: JetStreamConnection, *, ack_timeout: float = 10.0,
                 window: int = 2000, owns_connection: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connection = connection
        self._settings = connection.settings
        self._ack_timeout = ack_timeout
        self._window = max(1, min(window, 4000))  # below nats-py's own limit of pending acks
        self._owns_connection = owns_connection
        self._stream_ready = False
        self._stream_checked = False  # brought to the settings once
        self._clock = clock
        self._failed: tuple[int, float] | None = None  # (first position, when) of the batch that last failed

    @classmethod
    async def open(cls, settings: JetStreamSettings, *, ack_timeout: float = 10.0,
                   window: int = 2000) -> JetStreamPublisher:
        """A publisher on its own connection, closed with it."""
        return cls(await connect(settings), ack_timeout=ack_timeout, window=window, owns_connection=True)

    async def publish(self, notifications: Sequence[Notification]) -> None:
        if not notifications:
            return
        first, now = notifications[0].id, self._clock()
        try:
            await self._publish(await self._beyond_stale_window(notifications, now))
        except BusUnavailable:
            if self._failed is None or self._failed[0] != first:
                self._failed = (first, now)  # the first failed attempt: the window counts from it
            raise
        self._failed = None

    async def _beyond_stale_window(self, notifications: Sequence[Notification], now: float
                                   ) -> Sequence[Notification]:
        """``notifications``, less what the stream already holds when the duplicate window of an earlier
        failed attempt at this batch may have run out."""
        failed = self._failed
        margin = self._ack_timeout + 1.0  # the failed attempt may have stored messages until its ack timeout
        if failed is None or failed[0] != notifications[0].id:
            return notifications
        if now - failed[1] + margin < self._settings.effective_duplicate_window:
            return notifications
        last = await self.last_published_position()
        log.warning("relay: republishing after %.0fs, longer than the duplicate window allows: sending only "
                    "the positions after %d, the stream's last", now - failed[1], last)
        return [n for n in notifications if n.id > last]

    async def _publish(self, notifications: Sequence[Notification]) -> None:
        if not notifications:
            return
        self._connection.check_connected()
        if not self._stream_ready:
            await self._stream_again() if self._stream_checked else await self._connection.ensure_stream()
            self._stream_ready = self._stream_checked = True
        futures: list[asyncio.Future[Any]] = []
        try:
            await self._send_all(notifications, futures)
        except nats.js.errors.NoStreamResponseError as error:
            self._stream_ready = False  # deleted, or a server that lost it: recreate next time
            raise _unavailable("no stream answered the publish", error) from error
        except _NATS_ERRORS as error:
            raise _unavailable("publishing", error) from error
        finally:
            for future in futures:  # frees the pending slots of unanswered publishes
                future.cancel()

    async def _stream_again(self) -> None:
        """After a publish no stream answered: a leader election on a cluster (asking the stream, not the
        cluster's meta leader, which may be electing too), or a server that lost the stream (create it,
        without updating: an update while a cluster node is away could be refused for want of peers)."""
        if not await self._connection.stream_exists(timeout=_ELECTION_CHECK_SECONDS):
            await self._connection.ensure_stream(update=False)

    async def _send_all(self, notifications: Sequence[Notification],
                        futures: list[asyncio.Future[Any]]) -> None:
        """Publish without waiting, keeping at most ``window`` acks outstanding."""
        js, prefix, stream = self._connection.js, self._settings.subject_prefix, self._settings.stream
        for index, notification in enumerate(notifications):
            if index >= self._window:
                await self._settled(futures[index - self._window])
            subject, headers = message_for(notification, prefix)
            futures.append(await js.publish_async(subject, notification.state, stream=stream, headers=headers))
        await asyncio.wait_for(asyncio.gather(*futures[-self._window:]), self._ack_timeout)

    async def _settled(self, future: asyncio.Future[Any]) -> None:
        if future.done():
            future.result()  # raises the publish's error, if any
        else:
            await asyncio.wait_for(future, self._ack_timeout)

    async def last_published_position(self) -> int:
        """The ``Eventfold-Position`` of the stream's last message (0: empty, missing or expired)."""
        self._connection.check_connected()
        return await _last_position(self._connection.js, self._settings.stream)

    async def close(self) -> None:
        if self._owns_connection:
            await self._connection.close()


async def _last_position(js: JetStreamContext, stream: str) -> int:
    """The ``Eventfold-Position`` of the stream's last message (0: empty, missing or expired)."""
    try:
        info = await js.stream_info(stream)
        last = info.state.last_seq
        if not last:
            return 0
        message = await js.get_msg(stream, seq=last)
    except nats.js.errors.NotFoundError:
        return 0
    except _NATS_ERRORS as error:
        raise _unavailable("reading the last message", error) from error
    return int((message.headers or {}).get(HEADER_POSITION, 0))


# --- consumer ----------------------------------------------------------------------------------


class JetStreamConsumer:
    """``EventConsumer`` on a durable JetStream pull consumer over every event subject.

    A durable consumer that does not exist yet is created with deliver policy
    NEW: a worker first catches up from the event store (the source of truth),
    then takes only what is published from then on, and back-fills any gap it
    notices from the store. Call ``bind()`` before catching up to create it
    early; otherwise the first ``fetch`` creates it. ``deliver_all=True``
    creates it at the start of the stream instead (tests, tools).

    Acknowledgement policy ALL: ``Delivery.ack()`` acknowledges the fetch's last
    message and so the whole fetch. A delivery not acknowledged before the next
    ``fetch`` or ``close()`` is handed back to the server at once (NAK) and
    delivered again; one whose consumer died is redelivered after ``ack_wait``.
    ``fetch_ahead`` is a fetch that leaves the deliveries still unacknowledged
    outstanding, for a caller that applies one delivery while it fetches the
    next (``framework.runner.run_projection``); it acknowledges them in order.

    Fetches go through ``framework.adapters.nats_pull.BatchPull`` (one pull
    request per fetch, answered into one subscription). A consumer that
    disappears under a running worker (deleted, or lost by a server) is made
    again at the next fetch, starting after the last stream sequence this one
    acknowledged (by its deliver policy if the stream itself is new); what it
    had delivered but not acknowledged is forgotten here and delivered again.
    """

    def __init__(
        self,
        connection: JetStreamConnection,
        durable_name: str,
        *,
        deliver_all: bool = False,
        ack_wait: float = 30.0,
        max_ack_pending: int = 20_000,
        request_timeout: float = 5.0,
        owns_connection: bool = False,
        filter_subject: str | None = None,
        inactive_threshold: float | None = None,
    ) -> None:
        self._connection = connection
        self._settings = connection.settings
        self.name = self._settings.consumer_name(durable_name)
        self._filter_subject = filter_subject or self._settings.subjects
        self._inactive_threshold = inactive_threshold
        self._deliver_all = deliver_all
        self._ack_wait = ack_wait
        self._max_ack_pending = max_ack_pending
        self._request_timeout = request_timeout
        self._owns_connection = owns_connection
        self._pull: BatchPull | None = None
        self._bound = False  # the consumer was seen (or made) on the server since the last refusal
        self._reconnects = 0
        self._unacked: list[list[Msg]] = []  # the deliveries not acknowledged yet, in fetch order
        # Where a consumer made again after it was deleted starts: after the last stream sequence this
        # one acknowledged (None: never bound yet), in the stream created at ``_stream_created``.
        self._floor: int | None = None
        self._stream_created: object = None

    @classmethod
    async def open(cls, settings: JetStreamSettings, durable_name: str, **options: Any) -> JetStreamConsumer:
        """A consumer on its own connection."""
        return cls(await connect(settings), durable_name, owns_connection=True, **options)

    def _config(self, start_after: int | None = None) -> ConsumerConfig:
        """The consumer's configuration: deliver policy NEW (or ALL), or after stream sequence ``start_after``."""
        if start_after is not None:
            policy, start = DeliverPolicy.BY_START_SEQUENCE, start_after + 1
        else:
            policy, start = (DeliverPolicy.ALL if self._deliver_all else DeliverPolicy.NEW), None
        return ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=AckPolicy.ALL,
            ack_wait=self._ack_wait,
            max_ack_pending=self._max_ack_pending,
            max_deliver=-1,
            filter_subject=self._filter_subject,
            inactive_threshold=self._inactive_threshold,
        )

    async def bind(self) -> None:
        """Create the durable consumer if it is missing (and the stream too), and subscribe to it."""
        if self._bound and self._pull is not None:
            return
        self._connection.check_connected()
        js, stream = self._connection.js, self._settings.stream
        try:
            await self._ensure_consumer(js, stream)
            if self._pull is None:
                self._pull = BatchPull(self._connection.client, stream, self.name)  # contexts without a domain
            await self._pull.start()
        except _NATS_ERRORS as error:
            raise _unavailable(f"binding consumer {self.name!r}", error) from error
        self._bound = True
        self._reconnects = self._connection.reconnects

    async def _recheck_after_reconnect(self) -> None:
        """A server that came back may have lost the stream or the consumer (memory storage)."""
        if self._reconnects == self._connection.reconnects:
            return
        try:
            await self._ensure_consumer(self._connection.js, self._settings.stream)
        except _NATS_ERRORS as error:
            raise _unavailable(f"checking consumer {self.name!r}", error) from error
        self._reconnects = self._connection.reconnects

    async def _ensure_consumer(self, js: JetStreamContext, stream: str) -> None:
        """Find the consumer, else create it: the first time by its deliver policy; once this one ran,
        after the last stream sequence it acknowledged (a consumer deleted under it, or lost by a
        server: what was published meanwhile is delivered, not skipped), unless the stream is new."""
        stream_lost = False
        try:
            info = await js.consumer_info(stream, self.name)
        except nats.js.errors.NotFoundError as error:
            if _api_code(error) == _STREAM_NOT_FOUND:
                await self._connection.ensure_stream(update=False)
                stream_lost = True
        else:
            if self._floor is None:
                await self._note_start(js, stream, info)
            return
        again = self._floor is not None
        start_after = None if stream_lost else await self._resume_after(js, stream)
        info = await js.add_consumer(stream, self._config(start_after))
        if again:
            self._forget_deliveries(start_after)
        await self._note_start(js, stream, info)

    async def _note_start(self, js: JetStreamContext, stream: str, info: ConsumerInfo) -> None:
        self._floor = _floor_of(info)
        self._stream_created = (await js.stream_info(stream)).created

    async def _resume_after(self, js: JetStreamContext, stream: str) -> int | None:
        """The stream sequence a consumer made again starts after (None: by its deliver policy)."""
        if self._floor is None:
            return None
        state = await js.stream_info(stream)
        if state.created != self._stream_created or state.state.last_seq < self._floor:
            return None  # another stream of the same name: its sequences are not ours
        return self._floor

    def _forget_deliveries(self, start_after: int | None) -> None:
        """The deleted consumer's deliveries can be neither acknowledged (an acknowledgement reaching
        the new consumer would move its floor) nor handed back: the new one delivers them again."""
        dropped = sum(len(d) for d in self._unacked) + (self._pull.discard() if self._pull is not None else 0)
        self._unacked = []
        where = f"after stream sequence {start_after}" if start_after is not None else "by its deliver policy"
        log.warning("consumer %s: was missing; made again, starting %s (%d unacknowledged message(s) "
                    "will be delivered again)", self.name, where, dropped)

    async def fetch(self, max_events: int, timeout: float) -> Delivery:
        await self._return_unacked()
        return await self._fetch(max_events, timeout)

    async def fetch_ahead(self, max_events: int, timeout: float) -> Delivery:
        """Like ``fetch``, but the deliveries not acknowledged yet stay outstanding (not handed back).

        For one fetch at a time beside the application of the previous delivery: acknowledge
        the deliveries in fetch order (policy ALL: an acknowledgement covers every message the
        stream holds before it, so acknowledging a later delivery first would cover an earlier one).
        """
        return await self._fetch(max_events, timeout)

    async def _fetch(self, max_events: int, timeout: float) -> Delivery:
        await self.bind()
        self._connection.check_connected()
        await self._recheck_after_reconnect()
        assert self._pull is not None
        try:
            messages, answered = await self._pull.fetch(max(1, max_events), max(timeout, 0.01))
        except PullRefused as error:
            # e.g. the consumer was deleted: make it again now (its deliveries are forgotten, not
            # acknowledged to the new one), else find (or make) it at the next fetch.
            with contextlib.suppress(BusUnavailable):
                await self._check_consumer()
            raise _unavailable("fetching", error) from error
        except _NATS_ERRORS as error:
            raise _unavailable("fetching", error) from error
        if not messages:
            if not self._connection.is_connected:
                raise BusUnavailable("NATS JetStream unavailable (fetching): connection lost")
            if not answered:  # no status either: was the consumer deleted? (the subscription is kept)
                await self._check_consumer()
            return Delivery((), _nothing)
        self._unacked.append(messages)
        return Delivery(_notifications(messages, self.name), self._acknowledger(messages))

    async def _check_consumer(self) -> None:
        try:
            await self._ensure_consumer(self._connection.js, self._settings.stream)
        except _NATS_ERRORS as error:
            self._bound = False
            raise _unavailable(f"checking consumer {self.name!r}", error) from error

    def _acknowledger(self, messages: list[Msg]) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            if not any(d is messages for d in self._unacked):
                return  # already acknowledged, handed back (NAK) by a later fetch, or its consumer is gone
            last, sequence = _last_in_stream(messages)
            await self._reply(last, b"+ACK", "acknowledging")
            if self._floor is not None and sequence > self._floor:
                self._floor = sequence
            # Policy ALL: this and every delivery fetched before it are acknowledged now.
            for index, delivery in enumerate(self._unacked):
                if delivery is messages:
                    del self._unacked[:index + 1]
                    break

        return ack

    async def _reply(self, message: Msg, body: bytes, action: str) -> None:
        try:
            await self._connection.client.request(message.reply, body, timeout=self._request_timeout)
        except _NATS_ERRORS as error:
            raise _unavailable(action, error) from error

    async def hand_back(self) -> None:
        await self._return_unacked()

    async def published_head(self) -> int:
        """The position of the newest event on the stream (0: empty), whatever this consumer filters."""
        self._connection.check_connected()
        return await _last_position(self._connection.js, self._settings.stream)

    async def delete(self) -> None:
        """Close, and delete the durable consumer on the server (a partition's, when its owner lets it go)."""
        await self.close()
        self._floor = None  # deleted on purpose: bound again, it is made by its deliver policy
        with contextlib.suppress(*_NATS_ERRORS):
            await self._connection.js.delete_consumer(self._settings.stream, self.name)

    async def _return_unacked(self, late: Sequence[Msg] = ()) -> None:
        """NAK the unacknowledged deliveries and the messages queued for the next fetch, so that they
        come first (in stream order) in the next fetch (ack_wait covers failures)."""
        deliveries, self._unacked = self._unacked, []
        messages = [message for delivery in deliveries for message in delivery]
        messages += late if late else (self._pull.take_queued() if self._pull is not None else ())
        if not messages or not self._connection.is_connected:
            return
        results = await asyncio.gather(*(self._reply(m, b"-NAK", "returning") for m in messages),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("consumer %s: %d NAK(s) failed (%s); redelivery waits for ack_wait",
                        self.name, len(failed), failed[0])

    async def close(self) -> None:
        pull, self._pull = self._pull, None
        self._bound = False
        late = await pull.close() if pull is not None else []
        await self._return_unacked(late)
        if self._owns_connection:
            await self._connection.close()


async def _nothing() -> None:
    return None


def _last_in_stream(messages: Sequence[Msg]) -> tuple[Msg, int]:
    """The message with the highest stream sequence (usually the last: redeliveries come first), and it."""
    last, highest = messages[-1], -1
    for message in messages:
        sequence = _stream_sequence(message)
        if sequence > highest:
            last, highest = message, sequence
    return last, highest


def _floor_of(info: ConsumerInfo) -> int:
    """The stream sequence a consumer has acknowledged everything up to (a new one: where it starts)."""
    acked, delivered = info.ack_floor, info.delivered
    if acked is not None and acked.consumer_seq:
        return int(acked.stream_seq)
    if delivered is not None and not delivered.consumer_seq:
        return int(delivered.stream_seq)  # nothing delivered yet: it starts after this
    return int(acked.stream_seq) if acked is not None else 0


def _stream_sequence(message: Msg) -> int:
    tokens = message.reply.split(".")  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>...
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    return int(message.metadata.sequence.stream)  # the longer form (domain, account hash): nats-py parses it


def _notifications(messages: Iterable[Msg], consumer: str) -> list[Notification]:
    """The notifications of a fetch: ``notification_from`` inlined for the usual, untraced message (its
    headers read once each, the notification built positionally: this runs once per event)."""
    notifications: list[Notification] = []
    append = notifications.append
    for message in messages:
        headers = message.headers
        try:
            if headers is None or headers.get(HEADER_TRACEPARENT):
                notification = notification_from(headers or {}, message.data)
            else:  # Notification's fields: originator_id, originator_version, topic, state, id
                notification = _notification(_uuid(headers[HEADER_AGGREGATE_ID]),
                                             int(headers[HEADER_AGGREGATE_VERSION]), headers[HEADER_EVENT],
                                             message.data, int(headers[HEADER_POSITION]))
        except (KeyError, ValueError):
            notification = None
        if notification is None:
            log.warning("consumer %s: skipping %s, which lacks Eventfold headers", consumer, message.subject)
        else:
            append(notification)
    return notifications


_uuids: dict[str, UUID] = {}  # aggregate ids seen lately: one event stream has many events
_UUID_CACHE_SIZE = 8192


def _uuid(text: str) -> UUID:
    found = _uuids.get(text)
    if found is None:
        found = UUID(text)
        if len(_uuids) >= _UUID_CACHE_SIZE:
            _uuids.clear()
        _uuids[text] = found
    return found


def notification_from(headers: Mapping[str, str], payload: bytes) -> Notification | None:
    """Rebuild a notification from a message's headers and payload (None: not an Eventfold event)."""
    try:
        position = int(headers[HEADER_POSITION])
        aggregate_id = _uuid(headers[HEADER_AGGREGATE_ID])
        version = int(headers[HEADER_AGGREGATE_VERSION])
        topic = headers[HEADER_EVENT]
    except (KeyError, ValueError):
        return None
    parent = headers.get(HEADER_TRACEPARENT)
    if not parent:
        return Notification(id=position, originator_id=aggregate_id, originator_version=version, topic=topic,
                            state=payload)
    trace = {HEADER_TRACEPARENT: parent}
    if headers.get(HEADER_TRACESTATE):
        trace[HEADER_TRACESTATE] = headers[HEADER_TRACESTATE]
    return TracedNotification(id=position, originator_id=aggregate_id, originator_version=version, topic=topic,
                              state=payload, trace_context=trace)
