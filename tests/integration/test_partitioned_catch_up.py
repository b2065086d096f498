"""How a partition catches up from the store: what it reads, asks and commits.

A partitioned rebuild from scratch knows its rows without asking the database, and only then. A handler
of a partitioned projection reads only rows of the key it handles (docs/projections.md), so partitions
rebuilt from position 0 into a fresh version hold every row they will read: their row cache answers "no
such row" without a query, as an unpartitioned rebuild's does. A partition that starts anywhere else (the
command's pass after the replay processes, a worker taking over) asks the database, and the rows a rebuild
cached are not left for the live workers of its process to read. Partitions side by side take their events
from one split of each page, and a partition's batch holds as many of its own events as an unpartitioned
one (not its share of them). Rows are compared with a replay of the store each time.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from partition_helpers import (
    PARTITIONS,
    AccountTally,
    AppliedLog,
    BatchSizes,
    PartitionedHoldings,
    assert_applied_once,
    count_loads,
    open_counting_loads,
)
from streaming_helpers import assert_matches_replay, new_isin, setup_security, write_backlog
from support.postgres import PgDatabase

import framework.adapters.postgres_views as postgres_views
import framework.replay as replay
from example_app.app import build_router
from example_app.commands import CreditHoldings
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.bus import CommandBus
from framework.partitions import Partition
from framework.replay import rebuild
from framework.worker import ProjectionWorker, WorkerOptions

pytestmark = [pytest.mark.postgres]

SMALL_BATCHES = WorkerOptions(catch_up_batch=100, catch_up_page=20)  # several batches, each layered over the last


def _loads(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _credit_again(bus: CommandBus, prefix: str, accounts: int, isin: str) -> None:
    """Credit accounts the backlog opened, whose rows exist: a pass that thinks they do not goes wrong."""
    for index in range(accounts):
        bus.execute(CreditHoldings(account_number=f"{prefix}-{index:04d}", isin=isin, quantity=3))


def test_partitions_rebuilt_from_scratch_on_threads_ask_the_database_for_no_row(
        store: PostgresEventStore, views: PostgresViewStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_backlog(store, new_isin(), accounts=60, credits_each=5)
    log = tmp_path / "loads"
    monkeypatch.setattr(postgres_views._PooledSource, "load", postgres_views._PooledSource.load)
    count_loads(postgres_views, str(log))
    assert rebuild(PartitionedHoldings(), views, store, parallel=4, options=SMALL_BATCHES) == 2
    assert _loads(log) == []
    assert_matches_replay(views, store, [PartitionedHoldings()])


def test_partitions_rebuilt_from_scratch_in_processes_ask_the_database_for_no_row(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str,
        tmp_path: Path) -> None:
    write_backlog(store, new_isin(), accounts=60, credits_each=5)
    log = tmp_path / "loads"
    opener = functools.partial(open_counting_loads, pg_database.settings(pg_schema), "holdings", str(log))
    assert rebuild(PartitionedHoldings(), views, store, parallel=4, processes=2, opener=opener,
                   options=SMALL_BATCHES) == 2
    assert _loads(log) == []
    assert_matches_replay(views, store, [PartitionedHoldings()])


def test_the_command_s_pass_after_the_replay_processes_reads_the_rows_they_wrote(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credits to accounts the processes already rebuilt are stored after the processes ended and before
    the command's own pass: that pass starts from the processes' positions, so it must read their rows
    (from the database), never answer "no such row" as a pass from scratch may (the tally would count
    those accounts' events from 0 again)."""
    isin = new_isin()
    write_backlog(store, isin, accounts=40, credits_each=3, prefix="CMDPASS")
    bus = CommandBus(build_router(), store)
    setup_security(bus, isin)
    in_processes = replay._catch_up_in_processes

    def then_credit(*args: object, **kwargs: object) -> None:
        in_processes(*args, **kwargs)  # type: ignore[arg-type]
        _credit_again(bus, "CMDPASS", 40, isin)

    monkeypatch.setattr(replay, "_catch_up_in_processes", then_credit)
    log = tmp_path / "loads"
    monkeypatch.setattr(postgres_views._PooledSource, "load", postgres_views._PooledSource.load)
    count_loads(postgres_views, str(log))
    opener = functools.partial(open_counting_loads, pg_database.settings(pg_schema), "tally",
                               str(tmp_path / "process-loads"))
    assert rebuild(AccountTally(), views, store, parallel=4, processes=2, opener=opener, options=SMALL_BATCHES) == 2
    assert len(_loads(log)) == 40  # this process asked for the accounts' rows, the processes for none
    assert _loads(tmp_path / "process-loads") == []
    assert_matches_replay(views, store, [AccountTally()])


