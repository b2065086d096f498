"""Observation hooks of the core: what the bus and the workers report, and the correlation id.

The core reports through a small ``Observer`` protocol and never imports a
metrics library; ``framework.metrics`` implements it with Prometheus at the
edge. ``NULL_OBSERVER`` (the default) does nothing.

``correlation_id`` is a context variable: the write API sets it per request,
the projection worker per event it handles, and the JSON log formatter
(``framework.logs``) writes it on every line logged meanwhile.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

from framework.errors import ConcurrencyConflict, EventfoldError, StoreUnavailable

__all__ = ["NULL_OBSERVER", "NullObserver", "Observer", "command_outcome", "correlation_id"]

correlation_id: ContextVar[str | None] = ContextVar("eventfold_correlation_id", default=None)


class Observer(Protocol):
    """What the command bus and projection workers report as they go."""

    def command_finished(self, command: str, outcome: str, seconds: float) -> None:
        """A command ended: ``ok``, ``replayed``, ``conflict``, ``unavailable`` or the error's code."""

    def events_appended(self, count: int) -> None:
        """``count`` events were committed to the store."""

    def batch_applied(self, projection: str, size: int, seconds: float) -> None:
        """A projection committed a batch of ``size`` events."""

    def dead_lettered(self, projection: str) -> None:
        """A projection parked an event as a dead letter."""


class NullObserver:
    """Observes nothing."""

    def command_finished(self, command: str, outcome: str, seconds: float) -> None:
        pass

    def events_appended(self, count: int) -> None:
        pass

    def batch_applied(self, projection: str, size: int, seconds: float) -> None:
        pass

    def dead_lettered(self, projection: str) -> None:
        pass


NULL_OBSERVER: Observer = NullObserver()


def command_outcome(error: BaseException | None) -> str:
    """A command's outcome label: a bounded set of stable words, never free text."""
    if error is None:
        return "ok"
    if isinstance(error, ConcurrencyConflict):
        return "conflict"
    if isinstance(error, StoreUnavailable):
        return "unavailable"
    if isinstance(error, EventfoldError):
        return error.code
    return "error"
