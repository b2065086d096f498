"""Eventfold: typed event sourcing and CQRS for Python.

The core (this package's top level) imports no adapter: no psycopg, nats or
strawberry. Adapters live in ``framework.adapters`` and ``framework.http``.
"""

from framework.aggregate import Aggregate, event
from framework.app import App, Seeding
from framework.bus import CommandBus, CommandContext, Executed
from framework.commands import Command, CommandRouter, Lax
from framework.errors import (
    AggregateNotFound,
    AlreadyExists,
    BusUnavailable,
    CommandRejected,
    ConcurrencyConflict,
    ConfigurationError,
    EventfoldError,
    EventSchemaError,
    FieldError,
    Forbidden,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidCommand,
    InvalidTransition,
    KeysUnavailable,
    MalformedJson,
    RateLimited,
    RowRejected,
    RuleViolation,
    StoreUnavailable,
    Unauthenticated,
    Unavailable,
    UnknownCommand,
    VersionMismatch,
    VersionSwitched,
)
from framework.events import Event, EventEnvelope, EventMetadata, Upcaster
from framework.history import History
from framework.settings import Settings
from framework.store import CommandResult, EventStore
from framework.unit_of_work import UnitOfWork

__all__ = [
    "Aggregate",
    "AggregateNotFound",
    "AlreadyExists",
    "App",
    "BusUnavailable",
    "Command",
    "CommandBus",
    "CommandContext",
    "CommandRejected",
    "CommandResult",
    "CommandRouter",
    "ConcurrencyConflict",
    "ConfigurationError",
    "Event",
    "EventEnvelope",
    "EventMetadata",
    "EventSchemaError",
    "EventStore",
    "EventfoldError",
    "Executed",
    "FieldError",
    "Forbidden",
    "History",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "InvalidCommand",
    "InvalidTransition",
    "KeysUnavailable",
    "Lax",
    "MalformedJson",
    "RateLimited",
    "RowRejected",
    "RuleViolation",
    "Seeding",
    "Settings",
    "StoreUnavailable",
    "Unauthenticated",
    "Unavailable",
    "UnitOfWork",
    "UnknownCommand",
    "Upcaster",
    "VersionMismatch",
    "VersionSwitched",
    "event",
]
