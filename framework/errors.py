"""Every error Eventfold raises, as one tree.

Adapters translate their own exceptions (psycopg, sqlite3, ...) into these at
the boundary (``raise StoreUnavailable(...) from e``), so callers never catch
an adapter's exception type. Each error carries a stable ``code`` that the
HTTP and GraphQL layers expose to clients.

    EventfoldError
    ├── CommandRejected            the command was understood but not carried out
    │   ├── UnknownCommand
    │   ├── InvalidCommand         payload failed validation (field errors)
    │   ├── AggregateNotFound
    │   ├── AlreadyExists
    │   ├── RuleViolation          a domain rule said no
    │   │   └── InvalidTransition  ...because of the state the aggregate is in
    │   ├── ConcurrencyConflict    retries exhausted on concurrent writes
    │   ├── VersionMismatch        the aggregate is not at the version the sender decided on
    │   ├── IdempotencyKeyInFlight
    │   └── IdempotencyKeyReused   same key, different request
    ├── MalformedJson              a command's body is not JSON we accept (duplicate keys, not UTF-8, ...)
    ├── StoreUnavailable           the event store cannot be reached
    ├── EventSchemaError           a stored event cannot be read back as its type
    ├── RowRejected                the read-model database refused a batch's rows (a value it cannot hold)
    ├── BusUnavailable             the event bus (NATS) cannot be reached
    ├── VersionSwitched            a projection's active version changed under a worker
    ├── Unauthenticated            no valid credentials (missing, malformed, expired token)
    ├── Forbidden                  valid credentials without a role the request needs
    ├── RateLimited                too many requests from one client; retry later
    ├── TooManyWaiting             the process already holds as many read-your-writes waits as it may
    └── ConfigurationError         a setting is missing or malformed
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "AggregateNotFound",
    "AlreadyExists",
    "BusUnavailable",
    "CommandRejected",
    "ConcurrencyConflict",
    "ConfigurationError",
    "EventSchemaError",
    "EventfoldError",
    "FieldError",
    "Forbidden",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "InvalidCommand",
    "InvalidTransition",
    "KeysUnavailable",
    "MalformedJson",
    "RateLimited",
    "RowRejected",
    "RuleViolation",
    "StoreUnavailable",
    "TooManyWaiting",
    "Unauthenticated",
    "Unavailable",
    "UnknownCommand",
    "VersionMismatch",
    "VersionSwitched",
]


class EventfoldError(Exception):
    """Base of every error Eventfold raises on purpose."""

    code: ClassVar[str] = "eventfold_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CommandRejected(EventfoldError):
    """The command was understood but not carried out; nothing was written."""

    code = "command_rejected"


class UnknownCommand(CommandRejected):
    code = "unknown_command"


@dataclass(frozen=True)
class FieldError:
    """One failed field: a JSON-pointer-like path and a readable message."""

    path: str
    message: str


class InvalidCommand(CommandRejected):
    code = "invalid_command"

    def __init__(self, message: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.errors = tuple(errors)


class MalformedJson(EventfoldError):
    """A command's body is not the JSON the write API takes: not UTF-8, a byte order mark, a syntax
    error, NaN or Infinity, a key twice in one object (400)."""

    code = "malformed_json"


class AggregateNotFound(CommandRejected):
    code = "aggregate_not_found"


class AlreadyExists(CommandRejected):
    code = "already_exists"


class RuleViolation(CommandRejected):
    """A domain rule refused the command. ``reason`` is a stable machine code."""

    code = "rule_violation"

    def __init__(self, message: str, reason: str = "rule_violation") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidTransition(RuleViolation):
    """The rule is about order: the aggregate is not in a state that allows this."""

    code = "invalid_transition"


class ConcurrencyConflict(CommandRejected):
    code = "concurrency_conflict"


class VersionMismatch(CommandRejected):
    """The sender decided on ``expected_version`` of an aggregate, which is at ``current_version``
    (0: it does not exist). Never retried: the sender must look again and decide again (409)."""

    code = "version_mismatch"

    def __init__(self, message: str, *, expected_version: int, current_version: int) -> None:
        super().__init__(message)
        self.expected_version = expected_version
        self.current_version = current_version


class IdempotencyKeyInFlight(CommandRejected):
    code = "idempotency_key_in_flight"


class IdempotencyKeyReused(CommandRejected):
    code = "idempotency_key_reused"


class Unavailable(EventfoldError):
    """A dependency is down or its circuit breaker is open: retry later (HTTP 503 with Retry-After).

    Its message usually quotes a driver (hosts, internals): clients get a fixed wording instead
    (``framework.http.problems``), unless ``public`` says the message is safe to show as it is.
    """

    code = "unavailable"

    def __init__(self, message: str, *, public: bool = False) -> None:
        super().__init__(message)
        self.public = public


class StoreUnavailable(Unavailable):
    code = "store_unavailable"


class KeysUnavailable(Unavailable):
    """The token signing keys (a JWKS URL) cannot be fetched: not the client's fault, so not a 401."""

    code = "keys_unavailable"


class EventSchemaError(EventfoldError):
    code = "event_schema_error"


class RowRejected(EventfoldError):
    """The read-model database refused what a batch wrote: a value its column cannot hold (a NUL
    character, a number out of range), a constraint. Caused by an event, not by the infrastructure:
    the worker isolates the event and applies its projection's poison policy."""

    code = "row_rejected"


class ConfigurationError(EventfoldError):
    code = "configuration_error"


class BusUnavailable(Unavailable):
    code = "bus_unavailable"


class VersionSwitched(EventfoldError):
    """A rebuilt version became active; the worker reloads its version and position."""

    code = "version_switched"


class Unauthenticated(EventfoldError):
    """The request carries no valid credentials (401)."""

    code = "unauthenticated"


class Forbidden(EventfoldError):
    """The credentials are valid but lack a role the request needs (403)."""

    code = "forbidden"


class RateLimited(EventfoldError):
    """The client sent more requests than its allowance; ``retry_after`` is in seconds (429)."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyWaiting(EventfoldError):
    """A request would wait for a position while the process already holds its limit of waiting
    requests (``EVENTFOLD_MAX_WAITING_REQUESTS``); ``retry_after`` is in seconds (503)."""

    code = "too_many_waiting"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after
