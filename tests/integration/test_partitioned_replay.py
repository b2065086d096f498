"""Rebuilding a partitioned projection (issue 13): its partitions in parallel, still blue-green.

* ``rebuild(..., parallel=4)`` of a projection of 8 partitions: the new version has a position per
  partition, all at the head, each account event applied exactly once, rows equal to a replay, and
  it is the active version;
* a replay with another count (``with_partitions``, what ``EVENTFOLD_PARTITIONS`` does) is how the
  count changes: the new version has the new count, and a worker with the old count refuses it
  with one clear error instead of applying anything;
* a worker of one partition that follows the switch catches its partition up from the store;
* ``eventfold replay`` divides a partitioned projection among processes unless told otherwise.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from partition_helpers import (
    PARTITION_APP,
    PARTITIONS,
    Applied,
    AppliedLog,
    BatchSizes,
    PartitionedHoldings,
    assert_applied_once,
    open_for_replay,
    open_one_then_fail,
    open_then_die,
)
from streaming_helpers import (
    TRACEBACK,
    assert_matches_replay,
    deployment_for,
    eventfold_executable,
    new_isin,
    wait_until,
    write_backlog,
)
from support.postgres import PgDatabase

from framework.adapters.nats import JetStreamSettings
from framework.adapters.pg_positions import PostgresPositionSignals
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.errors import ConcurrencyConflict, ConfigurationError, EventfoldError
from framework.partitions import Partition
from framework.projector import with_partitions
from framework.replay import rebuild, rebuild_aggregate
from framework.testing.positions_conformance import changes, listen_while
from framework.worker import ProjectionWorker, WorkerOptions
from projections.holdings import AccountRow, Holding

pytestmark = [pytest.mark.postgres]


def test_a_partitioned_projection_is_rebuilt_in_parallel_and_switched_in(
        store: PostgresEventStore, views: PostgresViewStore) -> None:
    write_backlog(store, new_isin(), accounts=300, credits_each=8)
    seen: list[tuple[int, int]] = []
    for projector in (PartitionedHoldings(), AppliedLog()):
        version = rebuild(projector, views, store, parallel=4, progress=lambda p, h: seen.append((p, h)))
        assert version == 2 and views.active_version(projector.name) == 2
        rows = [p for p in views.partition_states() if p.name == projector.name and p.version == 2]
        assert [p.index for p in rows] == list(range(PARTITIONS))
        assert all(p.count == PARTITIONS and p.position == store.head() for p in rows), rows
    assert seen and seen[-1][0] == store.head()
    assert_matches_replay(views, store, [PartitionedHoldings()])
    assert_applied_once(views, store)


def test_a_partitioned_projection_is_rebuilt_by_several_processes_into_one_version(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str) -> None:
    write_backlog(store, new_isin(), accounts=200, credits_each=6)
    settings = pg_database.settings(pg_schema)
    seen: list[tuple[int, int]] = []
    for projector in (PartitionedHoldings(), AppliedLog()):
        opener = functools.partial(open_for_replay, settings, projector.name)
        version = rebuild(projector, views, store, parallel=4, processes=2, opener=opener,
                          progress=lambda p, h: seen.append((p, h)))
        assert version == 2 and views.active_version(projector.name) == 2
        rows = [p for p in views.partition_states() if p.name == projector.name and p.version == 2]
        assert all(p.count == PARTITIONS and p.position == store.head() for p in rows) and len(rows) == PARTITIONS
    assert seen and seen[-1][0] == store.head()
    assert_matches_replay(views, store, [PartitionedHoldings()])
    pids = {row.pid for row in views.query("applied", Applied)}
    assert len(pids) == 2 and os.getpid() not in pids  # two processes of their own applied the events
    assert_applied_once(views, store)


def test_eventfold_replay_divides_a_partitioned_projection_among_processes_by_default(
        pg_database: PgDatabase, pg_schema: str, tmp_path: Path) -> None:
    """Without ``--processes``: one process per partition, at most one per core (this machine's count,
    which the command sees too); ``--processes 1`` keeps them on threads of the command's own process."""
    with deployment_for(pg_database, pg_schema, JetStreamSettings(), tmp_path, app=PARTITION_APP) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        write_backlog(store, new_isin(), accounts=120, credits_each=4)
        deployment.cli_ok("replay", "applied")
        deployment.cli_ok("replay", "holdings")
        assert views.active_version("applied") == 2
        per_pid = assert_applied_once(views, store)
        assert len(per_pid) == min(PARTITIONS, os.cpu_count() or 1), per_pid
        assert_matches_replay(views, store, [PartitionedHoldings()])

        deployment.cli_ok("replay", "applied", "--processes", "1")
        assert views.active_version("applied") == 3
        assert len(assert_applied_once(views, store)) == 1


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _wait_for_children(pid: int, count: int) -> list[int]:
    wait_until(lambda: len(_children(pid)) >= count, timeout=60, message="the replay's processes")
    return _children(pid)


