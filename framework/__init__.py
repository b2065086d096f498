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
    CommandRejected,
    ConcurrencyConflict,
    ConfigurationError,
    EventfoldError,
    EventSchemaError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidCommand,
    InvalidTransition,
    RuleViolation,
    StoreUnavailable,
    UnknownCommand,
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
    "History",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "InvalidCommand",
    "InvalidTransition",
    "Lax",
    "RuleViolation",
    "Seeding",
    "Settings",
    "StoreUnavailable",
    "UnitOfWork",
    "UnknownCommand",
    "Upcaster",
    "event",
]
