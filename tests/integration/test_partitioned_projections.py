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

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from partition_helpers import (
    NAMES,
    PARTITION_APP,
    PARTITIONS,
    Applied,
    PartitionedHoldings,
    assert_applied_once,
)
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

from example_app.commands import CreditHoldings
from framework.adapters.nats import JetStreamSettings
from framework.bus import CommandContext
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


def applied_by(views: ViewStore) -> set[int]:
    """The processes that last applied an event of the counting projection."""
    return {row.pid for row in views.query("applied", Applied)}


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
    assert_status_per_partition(deployment, workers)
    assert_read_your_writes_waits_for_every_partition(deployment, writer)


def assert_status_per_partition(deployment: Deployment, workers: list[Role]) -> None:
    """``eventfold status --json``: each partition's owner (one of the workers), position and lag."""
    store = deployment.store()
    rows = {row["name"]: row for row in json.loads(deployment.cli_ok("status", "--json").stdout) if row["active"]}
    head = store.head()
    for name in NAMES:
        row = rows[name]
        assert row["state"] == "running" and row["position"] == head and row["lag_events"] == 0, row
        parts = row["partitions"]
        assert [p["index"] for p in parts] == list(range(PARTITIONS)), parts
        assert all(p["position"] == head and p["lag_events"] == 0 for p in parts), parts
        assert {pid_of(p["owner"]) for p in parts} == {w.pid for w in workers}, parts
        assert set(row["owner"].split(", ")) == {p["owner"] for p in parts}, row


def assert_read_your_writes_waits_for_every_partition(deployment: Deployment, writer: CommandWriter) -> None:
    """A write lands in one partition; every other one passes its position too (they have nothing before
    it), so a query waiting for that position (the lowest partition's) is answered."""
    views = deployment.views()
    result = writer.bus.execute(CreditHoldings(account_number=writer.accounts[0], isin=writer.isin, quantity=1),
                                CommandContext(idempotency_key=f"{writer.prefix}-ryw")).result
    assert result.position is not None
    wait_until(lambda: all(views.active_position(name) >= result.position for name in NAMES),  # type: ignore[operator]
               timeout=BOUND, message="every partition to pass the write's position")


def test_a_rebalance_under_load_loses_nothing_and_applies_nothing_twice(deployment: Deployment) -> None:
    deployment.init_db()
    views = deployment.views()
    deployment.start("relay")
    writer = start_load(deployment)
    workers = [deployment.start("project", name=f"project-{i}") for i in range(3)]
    wait_until(lambda: shared_fairly(views, workers), timeout=BOUND,
               message=lambda: f"three workers sharing the partitions: {held(views)}")
    wait_until(lambda: writer.sent >= 150, timeout=BOUND, message="some load")
    # Each has applied some of its share before one stops: holding partitions is not yet applying
    # (the backlog may all have gone to the first worker up, and a share may get no event for a moment).
    wait_until(lambda: {w.pid for w in workers} <= applied_by(views), timeout=BOUND,
               message=lambda: f"each worker applying events: pids {applied_by(views)}, leases {held(views)}")

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
