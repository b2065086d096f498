"""The command bus: runs a handler, saves its events, retries on conflicts, honours idempotency keys.

This is the one append path of the write side: every command's events reach
the store through ``CommandBus._save``. The PostgreSQL store groups concurrent
appends into one transaction behind ``EventStore.append`` (group commit); each
command still gets its own conflict, idempotency record and result.
"""

from __future__ import annotations

import asyncio
import copy
import dis
import functools
import hashlib
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast
from uuid import UUID

from framework.aggregate import Aggregate
from framework.cache import AggregateCache, StagedCache
from framework.combining import Queued, decided_in_batch
from framework.commands import Command, CommandRouter
from framework.contention import HotAggregates, LoopTurns
from framework.errors import (
    ConcurrencyConflict,
    EventfoldError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    RuleViolation,
    VersionMismatch,
)
from framework.events import EventMetadata
from framework.faults import fault_point
from framework.ids import random_uuid
from framework.mapper import to_stored
from framework.observe import NULL_OBSERVER, Observer, command_outcome
from framework.snapshots import snapshot_due, to_snapshot
from framework.store import (
    AsyncAppender,
    Claimed,
    ClaimOutcome,
    CommandResult,
    EventStore,
    IdempotencyCompletion,
    InFlight,
    Replay,
    StoredEvent,
)
from framework.tracing import NULL_SPAN, NULL_TRACER, Span, TraceContext, Tracer
from framework.unit_of_work import StaleCache, UnitOfWork, checked_expected_version, describe

__all__ = ["CommandBus", "CommandContext", "Executed"]

log = logging.getLogger(__name__)

# Awaits a synchronous function run on a thread: ``await offload(function, *args)``.
Offload = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class CommandContext:
    """Who sent a command and why; copied into every event's metadata."""

    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None
    idempotency_key: str | None = None
    trace_context: TraceContext | None = None
    """W3C trace context the command runs in (a request's ``traceparent``, a projection's span).
    The bus starts the command's span as its child and stores the span's context in the events."""
    expected_version: int | None = None
    """The version of the command's aggregate (the one its handler returns, whose version the result
    reports) that the sender decided on; 0: it must not exist yet. Any other stored version refuses
    the command with ``VersionMismatch``, never retried. An idempotency key's replay answers first."""

    def __post_init__(self) -> None:
        if self.expected_version is not None:
            checked_expected_version(self.expected_version)


@dataclass(frozen=True)
class Executed:
    result: CommandResult
    replayed: bool = False


@dataclass(frozen=True)
class _Claim:
    key: str
    owner: UUID


