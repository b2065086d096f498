"""The HTTP server's own limits: what uvicorn lets through unbounded, bounded before any app runs.

uvicorn (with httptools) reads request heads of any size, waits forever for the head of a new
connection and for a body that trickles in, and answers some refusals in plain text. The protocol
here is uvicorn's httptools protocol with limits, each answered as a problem document and followed
by closing the connection:

- ``max_header_bytes``: the request line and headers together; more is 431. An oversized head is
  refused as soon as its size is known, so the server never holds more than that plus one read.
- ``header_timeout_seconds``: from the connection (or the first byte of the next request on a kept-alive
  connection) to the end of the head; a head still incomplete then is 408, an idle connection is closed.
- ``body_timeout_seconds``: from the end of the head to the end of the body; then 408 if nothing was
  answered yet (the app sees the client go away), else the connection is closed.
- ``max_connections``: a request arriving while that many connections are open (or that many requests
  are in flight) is 503 ``too_many_connections``, without reaching the app.
- A request httptools cannot parse is 400 ``malformed_request``.

After a refusal the server keeps reading (and dropping) what the client still sends for
``linger_seconds``, then closes: closing at once would reset the connection and could destroy the
answer before the client reads it.

``uvicorn_options(limits)`` gives the keywords for ``uvicorn.run`` or ``uvicorn.Config``. The protocol
class it names pickles as its limits, so uvicorn's worker processes (spawned, each unpickling its
``Config``) rebuild the same class with the same limits.
"""

from __future__ import annotations

import asyncio
import copyreg
import http
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from framework.http.edge import request_correlation_id, valid_correlation_id

__all__ = ["ServerLimits", "uvicorn_options"]

log = logging.getLogger(__name__)

_BUSY_LOG_INTERVAL = 10.0  # seconds between two warnings that connections are refused


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 32_768
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_connections: int | None = 1_000
    linger_seconds: float = 2.0


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """``http`` (the protocol with these limits) and ``limit_concurrency``, for ``uvicorn.run``."""
    return {"http": limited_protocol(limits), "limit_concurrency": limits.max_connections}


