"""Partitioned projections shared by several ``eventfold project`` processes (issue 13), on real
PostgreSQL and JetStream.

* two, then three workers on two projections of 8 partitions under a steady load of commands: each
  worker holds its share (at most ceil(8 / workers) partitions of each), every account event is
  applied exactly once (counted per event, not inferred from rows) and the holdings equal a replay;
* a rebalance while loaded: one of three workers stopped cleanly (its partitions are taken at once),
  another killed with ``kill -9`` (its partitions are taken when their leases end): nothing is
  lost or applied twice, and the last worker ends up holding every partition.

Reassignment times are printed, never asserted (only bounded, generously, by the waits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from partition_helpers import NAMES, PARTITION_APP, PARTITIONS, PartitionedHoldings, assert_applied_once
from streaming_helpers import (
    CommandWriter,
    Deployment,
    Role,
    assert_matches_replay,
    deployment_for,
    new_isin,
    setup_security,
    wait_settled,
    wait_until,
)
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase

from framework.adapters.nats import JetStreamSettings
from framework.sharing import partition_lease
from framework.views import ViewStore

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

LEASE_SECONDS = 2.0
BOUND = 60.0  # seconds: a bound against hanging, not a target (the times are printed)


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
               tmp_path: Path) -> Iterator[Deployment]:
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path, app=PARTITION_APP,
                        extra_env={"EVENTFOLD_LEASE_SECONDS": str(LEASE_SECONDS)}) as deployed:
        yield deployed


def pid_of(owner: str) -> int:
    return int(owner.split(":")[-2])  # host:pid:suffix


def held(views: ViewStore) -> dict[str, dict[int, int]]:
    """Per projection: partition → the pid of the process whose unexpired lease holds it."""
    found: dict[str, dict[int, int]] = {name: {} for name in NAMES}
    for name in NAMES:
        for lease in views.live_leases(partition_lease(name)):  # type: ignore[attr-defined]
            found[name][int(lease.name.rsplit("/", 1)[1])] = pid_of(lease.owner)
    return found


def shared_fairly(views: ViewStore, workers: list[Role]) -> bool:
    """Every partition held, by the given workers only, none holding more than its share."""
    share = math.ceil(PARTITIONS / len(workers))
    pids = {w.pid for w in workers}
    for holders in held(views).values():
        if len(holders) != PARTITIONS or set(holders.values()) != pids:
            return False
        if any(list(holders.values()).count(pid) > share for pid in pids):
            return False
    return True


def start_load(deployment: Deployment) -> CommandWriter:
    bus = deployment.bus(deployment.store())
    isin = new_isin()
    setup_security(bus, isin)
    writer = CommandWriter(bus, isin, accounts=24, pause=0.002)
    writer.start()
    return writer


def settle_and_check(deployment: Deployment, writer: CommandWriter) -> dict[int, int]:
    writer.stop()
    store, views = deployment.store(), deployment.views()
    wait_settled(views, store, NAMES, timeout=BOUND)
    assert_matches_replay(views, store, [PartitionedHoldings()])
    per_pid = assert_applied_once(views, store)
    deployment.assert_no_tracebacks()
    return per_pid


def test_two_then_three_workers_share_the_partitions_and_apply_each_event_once(deployment: Deployment) -> None:
    deployment.init_db()
    views = deployment.views()
    deployment.start("relay")
    writer = start_load(deployment)
    workers = [deployment.start("project", name=f"project-{i}") for i in range(2)]
    wait_until(lambda: shared_fairly(views, workers), timeout=BOUND,
               message=lambda: f"two workers sharing the partitions: {held(views)}")
    wait_until(lambda: writer.sent >= 150, timeout=BOUND, message="some load")

    started = time.monotonic()
    workers.append(deployment.start("project", name="project-2"))
    wait_until(lambda: shared_fairly(views, workers), timeout=BOUND,
               message=lambda: f"three workers sharing the partitions: {held(views)}")
    print(f"\na third worker got its share {time.monotonic() - started:.1f}s after it was started")
    wait_until(lambda: writer.sent >= 300, timeout=BOUND, message="more load")

    per_pid = settle_and_check(deployment, writer)
    print(f"events applied per worker: {per_pid}")
    assert {w.pid for w in workers} <= set(per_pid), per_pid  # each worker applied its share of events
    assert all(w.alive for w in workers)


def test_a_rebalance_under_load_loses_nothing_and_applies_nothing_twice(deployment: Deployment) -> None:
    deployment.init_db()
    views = deployment.views()
    deployment.start("relay")
    writer = start_load(deployment)
    workers = [deployment.start("project", name=f"project-{i}") for i in range(3)]
    wait_until(lambda: shared_fairly(views, workers), timeout=BOUND,
               message=lambda: f"three workers sharing the partitions: {held(views)}")
    wait_until(lambda: writer.sent >= 150, timeout=BOUND, message="some load")

    stopped, killed, last = workers
    started = time.monotonic()
    assert stopped.stop() == 0  # SIGTERM: hands its partitions over at once
    wait_until(lambda: shared_fairly(views, [killed, last]), timeout=BOUND,
               message=lambda: f"the clean stop's partitions taken over: {held(views)}")
    print(f"\na cleanly stopped worker's partitions were taken over in {time.monotonic() - started:.1f}s")
    wait_until(lambda: writer.sent >= 300, timeout=BOUND, message="more load")

    started = time.monotonic()
    killed.kill()  # kill -9: its partitions wait for their leases to end
    wait_until(lambda: shared_fairly(views, [last]), timeout=BOUND,
               message=lambda: f"the killed worker's partitions taken over: {held(views)}")
    print(f"a killed worker's partitions were taken over in {time.monotonic() - started:.1f}s"
          f" (lease {LEASE_SECONDS:g}s)")
    wait_until(lambda: writer.sent >= 450, timeout=BOUND, message="load after the kill")

    per_pid = settle_and_check(deployment, writer)
    print(f"events applied per worker: {per_pid}")
    assert {stopped.pid, killed.pid, last.pid} <= set(per_pid), per_pid
