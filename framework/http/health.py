"""``GET /metrics`` and ``GET /readyz``, shared by the write API, the query API and ``eventfold dev``.

``/healthz`` says the process is alive; ``/readyz`` says it can serve: every
check (a cheap call to a dependency, bounded by a timeout) passed. A failed
check answers 503 with a JSON body naming it: ``unavailable`` when the dependency
raised (why goes to the log, never to the unauthenticated caller), ``no answer
within Ns`` when it timed out, or what a check reports in its own words.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from framework.metrics import CONTENT_TYPE_LATEST, Metrics
from framework.status import projection_statuses
from framework.store import EventLog
from framework.views import ViewStore

__all__ = ["Check", "metrics_route", "projections_check", "ready_route", "store_check", "views_check"]

log = logging.getLogger(__name__)

Check = Callable[[], str | None]
"""A readiness check: runs on a worker thread, returns None when fine or what is wrong."""


def metrics_route(metrics: Metrics) -> Route:
    async def scrape(_: Request) -> Response:
        body = await run_in_threadpool(metrics.exposition)  # collectors may query the database
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", scrape, methods=["GET"])


def ready_route(checks: Mapping[str, Check], timeout: float) -> Route:
    async def readyz(_: Request) -> Response:
        names = list(checks)
        results = await asyncio.gather(*(_run(n, checks[n], timeout) for n in names))
        report = {n: r or "ok" for n, r in zip(names, results, strict=True)}
        failed = [n for n, r in zip(names, results, strict=True) if r is not None]
        body: dict[str, Any] = {"status": "unavailable" if failed else "ready", "checks": report}
        if failed:
            body["failed"] = failed
        return JSONResponse(body, status_code=503 if failed else 200)

    return Route("/readyz", readyz, methods=["GET"])


async def _run(name: str, check: Check, timeout: float) -> str | None:
    try:
        return await asyncio.wait_for(asyncio.to_thread(check), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as error:  # a driver's message may name hosts and internals: the log has it
        log.warning("readiness check %s failed: %s", name, str(error) or type(error).__name__)
        return "unavailable"


def store_check(store: EventLog) -> Check:
    def check() -> str | None:
        store.head()
        return None

    return check


def views_check(views: ViewStore) -> Check:
    def check() -> str | None:
        views.states()
        return None

    return check


def projections_check(store: EventLog, views: ViewStore, max_lag_seconds: float,
                      names: Collection[str] | None = None) -> Check:
    """Fails when an active projection (of ``names``: those this process runs) is stalled or lags more
    than ``max_lag_seconds``."""

    def check() -> str | None:
        problems = []
        for status in projection_statuses(store, views):
            if not status.active or (names is not None and status.name not in names):
                continue
            if status.state == "stalled":
                problems.append(f"{status.name} is stalled at position {status.position}")
            elif status.lag_seconds > max_lag_seconds:
                problems.append(f"{status.name} lags {status.lag_seconds:g}s (more than {max_lag_seconds:g}s)")
        return "; ".join(problems) or None

    return check
