"""The operations API under ``/ops/``: what ``eventfold status``, ``dead-letters``, ``events`` and ``replay``
do, over HTTP, for the console (``/console/``) and for any program. Every route needs the ``ops`` role.

- ``GET /ops/status``: every projection, as ``eventfold status --json`` prints it.
- ``GET /ops/lag-history``: each active projection's lag, sampled by this process over the last hour.
- ``GET /ops/dead-letters``; ``POST /ops/dead-letters/{id}/retry`` and ``/discard``.
- ``GET /ops/events`` (the global stream, filtered, page by page), ``GET /ops/events/{position}``,
  ``GET /ops/streams/{aggregate}`` (one aggregate: its id or ``TYPE:KEY``),
  ``GET /ops/correlations/{id}`` (the commands and events one correlation id led to).
- ``GET /ops/replays``; ``POST /ops/replays`` ``{"projection": NAME}`` starts a blue-green rebuild.

``docs/console.md`` describes each answer. POSTs take ``application/json`` only, so that no other web
page can send them from a browser without asking first (CORS).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from framework.browse import EventFilter, browse, event_at, event_view, follow_correlation, issued_commands
from framework.errors import ConfigurationError, EventfoldError, Forbidden
from framework.http.gate import Gate
from framework.http.problems import problem, problem_for
from framework.projector import Projector
from framework.security import Authenticator, has_any_role
from framework.status import projection_statuses
from framework.store import EventStore
from framework.views import ViewStore

__all__ = ["OPS_ROLE", "LagHistory", "ReplayJobs", "operator_routes"]

log = logging.getLogger(__name__)

OPS_ROLE = "ops"
_OPS = frozenset({OPS_ROLE})
Handler = Callable[[Request], Awaitable[Any]]


class LagHistory:
    """Each active projection's lag, sampled every ``every`` seconds and kept for ``keep`` seconds, in memory."""

    def __init__(self, sample: Callable[[], list[dict[str, Any]]], *, every: float = 5.0, keep: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._sample, self.every, self._clock = sample, every, clock
        self._samples: deque[dict[str, Any]] = deque(maxlen=max(int(keep / every), 1))
        self._task: asyncio.Task[None] | None = None

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Keep one sample of ``rows`` (status rows) unless the last is younger than ``every``."""
        now = self._clock()
        if self._samples and now - self._samples[-1]["t"] < self.every * 0.9:
            return
        lag = {r["name"]: [r["lag_events"], r["lag_seconds"]] for r in rows if r["active"]}
        self._samples.append({"t": now, "lag": lag})

    def samples(self) -> list[dict[str, Any]]:
        return list(self._samples)

    def start(self) -> None:
        """Sample in the background from now on, in the running event loop (again if that loop is another)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.record(await run_in_threadpool(self._sample))
            except Exception as error:  # the store or read models are away: a gap in the chart
                log.warning("lag history: no sample: %r", error)
            await asyncio.sleep(self.every)


@dataclass
class ReplayJob:
    """One blue-green rebuild started over HTTP, as it goes."""

    projection: str
    from_version: int
    started_at: str
    state: str = "running"  # running | switched | failed
    position: int = 0
    head: int = 0
    version: int | None = None  # the new version, once switched in
    finished_at: str | None = None
    error: str | None = None
    id: int = 0


class ReplayBusy(ConfigurationError):
    """A rebuild of this projection is running already (409)."""


@dataclass
class ReplayJobs:
    """Rebuilds run on threads of this process, one at a time per projection; the last 50 are remembered."""

    projectors: dict[str, Callable[[], Projector]]
    views: ViewStore
    store: EventStore
    jobs: list[ReplayJob] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str) -> ReplayJob:
        if name not in self.projectors:
            known = ", ".join(sorted(self.projectors)) or "none"
            raise ConfigurationError(f"there is no projection {name!r} (known: {known})")
        with self._lock:
            if any(j.projection == name and j.state == "running" for j in self.jobs):
                raise ReplayBusy(f"a rebuild of {name!r} is already running")
            job = ReplayJob(name, self.views.active_version(name), _now(), id=len(self.jobs) + 1)
            self.jobs = [*self.jobs[-49:], job]
        threading.Thread(target=self._run, args=(job,), name=f"eventfold-replay-{name}", daemon=True).start()
        return job

    def _run(self, job: ReplayJob) -> None:
        from framework.replay import rebuild

        def progress(position: int, head: int) -> None:
            job.position, job.head = position, head

        try:
            job.version = rebuild(self.projectors[job.projection](), self.views, self.store, progress=progress)
            job.state = "switched"
        except Exception as error:
            log.exception("rebuild of %s failed", job.projection)
            job.state, job.error = "failed", error.message if isinstance(error, EventfoldError) else repr(error)
        job.finished_at = _now()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def operator_routes(store: EventStore, views: ViewStore, projectors: Sequence[Projector], *,
                    authenticator: Authenticator | None = None, projector_factories:
                    dict[str, Callable[[], Projector]] | None = None,
                    auth_failures_per_minute: float | None = None,
                    rate_limit_per_second: float | None = None) -> list[BaseRoute]:
    """The ``/ops/`` routes over ``store`` and ``views``. ``projectors``: the application's (what a
    replay can rebuild; ``projector_factories`` builds a fresh one per rebuild when given). The limits
    are the APIs' (``framework.http.gate``)."""
    gate = Gate(authenticator, rate_per_second=rate_limit_per_second, failures_per_minute=auth_failures_per_minute)
    factories = projector_factories or {p.name: _same(p) for p in projectors}
    api = _OperatorApi(store, views, ReplayJobs(factories, views, store))
    handlers: dict[str, dict[str, Handler]] = {
        "/ops/status": {"GET": api.status},
        "/ops/lag-history": {"GET": api.lag_history},
        "/ops/dead-letters": {"GET": api.dead_letters},
        "/ops/dead-letters/{letter_id}/{action}": {"POST": api.settle_letter},
        "/ops/events": {"GET": api.events},
        "/ops/events/{position}": {"GET": api.event},
        "/ops/streams/{aggregate}": {"GET": api.stream},
        "/ops/correlations/{correlation_id}": {"GET": api.correlation},
        "/ops/replays": {"GET": api.replays, "POST": api.start_replay},
    }
    # GET and POST reach every route, so that the wrong one of the two is a 405 here rather than whatever
    # an application mounted beside these routes answers.
    return [Route(path, _guarded(gate, by_method, api.history), methods=["GET", "POST"])
            for path, by_method in handlers.items()]


