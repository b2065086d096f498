"""The ops server of ``eventfold relay`` and ``eventfold project``: ``GET /metrics``, ``/healthz``, ``/readyz``.

These roles serve no API, so their probes and metrics get a port of their own
(``EVENTFOLD_METRICS_PORT``). The server is uvicorn running inside the role's
own event loop, next to its relay or projection tasks, and it stops on the
role's stop event::

    app = create_ops_app(metrics, store, checks={"bus": bus_check})
    server = OpsServer(app, settings.host, settings.metrics_port)  # binds now: a taken port fails at start
    await server.serve(stop)

The readiness checks are the ones the APIs use (``framework.http.health``) plus
whatever the role adds through ``checks`` (the bus connection, circuit breakers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Collection, Iterator, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from framework.errors import ConfigurationError
from framework.http.health import Check, metrics_route, projections_check, ready_route, store_check, views_check
from framework.http.server import ServerLimits, uvicorn_options
from framework.metrics import Metrics
from framework.store import EventLog
from framework.views import ViewStore

__all__ = ["OpsServer", "create_ops_app", "ops_checks"]

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 2.0  # per check, as in the write and query APIs
_GRACEFUL_SECONDS = 2  # a scrape in flight at shutdown gets this long to finish


def ops_checks(store: EventLog, views: ViewStore | None = None, *, max_lag_seconds: float = 60.0,
               checks: Mapping[str, Check] | None = None, projections: Collection[str] | None = None,
               ) -> dict[str, Check]:
    """``event_store``; with ``views`` also ``read_models`` and ``projections`` (only the named ones
    when ``projections`` is given: another process's stalled projection is not this one's problem);
    then ``checks``."""
    result = {"event_store": store_check(store)}
    if views is not None:
        result["read_models"] = views_check(views)
        result["projections"] = projections_check(store, views, max_lag_seconds, projections)
    result.update(checks or {})
    return result


def create_ops_app(metrics: Metrics, store: EventLog, views: ViewStore | None = None, *,
                   checks: Mapping[str, Check] | None = None, max_lag_seconds: float = 60.0,
                   ready_timeout: float = READY_TIMEOUT_SECONDS,
                   projections: Collection[str] | None = None) -> Starlette:
    """``/metrics`` from ``metrics``, ``/healthz``, and ``/readyz`` over ``ops_checks(...)``."""
    readiness = ops_checks(store, views, max_lag_seconds=max_lag_seconds, checks=checks, projections=projections)
    return Starlette(routes=[
        Route("/healthz", _healthz, methods=["GET"]),
        ready_route(readiness, ready_timeout),
        metrics_route(metrics),
    ])


async def _healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


class OpsServer:
    """``app`` on ``host:port``; the socket is bound here, so a port in use is a ``ConfigurationError``
    at start (one line from the CLI) rather than a traceback from inside the running loop."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.app = app
        self.url = f"http://{host}:{port}"
        self._socket = _listen(host, port)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully and release the port."""
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_config=None, log_level="warning",
                                timeout_graceful_shutdown=_GRACEFUL_SECONDS,
                                **uvicorn_options(ServerLimits()))  # the APIs' defaults: scrapers need no more
        server = _RoleServer(config)
        stopper = asyncio.create_task(_exit_on(stop, server))
        log.info("ops server on %s (/metrics, /healthz, /readyz)", self.url)
        try:
            await server.serve(sockets=[self._socket])
        finally:
            stopper.cancel()
            self.close()

    def close(self) -> None:
        self._socket.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:  # in use, not ours to bind, or an unknown host
        reason = error.strerror or str(error) or type(error).__name__
        raise ConfigurationError(
            f"EVENTFOLD_METRICS_PORT={port}: cannot listen on {host}:{port} (EVENTFOLD_HOST): {reason}"
        ) from None


class _RoleServer(uvicorn.Server):
    """uvicorn without signal handlers of its own: the role's handlers set its stop event, which ends it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _exit_on(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True
