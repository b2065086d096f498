"""Given/when/then for projections and process managers, run by the real worker on in-memory stores.

    ProjectionSpec(HoldingsProjector()).given(Account, account_id, opened, credited).then(
        Holding(account_number="A-1", isin=APPLE, quantity=10))

    ProcessSpec(ReservationProcess()).given(Order, order_id, placed).when(Order, order_id, paid).then_issued(
        ShipOrder(order_id="o-1")).then_scheduled(Scheduled("remind", at=PAID_AT + timedelta(days=3)))

Events are stored in a ``MemoryEventStore`` through the real mapper and applied by a
``ProjectionWorker`` on a ``MemoryViewStore``, one delivery per ``given``/``when``: what runs is what
runs in production. Every ``then`` also rebuilds the read models from scratch, in the batches a
replay uses, and fails if they differ from the live ones (a projection must not depend on batching);
once ``when_due`` or ``when_refused`` ran, rows may hold what ``on_deadline``/``on_refused`` wrote,
which no replay of events rebuilds, and that comparison stops. Issued commands are recorded in the
process manager's outbox and never executed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeVar
from uuid import UUID, uuid4

from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.aggregate import Aggregate
from framework.bus import CommandBus
from framework.commands import Command, CommandRouter
from framework.errors import CommandRejected, ConfigurationError
from framework.events import Event, EventEnvelope, EventMetadata
from framework.mapper import to_stored
from framework.projector import ProcessManager, Projector, Refusal
from framework.readmodel import ReadModel
from framework.views import Deadline, OutboxEntry
from framework.worker import ProjectionWorker, WorkerOptions

__all__ = ["GIVEN_AT", "ProcessSpec", "ProjectionSpec", "Scheduled"]

P = TypeVar("P", bound=Projector)
R = TypeVar("R", bound=ReadModel)
M = TypeVar("M", bound=ProcessManager)

GIVEN_AT = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
"""When given events are recorded unless ``at=`` says otherwise (a fixed time: rows are predictable)."""

_FOREVER = datetime.max.replace(tzinfo=UTC)
_ALL = 1_000_000


class ProjectionSpec(Generic[P]):
    """Given events, then rows. ``views`` and ``store`` are there for anything ``then`` does not say."""

    def __init__(self, projector: P, *, at: datetime = GIVEN_AT) -> None:
        self.projector = projector
        self.at = at
        self.store = MemoryEventStore()
        self.views = MemoryViewStore(clock=lambda: self.at)
        self._pristine = _copy(projector)  # what the replay runs: state kept in the projector would show
        self._replayable = True  # rows come from events only (not from on_deadline or on_refused)
        self.worker = ProjectionWorker(projector, self.views, self.store, self._commands(), _OPTIONS,
                                       sleep=_no_sleep)

    def _commands(self) -> CommandBus | None:
        return None

    @property
    def position(self) -> int:
        """The position of the last event given (a projection's rows may record it)."""
        return self.store.head()

    def given(self, aggregate_type: type[Aggregate], aggregate_id: UUID, *events: Event,
              at: datetime | None = None, metadata: EventMetadata | None = None) -> Self:
        """Store ``events`` as the next ones of that aggregate (recorded at ``at``) and apply them
        as one delivery. ``metadata`` (its ``recorded_at`` replaced by ``at``) sets correlation and actor."""
        head = self.store.head()
        moment = at or self.at
        meta = (metadata or EventMetadata()).model_copy(update={"recorded_at": moment})
        first = len(self.store.read_stream(aggregate_id)) + 1
        self.store.append([
            to_stored(EventEnvelope(aggregate_type.aggregate_name, aggregate_id, version, event,
                                    meta.model_copy(update={"event_id": uuid4()})))
            for version, event in enumerate(events, start=first)
        ])
        self.worker.apply(self.store.read_all(head, _ALL))
        return self

    def when(self, aggregate_type: type[Aggregate], aggregate_id: UUID, *events: Event,
             at: datetime | None = None, metadata: EventMetadata | None = None) -> Self:
        """Like ``given``; for a process manager, what ``then_issued`` and ``then_scheduled`` look at."""
        return self.given(aggregate_type, aggregate_id, *events, at=at, metadata=metadata)

    def rows(self, model: type[R]) -> list[R]:
        """Every row of ``model``, by key."""
        return self.views.query(self.projector.name, model)

    def then(self, *rows: ReadModel) -> Self:
        """Each table of the rows' types holds exactly these rows (others are not looked at); and a
        replay of the same events builds the same read models."""
        for model, expected in _by_type(rows).items():
            _compare(model.__name__, self.rows(model), sorted(expected, key=ReadModel.key_values))
        return self._then_as_replayed()

    def then_no_rows(self, *models: type[ReadModel]) -> Self:
        """These tables are empty (and a replay agrees)."""
        for model in models:
            _compare(model.__name__, self.rows(model), [])
        return self._then_as_replayed()

    def _then_as_replayed(self) -> Self:
        if not self._replayable:
            return self
        replayed = MemoryViewStore(clock=lambda: self.at)
        ProjectionWorker(self._pristine, replayed, self.store, None, _OPTIONS, sleep=_no_sleep).catch_up()
        for model in self.projector.read_models:
            live, again = self.rows(model), replayed.query(self.projector.name, model)
            if live != again:
                raise AssertionError(f"{model.__name__} differs from a replay of the same events (does the "
                                     f"projection depend on batching or on state outside its rows?)"
                                     f"{_difference(live, again, 'live', 'replayed')}")
        return self


@dataclass(frozen=True)
class Scheduled:
    """A deadline ``then_scheduled`` expects: its name, when it is due, its data and (if given) its key."""

    name: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None

    def matches(self, deadline: Deadline) -> bool:
        return (deadline.name, deadline.due_at, dict(deadline.data)) == (self.name, self.at, dict(self.data)) and (
            self.key is None or self.key == deadline.key)


class ProcessSpec(ProjectionSpec[M]):
    """Given events, then commands issued and deadlines scheduled (and rows, as ``ProjectionSpec``).

    ``then_issued`` and ``then_scheduled`` look at what the last ``when``/``when_due``/``when_refused``
    did, or at everything when there was none."""

    def __init__(self, manager: M, *, at: datetime = GIVEN_AT) -> None:
        if not isinstance(manager, ProcessManager):
            raise ConfigurationError(f"{type(manager).__name__} is not a ProcessManager: use ProjectionSpec")
        super().__init__(manager, at=at)
        self._before: set[int] = set()

    def _commands(self) -> CommandBus | None:
        return CommandBus(CommandRouter(), self.store)  # never called: the outbox is only recorded

    def when(self, aggregate_type: type[Aggregate], aggregate_id: UUID, *events: Event,
             at: datetime | None = None, metadata: EventMetadata | None = None) -> Self:
        self._mark()
        return self.given(aggregate_type, aggregate_id, *events, at=at, metadata=metadata)

    def when_due(self, now: datetime) -> Self:
        """Fire the deadlines due at ``now`` (``on_deadline``), each in its own transaction, as the dispatcher does."""
        self._mark()
        self.at, self._replayable = now, False
        for deadline in self.views.due_deadlines(self.projector.name, now, _ALL):
            self.worker.fire_deadline(deadline)
        return self

    def when_refused(self, command: Command | type[Command], error: CommandRejected) -> Self:
        """The pending command (equal to ``command``, or the only one of that type) was refused for good
        with ``error``: ``on_refused`` runs, as the dispatcher would run it."""
        entry = self._pending(command)
        self._mark()
        refused = command if isinstance(command, Command) else command.model_validate(entry.payload)
        self._replayable = False
        self.worker.handle_refusal(entry, Refusal(refused, error, entry.key))
        return self

    @property
    def issued(self) -> list[OutboxEntry]:
        """Commands issued and not refused, in issue order (name, payload, idempotency key, ordering key)."""
        return self.views.outbox(self.projector.name, _ALL)

    @property
    def deadlines(self) -> list[Deadline]:
        """Pending deadlines, earliest first."""
        return self.views.due_deadlines(self.projector.name, _FOREVER, _ALL)

    def then_issued(self, *commands: Command) -> Self:
        """Exactly these commands were issued (in this order), compared as they would be sent."""
        actual = [(e.command_name, e.payload) for e in self.issued if e.id not in self._before]
        _compare("issued commands", actual, [(c.command_name, c.model_dump(mode="json")) for c in commands])
        return self

    def then_scheduled(self, *deadlines: Scheduled) -> Self:
        """Exactly these deadlines were scheduled (or moved) and are pending, earliest first."""
        actual = [d for d in self.deadlines if d.id not in self._before]
        if len(actual) != len(deadlines) or not all(e.matches(a) for e, a in zip(deadlines, actual, strict=False)):
            shown = [Scheduled(d.name, d.due_at, d.data, d.key) for d in actual]
            raise AssertionError(f"scheduled deadlines differ{_difference(shown, deadlines, 'actual', 'expected')}")
        return self

    def _mark(self) -> None:
        """What exists now is history: the next outcome is what comes after."""
        self._before = {e.id for e in self.issued if e.id} | {d.id for d in self.deadlines if d.id}

    def _pending(self, command: Command | type[Command]) -> OutboxEntry:
        if isinstance(command, Command):
            found = [e for e in self.issued if (e.command_name, e.payload) == (
                command.command_name, command.model_dump(mode="json"))]
        else:
            found = [e for e in self.issued if e.command_name == command.command_name]
        if len(found) != 1:
            issued = [(e.command_name, e.payload) for e in self.issued]
            raise AssertionError(f"expected one pending {_name(command)} to refuse, found {len(found)} in {issued}")
        return found[0]


_OPTIONS = WorkerOptions(handler_attempts=1)


def _no_sleep(_: float) -> None:
    """A spec never waits: a failing handler fails the spec at once."""


def _copy(projector: P) -> P:
    try:
        return copy.deepcopy(projector)
    except Exception:  # a projector holding a client or a lock: the replay shares it
        return projector


def _name(command: Command | type[Command]) -> str:
    return command.command_name


def _by_type(rows: Iterable[ReadModel]) -> dict[type[ReadModel], list[ReadModel]]:
    grouped: dict[type[ReadModel], list[ReadModel]] = {}
    for row in rows:
        grouped.setdefault(type(row), []).append(row)
    return grouped


def _compare(what: str, actual: Sequence[Any], expected: Sequence[Any]) -> None:
    if list(actual) != list(expected):
        raise AssertionError(f"{what} differ{_difference(actual, expected, 'actual', 'expected')}")


def _difference(actual: Sequence[Any], expected: Sequence[Any], left: str, right: str) -> str:
    missing = [e for e in expected if e not in actual]
    unexpected = [a for a in actual if a not in expected]
    lines = [f"\n  {left}:   {list(actual)}", f"\n  {right}: {list(expected)}"]
    if missing or unexpected:
        lines += [f"\n  only {right}: {missing}", f"\n  only {left}: {unexpected}"]
    return "".join(lines)