def _same(projector: Projector) -> Callable[[], Projector]:
    return lambda: type(projector)()


def _guarded(gate: Gate, handlers: dict[str, Handler], history: LagHistory) -> Callable[[Request], Awaitable[Response]]:
    allowed = ", ".join(sorted(handlers))

    async def endpoint(request: Request) -> Response:
        handler = handlers.get(request.method)
        if handler is None:
            return problem(405, "Method not allowed", f"this route takes {allowed}", "method_not_allowed",
                           {"Allow": allowed})
        try:
            principal = await gate.admit(request)
            if not has_any_role(principal, _OPS):
                raise Forbidden("the operations API needs the role: ops")
            history.start()
            if request.method == "POST":
                _require_json(request)
            return JSONResponse(await handler(request))
        except _Refused as refused:
            return refused.response
        except ReplayBusy as busy:
            return problem(409, "Conflict", busy.message, "replay_running")
        except ConfigurationError as bad:  # what the request asked for does not exist or does not parse
            return problem(400, "Bad request", bad.message, "bad_request")
        except EventfoldError as error:
            return problem_for(error, retry_after=1)
    return endpoint


class _Refused(Exception):
    def __init__(self, status: int, title: str, detail: str, code: str) -> None:
        super().__init__(detail)
        self.response = problem(status, title, detail, code)


def _require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise _Refused(415, "Unsupported media type", "send application/json", "unsupported_media_type")