def limited_protocol(limits: ServerLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol bounded by ``limits`` (a class of its own: uvicorn takes a class)."""
    return cast("type[HttpToolsProtocol]",
                _LimitedProtocolType("LimitedHttpProtocol", (_LimitedProtocol,), {"limits": limits}))


class _LimitedProtocolType(type):
    """The metaclass of the limited protocols, so that pickling one of them (below) keeps its limits."""


def _pickle_limited_protocol(protocol: _LimitedProtocolType) -> tuple[Any, tuple[ServerLimits]]:
    # A class pickles by its name by default, and the name alone would lose the limits in a worker.
    return limited_protocol, (protocol.limits,)  # type: ignore[attr-defined]


copyreg.pickle(_LimitedProtocolType, _pickle_limited_protocol)


def _problem(status: int, detail: str, code: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of a problem document whose answer closes the connection."""
    body = json.dumps({"type": f"urn:eventfold:problem:{code}", "title": http.HTTPStatus(status).phrase,
                       "status": status, "detail": detail, "code": code}).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return headers, body


def _raw_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _LimitedProtocol(HttpToolsProtocol, metaclass=_LimitedProtocolType):
    limits: ClassVar[ServerLimits]
    _busy_logged_at: ClassVar[float] = -_BUSY_LOG_INTERVAL

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # checked in on_headers_complete, answered as a problem
        self._reading_head = True  # between the end of a request (or the connection) and the end of the next head
        self._head_started = False  # some byte of the current head arrived
        self._raw_head_bytes = 0  # bytes received while reading the head (bounds memory before it is parsed)
        self._head_bytes = 0  # the head's exact size, from the parser
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._refusal: bytes | None = None  # a refusal waiting for the answers to the requests before it

    # --- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, _CoalescingTransport(transport, self.loop)))
        self._head_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: what the client still sends is dropped
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._raw_head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self._refused:  # not our own refusal from a callback: a bug, say so
                log.exception("HTTP parser callback failed")
                self.send_400_response("the request could not be read")
            return
        except httptools.HttpParserError:
            self.send_400_response("the request is not valid HTTP/1.1")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._reading_head and self._raw_head_bytes > self.limits.max_header_bytes:
            self._head_too_large()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg, "malformed_request")

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started, self._head_bytes = True, 0
        if self._head_timer is None:  # a kept-alive connection's next request
            self._head_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._head_bytes > self.limits.max_header_bytes:
            self._head_too_large()
            raise _Refused()  # stops the parser: nothing of this request reaches the app
        before = self.cycle
        if self._busy():
            app, self.app = self.app, _too_many_connections
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        if self.cycle is not before and not self.pipeline:  # a request for the app, answered next
            cast(_CoalescingTransport, self.transport).hold_next = True
        self._body_timer = self.loop.call_later(self.limits.body_timeout_seconds, self._body_timed_out)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._reading_head, self._head_started, self._raw_head_bytes = True, False, 0
        super().on_message_complete()

    # --- limits --------------------------------------------------------------------------------

    def _busy(self) -> bool:
        limit = self.limits.max_connections
        busy = limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)
        now = time.monotonic()
        if busy and now - _LimitedProtocol._busy_logged_at >= _BUSY_LOG_INTERVAL:
            _LimitedProtocol._busy_logged_at = now
            log.warning("refusing requests: %d connections open (EVENTFOLD_MAX_CONNECTIONS=%s)",
                        len(self.connections), limit)
        return busy

    def _head_too_large(self) -> None:
        self._refuse(431, f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
                     "headers_too_large")

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._head_started:  # an idle connection: nothing to answer
            self.transport.close()
            return
        self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout_seconds:g}s",
                     "request_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if cycle.response_started or self.pipeline:  # an answer is (or was) on its way: just stop
            self.transport.close()
            return
        correlation = request_correlation_id(cycle.scope)
        headers = [(b"x-correlation-id", correlation.encode())] if correlation else []
        cycle.disconnected = True  # the app reads the end of the request, its answer goes nowhere
        cycle.message_event.set()
        self._refuse(408, f"the request body did not arrive within {self.limits.body_timeout_seconds:g}s",
                     "request_timeout", headers)

    def _refuse(self, status: int, detail: str, code: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._cancel_timers()
        self._unset_keepalive_if_required()
        problem_headers, body = _problem(status, detail, code)
        headers = [*self.server_state.default_headers, *problem_headers, *(headers or [])]
        log.debug("refused a request from %s: %d %s", self.client, status, code)
        refusal = _raw_response(status, headers, body)
        if self._answering():  # answers go in the order of the requests: this one's comes after theirs
            self._refusal = refusal
            return
        self._send_refusal(refusal)

    def _answering(self) -> bool:
        """Requests read before the one refused are still being answered (pipelined on this connection).
        A request whose client is gone (or whose body timed out) has no answer to wait for."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete and not cycle.disconnected)

    def _send_refusal(self, refusal: bytes) -> None:
        self.transport.write(refusal)
        self.flow.resume_reading()  # keep reading (and dropping) so that closing does not reset the connection
        self.loop.call_later(self.limits.linger_seconds, self.transport.close)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and not self._answering() and not self.transport.is_closing():
            refusal, self._refusal = self._refusal, None
            self._send_refusal(refusal)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


class _CoalescingTransport:
    """A connection's transport that sends a response's head with what follows it in the same turn of
    the event loop: uvicorn writes the head and the body separately, two sends (and two wake-ups of
    the client) for every answer where one does. Whatever is held goes out at the end of the turn at
    the latest, so a streamed answer's head is not kept waiting for its first part."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self.hold_next = False  # set when a request goes to the app: its answer's head comes next

    def write(self, data: bytes) -> None:
        if self.hold_next:
            self.hold_next = False
            if not data.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue) goes at once
                if self._held is None:
                    self._loop.call_soon(self.flush)
                self._held = (self._held or b"") + bytes(data)  # never drop what an earlier answer left held
                return
        if self._held is not None:
            data, self._held = self._held + data, None
        self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # the rest of the transport's interface, as it is
        return getattr(self._transport, name)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request already answered."""


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    """The app that answers in place of the real one while there are too many connections."""
    headers, body = _problem(503, "the server has too many connections open; retry shortly", "too_many_connections")
    headers.append((b"retry-after", b"1"))
    correlation = dict(scope["headers"]).get(b"x-correlation-id", b"").decode("latin-1")
    if valid_correlation_id(correlation):
        headers.append((b"x-correlation-id", correlation.encode()))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