class CommandBus:
    def __init__(
        self,
        router: CommandRouter,
        store: EventStore,
        *,
        max_attempts: int = 5,
        idempotency_lease_seconds: float = 60.0,
        cache: AggregateCache | None = None,
        observer: Observer | None = None,
        tracer: Tracer | None = None,
        hot_aggregates: HotAggregates | None = None,
    ) -> None:
        self.router = router
        self.observer = observer or NULL_OBSERVER
        self.tracer = tracer or NULL_TRACER
        self.store = store
        self._cache = cache if cache is not None else AggregateCache()
        # Commands on an aggregate that just conflicted take turns in this process,
        # instead of conflicting over and over with each other.
        self._hot = hot_aggregates if hot_aggregates is not None else HotAggregates()
        self._turns_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTurns] = \
            weakref.WeakKeyDictionary()
        self._max_attempts = max_attempts
        self._lease = idempotency_lease_seconds

    def execute(self, command: Command, context: CommandContext | None = None) -> Executed:
        """Run ``command``; reports its outcome and duration to the observer and logs one line."""
        context, span, started = self._begin(command, context)
        try:
            executed = self._execute(command, context)
        except BaseException as error:
            self._failed(command, context, span, started, error)
            raise
        return self._done(command, context, span, started, executed)

    async def execute_async(self, command: Command, context: CommandContext | None, appender: AsyncAppender,
                            offload: Offload) -> Executed:
        """``execute`` on an event loop: decided on the loop from cached aggregates and appended through
        ``appender`` (the same store's writes, awaited), with the same outcomes, log line and metrics.
        What needs the store's reads (a cache miss, a retry) runs ``_run`` through ``offload``, which
        awaits a function run on a thread."""
        context, span, started = self._begin(command, context)
        try:
            executed = await self._execute_async(command, context, appender, offload)
        except BaseException as error:
            self._failed(command, context, span, started, error)
            raise
        # Its log line, metrics and span at the loop's next turn, once the caller has answered: off the
        # path of a lone client's next command, and still before the loop reads anything else.
        seconds = time.perf_counter() - started
        asyncio.get_running_loop().call_soon(self._report, command, context, span, seconds, executed)
        return executed

    def _begin(self, command: Command, context: CommandContext | None) -> tuple[CommandContext, Span, float]:
        """The command's context (carrying its span's trace context), its span and its start time."""
        context = context or CommandContext()
        started = time.perf_counter()
        span = self._command_span(command, context)
        if span is not NULL_SPAN:
            context = replace(context, trace_context=span.carrier() or context.trace_context)
        return context, span, started

    def _failed(self, command: Command, context: CommandContext, span: Span, started: float,
                error: BaseException) -> None:
        self._finished(command, context, command_outcome(error), started, None)
        _end_command_span(span, command_outcome(error), None, error)

    def _done(self, command: Command, context: CommandContext, span: Span, started: float,
              executed: Executed) -> Executed:
        self._report(command, context, span, time.perf_counter() - started, executed)
        return executed

    def _report(self, command: Command, context: CommandContext, span: Span, seconds: float,
                executed: Executed) -> None:
        outcome = "replayed" if executed.replayed else "ok"
        self._log_outcome(command, context, outcome, seconds, executed.result)
        _end_command_span(span, outcome, executed.result, None)

    async def _execute_async(self, command: Command, context: CommandContext, appender: AsyncAppender,
                             offload: Offload) -> Executed:
        key = context.idempotency_key
        if key is None:
            return Executed(await self._run_async(command, context, None, appender, offload))
        request_hash = fingerprint(command)
        claim = _Claim(key, random_uuid())
        outcome = await appender.claim_idempotency_key(key, request_hash, claim.owner, self._lease)
        answered = _claim_answer(key, request_hash, outcome)
        if answered is not None:
            return answered
        fault_point("command.claimed")
        try:
            return Executed(await self._run_async(command, context, claim, appender, offload))
        except BaseException:
            try:
                await appender.release_idempotency_key(claim.key, claim.owner)
            except EventfoldError:
                log.warning("could not release idempotency key %r; its lease will expire", claim.key)
            raise

    async def _run_async(self, command: Command, context: CommandContext, claim: _Claim | None,
                         appender: AsyncAppender, offload: Offload) -> CommandResult:
        """Attempts on the loop while the cache may be trusted, the rest on a thread. Once a command
        holds hot aggregates' turns it keeps them on the loop for its later attempts too, on a thread
        or not: the loop's commands on one aggregate then go one after the other, whichever decides."""
        state = self._first_try()
        while True:  # each pass answers, or holds more turns, or stops trusting the cache: it ends
            if not state.holding:
                answer = await self._try_async(command, context, claim, appender, offload, state)
            elif _batchable(state, claim, context):
                (aggregate_id,) = state.holding
                answer = await decided_in_batch(self._loop_turns(), aggregate_id, (command, context, state),
                                                functools.partial(self._decide_batch, appender, offload))
            else:
                async with self._loop_turns().turns(state.holding):
                    answer = await self._try_async(command, context, claim, appender, offload, state)
            if not isinstance(answer, _Try):
                return answer
            state = answer

    async def _try_async(self, command: Command, context: CommandContext, claim: _Claim | None,
                         appender: AsyncAppender, offload: Offload, state: _Try) -> CommandResult | _Try:
        """The command's result, or where its attempts go on (more turns to hold, the cache not trusted)."""
        if state.trust_cache:
            try:
                return await self._attempt_async(command, context, claim, appender, offload, state.holding)
            except _NeedsStore:  # nothing was written: decide on a thread, in the same turns
                pass
            except _HotOnLoop as hot:  # decided nowhere yet: decide once, holding its turn
                return replace(state, holding=state.holding | hot.aggregate_ids)
            except (StaleCache, RuleViolation, _TakeTurns, _Conflicted) as error:
                return self._after(command, state, error)
        # One attempt: a retry it asks for comes back here, to wait for the loop's turns (a thread's own
        # turns do not keep out the commands the loop decides from its cache, which would win every race).
        outcome: CommandResult | _Try = await offload(self._try, command, context, claim, state)
        return outcome

    async def _decide_batch(self, appender: AsyncAppender, offload: Offload, batch: Sequence[Queued[_Batched]]) -> None:
        """Decide the queued commands of a hot aggregate in order, each on the state the one before it left,
        and append what they decided in one transaction. A command that cannot be decided so (it needs the
        store, changes another aggregate, fails) is not appended: it goes on alone, in its turn."""
        if len(batch) > 1:  # still contended: it stays hot (racing first attempts would only conflict)
            self._hot.heat(batch[0].item[2].holding)
        staged = StagedCache(self._cache)
        decided: list[tuple[Queued[_Batched], UnitOfWork, Aggregate | None, list[StoredEvent]]] = []
        for queued in batch:
            command, context, state = queued.item
            unit = UnitOfWork(_CACHE_ONLY, staged, trust_cache=True, before_load=_not_hot(self._hot, state.holding))
            try:
                primary = self.router.handler_for(command)(command, unit)
                if not _changed(unit) <= state.holding:  # another aggregate's conflicts would fail the batch
                    raise _NeedsStore("another aggregate")
                # Its events stored here, not with the batch's: one that cannot be (an event that does not
                # encode) fails alone, as it would have, not every member of the batch with it.
                events = [to_stored(e) for e in unit.collect(_metadata(context))]
            except _HotOnLoop as hot:
                queued.answer.set_result(replace(state, holding=state.holding | hot.aggregate_ids))
                continue
            except (_NeedsStore, Exception):  # decided again alone: on the store's state, or on saved state
                queued.answer.set_result(replace(state, alone=True))
                continue
            for touched in unit.touched:  # staged: what the next command decides on
                if touched.aggregate.version != touched.loaded_version:  # what it only read is as saved
                    staged.put(touched.aggregate)
            decided.append((queued, unit, primary or _first_changed(unit), events))
        if decided:
            await self._append_batch(appender, offload, staged, decided)

    async def _append_batch(self, appender: AsyncAppender, offload: Offload, staged: StagedCache,
                            decided: list[tuple[Queued[_Batched], UnitOfWork, Aggregate | None, list[StoredEvent]]],
                            ) -> None:
        try:
            positions = await appender.append([e for *_, events in decided for e in events], None)
        except ConcurrencyConflict as error:  # another process wrote: each is retried on the store's state
            for queued, unit, _, _ in decided:
                command, _, state = queued.item
                try:
                    queued.answer.set_result(self._after(command, state, _Conflicted(error, _changed(unit))))
                except Exception as out_of_attempts:
                    queued.answer.set_exception(out_of_attempts)
            return
        except Exception as error:  # the outcome may be unknown (a lost connection): never retried
            for index, (queued, *_) in enumerate(decided):
                queued.answer.set_exception(error if index == 0 else _copy_of(error))
            return
        fault_point("command.appended")
        self.observer.events_appended(len(positions))
        staged.settle()
        start = 0
        for queued, _, main, events in decided:
            queued.answer.set_result(_result(main, positions[start:start + len(events)]))
            start += len(events)
        for queued, unit, _, _ in decided:
            if any(snapshot_due(t.aggregate, t.loaded_version) for t in unit.touched):
                # In its command's context, as if it had run alone: a failure's warning names its request.
                await queued.context.run(asyncio.ensure_future, offload(self._snapshot, unit))

    def _loop_turns(self) -> LoopTurns:
        loop = asyncio.get_running_loop()
        turns = self._turns_by_loop.get(loop)
        if turns is None:
            turns = self._turns_by_loop[loop] = LoopTurns()
        return turns

    async def _attempt_async(self, command: Command, context: CommandContext, claim: _Claim | None,
                             appender: AsyncAppender, offload: Offload, holding: frozenset[UUID]) -> CommandResult:
        unit = UnitOfWork(_CACHE_ONLY, self._cache, trust_cache=True, before_load=_not_hot(self._hot, holding))
        primary = self.router.handler_for(command)(command, unit)
        main = primary or _first_changed(unit)
        if context.expected_version is not None:
            _check_expectation(unit, main, context.expected_version)
        changed = _changed(unit)
        hot = self._hot.hot_among(changed - holding)
        if hot:
            raise _TakeTurns(frozenset(hot))
        envelopes = unit.collect(_metadata(context))
        try:
            positions = await appender.append([to_stored(e) for e in envelopes], _completion(claim, main))
        except ConcurrencyConflict as error:
            raise _Conflicted(error, changed) from None
        fault_point("command.appended")
        self.observer.events_appended(len(positions))
        unit.remember()
        if any(snapshot_due(t.aggregate, t.loaded_version) for t in unit.touched):
            await offload(self._snapshot, unit)
        return _result(main, positions)

    def _command_span(self, command: Command, context: CommandContext) -> Span:
        """The command's span, the child of ``context.trace_context`` (NULL_SPAN: tracing is off)."""
        if not self.tracer.enabled:
            return NULL_SPAN
        attributes = {"eventfold.command": command.command_name}
        if context.correlation_id:
            attributes["eventfold.correlation_id"] = context.correlation_id
        return self.tracer.start_span(f"command {command.command_name}", parent=context.trace_context,
                                      attributes=attributes)

    def _finished(self, command: Command, context: CommandContext, outcome: str, started: float,
                  result: CommandResult | None) -> None:
        self._log_outcome(command, context, outcome, time.perf_counter() - started, result)

    def _log_outcome(self, command: Command, context: CommandContext, outcome: str, seconds: float,
                     result: CommandResult | None) -> None:
        self.observer.command_finished(command.command_name, outcome, seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        # The record log.info would make, but made here: log.info looks for its caller on the stack,
        # a tenth of a command's log line, and the caller is always this method.
        log.handle(log.makeRecord(log.name, logging.INFO, _FINISHED_FILE, _FINISHED_LINE, "command %s %s in %.1f ms",
                                  (command.command_name, outcome, seconds * 1000), None, "_log_outcome", extra={
            "command": command.command_name, "outcome": outcome, "duration_ms": round(seconds * 1000, 3),
            "correlation_id": context.correlation_id,
            "aggregate_id": str(result.aggregate_id) if result and result.aggregate_id else None,
            "position": result.position if result else None,
        }))

    def _execute(self, command: Command, context: CommandContext) -> Executed:
        if context.idempotency_key is None:
            return Executed(self._run(command, context, None))
        return self._execute_once(command, context, context.idempotency_key)

    def _execute_once(self, command: Command, context: CommandContext, key: str) -> Executed:
        request_hash = fingerprint(command)
        claim = _Claim(key, random_uuid())
        outcome = self.store.claim_idempotency_key(key, request_hash, claim.owner, self._lease)
        answered = _claim_answer(key, request_hash, outcome)
        if answered is not None:
            return answered
        fault_point("command.claimed")
        try:
            return Executed(self._run(command, context, claim))
        except BaseException:
            self._release(claim)
            raise

    def _release(self, claim: _Claim) -> None:
        try:
            self.store.release_idempotency_key(claim.key, claim.owner)
        except EventfoldError:
            log.warning("could not release idempotency key %r; its lease will expire", claim.key)

    def _run(self, command: Command, context: CommandContext, claim: _Claim | None) -> CommandResult:
        """Attempts on this thread until one answers."""
        state = self._first_try()
        while True:
            outcome = self._try(command, context, claim, state)
            if not isinstance(outcome, _Try):
                return outcome
            state = outcome

    def _try(self, command: Command, context: CommandContext, claim: _Claim | None,
             state: _Try) -> CommandResult | _Try:
        """One attempt on this thread: the command's result, or where its attempts go on. The loop sends
        its commands' attempts here one at a time, so that a retry holding turns holds the loop's too."""
        try:
            if not state.holding:  # the common case: no turns to wait for
                return self._attempt(command, context, claim, trust_cache=state.trust_cache, holding=state.holding)
            with self._hot.turns(state.holding):
                return self._attempt(command, context, claim, trust_cache=state.trust_cache, holding=state.holding)
        except (StaleCache, RuleViolation, _TakeTurns, _Conflicted) as error:
            after = self._after(command, state, error)
            if after.attempt > 2 and isinstance(error, _Conflicted):  # another process keeps winning
                time.sleep(random.uniform(0, 0.002 * after.attempt))
            return after

    def _first_try(self) -> _Try:
        # Only a first attempt trusts the cache: a conflict means another process wrote.
        return _Try(1, self._max_attempts > 1, frozenset())

    def _after(self, command: Command, state: _Try, error: Exception) -> _Try:
        """The next attempt after ``error`` ended ``state``'s, or the error the command ends with."""
        if isinstance(error, StaleCache):  # an expectation met cached state the store has moved past
            return replace(state, trust_cache=False)
        if isinstance(error, RuleViolation):
            if not state.trust_cache:
                raise error
            # Refused on cached state another process may have moved past: decide again on the store's.
            return replace(state, trust_cache=False)
        if isinstance(error, _TakeTurns):  # nothing was written: run again holding these aggregates' turns
            return replace(state, holding=state.holding | error.aggregate_ids)
        assert isinstance(error, _Conflicted)
        self._hot.heat(error.aggregate_ids)
        if state.attempt >= self._max_attempts == 1:
            raise error.error from None
        if state.attempt >= self._max_attempts:
            raise ConcurrencyConflict(f"{command.command_name} conflicted with concurrent writes "
                                      f"{self._max_attempts} times") from None
        return _Try(state.attempt + 1, False, state.holding | error.aggregate_ids)

    def _attempt(
        self, command: Command, context: CommandContext, claim: _Claim | None, *, trust_cache: bool,
        holding: frozenset[UUID],
    ) -> CommandResult:
        unit = UnitOfWork(self.store, self._cache, trust_cache=trust_cache)
        primary = self.router.handler_for(command)(command, unit)
        if context.expected_version is not None:
            _check_expectation(unit, primary or _first_changed(unit), context.expected_version)
        changed = _changed(unit)
        hot = self._hot.hot_among(changed - holding)
        if hot:
            raise _TakeTurns(frozenset(hot))
        try:
            return self._save(unit, primary, context, claim)
        except ConcurrencyConflict as error:
            raise _Conflicted(error, changed) from None

    def _save(
        self,
        unit: UnitOfWork,
        primary: Aggregate | None,
        context: CommandContext,
        claim: _Claim | None,
    ) -> CommandResult:
        envelopes = unit.collect(_metadata(context))
        main = primary or _first_changed(unit)
        positions = self.store.append([to_stored(e) for e in envelopes], _completion(claim, main))
        fault_point("command.appended")
        self.observer.events_appended(len(positions))
        unit.remember()
        self._snapshot(unit)
        return _result(main, positions)

    def _snapshot(self, unit: UnitOfWork) -> None:
        """Best effort: the command is already committed, so a failure only costs speed later."""
        for touched in unit.touched:
            if not snapshot_due(touched.aggregate, touched.loaded_version):
                continue
            try:
                self.store.save_snapshot(to_snapshot(touched.aggregate))
            except EventfoldError:
                log.warning("snapshot of %s failed", touched.aggregate.id, exc_info=True)


@dataclass(frozen=True)
class _Try:
    """Where a command's attempts stand: which attempt, whether it trusts the cache, turns it holds,
    and whether it must be decided alone (not in a batch of its hot aggregate's commands)."""

    attempt: int
    trust_cache: bool
    holding: frozenset[UUID]
    alone: bool = False


_Batched = tuple[Command, CommandContext, _Try]  # a command queued on a hot aggregate, and where it stands


def _batchable(state: _Try, claim: _Claim | None, context: CommandContext) -> bool:
    """Whether a command waiting for one hot aggregate's turn may be decided in a batch: a first attempt
    on cached state, with no idempotency key (its claim is its own) and no expected version (its answer
    must not depend on a neighbour's unsaved decision)."""
    return (state.trust_cache and not state.alone and len(state.holding) == 1 and claim is None
            and context.expected_version is None)


def _not_hot(hot: HotAggregates, holding: frozenset[UUID]) -> Callable[[UUID], None]:
    def check(aggregate_id: UUID) -> None:
        # Before an aggregate is loaded: a hot one's commands take turns, so a command that does not
        # hold its turn yet stops before its handler decides anything (or it would decide twice).
        if aggregate_id not in holding and hot.is_hot(aggregate_id):
            raise _HotOnLoop(frozenset((aggregate_id,)))
    return check


def _changed(unit: UnitOfWork) -> frozenset[UUID]:
    return frozenset(t.aggregate.id for t in unit.touched if t.aggregate.version != t.loaded_version)


def _copy_of(error: Exception) -> Exception:
    """Another batch member's own copy of an error (one exception object raised in two tasks would share
    a traceback)."""
    fresh = copy.copy(error)
    fresh.__traceback__ = None
    return fresh


def _metadata(context: CommandContext) -> EventMetadata:
    return EventMetadata(
        correlation_id=context.correlation_id,
        causation_id=context.causation_id,
        actor=context.actor,
        trace_context=dict(context.trace_context) if context.trace_context else None,
    )


def _completion(claim: _Claim | None, main: Aggregate | None) -> IdempotencyCompletion | None:
    if claim is None:
        return None
    return IdempotencyCompletion(claim.key, claim.owner, main.id if main else None, main.version if main else 0)


def _result(main: Aggregate | None, positions: list[int]) -> CommandResult:
    return CommandResult(
        aggregate_id=main.id if main else None,
        version=main.version if main else 0,
        position=positions[-1] if positions else None,
    )


class _NeedsStore(BaseException):
    """A command decided on the loop needs the store's reads: it runs on a thread instead. A
    ``BaseException``, so that a handler catching ``Exception`` does not swallow it."""


class _HotOnLoop(BaseException):
    """A command decided on the loop loads a hot aggregate whose turn it does not hold: it waits for it. A
    ``BaseException`` for the reason ``_NeedsStore`` is one."""

    def __init__(self, aggregate_ids: frozenset[UUID]) -> None:
        self.aggregate_ids = aggregate_ids


class _CacheOnly:
    """The store a unit of work decided on the loop sees: any read means "run it on a thread"."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def needs_store(*_: object, **__: object) -> Any:
            raise _NeedsStore(name)
        return needs_store


_CACHE_ONLY = cast(EventStore, _CacheOnly())


def _claim_answer(key: str, request_hash: str, outcome: ClaimOutcome) -> Executed | None:
    """What a claim's outcome answers by itself (a replay, or an error raised); None: the key is ours."""
    if not isinstance(outcome, Claimed) and outcome.request_hash != request_hash:
        raise IdempotencyKeyReused(f"idempotency key {key!r} was already used for a different request")
    if isinstance(outcome, Replay):
        return Executed(outcome.result, replayed=True)
    if isinstance(outcome, InFlight):
        raise IdempotencyKeyInFlight(f"a request with idempotency key {key!r} is still running")
    return None


class _TakeTurns(Exception):
    """The command changes hot aggregates: run it again holding their turns (nothing was written)."""

    def __init__(self, aggregate_ids: frozenset[UUID]) -> None:
        self.aggregate_ids = aggregate_ids


class _Conflicted(Exception):
    def __init__(self, error: ConcurrencyConflict, aggregate_ids: frozenset[UUID]) -> None:
        self.error, self.aggregate_ids = error, aggregate_ids


def _end_command_span(span: Span, outcome: str, result: CommandResult | None,
                      error: BaseException | None) -> None:
    span.set_attribute("eventfold.outcome", outcome)
    if result is not None:
        if result.aggregate_id is not None:
            span.set_attribute("eventfold.aggregate_id", str(result.aggregate_id))
        span.set_attribute("eventfold.version", result.version)
        if result.position is not None:
            span.set_attribute("eventfold.position", result.position)
    if error is not None:
        span.record_error(error)
    span.end()


def _check_expectation(unit: UnitOfWork, main: Aggregate | None, expected: int) -> None:
    """``VersionMismatch`` unless the command's aggregate was at ``expected`` when its handler decided.

    A command that changes the aggregate it was loaded at needs no read here: the append refuses it
    if the store holds a newer version, and the retry checks the expectation on fresh state."""
    if main is None:  # the command answers with no aggregate: there is none at any version
        if expected != 0:
            raise VersionMismatch(f"the command answers with no aggregate; it expected version {expected}",
                                  expected_version=expected, current_version=0)
        return
    loaded = unit.loaded_version(main.id)
    if loaded == expected and main.version != loaded:
        return
    unit.expect(main.id, expected, describe(type(main), main.id, ""))


def _first_changed(unit: UnitOfWork) -> Aggregate | None:
    for touched in unit.touched:
        if touched.aggregate.version != touched.loaded_version:
            return touched.aggregate
    return unit.touched[0].aggregate if unit.touched else None


def fingerprint(command: Command) -> str:
    """Identifies a request's content: the command's name and its validated fields."""
    digest = hashlib.sha256(command.command_name.encode())
    digest.update(command.model_dump_json().encode())
    return digest.hexdigest()


def _line_of_call(function: Callable[..., object], attribute: str) -> int:
    """The source line where ``function`` calls ``attribute``: the place log.info's record would name."""
    for instruction in dis.get_instructions(function):
        if instruction.argval == attribute and instruction.positions and instruction.positions.lineno:
            return instruction.positions.lineno
    return function.__code__.co_firstlineno


_FINISHED_LINE = _line_of_call(CommandBus._log_outcome, "makeRecord")  # the lineno of its records
_FINISHED_FILE = CommandBus._log_outcome.__code__.co_filename  # their pathname: what Logger.findCaller gives