def test_eventfold_replay_whose_process_is_killed_fails_in_one_line_and_a_rerun_converges(
        pg_database: PgDatabase, pg_schema: str, tmp_path: Path) -> None:
    """``kill -9`` of one of the replay's processes mid-way: the command ends with an error line, not a
    traceback, nothing is switched in; ``kill -9`` of the command itself leaves no process of it behind;
    a rerun switches in a version equal to a replay, each event applied once."""
    with deployment_for(pg_database, pg_schema, JetStreamSettings(), tmp_path, app=PARTITION_APP) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        write_backlog(store, new_isin(), accounts=400, credits_each=25)
        deployment.cli_ok("replay", "applied", "--processes", "1")
        replay = deployment.start("replay", "applied", "--processes", "2", name="replay-child-killed")
        os.kill(_wait_for_children(replay.pid, 2)[-1], signal.SIGKILL)  # the pool's own helper is not spawned yet
        assert replay.process is not None
        status = replay.process.wait(120)
        output = replay.log_path.read_text()
        assert status != 0 and TRACEBACK not in output and "replay process ended abruptly" in output, output
        assert views.active_version("applied") == 2

        replay = deployment.start("replay", "applied", "--processes", "2", name="replay-killed")
        children = _wait_for_children(replay.pid, 2)
        wait_until(lambda: any(p.name == "applied" and p.version == 4 and p.position > 0
                               for p in views.partition_states()), timeout=60, message="the processes to apply")
        replay.kill()  # mid-way: its processes are applying
        wait_until(lambda: not any(Path(f"/proc/{child}").exists() for child in children), timeout=60,
                   message="the killed replay's processes to end")
        assert views.active_version("applied") == 2

        deployment.cli_ok("replay", "applied")
        assert views.active_version("applied") > 2
        assert_applied_once(views, store)
        deployment.cli_ok("replay", "holdings")
        assert_matches_replay(views, store, [PartitionedHoldings()])


