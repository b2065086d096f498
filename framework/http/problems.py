"""RFC 9457 problem details: the only shape an error leaves the write API in."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from framework.errors import (
    AggregateNotFound,
    AlreadyExists,
    CommandRejected,
    ConcurrencyConflict,
    EventfoldError,
    Forbidden,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidCommand,
    InvalidTransition,
    RateLimited,
    RuleViolation,
    StoreUnavailable,
    Unauthenticated,
    Unavailable,
    UnknownCommand,
)

__all__ = ["PROBLEM_JSON", "problem", "problem_for"]

PROBLEM_JSON = "application/problem+json"

# Most specific first: the first matching class decides the status.
_STATUS: list[tuple[type[EventfoldError], int, str]] = [
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
    (IdempotencyKeyInFlight, 409, "Request in flight"),
    (IdempotencyKeyReused, 422, "Idempotency key reused"),
    (CommandRejected, 422, "Command rejected"),
    (StoreUnavailable, 503, "Event store unavailable"),
    (Unavailable, 503, "Service unavailable"),
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
    headers = {"Retry-After": str(retry_after)} if status == 503 else None
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after)}
    if isinstance(error, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    detail = error.message if status != 500 else "the server could not process the request"
    return problem(status, title, detail, error.code, headers, **extra)

