"""Crashes and outages of the streaming roles, with events flowing: nothing lost, nothing doubled.

* a projection worker (``eventfold project``) SIGKILLed mid-batch and restarted;
* the relay (``eventfold relay``) SIGKILLed while publishing a large backlog and restarted;
* NATS stopped (and killed) while commands keep arriving, then started again: the relay and
  the worker recover by themselves, without a restart.

Every scenario ends with the read models equal to a fresh replay of the event store, positions
at the head, the stream holding each stored event exactly once, and the corporate-action process
having told each depositor exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from streaming_helpers import (
    CommandWriter,
    Deployment,
    StreamWatcher,
    ThrottledProxy,
    active_positions,
    assert_matches_replay,
    assert_process_outcomes,
    assert_stream_matches_store,
    deployment_for,
    new_isin,
    setup_security,
    stored_positions,
    wait_settled,
    wait_until,
    write_backlog,
)
from support.nats import ThrowawayNats, jetstream_settings, nats_server, private_nats, settings_for  # noqa: F401
from support.postgres import PgDatabase

from framework.adapters.nats import JetStreamSettings
from projections import build_projectors

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

NAMES = [p.name for p in build_projectors()]


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
               tmp_path: Path) -> Iterator[Deployment]:
    # A command a killed worker left claimed is taken over when its claim's lease ends: 5 s here,
    # not the default minute, so the settling after the kills is not a minute of waiting.
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path,
                        extra_env={"EVENTFOLD_IDEMPOTENCY_LEASE_SECONDS": "5"}) as deployed:
        yield deployed


ACCOUNTS = 100  # x 50 credits: the backlog of 5,000 events the first kill lands in


def test_a_worker_killed_mid_batch_resumes_with_nothing_lost_or_doubled(deployment: Deployment) -> None:
    deployment.init_db()
    store, views = deployment.store(), deployment.views()
    bus = deployment.bus(deployment.store())
    isin, writer_isin = new_isin(), new_isin()
    setup_security(bus, isin)
    setup_security(bus, writer_isin)
    # A big backlog first, so the worker's batches are big (5,000 events in catch-up, 1,000 live);
    # one action validated in it (the process issues its commands during catch-up), one
    # validated and cancelled before the process could record anything.
    backlog = write_backlog(store, isin, accounts=ACCOUNTS, credits_each=50,
                            actions=[("KILL-CA-1", "validate"), ("KILL-CA-2", "validate-cancel")])
    backlog_end = backlog[-1]
    relay = deployment.start("relay")
    writer = CommandWriter(bus, writer_isin, actions_every=30, pause=0.005)
    writer.start()
    worker = deployment.start("project")
    started = time.monotonic()

    # 1. Killed while catching up from the store (or, at the latest, while applying deliveries).
    def moving() -> bool:
        positions = active_positions(views, NAMES)
        return any(0 < p < backlog_end for p in positions.values()) or min(positions.values()) >= backlog_end

    wait_until(moving, timeout=60, interval=0.02, message="the worker to be part-way")
    worker.kill()
    after_first_kill = active_positions(views, NAMES)
    print(f"first kill after {time.monotonic() - started:.1f}s")
    worker.start()

    # 2. Killed while consuming JetStream deliveries, commands still flowing.
    wait_until(lambda: min(active_positions(views, NAMES).values()) >= backlog_end, timeout=90,
               message="the worker to finish catching up")
    moved_from = store.head()
    wait_until(lambda: min(active_positions(views, NAMES).values()) > moved_from, timeout=60,
               message="live deliveries to be applied")
    worker.kill()
    worker.start()

    # 3. Killed again right after starting, while it binds and catches up.
    wait_until(lambda: sum(active_positions(views, NAMES).values()) > 0, timeout=30)
    worker.kill()
    worker.start()

    wait_until(lambda: writer.sent > 100, timeout=60, message="the writer to get going")
    writer.stop()
    print(f"writer stopped after {time.monotonic() - started:.1f}s, {writer.sent} commands")
    head = wait_settled(views, store, NAMES, timeout=120)
    print(f"settled after {time.monotonic() - started:.1f}s")

    assert worker.kills == 3
    print(f"first kill at {after_first_kill} (backlog ends at {backlog_end}); head {head}")
    assert_matches_replay(views, store)
    outcome = assert_process_outcomes(store)
    assert len(outcome.entitled["KILL-CA-1"]) == ACCOUNTS
    assert "KILL-CA-2" not in outcome.entitled  # cancelled before the process could record them
    assert len(outcome.entitled) > 1  # the writer's actions were processed too
    assert_stream_matches_store(deployment.jetstream, store)
    assert relay.alive and worker.alive
    deployment.assert_no_tracebacks()


def test_the_relay_killed_mid_stream_publishes_everything_exactly_once(deployment: Deployment) -> None:
    deployment.init_db()
    store = deployment.store()
    bus = deployment.bus(deployment.store())
    isin = new_isin()
    setup_security(bus, isin)
    total = len(write_backlog(store, isin, accounts=100, credits_each=80))
    writer = CommandWriter(bus, isin, pause=0.005)
    writer.start()
    # The relay reaches NATS through a proxy slowed to ~2 MB/s: a batch of 1,000 takes a
    # noticeable time to publish, so the kills land half-way through one.
    upstream = urlsplit(deployment.jetstream.servers[0]).port or 4222
    counts, checkpoints = [], []
    with ThrottledProxy(upstream, 2_000_000) as proxy, StreamWatcher(deployment.jetstream) as stream:
        relay = deployment.start("relay", env={"EVENTFOLD_NATS_URL": proxy.url})
        for kill in range(1, 4):
            # Part-way through the backlog (a quarter, a half, three quarters), preferably while a
            # batch is half published (the count is not a multiple of the batch size).
            target, patience = kill * total // 4, [0.0]

            def part_way(target: int = target, patience: list[float] = patience) -> bool:
                count = stream.count()
                if count < target:
                    return False
                patience[0] = patience[0] or time.monotonic() + 2.0
                return count % 1000 != 0 or time.monotonic() > patience[0]

            wait_until(part_way, timeout=60, interval=0.005, message=f"{kill}/4 of the backlog to be published")
            relay.kill()
            counts.append(stream.count())
            checkpoints.append(store.relay_checkpoint("relay"))
            relay.start()
        writer.stop()
        expected = len(stored_positions(store))
        wait_until(lambda: stream.count() >= expected, timeout=60, message=lambda: f"{expected} messages in the stream")
        wait_until(lambda: store.relay_checkpoint("relay") == store.head(), timeout=30, message="the checkpoint")

    print(f"stream held {counts} messages at the kills (checkpoints {checkpoints}), of {expected}")
    assert relay.kills == 3
    assert_stream_matches_store(deployment.jetstream, store)
    deployment.assert_no_tracebacks()


def test_nats_going_away_and_coming_back_loses_nothing_and_needs_no_restart(
    pg_database: PgDatabase, pg_schema: str, private_nats: ThrowawayNats, tmp_path: Path,  # noqa: F811
) -> None:
    jetstream = settings_for(private_nats.url, storage="file")
    with deployment_for(pg_database, pg_schema, jetstream, tmp_path) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        bus = deployment.bus(deployment.store())
        isin = new_isin()
        setup_security(bus, isin)
        relay, worker = deployment.start("relay"), deployment.start("project")
        pids = (relay.pid, worker.pid)

        def write(commands: int, *, seconds: float = 0.0) -> None:
            writer = CommandWriter(bus, isin, actions_every=10, pause=0.01)
            writer.start()
            until = time.monotonic() + seconds
            wait_until(lambda: writer.sent >= commands and time.monotonic() >= until, timeout=60,
                       message=f"{commands} commands")
            writer.stop()

        write(20)
        wait_settled(views, store, NAMES, timeout=60)

        for outage in (private_nats.stop, private_nats.kill):  # graceful, then a crash
            outage()
            before = active_positions(views, NAMES)
            write(30, seconds=2.0)  # commands keep being accepted: the store does not need the bus
            assert active_positions(views, NAMES) == before  # nothing can reach the workers meanwhile
            private_nats.start()
            write(10)
            wait_settled(views, store, NAMES, timeout=90)
            assert_matches_replay(views, store)

        assert (relay.pid, worker.pid) == pids and relay.alive and worker.alive  # recovered by themselves
        for role in (relay, worker):
            assert role.output().count("NATS: reconnected") >= 2, role.tail()
        assert "NATS JetStream unavailable" in relay.output()
        assert_process_outcomes(store)
        assert_stream_matches_store(jetstream, store)
        deployment.assert_no_tracebacks()
