"""The outbox dispatcher: runs the commands process managers issued, after their batch committed.

A process manager's handlers only record commands (``context.issue``) in its
outbox, in the transaction that also moves its position. The dispatcher reads
the outbox and executes each command through the command bus with the
command's derived idempotency key, so a command is stored once however often
it is dispatched (a dispatcher that died after executing but before forgetting
an entry finds it replayed). What happens to each command:

* executed, or replayed: forgotten;
* refused for now (``IdempotencyKeyInFlight`` — say, the claim of a worker that
  died mid-command, until its lease ends —, ``ConcurrencyConflict`` after the
  bus's own retries, an unavailable store or bus, an open circuit breaker, or
  an unexpected error): postponed with jittered exponential backoff, and tried
  again until it succeeds; the commands after it with the same ordering key wait;
* refused for good (a rule, a state, an unknown aggregate or command, an
  aggregate no longer at the version the command was issued for —
  ``VersionMismatch``): handed to the process manager's ``on_refused``, or
  parked as a dead letter.

Commands with different ordering keys run concurrently (``concurrency``
threads); one ordering key's commands run one at a time, in the order issued.
Deadlines that came due are fired here too, each once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from framework.bus import CommandBus, CommandContext
from framework.errors import (
    CommandRejected,
    ConcurrencyConflict,
    IdempotencyKeyInFlight,
    Unavailable,
)
from framework.faults import fault_point
from framework.projector import Refusal
from framework.views import Deadline, OutboxEntry
from framework.worker import ProjectionWorker

__all__ = ["DispatchOptions", "Dispatcher"]

log = logging.getLogger(__name__)

TEMPORARY: tuple[type[Exception], ...] = (IdempotencyKeyInFlight, ConcurrencyConflict, Unavailable)
"""Refusals that say "not now": the command is tried again later, never dropped."""


@dataclass(frozen=True)
class DispatchOptions:
    concurrency: int = 16  # commands in flight at once, across ordering keys
    batch: int = 1000  # outbox entries read per round
    first_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 10.0


class Dispatcher:
    """Executes one process manager's outbox and fires its deadlines (synchronous; see ``run_dispatcher``)."""

    def __init__(
        self,
        worker: ProjectionWorker,
        bus: CommandBus,
        options: DispatchOptions | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.worker, self.bus = worker, bus
        self.options = options or DispatchOptions()
        self._clock, self._jitter = clock, jitter
        self._pool = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix=f"dispatch-{worker.name}")
        self.dispatched = 0  # commands settled so far (progress, for the lease heartbeat)

    @property
    def name(self) -> str:
        return self.worker.name

    def run_once(self) -> int:
        """Fire the due deadlines, then dispatch every due outbox entry once; how many were settled."""
        return self.fire_deadlines() + self.dispatch()

    def dispatch(self) -> int:
        now = self._clock()
        groups = _runnable(self.worker.views.outbox(self.name, self.options.batch), now)
        if not groups:
            return 0
        done: list[int] = []
        for settled in self._pool.map(self._run_group, groups):
            done.extend(settled)
        self.worker.views.outbox_done([i for i in done if i >= 0])
        fault_point("dispatch.forgotten")
        self.dispatched += len(done)
        return len(done)

    def _run_group(self, entries: Sequence[OutboxEntry]) -> list[int]:
        """One ordering key's due commands, in order; stops at the first that must wait. Returns the
        ids of the executed entries to forget (refused ones were settled in their own transaction: -1)."""
        settled: list[int] = []
        for entry in entries:
            outcome = self._run(entry)
            if outcome is None:
                break
            settled.append(outcome)
        return settled

    def _run(self, entry: OutboxEntry) -> int | None:
        assert entry.id is not None
        try:
            command = self.bus.router.parse(entry.command_name, entry.payload)
            self.bus.execute(command, self._context(entry))
            return entry.id
        except TEMPORARY as error:
            self._postpone(entry, error)
            return None
        except CommandRejected as error:
            return self._refused(entry, error)
        except Exception as error:  # a bug in a command handler: visible, retried, never dropped
            log.error("%s: %s (%s) failed unexpectedly: %r; retrying later", self.name, entry.command_name,
                      entry.key, error)
            self._postpone(entry, error)
            return None

    def _context(self, entry: OutboxEntry) -> CommandContext:
        origin = entry.context
        return CommandContext(
            correlation_id=origin.get("correlation_id"), causation_id=origin.get("causation_id"),
            actor=f"process-manager:{self.name}", idempotency_key=entry.key,
            trace_context=origin.get("trace_context"), expected_version=origin.get("expected_version"),
        )

    def _refused(self, entry: OutboxEntry, error: CommandRejected) -> int | None:
        log.warning("%s: %s (%s) was refused: %s", self.name, entry.command_name, entry.key, error)
        try:
            command = self.bus.router.parse(entry.command_name, entry.payload)
        except CommandRejected:
            command = None
        try:
            self.worker.handle_refusal(entry, Refusal(command, error, entry.key))
        except ConcurrencyConflict:
            return -1  # settled meanwhile by another dispatcher: nothing left to do
        except Exception as failed:
            log.error("%s: on_refused for %s failed: %r; retrying later", self.name, entry.key, failed)
            self._postpone(entry, failed)
            return None
        return -1

    def _postpone(self, entry: OutboxEntry, error: Exception) -> None:
        at = self._clock() + timedelta(seconds=self._backoff(entry.attempts))
        self.worker.views.postpone(entry.id or 0, at, f"{type(error).__name__}: {error}")

    def _backoff(self, attempts: int) -> float:
        """Exponential, capped, with jitter (half to all of it): retries of many commands spread out."""
        base = min(self.options.max_backoff_seconds, self.options.first_backoff_seconds * 2.0 ** min(attempts, 30))
        return base * (0.5 + float(self._jitter()) / 2)

    def fire_deadlines(self) -> int:
        fired = 0
        for deadline in self.worker.views.due_deadlines(self.name, self._clock(), self.options.batch):
            fired += self._fire(deadline)
        return fired

    def _fire(self, deadline: Deadline) -> int:
        try:
            self.worker.fire_deadline(deadline)
        except ConcurrencyConflict:
            return 0  # fired by another dispatcher
        except Unavailable:
            raise
        except Exception as error:
            log.error("%s: deadline %s failed: %r; retrying later", self.name, deadline.key, error)
            at = self._clock() + timedelta(seconds=self._backoff(deadline.attempts))
            self.worker.views.postpone_deadline(deadline.id or 0, at)
            return 0
        self.dispatched += 1
        return 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _runnable(entries: Sequence[OutboxEntry], now: datetime) -> list[list[OutboxEntry]]:
    """Entries grouped by ordering key, in issue order, keeping only groups whose first entry is due
    (a postponed command holds back the ones issued after it with the same key)."""
    groups: dict[str, list[OutboxEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.ordering_key, []).append(entry)
    return [group for group in groups.values()
            if group[0].next_attempt_at is None or group[0].next_attempt_at <= now]
