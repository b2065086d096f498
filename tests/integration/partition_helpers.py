"""A test application with two partitioned projections, for workers sharing partitions.

``applied`` keeps one row per event it handled, counting the transactions that applied it
(``times``) and naming the process that did (``pid``): an event applied twice shows ``times == 2``,
whatever the rows of an idempotent read model would hide. ``holdings`` is the example's projector
split into the same number of partitions.

``EFTEST_HOLD_FROM_POSITION`` and ``EFTEST_HOLD_UNTIL`` (a test's own knobs, read when a process imports
this module): ``applied`` holds each event after that position until the file ``EFTEST_HOLD_UNTIL`` names
exists, so that a test can act while a run is surely under way, after the batches before that position
were committed.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

from example_app.accounts import AccountOpened, SecuritiesCredited, SecuritiesDebited
from example_app.app import build_router
from framework.app import App
from framework.errors import ConfigurationError
from framework.events import Event
from framework.observe import NullObserver
from framework.projector import HandlerContext, Projector, on
from framework.readmodel import ReadModel
from framework.settings import PostgresSettings
from framework.store import EventStore
from framework.views import ViewStore
from projections.holdings import HoldingsProjector

PARTITIONS = 8
PARTITION_APP = "partition_helpers:partition_app"
HOLD_FROM_POSITION = int(os.environ.get("EFTEST_HOLD_FROM_POSITION") or 0)
HOLD_UNTIL = os.environ.get("EFTEST_HOLD_UNTIL", "")


class Applied(ReadModel):
    table = "applied"
    key = ("position",)

    position: int
    aggregate_id: str
    times: int
    pid: int


class AppliedLog(Projector):
    name: ClassVar[str] = "applied"
    read_models = (Applied,)
    partitions = PARTITIONS

    def _count(self, context: HandlerContext) -> None:
        position = context.envelope.position
        assert position is not None
        if HOLD_FROM_POSITION and position > HOLD_FROM_POSITION:
            while not os.path.exists(HOLD_UNTIL):
                time.sleep(0.01)
        seen = context.views.get(Applied, position)
        context.views.put(Applied(position=position, aggregate_id=str(context.envelope.aggregate_id),
                                  times=(seen.times if seen else 0) + 1, pid=os.getpid()))

    @on(AccountOpened)
    def opened(self, event: Event, context: HandlerContext) -> None:
        self._count(context)

    @on(SecuritiesCredited)
    def credited(self, event: Event, context: HandlerContext) -> None:
        self._count(context)

    @on(SecuritiesDebited)
    def debited(self, event: Event, context: HandlerContext) -> None:
        self._count(context)


class BatchSizes(NullObserver):
    """The size of each batch a worker committed, in order."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch_applied(self, projection: str, size: int, seconds: float) -> None:
        self.sizes.append(size)


class PartitionedHoldings(HoldingsProjector):
    partitions = PARTITIONS


class Tally(ReadModel):
    table = "tallies"
    key = ("aggregate_id",)

    aggregate_id: str
    events: int


class AccountTally(Projector):
    """Events per account: a handler that takes a missing row for a new account, without a word (the
    example's holdings fail on a credit to an account they do not know)."""

    name: ClassVar[str] = "tally"
    read_models = (Tally,)
    partitions = PARTITIONS

    def _count(self, context: HandlerContext) -> None:
        key = str(context.envelope.aggregate_id)
        seen = context.views.get(Tally, key)
        context.views.put(Tally(aggregate_id=key, events=(seen.events if seen else 0) + 1))

    @on(AccountOpened)
    def opened(self, event: Event, context: HandlerContext) -> None:
        self._count(context)

    @on(SecuritiesCredited)
    def credited(self, event: Event, context: HandlerContext) -> None:
        self._count(context)


def build_partition_projectors() -> list[Projector]:
    return [PartitionedHoldings(), AppliedLog()]


partition_app = App(name="partitions", commands=build_router(), projections=[PartitionedHoldings, AppliedLog])

NAMES = ["holdings", "applied"]
HANDLED = {"AccountOpened", "SecuritiesCredited", "SecuritiesDebited"}


def assert_applied_once(views: ViewStore, store: EventStore) -> dict[int, int]:
    """Every account event applied exactly once (none twice, none skipped); returns events per pid."""
    rows = {row.position: row for row in views.query("applied", Applied)}
    expected = [n.id for n in store.read_all(0, 1_000_000_000) if n.topic in HANDLED]
    missing = [p for p in expected if p not in rows]
    twice = {p: row.times for p, row in rows.items() if row.times != 1}
    extra = sorted(set(rows) - set(expected))
    assert not missing and not twice and not extra, (
        f"{len(missing)} skipped (first {missing[:5]}), applied more than once: {dict(list(twice.items())[:5])},"
        f" unknown {extra[:5]}")
    per_pid: dict[int, int] = {}
    for row in rows.values():
        per_pid[row.pid] = per_pid.get(row.pid, 0) + 1
    return per_pid


def open_for_replay(settings: PostgresSettings, name: str) -> tuple[Projector, ViewStore, EventStore]:
    """A replay process's projector, views and store (``framework.replay.ReplayOpener``): a
    ``functools.partial`` of this function is what ``rebuild(processes=...)`` sends to each process."""
    from framework.adapters.postgres import PostgresEventStore
    from framework.adapters.postgres_views import PostgresViewStore

    if name not in REPLAYABLE:
        raise ConfigurationError(f"no projection {name!r} to replay here")
    return REPLAYABLE[name](), PostgresViewStore(settings), PostgresEventStore(settings)


REPLAYABLE: dict[str, type[Projector]] = {"holdings": PartitionedHoldings, "applied": AppliedLog,
                                          "tally": AccountTally}


def open_then_die(settings: PostgresSettings, name: str) -> tuple[Projector, ViewStore, EventStore]:
    """A replay process that dies as ``kill -9`` (or the OOM killer) would end it, once it has begun."""
    import signal

    opened = open_for_replay(settings, name)
    os.kill(os.getpid(), signal.SIGKILL)
    return opened


def open_one_then_fail(settings: PostgresSettings, name: str, marker: str,
                       version: int) -> tuple[Projector, ViewStore, EventStore]:
    """The first replay process to open fails once another has committed some of ``version`` (mid-way);
    the others open as ``open_for_replay``."""
    import time

    from framework.adapters.postgres_views import PostgresViewStore

    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return open_for_replay(settings, name)
    views = PostgresViewStore(settings)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                p.name == name and p.version == version and p.position > 0 for p in views.partition_states()):
            time.sleep(0.05)
    finally:
        views.close()
    raise ConfigurationError("this replay process fails mid-way")


def open_counting_loads(settings: PostgresSettings, name: str, log: str) -> tuple[Projector, ViewStore, EventStore]:
    """A replay process (as ``open_for_replay``) that appends a line to the file ``log`` for each row its
    batches ask the read-model database for (``_PooledSource.load``)."""
    import framework.adapters.postgres_views as postgres_views

    count_loads(postgres_views, log)
    return open_for_replay(settings, name)


def count_loads(postgres_views: object, log: str) -> None:
    """Each row a batch asks the read-model database for, in this process, appends a line to ``log``."""
    source = postgres_views._PooledSource  # type: ignore[attr-defined]
    load = source.load

    def counted(self: object, model: type[ReadModel], key: tuple[object, ...]) -> object:
        with open(log, "a") as out:
            out.write(f"{model.__name__} {key}\n")
        return load(self, model, key)

    source.load = counted
