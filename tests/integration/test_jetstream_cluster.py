"""A 3-node JetStream cluster is a supported deployment: the relay and the workers ride out the loss of
one node (a ``kill -9`` of the stream's leader mid-load, then of a consumer's leader) with nothing lost
and nothing doubled.

The cluster is three ``nats-server`` processes on loopback started by ``support.nats_cluster``; the
stream has 3 replicas on file storage; the roles are ``eventfold relay`` and ``eventfold project``
subprocesses given every node's URL. Afterwards the stream holds every stored event exactly once, every
read model equals a fresh replay of the store, and every depositor was told once per action.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streaming_helpers import (
    CommandWriter,
    Deployment,
    StreamWatcher,
    active_positions,
    assert_matches_replay,
    assert_process_outcomes,
    assert_stream_matches_store,
    deployment_for,
    new_isin,
    setup_security,
    wait_settled,
    wait_until,
)
from support.nats import settings_for
from support.nats_cluster import CLUSTER_NAME, NatsCluster, nats_cluster  # noqa: F401  (fixture)
from support.postgres import PgDatabase

from framework.adapters.nats import JetStreamSettings
from projections import build_projectors

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


@pytest.fixture
def cluster_stream(nats_cluster: NatsCluster) -> JetStreamSettings:  # noqa: F811
    return settings_for(nats_cluster.url, replicas=3, storage="file")


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, cluster_stream: JetStreamSettings,
               tmp_path: Path) -> Iterator[Deployment]:
    extra = {"EVENTFOLD_STREAM_REPLICAS": "3", "EVENTFOLD_STREAM_PLACEMENT_CLUSTER": CLUSTER_NAME,
             "EVENTFOLD_LOG_FORMAT": "text"}
    with deployment_for(pg_database, pg_schema, cluster_stream, tmp_path, extra_env=extra) as deployed:
        yield deployed


def count(watcher: StreamWatcher) -> int:
    """The stream's message count, or -1 while the cluster cannot say (an election under way)."""
    try:
        return watcher.count()
    except Exception:  # a timeout or "no responders" while a leader is elected
        return -1


def grows(watcher: StreamWatcher, by: int, *, timeout: float = 60.0) -> None:
    """Until the stream holds ``by`` more messages than now (the relay publishes through the cluster)."""
    start = wait_until(lambda: count(watcher) + 1, timeout=timeout, interval=0.2,
                       message="the stream's message count") - 1
    wait_until(lambda: count(watcher) >= start + by, timeout=timeout, interval=0.2,
               message=lambda: f"the stream did not grow by {by} from {start}")


def test_killing_the_stream_leader_then_a_consumer_leader_loses_and_doubles_nothing(
        nats_cluster: NatsCluster, cluster_stream: JetStreamSettings, deployment: Deployment) -> None:  # noqa: F811
    deployment.init_db()
    store, views = deployment.store(), deployment.views()
    isin = new_isin("NL")
    setup_security(deployment.bus(store), isin)
    deployment.start("relay")
    deployment.start("project")
    # The projections on one consumer each (a partitioned one's partitions have consumers of their own,
    # named per owner session: wait_replicas_current waits for whatever consumers the stream has too).
    consumers = [cluster_stream.consumer_name(p.name) for p in build_projectors() if p.partitions == 1]
    writer = CommandWriter(deployment.bus(store), isin, accounts=8, actions_every=60, pause=0.002)
    writer.start()
    try:
        with StreamWatcher(cluster_stream) as watcher:
            grows(watcher, 100)
            nats_cluster.wait_replicas_current(cluster_stream, consumers)  # the workers' consumers exist, R3
            stream_leader = nats_cluster.leader_of(cluster_stream)
            stream_leader.kill()  # kill -9 mid-load: a new stream leader is elected among the two left
            grows(watcher, 300)
            stream_leader.start()  # back on its store: it catches up as a replica
            # One node lost at a time: the next goes only once the stream and every consumer caught up.
            nats_cluster.wait_replicas_current(cluster_stream, consumers)

            consumer = cluster_stream.consumer_name("cards")
            consumer_leader = nats_cluster.leader_of(cluster_stream, consumer)
            head_at_kill = store.head()
            consumer_leader.kill()  # the cards consumer moves to another node
            wait_until(lambda: active_positions(views, ["cards"])["cards"] > head_at_kill + 100,
                       timeout=60, interval=0.2, message=lambda: "cards did not go on after its consumer moved")
            grows(watcher, 100)
    finally:
        writer.stop()
    wait_settled(views, store, timeout=120)
    consumer_leader.start()  # the cluster whole again for the audit (its own consumer reads the stream)
    nats_cluster.wait_replicas_current(cluster_stream, consumers)
    config = nats_cluster.stream_config(cluster_stream)
    assert (config.num_replicas, config.placement.cluster if config.placement else None) == (3, CLUSTER_NAME)
    assert_stream_matches_store(cluster_stream, store)  # 0 lost, 0 duplicates in the stream
    assert_matches_replay(views, store)  # every read model equals a replay
    assert_process_outcomes(store)  # every depositor told exactly once per action
    deployment.assert_no_tracebacks()