def _with_ctrl_c(argv: list[str]) -> list[str]:
    """``argv`` started as a terminal's shell starts a foreground job, with SIGINT at its default: a test run
    started in the background by a shell without job control inherits SIGINT ignored, and a command rightly
    keeps ignoring it then (``nohup``). The exec keeps the pid: the command is still ``Popen.pid``."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *argv]


def test_eventfold_replay_interrupted_with_ctrl_c_ends_with_its_processes(
        pg_database: PgDatabase, pg_schema: str, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group, the replay's processes included) mid-way: the command
    exits 130 without a traceback, its processes stop at their next batch (none catches up to the end first)
    and none is left, nothing is switched in; a rerun converges."""
    with deployment_for(pg_database, pg_schema, JetStreamSettings(), tmp_path, app=PARTITION_APP) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        # 48,800 events. A partition's batch ends at 10,000 of its own events or 20,000 read (8 partitions: the
        # latter). The first batches commit; the events after them wait until the interrupt was sent, so it
        # surely lands mid-way (suite runs saw the whole replay finish before the SIGINT, exit 0), and the
        # batch in hand ends before the head.
        write_backlog(store, new_isin(), accounts=400, credits_each=121)
        released, head = tmp_path / "released", store.head()
        hold = {"EFTEST_HOLD_FROM_POSITION": str(20_000), "EFTEST_HOLD_UNTIL": str(released)}
        log = tmp_path / "replay-interrupted.log"
        with log.open("wb") as out:
            replay = subprocess.Popen(_with_ctrl_c([eventfold_executable(), "replay", "applied", "--processes", "2"]),
                                      env={**deployment.env(), **hold}, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            children = _wait_for_children(replay.pid, 2)
            wait_until(lambda: any(p.name == "applied" and p.version == 2 and p.position > 0
                                   for p in views.partition_states()), timeout=60, message="the processes to apply")
            os.killpg(replay.pid, signal.SIGINT)  # its own session: this group is the command's alone
            released.touch()  # the held handlers go on; the command ends once its processes have
            status = replay.wait(60)
        finally:
            if replay.poll() is None:
                replay.kill()
        output = log.read_text()
        assert status == 130 and TRACEBACK not in output, output
        wait_until(lambda: not any(Path(f"/proc/{child}").exists() for child in children), timeout=60,
                   message="the interrupted replay's processes to end")
        assert views.active_version("applied") == 1
        reached = [p.position for p in views.partition_states() if p.name == "applied" and p.version == 2]
        assert reached and max(reached) < head, reached  # stopped after the batch in hand, not at the end
        deployment.cli_ok("replay", "applied")
        assert_applied_once(views, store)


def test_a_replay_process_that_fails_fails_the_replay_and_nothing_is_switched_in(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str) -> None:
    write_backlog(store, new_isin(), accounts=20, credits_each=2)
    assert rebuild(AppliedLog(), views, store) == 2
    opener = functools.partial(open_for_replay, pg_database.settings(pg_schema), "nonesuch")
    with pytest.raises(ConfigurationError, match="no projection 'nonesuch' to replay here"):
        rebuild(AppliedLog(), views, store, processes=2, opener=opener)
    assert views.active_version("applied") == 2
    assert {s.version: s.state for s in views.states() if s.name == "applied"}[3] == "rebuilding"
    with pytest.raises(ConfigurationError, match="needs an opener"):
        rebuild(AppliedLog(), views, store, processes=2)


def test_a_replay_process_killed_fails_the_replay_with_an_eventfold_error_and_a_rerun_converges(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str) -> None:
    """A process of the replay killed (kill -9, the OOM killer): the replay fails with an error of its own
    (the CLI's one clear line, not a BrokenProcessPool traceback), nothing is switched in, and a rerun
    builds a version equal to a replay, each event applied once."""
    write_backlog(store, new_isin(), accounts=30, credits_each=3)
    assert rebuild(AppliedLog(), views, store) == 2
    opener = functools.partial(open_then_die, pg_database.settings(pg_schema), "applied")
    with pytest.raises(EventfoldError, match="replay process"):
        rebuild(AppliedLog(), views, store, processes=2, opener=opener)
    assert views.active_version("applied") == 2
    opener = functools.partial(open_for_replay, pg_database.settings(pg_schema), "applied")
    assert rebuild(AppliedLog(), views, store, processes=2, opener=opener) == 4
    assert_applied_once(views, store)
    assert rebuild(PartitionedHoldings(), views, store, processes=2, opener=functools.partial(
        open_for_replay, pg_database.settings(pg_schema), "holdings")) == 2
    assert_matches_replay(views, store, [PartitionedHoldings()])


def test_events_stored_while_replay_processes_run_are_each_applied_once(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str) -> None:
    """Commands keep arriving while the processes rebuild and while the command's own process applies what
    they missed: after the switch the partitions' workers catch up, and every event was applied exactly
    once (counted), the rows equal to a replay."""
    write_backlog(store, new_isin(), accounts=60, credits_each=4)
    settings = pg_database.settings(pg_schema)
    stop, writer_store = threading.Event(), PostgresEventStore(settings)

    def keep_writing() -> None:
        while not stop.is_set():
            write_backlog(writer_store, new_isin(), accounts=3, credits_each=2)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        head_before = store.head()
        for projector in (AppliedLog(), PartitionedHoldings()):
            opener = functools.partial(open_for_replay, settings, projector.name)
            assert rebuild(projector, views, store, processes=2, opener=opener) == 2
        assert store.head() > head_before  # commands arrived meanwhile
    finally:
        stop.set()
        writer.join()
        writer_store.close()
    for projector in (AppliedLog(), PartitionedHoldings()):  # the live workers' part, after the switch
        for index in range(PARTITIONS):
            ProjectionWorker(projector, views, store, partition=Partition(index, PARTITIONS)).catch_up()
    assert_applied_once(views, store)
    assert_matches_replay(views, store, [PartitionedHoldings()])


def test_replay_processes_with_another_hash_seed_apply_the_same_partitions(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The processes (spawned with PYTHONHASHSEED=12345) and the command's own process (its own seed), whose
    second pass applies what they missed, agree on which events are each partition's: none skipped or twice."""
    monkeypatch.setenv("PYTHONHASHSEED", "12345")
    write_backlog(store, new_isin(), accounts=80, credits_each=3)
    settings = pg_database.settings(pg_schema)
    for projector in (AppliedLog(), PartitionedHoldings()):
        opener = functools.partial(open_for_replay, settings, projector.name)
        rebuild(projector, views, store, processes=3, opener=opener)
    write_backlog(store, new_isin(), accounts=20, credits_each=2)  # the live workers' part, after the switch
    for projector in (AppliedLog(), PartitionedHoldings()):
        for index in range(PARTITIONS):
            ProjectionWorker(projector, views, store, partition=Partition(index, PARTITIONS)).catch_up()
    assert len(assert_applied_once(views, store)) == 4  # three processes, then this one
    assert_matches_replay(views, store, [PartitionedHoldings()])


_SLOW_START = """
import os, sys, time
_counter = os.environ.get("EVENTFOLD_TEST_START_COUNTER")
if _counter and "spawn_main" in " ".join(sys.orig_argv):  # a pool's process: the first at once, the others 4 s later
    _n = 0
    while True:
        try:
            os.close(os.open(os.path.join(_counter, str(_n)), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            _n += 1
    if _n:
        time.sleep(4)
"""


def test_each_share_of_a_replay_runs_in_a_process_of_its_own_even_when_the_others_start_late(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first replay process starts at once, the others seconds later (a loaded machine): it finishes its
    small share long before they start, and a pool would hand it the next share too (seen as the flaky "3 pids
    instead of 4" of the test above). Each share still runs in its own process: the rebuild uses them all."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_SLOW_START)
    (tmp_path / "counter").mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("EVENTFOLD_TEST_START_COUNTER", str(tmp_path / "counter"))
    write_backlog(store, new_isin(), accounts=30, credits_each=1)
    settings = pg_database.settings(pg_schema)
    opener = functools.partial(open_for_replay, settings, "applied")
    rebuild(AppliedLog(), views, store, processes=3, opener=opener)
    assert len(list((tmp_path / "counter").iterdir())) >= 3  # three processes started (and a spare, once one ended)
    per_pid = assert_applied_once(views, store)
    assert len(per_pid) == 3 and os.getpid() not in per_pid, per_pid  # one share each, all before the switch


def test_when_a_replay_process_fails_the_others_stop_rather_than_finish_their_share(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str,
        tmp_path: Path) -> None:
    """One process fails mid-way: the replay fails with its error, and the other process stops at its next
    batch instead of rebuilding the rest of a version nothing will switch in (its partitions stay short
    of the head); nothing is switched in, and a rerun converges."""
    write_backlog(store, new_isin(), accounts=300, credits_each=20)
    settings = pg_database.settings(pg_schema)
    assert rebuild(AppliedLog(), views, store) == 2
    opener = functools.partial(open_one_then_fail, settings, "applied", str(tmp_path / "failed"), 3)
    with pytest.raises(ConfigurationError, match="fails mid-way"):
        rebuild(AppliedLog(), views, store, processes=2, opener=opener, options=WorkerOptions(catch_up_batch=200))
    assert views.active_version("applied") == 2
    abandoned = [p.position for p in views.partition_states() if p.name == "applied" and p.version == 3]
    assert max(abandoned) < store.head(), abandoned
    opener = functools.partial(open_for_replay, settings, "applied")
    assert rebuild(AppliedLog(), views, store, processes=2, opener=opener) == 4
    assert_applied_once(views, store)


def test_the_partition_count_changes_with_a_replay(store: PostgresEventStore, views: PostgresViewStore) -> None:
    write_backlog(store, new_isin(), accounts=100, credits_each=4)
    rebuild(AppliedLog(), views, store, parallel=2)
    fewer = with_partitions(AppliedLog(), 2)
    assert rebuild(fewer, views, store, parallel=2) == 3
    assert views.partition_count("applied", 3) == 2
    assert_applied_once(views, store)
    with pytest.raises(ConfigurationError, match="applied v3 has 2 partitions, not 8: changing the count takes a"
                                                 " replay"):
        ProjectionWorker(AppliedLog(), views, store, partition=Partition(0, PARTITIONS))
    with pytest.raises(ConfigurationError, match="applied v3 is partitioned \\(2 partitions\\)"):
        ProjectionWorker(AppliedLog(), views, store)


def test_a_partition_worker_follows_a_switch_and_catches_up_from_the_store(
        store: PostgresEventStore, views: PostgresViewStore) -> None:
    write_backlog(store, new_isin(), accounts=50, credits_each=2)
    workers = [ProjectionWorker(AppliedLog(), views, store, partition=Partition(i, PARTITIONS))
               for i in range(PARTITIONS)]
    for worker in workers:
        worker.catch_up()
    rebuild(AppliedLog(), views, store, parallel=2)
    write_backlog(store, new_isin(), accounts=50, credits_each=2)
    fresh = store.read_all(workers[0].position, 1_000_000)
    while any(not any(w.partition and w.partition.holds(str(n.originator_id)) for n in fresh) for w in workers):
        write_backlog(store, new_isin(), accounts=10, credits_each=1)  # random ids left a partition without one
        fresh = store.read_all(workers[0].position, 1_000_000)
    for worker in workers:  # the bus delivers only a partition's own events (here its last), after the switch
        assert worker.partition is not None
        own = [n for n in fresh if worker.partition.holds(str(n.originator_id))]
        worker.apply(own[-1:])
        assert worker.version == 2 and worker.position == own[-1].id
    assert_applied_once(views, store)
    for worker in workers:  # idle, each partition passes the head (framework.sharing does it)
        worker.skip_to(store.head())
    assert views.active_position("applied") == store.head()


def test_one_aggregate_of_a_partitioned_projection_is_rebuilt_from_its_partitions_position(
        store: PostgresEventStore, views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str) -> None:
    write_backlog(store, new_isin(), accounts=40, credits_each=3)
    workers = [ProjectionWorker(PartitionedHoldings(), views, store, partition=Partition(i, PARTITIONS))
               for i in range(PARTITIONS)]
    for worker in workers[:3]:  # the partitions stand at different positions
        worker.catch_up()
    write_backlog(store, new_isin(), accounts=40, credits_each=3)
    for worker in workers:
        worker.catch_up()
    account = store.read_all(0, 1)[0].originator_id
    with views.batch("holdings", 1) as batch:  # a handler's bug damaged one account's rows
        for row in views.query("holdings", Holding):
            if row.account_number == batch.get(AccountRow, account).account_number:  # type: ignore[union-attr]
                batch.delete(Holding, row.account_number, row.isin)
    done = rebuild_aggregate(PartitionedHoldings(), views, store, account)
    assert done.version == 2 and done.written > 0
    assert views.partition_count("holdings", 2) == PARTITIONS
    fresh = PostgresViewStore(pg_database.settings(pg_schema))  # queries look the active version up once a second
    try:
        assert_matches_replay(fresh, store, [PartitionedHoldings()])
    finally:
        fresh.close()


def test_a_partitions_position_is_a_compare_and_set_and_the_projection_is_at_the_lowest(
        views: PostgresViewStore) -> None:
    views.ensure_tables("applied", 1, AppliedLog.read_models)
    views.ensure_partitions("applied", 1, 4)
    views.ensure_partitions("applied", 1, 4)  # idempotent
    with views.partition_batch("applied", 1, 0) as batch:
        batch.put(Applied(position=5, aggregate_id="a", times=1, pid=1))
        batch.advance(10, None, since=0)
    conflict = pytest.raises(ConcurrencyConflict, match="applied v1 partition 0 was advanced by another worker")
    with conflict, views.partition_batch("applied", 1, 0) as late:  # a worker that lost its lease, unaware
        late.put(Applied(position=6, aggregate_id="b", times=1, pid=2))
        late.advance(12, None, since=0)
    assert [row.position for row in views.query("applied", Applied)] == [5]  # the late batch wrote nothing
    assert views.partition_position("applied", 1, 0) == 10
    assert views.position("applied", 1) == 0 == views.active_position("applied")  # partitions 1-3 are at 0
    for index in (1, 2, 3):
        with views.partition_batch("applied", 1, index) as batch:
            batch.advance(10 + index, None, since=0)
    assert views.active_position("applied") == 10
    assert {s.name: s.position for s in views.states()}["applied"] == 10
    with pytest.raises(ConfigurationError, match="has 4 partitions, not 8"):
        views.ensure_partitions("applied", 1, 8)


def test_a_partitions_commit_announces_the_projections_lowest_position(
        views: PostgresViewStore, pg_database: PgDatabase, pg_schema: str) -> None:
    views.ensure_tables("applied", 1, AppliedLog.read_models)
    views.ensure_partitions("applied", 1, 2)

    def advance(index: int, position: int) -> None:
        with views.partition_batch("applied", 1, index) as batch:
            batch.put(Applied(position=position, aggregate_id=str(index), times=1, pid=0))
            batch.advance(position, None)

    def act() -> None:
        advance(0, 10)  # partition 1 is still at 0: the projection is at 0
        advance(1, 7)  # now at 7
        advance(1, 12)  # partition 0 is the lowest: 10

    signals = PostgresPositionSignals(pg_database.settings(pg_schema), check_seconds=0.1)
    heard = listen_while(signals, act, lambda h: len(changes(h, "applied")) >= 3)
    assert [c.position for c in changes(heard, "applied")] == [0, 7, 10]
    assert changes(heard, "applied")[0].touched == {"applied": frozenset({("10",)})}


def test_a_partition_commits_no_batch_that_holds_none_of_its_events(
        store: PostgresEventStore, views: PostgresViewStore) -> None:
    """Small batches over 8 partitions: most hold none of one partition's events. Those have no transaction
    of their own (their position goes with the next batch, or one advance at the end): every committed batch
    applied something, and the partitions still end at the head with every event applied once."""
    write_backlog(store, new_isin(), accounts=40, credits_each=2)
    options = WorkerOptions(catch_up_batch=3, catch_up_page=3)
    observers = [BatchSizes() for _ in range(PARTITIONS)]
    for index, observer in enumerate(observers):
        worker = ProjectionWorker(AppliedLog(), views, store, options=options, observer=observer,
                                  partition=Partition(index, PARTITIONS))
        assert worker.catch_up() == store.head()
        assert views.partition_position("applied", worker.version, index) == store.head()
    sizes = [size for observer in observers for size in observer.sizes]
    assert sizes and 0 not in sizes, sizes
    per_pid = assert_applied_once(views, store)
    assert sum(per_pid.values()) == sum(sizes)