def test_rows_a_rebuild_cached_are_not_what_its_process_s_workers_read_after_the_switch(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str) -> None:
    """A rebuild on threads, then the partitions move on elsewhere (another process's view store), then
    this process applies them again: it reads what the other process wrote, not the rows its rebuild held."""
    isin = new_isin()
    write_backlog(store, isin, accounts=40, credits_each=3, prefix="AFTER")
    projectors = (AccountTally(), PartitionedHoldings())
    for projector in projectors:
        assert rebuild(projector, views, store, parallel=4) == 2
    bus = CommandBus(build_router(), store)
    setup_security(bus, isin)
    elsewhere = PostgresViewStore(pg_database.settings(pg_schema))
    try:
        _credit_again(bus, "AFTER", 40, isin)
        for projector in projectors:
            for index in range(PARTITIONS):
                ProjectionWorker(projector, elsewhere, store, partition=Partition(index, PARTITIONS)).catch_up()
    finally:
        elsewhere.close()
    _credit_again(bus, "AFTER", 40, isin)
    for projector in projectors:
        for index in range(PARTITIONS):
            ProjectionWorker(projector, views, store, partition=Partition(index, PARTITIONS)).catch_up()
    assert_matches_replay(views, store, list(projectors))


def test_each_partition_applies_its_own_events_of_a_shared_page_and_only_them(
        store: PostgresEventStore, views: PostgresViewStore) -> None:
    """Partitions catching up side by side take their events from one split of each page: every event of
    the kinds the projection handles is applied by its partition exactly once (counted), none by another."""
    write_backlog(store, new_isin(), accounts=50, credits_each=4)
    assert rebuild(AppliedLog(), views, store, parallel=PARTITIONS, options=SMALL_BATCHES) == 2
    assert_applied_once(views, store)
    version = views.active_version("applied")
    for state in views.partition_states():
        if state.name == "applied" and state.version == version:
            assert state.position == store.head(), state


def test_a_partition_s_batch_holds_a_batch_of_its_own_events_not_its_share_of_one(
        store: PostgresEventStore, views: PostgresViewStore) -> None:
    """8 partitions, batches of 40 events: a partition commits up to 40 of its own events at a time, read
    from at most 2 x 40 events of the log. Before, a partition's catch-up committed after every 40 events
    read, about 5 of its own: 20 commits per partition here instead of 10, each upserting its rows again."""
    write_backlog(store, new_isin(), accounts=100, credits_each=7)  # 800 events, about 100 per partition
    options = WorkerOptions(catch_up_batch=40, catch_up_page=10)
    batches, applied = BatchSizes(), 0
    for index in range(PARTITIONS):
        worker = ProjectionWorker(AccountTally(), views, store, options=options, observer=batches,
                                  partition=Partition(index, PARTITIONS))
        before = len(batches.sizes)
        worker.catch_up()
        sizes = batches.sizes[before:]
        assert sizes and max(sizes) <= 40 and len(sizes) <= 800 // 80 + 1, sizes
        applied += sum(sizes)
    assert applied == store.head() == 800  # every event once
    assert_matches_replay(views, store, [AccountTally()])
