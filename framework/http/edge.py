"""The outermost layer of the write and query APIs: correlation ids, clients that go away, last-resort errors.

``EdgeApp`` is a Starlette app whose middleware stack is wrapped in ``Edge``, outside Starlette's own
error middleware, so what it does covers every response, those of errors raised before routing too:

- ``X-Correlation-ID``: the request's own when it is 1 to 255 letters, digits and ``._~:/+=@,;-``, else
  a new id (a UUID).
  It is echoed on every response, set as ``framework.observe.correlation_id`` (every log line of the
  request carries it) and kept in the scope for the app (``request_correlation_id``).
- A client that disconnects before its request is read (Starlette's ``ClientDisconnect``) is logged
  at debug level: it is the client's doing, not an error of the server.
- An exception nothing else handled is logged once, with its traceback and the correlation id; the
  client gets a problem document (or nothing more, when its response had started).

Apps composed of others (``eventfold dev`` mounts the write API beside GraphQL) pass through the
inner edges: the outermost one does the work.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framework.ids import random_uuid_text
from framework.observe import correlation_id

__all__ = ["CORRELATION_HEADER", "Edge", "EdgeApp", "request_correlation_id", "valid_correlation_id"]

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"
_HEADER = CORRELATION_HEADER.lower().encode()
_SCOPE_KEY = "eventfold.correlation_id"
# Ids as tracing systems make them (UUIDs, W3C trace ids, "Root=1-5f…;Parent=…"): nothing to escape in a header,
# a JSON log line or a query of the logs.
_VALID = re.compile(r"[A-Za-z0-9._~:/+=@,;-]{1,255}")


def valid_correlation_id(value: str | None) -> bool:
    return value is not None and _VALID.fullmatch(value) is not None


def request_correlation_id(scope: Mapping[str, object]) -> str | None:
    """The correlation id ``Edge`` chose for this request (None outside an edge)."""
    value = scope.get(_SCOPE_KEY)
    return value if isinstance(value, str) else None


class Edge:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _SCOPE_KEY in scope:  # not HTTP, or an outer edge did it
            await self.app(scope, receive, send)
            return
        chosen = _incoming(scope["headers"]) or random_uuid_text()
        scope[_SCOPE_KEY] = chosen
        echoed = (_HEADER, chosen.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER]
                message = {**message, "headers": [*headers, echoed]}
            await send(message)

        token = correlation_id.set(chosen)
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            log.debug("%s %s: the client went away before its request was read", scope["method"], scope["path"])
        except Exception as error:
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=error)
            if not started:
                await _internal_error(send_with_id)
        finally:
            correlation_id.reset(token)


def _incoming(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _HEADER:
            text = value.decode("latin-1")
            return text if valid_correlation_id(text) else None  # a bad one is replaced, not refused
    return None


async def _internal_error(send: Send) -> None:
    body = json.dumps({"type": "urn:eventfold:problem:internal_error", "title": "Internal error", "status": 500,
                       "detail": "the server could not process the request", "code": "internal_error"}).encode()
    await send({"type": "http.response.start", "status": 500, "headers": [
        (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class EdgeApp(Starlette):
    """A Starlette app inside an ``Edge``; ``front``, when given, wraps Starlette's own stack inside the
    edge (a route answered before Starlette's middleware, as the write API's commands). An app given
    middleware or exception handlers of its own (``add_middleware``, ``add_exception_handler``) has no
    front: every request goes through what was added."""

    def __init__(self, *args: Any, front: Callable[[ASGIApp], ASGIApp] | None = None, **kwargs: Any) -> None:
        self._front = front
        super().__init__(*args, **kwargs)
        self._built_with = dict(self.exception_handlers)

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        untouched = not self.user_middleware and self.exception_handlers == self._built_with
        return Edge(self._front(stack) if self._front is not None and untouched else stack)
