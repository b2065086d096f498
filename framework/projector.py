"""Projectors and process managers: one handler per event type they care about.

    class HoldingsProjector(Projector):
        name = "holdings"
        read_models = (Holding,)

        @on(SecuritiesCredited)
        def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
            ...

Events a projector has no handler for are skipped (their position still
counts). A ``ProcessManager`` is a projector whose handlers may also
``context.issue(command)`` and ``context.schedule(name, at)``. Issued commands
are recorded in the process manager's outbox in the same transaction as its
rows and position, with an idempotency key derived from the triggering event,
and dispatched after the commit until they succeed (``framework.dispatcher``):
nothing is lost when a worker dies, nothing runs twice. A command refused for
good reaches ``on_refused``; a deadline that comes due reaches ``on_deadline``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar

from framework.commands import Command
from framework.errors import CommandRejected, ConfigurationError
from framework.events import Event, EventEnvelope
from framework.partitions import check_partition_count
from framework.readmodel import ReadModel
from framework.unit_of_work import checked_expected_version
from framework.views import Deadline, Views

__all__ = [
    "Deadline",
    "DeadlineRequest",
    "HandlerContext",
    "IssuedCommand",
    "ProcessManager",
    "Projector",
    "Refusal",
    "on",
    "with_partitions",
]

E = TypeVar("E", bound=Event)
_HANDLES = "__eventfold_handles__"
Handler = Callable[[Any, Any, "HandlerContext"], None]


def on(event_type: type[E]) -> Callable[[Callable[[Any, E, HandlerContext], None]], Handler]:
    """Mark a projector method as the handler of ``event_type``."""

    def mark(method: Callable[[Any, E, HandlerContext], None]) -> Handler:
        setattr(method, _HANDLES, event_type)
        return method

    return mark


@dataclass(frozen=True)
class IssuedCommand:
    command: Command
    idempotency_key: str
    envelope: EventEnvelope
    ordering_key: str
    expected_version: int | None = None  # of the command's aggregate, checked when it is dispatched


@dataclass(frozen=True)
class DeadlineRequest:
    key: str
    name: str
    due_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Refusal:
    """A command a process manager issued, refused for good (a rule, a state, an unknown aggregate)."""

    command: Command | None  # None: its stored payload no longer validates as the command
    error: CommandRejected
    idempotency_key: str

    @property
    def code(self) -> str:
        return self.error.code


@dataclass
class HandlerContext:
    """What a handler gets besides the event: its envelope, the views, and (for
    process managers) a way to issue commands and schedule deadlines."""

    envelope: EventEnvelope
    views: Views
    issued: list[IssuedCommand] = field(default_factory=list)
    issuer: str = ""
    origin: str = ""  # what issued keys derive from: the event id, or a deadline's or refusal's key
    scheduled: list[DeadlineRequest] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def issue(self, command: Command, *, discriminator: str = "", ordering_key: str | None = None,
              expected_version: int | None = None) -> None:
        """Issue ``command`` once, whatever happens to this worker.

        Its idempotency key derives from the triggering event and ``discriminator`` (default: the
        command's rank among this handler's commands), so a redelivered event issues nothing new.
        Commands with one ``ordering_key`` run one at a time in issue order; others run concurrently.
        The default is the triggering event's aggregate: reactions to one aggregate stay in its order.

        ``expected_version``: the version of the command's aggregate this reaction was decided on
        (``context.envelope.version`` when the command goes back to the aggregate that raised the
        event; 0: it must not exist yet). If the aggregate has moved on by the time the command is
        dispatched, the command is refused for good (``VersionMismatch``, to ``on_refused``).
        """
        self._check_issuer("issue commands")
        if expected_version is not None:
            checked_expected_version(expected_version)
        suffix = discriminator or str(len(self.issued))
        key = f"{self.issuer}:{self.origin or self.envelope.metadata.event_id}:{suffix}"
        order = ordering_key if ordering_key is not None else str(self.envelope.aggregate_id)
        self.issued.append(IssuedCommand(command, key, self.envelope, order, expected_version))

    def schedule(self, name: str, at: datetime, *, key: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Be woken at ``at`` (``on_deadline``), once, surviving restarts. One deadline per ``key``
        (default: the name and this event's aggregate); scheduling the same key again moves it."""
        self._check_issuer("schedule deadlines")
        if at.tzinfo is None:
            raise ConfigurationError(f"deadline {name!r} needs an aware datetime (with a time zone)")
        self.scheduled.append(DeadlineRequest(key or self._deadline_key(name), name, at, dict(data or {})))

    def cancel_deadline(self, name: str, *, key: str | None = None) -> None:
        """Forget the deadline with this key (default: the name and this event's aggregate), if pending."""
        self._check_issuer("cancel deadlines")
        self.cancelled.append(key or self._deadline_key(name))

    def _deadline_key(self, name: str) -> str:
        return f"{name}:{self.envelope.aggregate_id}"

    def _check_issuer(self, what: str) -> None:
        if not self.issuer:
            raise ConfigurationError(f"only a ProcessManager's handlers may {what}")