class _OperatorApi:
    def __init__(self, store: EventStore, views: ViewStore, replays: ReplayJobs) -> None:
        self.store, self.views, self.jobs = store, views, replays
        self.history = LagHistory(self._status_rows)

    def _status_rows(self) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(s.as_dict(), default=str)) for s in projection_statuses(self.store, self.views)]

    async def status(self, _: Request) -> dict[str, Any]:
        rows = await run_in_threadpool(self._status_rows)
        self.history.record(rows)
        head = rows[0]["head"] if rows else await run_in_threadpool(self.store.head)
        return {"at": _now(), "head": head, "projections": rows}

    async def lag_history(self, _: Request) -> dict[str, Any]:
        return {"every_seconds": self.history.every, "now": time.time(), "samples": self.history.samples()}

    async def dead_letters(self, request: Request) -> dict[str, Any]:
        name = request.query_params.get("projection") or None
        letters = await run_in_threadpool(self.views.dead_letters, name)
        return {"dead_letters": [json.loads(json.dumps(asdict(letter), default=str)) for letter in letters]}

    async def settle_letter(self, request: Request) -> dict[str, Any]:
        action, letter = request.path_params["action"], _number(request.path_params["letter_id"], "letter id")
        if action not in ("retry", "discard"):
            raise _Refused(404, "Not found", "POST .../retry or .../discard", "not_found")
        settle = self.views.request_retry if action == "retry" else self.views.discard_dead_letter
        if not await run_in_threadpool(settle, letter):
            raise _Refused(404, "Not found", f"there is no dead letter {letter}", "not_found")
        said = "will be retried by its projection's worker" if action == "retry" else "was discarded"
        return {"id": letter, "action": action, "message": f"dead letter {letter} {said}"}

    async def events(self, request: Request) -> dict[str, Any]:
        query = request.query_params
        where = EventFilter(
            types=frozenset(t.strip() for t in ",".join(query.getlist("type")).split(",") if t.strip()),
            since=_moment(query.get("since"), "since"), until=_moment(query.get("until"), "until"),
            correlation_id=query.get("correlation_id") or None, aggregate_type=query.get("aggregate_type") or None)
        after = _number(query.get("after", "0"), "after")
        limit = _number(query.get("limit", "50"), "limit")
        page = await run_in_threadpool(lambda: browse(self.store, where, after=after, limit=limit))
        return {"events": [e.as_dict() for e in page.events], "next_after": page.next_after, "head": page.head,
                "complete": page.complete}

    async def event(self, request: Request) -> dict[str, Any]:
        position = _number(request.path_params["position"], "position")
        found = await run_in_threadpool(event_at, self.store, position)
        if found is None:
            raise _Refused(404, "Not found", f"there is no event at position {position}", "not_found")
        return found.as_dict()

    async def stream(self, request: Request) -> dict[str, Any]:
        from framework.cli.history import aggregate_reference  # TYPE:KEY among the application's aggregate types

        reference = aggregate_reference(request.path_params["aggregate"])
        stored = await run_in_threadpool(self.store.read_stream_with_positions, reference.aggregate_id)
        return {"aggregate_id": str(reference.aggregate_id), "described": reference.words,
                "events": [event_view(s).as_dict() for s in stored]}

    async def correlation(self, request: Request) -> dict[str, Any]:
        correlation_id = request.path_params["correlation_id"]
        trail = await run_in_threadpool(follow_correlation, self.store, correlation_id)
        waiting = await run_in_threadpool(issued_commands, self.views, correlation_id)
        steps = [{"causation_id": s.causation_id, "actor": s.actor, "issued_by": s.issued_by,
                  "caused_by": s.caused_by, "events": [e.as_dict() for e in s.events]} for s in trail.steps]
        return {"correlation_id": trail.correlation_id, "steps": steps, "scanned_to": trail.scanned_to,
                "head": trail.head, "complete": trail.complete, "issued": [c.as_dict() for c in waiting]}

    async def replays(self, _: Request) -> dict[str, Any]:
        return {"projections": sorted(self.jobs.projectors), "replays": [asdict(j) for j in self.jobs.jobs]}

    async def start_replay(self, request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        name = body.get("projection") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise _Refused(422, "Invalid body", 'send {"projection": NAME}', "validation_failed")
        return asdict(self.jobs.start(name))


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > 4096:
        raise _Refused(413, "Body too large", "the body exceeds 4096 bytes", "body_too_large")
    try:
        return json.loads(raw)
    except ValueError:
        raise _Refused(400, "Malformed JSON", "the body is not JSON", "malformed_json") from None


def _number(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise _Refused(400, "Bad request", f"{what} must be a whole number, not {text[:40]!r}", "bad_request")
    return int(text)


def _moment(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Refused(400, "Bad request", f"{what} must be an ISO 8601 time, not {text[:40]!r}",
                       "bad_request") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

