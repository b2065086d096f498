"""Reading the event store as an operator does: the global stream page by page, filtered, and one
correlation id followed across commands, events and the commands process managers issued.

Events are shown as stored (the document's data and metadata, not validated against today's classes),
so an event whose class is gone or whose schema changed can still be read::

    page = browse(store, EventFilter(types=frozenset({"CorporateActionAnnounced"})), after=0, limit=50)
    trail = follow_correlation(store, "req-42")  # who did what, and what it caused

The event log has no index on types, times or correlation ids: a page scans at most ``scan`` events
and says where it stopped (``next_after``), so a sparse filter costs bounded work per page.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Notification

from framework.errors import ConfigurationError
from framework.mapper import optional_moment, optional_text, raw_document
from framework.store import EventLog
from framework.views import ViewStore

__all__ = ["BrowsedPage", "CommandStep", "EventFilter", "IssuedCommand", "StoredEventView", "Trail", "browse",
           "event_at", "event_view", "follow_correlation", "issued_commands"]

CHUNK = 500  # events read from the store at a time
SCAN_PER_PAGE = 20_000  # events one page may look at before it answers with what it found
TRAIL_SCAN = 200_000  # events one correlation search may look at


@dataclass(frozen=True)
class StoredEventView:
    """One stored event as an operator reads it."""

    position: int
    aggregate_id: str
    aggregate_type: str | None
    version: int
    type: str
    schema_version: int | None
    data: Any
    metadata: dict[str, Any]

    @property
    def recorded_at(self) -> datetime | None:
        return optional_moment(self.metadata.get("recorded_at"))

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "aggregate_id": self.aggregate_id, "aggregate_type": self.aggregate_type,
                "version": self.version, "type": self.type, "schema_version": self.schema_version,
                "data": self.data, "metadata": self.metadata}


def event_view(stored: Notification) -> StoredEventView:
    """The event at a position as stored; a document that is not JSON shows as its text."""
    document = raw_document(stored)
    return StoredEventView(
        position=stored.id, aggregate_id=str(stored.originator_id), aggregate_type=document.aggregate_type,
        version=stored.originator_version, type=stored.topic, schema_version=document.schema_version,
        data=document.data, metadata=document.metadata,
    )


@dataclass(frozen=True)
class EventFilter:
    """Which events a page shows: every condition given must hold (none given: every event)."""

    types: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    correlation_id: str | None = None
    aggregate_type: str | None = None

    def __post_init__(self) -> None:
        for name, moment in (("since", self.since), ("until", self.until)):
            if moment is not None and moment.tzinfo is None:
                raise ConfigurationError(f"{name} needs a time zone (events are recorded in UTC)")

    def matches(self, event: StoredEventView) -> bool:
        if self.types and event.type not in self.types:
            return False
        if self.aggregate_type is not None and event.aggregate_type != self.aggregate_type:
            return False
        if self.correlation_id is not None and event.metadata.get("correlation_id") != self.correlation_id:
            return False
        return self._in_time(event.recorded_at)

    def _in_time(self, moment: datetime | None) -> bool:
        if self.since is None and self.until is None:
            return True
        if moment is None:
            return False
        return (self.since is None or moment >= self.since) and (self.until is None or moment <= self.until)


@dataclass(frozen=True)
class BrowsedPage:
    """Events after ``after`` that match, oldest first; continue from ``next_after``. ``complete``:
    the scan reached the head (no more events match beyond this page)."""

    events: list[StoredEventView]
    next_after: int
    head: int
    complete: bool


def browse(store: EventLog, where: EventFilter, *, after: int = 0, limit: int = 50,
           scan: int = SCAN_PER_PAGE) -> BrowsedPage:
    """Up to ``limit`` events after position ``after`` that match ``where``, looking at ``scan`` events at most."""
    if after < 0 or not 1 <= limit <= 500:
        raise ConfigurationError(f"after must be 0 or more and limit 1 to 500 (got after={after}, limit={limit})")
    head = store.head()
    found: list[StoredEventView] = []
    last = after
    for stored in _scan(store, after, scan):
        last = stored.id
        event = event_view(stored)
        if where.matches(event):
            found.append(event)
            if len(found) == limit:
                break
    return BrowsedPage(found, last, head, complete=last >= head)


def event_at(store: EventLog, position: int) -> StoredEventView | None:
    """The event stored at ``position``; None when there is none (a gap, or beyond the head)."""
    if position < 1:
        return None
    stored = store.read_all(position - 1, 1)
    return event_view(stored[0]) if stored and stored[0].id == position else None


@dataclass(frozen=True)
class CommandStep:
    """The events one command wrote (they share a causation id and an actor). ``caused_by`` is the
    position of the event that made a process manager issue the command (None: it came from outside)."""

    causation_id: str | None
    actor: str | None
    caused_by: int | None
    events: list[StoredEventView] = field(default_factory=list)

    @property
    def issued_by(self) -> str | None:
        """The process manager that issued the command, from the actor it ran as (``process-manager:NAME``)."""
        prefix = "process-manager:"
        return self.actor[len(prefix):] if self.actor and self.actor.startswith(prefix) else None


@dataclass(frozen=True)
class Trail:
    """Everything one correlation id led to, as commands in the order they wrote their first event."""

    correlation_id: str
    steps: list[CommandStep]
    scanned_to: int
    head: int

    @property
    def complete(self) -> bool:
        return self.scanned_to >= self.head


def follow_correlation(store: EventLog, correlation_id: str, *, scan: int = TRAIL_SCAN) -> Trail:
    """The commands and events that share ``correlation_id``: the command a client sent, the events it
    wrote, the commands process managers issued because of those events (their causation id is the
    triggering event's id), and so on."""
    if not correlation_id.strip():
        raise ConfigurationError("give a correlation id")
    head = store.head()
    where = EventFilter(correlation_id=correlation_id)
    steps: dict[tuple[str | None, str | None, int], CommandStep] = {}
    by_event_id: dict[str, int] = {}
    last = 0
    for stored in _scan(store, 0, scan):
        last = stored.id
        event = event_view(stored)
        if not where.matches(event):
            continue
        by_event_id[str(event.metadata.get("event_id"))] = event.position
        _step_of(steps, event, by_event_id).events.append(event)
    return Trail(correlation_id, list(steps.values()), last, head)


def _step_of(steps: dict[tuple[str | None, str | None, int], CommandStep], event: StoredEventView,
             by_event_id: dict[str, int]) -> CommandStep:
    """The step of the command that wrote ``event``: the events with its causation id and actor. Events
    without a causation id (written outside the HTTP API) make one step per run of consecutive ones."""
    causation, actor = optional_text(event.metadata.get("causation_id")), optional_text(event.metadata.get("actor"))
    key = (causation, actor, 0)
    if causation is None:
        last = next(reversed(steps), None)
        key = last if last is not None and last[:2] == (None, actor) else (None, actor, len(steps))
    if key not in steps:
        steps[key] = CommandStep(causation, actor, by_event_id.get(causation or ""))
    return steps[key]


def _scan(store: EventLog, after: int, budget: int) -> Iterator[Notification]:
    seen = 0
    while seen < budget:
        chunk = store.read_all(after, min(CHUNK, budget - seen))
        if not chunk:
            return
        yield from chunk
        seen += len(chunk)
        after = chunk[-1].id


@dataclass(frozen=True)
class IssuedCommand:
    """A command a process manager issued under a correlation id that has written no event (yet):
    ``pending`` in its outbox (``attempts`` and ``last_error`` say how it goes), or ``refused`` for good
    and parked as a dead letter (``error``)."""

    projection: str
    command_name: str
    payload: dict[str, Any]
    state: str  # pending | refused
    caused_by: int  # the position of the event that made the process manager issue it
    attempts: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"projection": self.projection, "command_name": self.command_name, "payload": self.payload,
                "state": self.state, "caused_by": self.caused_by, "attempts": self.attempts, "error": self.error}


def issued_commands(views: ViewStore, correlation_id: str, *, limit: int = 1000) -> list[IssuedCommand]:
    """The commands process managers issued under ``correlation_id`` that are still in their outboxes, or
    were refused and parked: the ones a trail of events cannot show, as they wrote nothing."""
    found: list[IssuedCommand] = []
    for name in sorted({state.name for state in views.states()}):
        found += [IssuedCommand(e.projection, e.command_name, e.payload, "pending", e.position, e.attempts,
                                e.last_error)
                  for e in views.outbox(name, limit) if e.context.get("correlation_id") == correlation_id]
    for letter in views.dead_letters():
        command = letter.command or {}
        if (command.get("context") or {}).get("correlation_id") == correlation_id:
            found.append(IssuedCommand(letter.projection, str(command.get("command_name")),
                                       dict(command.get("payload") or {}), "refused", letter.position,
                                       error=letter.error))
    return found
