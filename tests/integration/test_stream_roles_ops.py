"""The ops server of ``eventfold relay`` and ``eventfold project`` on ``EVENTFOLD_METRICS_PORT``.

The roles run as real subprocesses against real PostgreSQL and NATS JetStream; ``/metrics`` is
scraped over HTTP and parsed with the Prometheus client's parser, ``/healthz`` and ``/readyz`` are
read as a probe would. The shared NATS server is never stopped: the not-ready case points a role at
a port where nothing listens.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from streaming_helpers import Deployment, Role, deployment_for, short_token, wait_until
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase, free_port
from test_cli_subprocess import assert_one_error_line
from test_metrics_http import scrape, value

from example_app.commands import OpenAccount
from framework.adapters.nats import JetStreamSettings
from projections import build_projectors

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
               tmp_path: Path) -> Iterator[Deployment]:
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path) as deployed:
        yield deployed


class Ops:
    """A role started with its ops server on a free port, and an HTTP client for it."""

    def __init__(self, deployment: Deployment, role: str, **env: str) -> None:
        port = free_port()
        self.role: Role = deployment.start(role, env={"EVENTFOLD_METRICS_PORT": str(port), **env})
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        wait_until(self._healthy, timeout=30, message=lambda: f"{role}'s /healthz:\n{self.role.tail()}")

    def _healthy(self) -> bool:
        assert self.role.alive, f"{self.role.name} exited:\n{self.role.tail()}"
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:  # not listening yet
            return False

    def scrape_until(self, condition: Callable[[Samples], bool], what: str) -> Samples:
        latest: list[Samples] = [{}]

        def met() -> bool:
            latest[0] = scrape(self.http)
            return condition(latest[0])

        wait_until(met, timeout=30, message=lambda: f"{what}; last scrape: {sorted(latest[0].items())[:40]}")
        return latest[0]

    def ready_until(self, status: int) -> dict[str, Any]:
        answers: list[httpx.Response] = []

        def answered() -> bool:
            answers[:] = [self.http.get("/readyz")]
            return answers[0].status_code == status

        wait_until(answered, timeout=30, message=lambda: f"/readyz {status}, got {answers[0].text if answers else ''}")
        body: dict[str, Any] = answers[0].json()
        return body

    def stop(self) -> int | None:
        self.http.close()
        return self.role.stop()


def test_relay_and_project_serve_metrics_health_and_readiness(deployment: Deployment) -> None:
    deployment.init_db()
    relay, project = Ops(deployment, "relay"), Ops(deployment, "project")
    store = deployment.store()
    bus = deployment.bus(store)
    for index in range(5):
        bus.execute(OpenAccount(account_number=f"OPS-{short_token()}-{index}", holder_name="Ops"))
    head = store.head()
    stored = len(store.read_all(0, head))
    names = [p.name for p in build_projectors()]

    published = relay.scrape_until(lambda s: value(s, "eventfold_relay_position", relay="relay") == head,
                                   f"the relay to publish up to {head}")
    assert value(published, "eventfold_relay_lag_events", relay="relay") == 0
    # A batch is reported once committed: a scrape between its commit and its report sees the position
    # and not the batch yet. So wait for both; a doubled event would still show as a sum above ``stored``.
    applied = project.scrape_until(
        lambda s: all(value(s, "eventfold_projection_position", projection=n) == head
                      and value(s, "eventfold_projection_batch_size_sum", projection=n) >= stored for n in names),
        f"every projection to apply up to {head} and report it")
    for name in names:
        assert value(applied, "eventfold_projection_lag_events", projection=name) == 0
        assert value(applied, "eventfold_projection_lag_seconds", projection=name) == 0
        assert value(applied, "eventfold_projection_batch_size_count", projection=name) > 0
        # every stored event went through exactly one committed batch of this process
        assert value(applied, "eventfold_projection_batch_size_sum", projection=name) == stored

    assert relay.ready_until(200) == {"status": "ready", "checks": {"event_store": "ok", "bus": "ok"}}
    assert project.ready_until(200) == {"status": "ready", "checks": {
        "event_store": "ok", "read_models": "ok", "projections": "ok", "bus": "ok"}}
    for ops in (relay, project):
        assert ops.http.get("/healthz").json() == {"status": "ok"}
        assert ops.stop() == 0  # SIGTERM: the roles and their ops servers stop cleanly
    deployment.assert_no_tracebacks()


def test_project_without_nats_is_alive_but_not_ready(deployment: Deployment) -> None:
    deployment.init_db()
    nowhere = f"nats://127.0.0.1:{free_port()}"
    project = Ops(deployment, "project", EVENTFOLD_NATS_URL=nowhere)

    body = project.ready_until(503)
    assert body["status"] == "unavailable"
    assert body["failed"] == ["bus"]
    assert {k: v for k, v in body["checks"].items() if k != "bus"} == {
        "event_store": "ok", "read_models": "ok", "projections": "ok"}
    # once an attempt failed, the check says why (the role keeps retrying meanwhile)
    wait_until(lambda: "cannot connect to NATS" in project.http.get("/readyz").json()["checks"]["bus"],
               timeout=30, message="the bus check to name the connection failure")
    assert project.http.get("/healthz").status_code == 200  # alive all the same: no restart wanted
    assert project.http.get("/metrics").status_code == 200
    assert project.role.alive

    assert project.stop() == 0  # a stop while connecting is prompt and clean
    assert "retrying" in project.role.output()
    deployment.assert_no_tracebacks()


@pytest.mark.parametrize("role", ["relay", "project"])
def test_a_metrics_port_in_use_is_one_line(deployment: Deployment, role: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        done = deployment.cli(role, timeout=60, EVENTFOLD_METRICS_PORT=port)
    assert_one_error_line(done, "EVENTFOLD_METRICS_PORT", port)
