"""RFC 9457 problem details: the only shape an error leaves the write API in."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from framework.errors import (
    AggregateNotFound,
    AlreadyExists,
    BusUnavailable,
    CommandRejected,
    ConcurrencyConflict,
    EventfoldError,
    Forbidden,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidCommand,
    InvalidTransition,
    KeysUnavailable,
    MalformedJson,
    RateLimited,
    RuleViolation,
    StoreUnavailable,
    Unauthenticated,
    Unavailable,
    UnknownCommand,
    VersionMismatch,
)

__all__ = ["PROBLEM_JSON", "problem", "problem_for", "public_detail"]

PROBLEM_JSON = "application/problem+json"

# Most specific first: the first matching class decides the status.
_STATUS: list[tuple[type[EventfoldError], int, str]] = [
    (MalformedJson, 400, "Malformed JSON"),
    (Unauthenticated, 401, "Unauthenticated"),
    (Forbidden, 403, "Forbidden"),
    (RateLimited, 429, "Too many requests"),
    (UnknownCommand, 404, "Unknown command"),
    (AggregateNotFound, 404, "Aggregate not found"),
    (InvalidCommand, 422, "Invalid command"),
    (InvalidTransition, 409, "Not allowed in the current state"),
    (RuleViolation, 422, "Rule violated"),
    (AlreadyExists, 409, "Already exists"),
    (ConcurrencyConflict, 409, "Concurrency conflict"),
    (VersionMismatch, 409, "Version mismatch"),
    (IdempotencyKeyInFlight, 409, "Request in flight"),
    (IdempotencyKeyReused, 422, "Idempotency key reused"),
    (CommandRejected, 422, "Command rejected"),
    (StoreUnavailable, 503, "Event store unavailable"),
    (Unavailable, 503, "Service unavailable"),
]

# What a client hears when a dependency is down: which one, in our words. The error's own message
# (a driver's wording, a host name) is for the server's log only.
_UNAVAILABLE: list[tuple[type[Unavailable], str]] = [
    (StoreUnavailable, "the event store is unavailable; retry later"),
    (KeysUnavailable, "the token signing keys cannot be fetched; retry later"),
    (BusUnavailable, "the message bus is unavailable; retry later"),
    (Unavailable, "a service this request needs is unavailable; retry later"),
]


def problem(
    status: int,
    title: str,
    detail: str,
    code: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:eventfold:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_for(error: EventfoldError, *, retry_after: int) -> JSONResponse:
    """The response for an error the framework raised on purpose."""
    status, title = next(
        ((status, title) for kind, status, title in _STATUS if isinstance(error, kind)),
        (500, "Internal error"),
    )
    extra: dict[str, Any] = {}
    if isinstance(error, InvalidCommand):
        extra["errors"] = [{"path": e.path, "message": e.message} for e in error.errors]
    if isinstance(error, RuleViolation):
        extra["reason"] = error.reason
    if isinstance(error, VersionMismatch):
        extra.update(expected_version=error.expected_version, current_version=error.current_version)
    headers = {"Retry-After": str(retry_after)} if status == 503 else None
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after)}
    if isinstance(error, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return problem(status, title, public_detail(error), error.code, headers, **extra)


def public_detail(error: EventfoldError) -> str:
    """The ``detail`` a client gets: the error's message, except where it would tell how the server is built."""
    if isinstance(error, Unavailable) and not error.public:
        return next(detail for kind, detail in _UNAVAILABLE if isinstance(error, kind))
    if not any(isinstance(error, kind) for kind, _, _ in _STATUS):
        return "the server could not process the request"
    return error.message