class Projector:
    """Base class of projections. Subclasses set ``name`` and ``read_models``."""

    name: ClassVar[str]
    read_models: ClassVar[tuple[type[ReadModel], ...]] = ()
    per_aggregate: ClassVar[bool] = False
    """Each row belongs to one aggregate: every row a handler reads or writes is one that only the events
    of the aggregate it is handling touch (keyed by that aggregate's id or natural key). Then one
    aggregate's rows can be rebuilt from its events alone (``eventfold replay NAME --aggregate``);
    a projection whose rows combine aggregates (a card naming its security) must not declare it."""
    on_error: ClassVar[Literal["halt", "park", "retry"]] = "halt"
    """An event that keeps failing (its handler, or a value the read-model database refuses):
    ``halt`` this projection (others in the process keep running), ``park`` it as a dead letter
    and go on, or ``retry`` it with backoff until it succeeds (the projection waits)."""
    partitions: ClassVar[int] = 1
    """How many partitions its events are split into (a power of two up to 256; 1: not partitioned).
    Each partition is applied in order on its own, with its own position, by whichever worker holds
    its lease (``eventfold project NAME`` started several times share them). Only for a projection
    whose rows each belong to one partition key (``partition_key``, default the aggregate id); changing
    the count takes a replay. See ``framework.partitions`` and docs/projections.md."""
    _handlers: ClassVar[dict[type[Event], Handler]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_partition_count(getattr(cls, "name", cls.__name__), cls.partitions)
        cls._handlers = {}
        for klass in reversed(cls.__mro__):
            for attribute in vars(klass).values():
                event_type = getattr(attribute, _HANDLES, None)
                if event_type is not None:
                    cls._handlers[event_type] = attribute

    def partition_key(self, envelope: EventEnvelope) -> str:
        """The key whose partition the event belongs to (default: its aggregate id). Override it to
        partition by something else (the bus then delivers every event to every partition, which
        keeps its own)."""
        return str(envelope.aggregate_id)

    @classmethod
    def keys_by_aggregate(cls) -> bool:
        """Partitioned by aggregate id (the default key): the bus can filter a partition's events."""
        return cls.partition_key is Projector.partition_key

    @classmethod
    def handled_event_names(cls) -> set[str]:
        return {event_type.event_name for event_type in cls._handlers}

    def handles(self, envelope: EventEnvelope) -> bool:
        return type(envelope.event) in self._handlers

    def apply(self, envelope: EventEnvelope, context: HandlerContext) -> None:
        handler = self._handlers.get(type(envelope.event))
        if handler is not None:
            handler(self, envelope.event, context)

    def context_for(self, envelope: EventEnvelope, views: Views, origin: str = "") -> HandlerContext:
        return HandlerContext(envelope, views)


def with_partitions(projector: Projector, count: int) -> Projector:
    """``projector`` split into ``count`` partitions instead of its class's (``EVENTFOLD_PARTITIONS``):
    an instance of a subclass that differs only in ``partitions``."""
    if count == projector.partitions:
        return projector
    cls = type(projector)
    if isinstance(projector, ProcessManager) and count > 1:
        raise ConfigurationError(f"{projector.name}: a process manager cannot be partitioned (its outbox is one)")
    variant: type[Projector] = type(cls.__name__, (cls,), {"partitions": count, "__module__": cls.__module__})
    copy = object.__new__(variant)
    copy.__dict__.update(projector.__dict__)
    return copy


class ProcessManager(Projector):
    """A projector that reacts to events by issuing commands and scheduling deadlines."""

    def context_for(self, envelope: EventEnvelope, views: Views, origin: str = "") -> HandlerContext:
        return HandlerContext(envelope, views, issuer=f"pm:{self.name}", origin=origin)

    def on_refused(self, refusal: Refusal, context: HandlerContext) -> bool:
        """A command this process manager issued was refused for good. React to it (record the
        failure in a read model, issue a compensating command) and return True; the default returns
        False, which parks the command as a dead letter (retry sends it again). Runs in one
        transaction with the removal of the command from the outbox; ``context.envelope`` is the
        event that issued it."""
        return False

    def on_deadline(self, deadline: Deadline, context: HandlerContext) -> None:
        """A deadline scheduled with ``context.schedule`` came due. Runs once, in one transaction
        with the deadline's removal; ``context.envelope`` is the event that scheduled it."""
        raise ConfigurationError(f"{self.name} scheduled deadline {deadline.name!r} but has no on_deadline")
