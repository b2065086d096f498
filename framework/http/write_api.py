"""The write API: ``POST /commands/{CommandName}``, ``GET /openapi.json``, ``/healthz``, ``/readyz``, ``/metrics``.

Requests are parsed and checked here; the command itself runs on a worker
thread through the synchronous ``CommandBus`` or, given an ``AsyncAppender``
(``EVENTFOLD_WRITE_ASYNC``), on the event loop through ``CommandBus.execute_async``. Every failure leaves as
problem details; an unexpected exception is logged with its traceback (by the
edge, ``framework.http.edge``) and the client sees only a generic 500.

``POST /commands/{name}`` is the hot path: the edge hands it straight to the command handler
(``_CommandRoute``) instead of through Starlette's error middleware, exception middleware and router,
doing what they would do for it (a 500 problem for an unexpected error, raised again for the edge to
log). Everything else, and the same route in an app mounted under a prefix (``eventfold dev``), goes
through Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from framework.bus import CommandBus, CommandContext, Executed
from framework.commands import Command
from framework.errors import EventfoldError, Unavailable
from framework.http.edge import EdgeApp, request_correlation_id
from framework.http.gate import Gate
from framework.http.health import metrics_route, ready_route, store_check
from framework.http.openapi import access_of, openapi_document
from framework.http.problems import problem, problem_for
from framework.ids import random_uuid_text
from framework.metrics import Metrics
from framework.observe import NULL_OBSERVER, correlation_id
from framework.security import Authenticator, Principal, authorize
from framework.store import AsyncAppender
from framework.tracing import trace_context_from_headers

__all__ = ["WriteApiOptions", "create_write_app"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# As many commands at once as Starlette's default thread pool ran (anyio's 40 tokens).
_COMMAND_THREADS = 40

_HEADER_VALUE = re.compile(r"^[\x21-\x7e]{1,255}$")
# If-Match: one strong entity tag, the ETag a success carries ("3"), or the bare version (3)
_IF_MATCH = re.compile(r'^(?:"(0|[1-9][0-9]{0,17})"|(0|[1-9][0-9]{0,17}))$')
# application/json, with at most a charset parameter, and that one UTF-8 (RFC 8259 §8.1)
_JSON_MEDIA_TYPE = re.compile(r'application/json(\s*;\s*charset\s*=\s*("utf-8"|utf-8))?\s*', re.IGNORECASE)


@dataclass(frozen=True)
class WriteApiOptions:
    max_body_bytes: int = 1_048_576
    retry_after_seconds: int = 1
    ready_timeout_seconds: float = 2.0
    rate_limit_per_second: float | None = None  # per principal subject, else per client address
    auth_failures_per_minute: float | None = None  # failed authentications per client address (framework.http.gate)


class _BadRequest(Exception):
    def __init__(self, status: int, title: str, detail: str, code: str) -> None:
        super().__init__(detail)
        self.response = problem(status, title, detail, code)


def create_write_app(
    bus: CommandBus,
    options: WriteApiOptions | None = None,
    *,
    metrics: Metrics | None = None,
    authenticator: Authenticator | None = None,
    appender: AsyncAppender | None = None,
) -> EdgeApp:
    """The write API. ``metrics`` is what ``/metrics`` serves (default: a fresh registry, which
    becomes the bus's observer when the bus has none).

    Without ``authenticator`` every caller is anonymous and may send every command (the library
    default, for tests and embedding); the CLI passes one built from the settings.

    With ``appender`` (the same store's writes on the event loop, ``EVENTFOLD_WRITE_ASYNC``) commands
    run through ``CommandBus.execute_async``: decided on the loop when their aggregates are cached,
    appended through ``appender``, on a command thread only for what needs the store's reads. The app's
    lifespan closes it.
    """
    options = options or WriteApiOptions()
    gate = Gate(authenticator, rate_per_second=options.rate_limit_per_second,
                failures_per_minute=options.auth_failures_per_minute)
    access = access_of(authenticator)
    # failed authentications are counted only where tokens are checked
    rate_limited = bool(options.rate_limit_per_second or (access.checks_tokens and options.auth_failures_per_minute))
    openapi = openapi_document(bus.router, access=access, rate_limited=rate_limited,
                               max_body_bytes=options.max_body_bytes)
    if metrics is None:
        metrics = Metrics()
        if bus.observer is NULL_OBSERVER:
            bus.observer = metrics
    threads = _CommandThreads(_COMMAND_THREADS)
    if appender is None:
        def execute(command: Command, context: CommandContext) -> Awaitable[Executed]:
            return threads.run(bus.execute, command, context)
    else:
        on_loop = appender

        def execute(command: Command, context: CommandContext) -> Awaitable[Executed]:
            return bus.execute_async(command, context, on_loop, threads.run)

    async def command(request: Request, name: str) -> Response:
        try:
            return await _handle_command(request, name, bus, options, gate, execute)
        except _BadRequest as bad:
            return bad.response
        except EventfoldError as error:
            if isinstance(error, Unavailable):  # the client hears which dependency; the why is for the log
                log.warning("%s %s: %s", request.method, request.url.path, error.message)
            return problem_for(error, retry_after=options.retry_after_seconds)

    async def post_command(request: Request) -> Response:
        return await command(request, request.path_params["name"])

    async def get_openapi(_: Request) -> Response:
        return JSONResponse(openapi)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = EdgeApp(
        front=lambda stack: _CommandRoute(command, stack),
        routes=[
            Route("/commands/{name}", post_command, methods=["POST"]),
            Route("/openapi.json", get_openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            ready_route({"event_store": store_check(bus.store)}, options.ready_timeout_seconds),
            metrics_route(metrics),
        ],
        exception_handlers={HTTPException: _http_problem, Exception: _internal_error},
        lifespan=None if appender is None else _closing(appender),
    )
    app.router.redirect_slashes = False  # a redirect would be built from the Host header a client sent
    return app


def _closing(appender: AsyncAppender) -> Callable[[object], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await appender.close()
    return lifespan


class _CommandRoute:
    """``POST /commands/{name}`` answered by ``handle`` directly; any other request goes to ``app``."""

    _PREFIX = "/commands/"

    def __init__(self, handle: Callable[[Request, str], Awaitable[Response]], app: ASGIApp) -> None:
        self._handle = handle
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self._command_name(scope)
        if name is None:
            await self._app(scope, receive, send)
            return
        try:
            response = await self._handle(Request(scope, receive), name)
        except Exception:  # as Starlette's error middleware: a 500 problem, then the edge logs it
            await problem(500, "Internal error", "the server could not process the request",
                          "internal_error")(scope, receive, send)
            raise
        await response(scope, receive, send)

    def _command_name(self, scope: Scope) -> str | None:
        """The ``{name}`` of a ``POST /commands/{name}`` (as the route's ``[^/]+`` matches it), else None."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(self._PREFIX):
            return None
        name = path[len(self._PREFIX):]
        return name if name and "/" not in name else None


async def _handle_command(request: Request, name: str, bus: CommandBus, options: WriteApiOptions,
                          gate: Gate, execute: Callable[[Command, CommandContext], Awaitable[Executed]]) -> Response:
    headers = _headers(request)
    principal = await gate.admit_header(request, headers.get("authorization"))  # 401 and 429 before anything else
    command_type = bus.router.public_command_type(name)  # 404 before reading a body (internal ones too)
    authorize(command_type, principal)
    _require_json(headers)
    body = await _read_body(request, headers, options.max_body_bytes)
    command = bus.router.parse_json(command_type.command_name, body)
    context = _context(request, principal, headers)
    token = correlation_id.set(context.correlation_id)
    try:
        executed = await execute(command, context)
    finally:
        correlation_id.reset(token)
    return _accepted(executed, context)


def _headers(request: Request) -> dict[str, str]:
    """The request's headers by (lower-case) name, the first of repeated ones as ``Request.headers.get``
    answers: one pass instead of a scan of every header per name looked up."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(request.scope["headers"])}


class _Job:
    """One command handed to a thread; its outcome goes back to the loop that asked."""

    __slots__ = ("args", "context", "done", "ended", "function", "loop", "on_end")

    def __init__(self, loop: asyncio.AbstractEventLoop, function: Callable[..., object],
                 args: tuple[object, ...]) -> None:
        self.loop = loop
        self.done: asyncio.Future[object] = loop.create_future()
        self.context = contextvars.copy_context()  # the correlation id travels with the command
        self.function, self.args = function, args
        self.ended = False  # set on the loop once the function returned or raised
        self.on_end: asyncio.Future[None] | None = None  # awaited by a request cancelled while its job runs


class _CommandThreads:
    """Runs commands on up to ``count`` threads, started as they are needed.

    Leaner than ``ThreadPoolExecutor`` plus ``asyncio.wrap_future``: a job is one queue entry and its
    outcome one ``call_soon_threadsafe``, with no thread-side future, lock or callback chain in between
    (the hop showed as a tenth of a command's CPU). As with an executor, a request cancelled while its
    command runs waits for the command to end (it may be committing) before the cancellation goes on.
    """

    def __init__(self, count: int, name: str = "eventfold-command") -> None:
        self._count, self._name = count, name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # started
        self._idle = 0  # waiting for a job
        self._queued = 0  # jobs no thread has taken yet

    async def run(self, function: Callable[..., T], *args: object) -> T:
        job = _Job(asyncio.get_running_loop(), function, args)
        self._submit(job)
        try:
            return await job.done  # type: ignore[return-value]  # what function returned
        except asyncio.CancelledError:
            if not job.ended:  # running: cancelling the request could not stop it
                job.on_end = job.loop.create_future()
                await asyncio.wait([job.on_end])
            raise

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self._threads < self._count  # else a waiting thread takes it
            if start:
                self._threads += 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            _run_job(job)


def _run_job(job: _Job) -> None:
    try:
        result: object = job.context.run(job.function, *job.args)
        error: BaseException | None = None
    except BaseException as raised:
        result, error = None, raised
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for the answer any more
        job.loop.call_soon_threadsafe(_settle, job, result, error)


def _settle(job: _Job, result: object, error: BaseException | None) -> None:
    """On the loop: the request's outcome, and the end a cancelled request waits for."""
    job.ended = True
    if job.on_end is not None and not job.on_end.done():
        job.on_end.set_result(None)
    if job.done.done():  # the request was cancelled
        return
    if error is not None:
        job.done.set_exception(error)
    else:
        job.done.set_result(result)


def _require_json(headers: dict[str, str]) -> None:
    """application/json only: a browser sends anything else (text/plain, a form) across sites without
    asking first (no CORS preflight), so accepting it would let any web page send commands."""
    if not _JSON_MEDIA_TYPE.fullmatch(headers.get("content-type", "")):
        raise _BadRequest(415, "Unsupported media type",
                          "send the command as application/json (UTF-8, the only charset allowed)",
                          "unsupported_media_type")


async def _read_body(request: Request, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    while True:  # what Request.stream() reads, without an async generator in between
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            return bytes(body)


def _too_large(limit: int) -> _BadRequest:
    return _BadRequest(413, "Body too large", f"the body exceeds {limit} bytes", "body_too_large")


def _context(request: Request, principal: Principal, headers: dict[str, str]) -> CommandContext:
    key = _header(headers, "idempotency-key")
    request_id = random_uuid_text()
    return CommandContext(
        correlation_id=request_correlation_id(request.scope) or request_id,
        causation_id=request_id,
        actor=principal.subject,
        idempotency_key=key,
        trace_context=trace_context_from_headers(headers),  # invalid: a new trace starts
        expected_version=_expected_version(headers),
    )


def _expected_version(headers: dict[str, str]) -> int | None:
    """The version of ``If-Match``: ``"3"`` (the ETag of an earlier answer) or ``3``. A weak tag, ``*``
    or a list is refused rather than half-understood."""
    value = headers.get("if-match")
    if value is None:
        return None
    matched = _IF_MATCH.match(value.strip(" \t"))  # spaces around a value are not part of it (RFC 9110 5.5)
    if matched is None:
        raise _BadRequest(400, "Malformed header", 'If-Match must be one version, as "3" (an ETag this API '
                          "returned) or 3", "malformed_header")
    return int(matched.group(1) or matched.group(2))


def _header(headers: dict[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if not _HEADER_VALUE.match(value):
        raise _BadRequest(400, "Malformed header",
                          f"{name} must be 1 to 255 visible ASCII characters", "malformed_header")
    return value


class _Accepted(Response):
    """A command's 200: the JSON and headers ``JSONResponse`` would make of it, written without its
    general rendering (the body is a UUID and two integers)."""

    media_type = "application/json"

    def __init__(self, executed: Executed) -> None:  # Response.__init__ would render and scan again
        result = executed.result
        aggregate_id = f'"{result.aggregate_id}"' if result.aggregate_id else "null"
        position = "null" if result.position is None else str(int(result.position))
        self.status_code = 200
        self.background = None
        self.body = f'{{"aggregate_id":{aggregate_id},"version":{int(result.version)},"position":{position}}}'.encode()
        headers = [(b"etag", b'"%d"' % result.version)]  # what If-Match takes back
        if executed.replayed:
            headers.append((b"idempotent-replayed", b"true"))
        headers += [(b"content-length", b"%d" % len(self.body)), (b"content-type", b"application/json")]
        self.raw_headers = headers  # the edge adds X-Correlation-ID


def _accepted(executed: Executed, context: CommandContext) -> Response:
    return _Accepted(executed)


async def _http_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    code = title.lower().replace(" ", "_")
    return problem(exc.status_code, title, str(exc.detail), code, headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette raises the exception again after this answer: the edge logs it, once.
    return problem(500, "Internal error", "the server could not process the request", "internal_error")
