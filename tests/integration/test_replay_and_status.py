"""Operating projections over real servers: poison events (park, retry, discard, halt), blue-green
replays while commands keep arriving, and ``eventfold status`` / ``dead-letters`` as a user sees them.

The poison tests run a test-only projection set (``streaming_helpers:build_poison_projectors``)
in a real ``eventfold project`` subprocess; its handler raises for the accounts listed in a
fault file, so a test can make an event poisonous and clear the fault while the worker runs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from streaming_helpers import (
    POISON_APP,
    POISON_FILE_VARIABLE,
    TRACEBACK,
    Backlog,
    CommandWriter,
    Deployment,
    HaltingPoisonProjector,
    ParkingPoisonProjector,
    PoisonAccount,
    active_positions,
    assert_matches_replay,
    assert_process_outcomes,
    assert_same_rows,
    deployment_for,
    eventfold_executable,
    new_isin,
    record_date,
    replay,
    set_poisoned,
    setup_security,
    wait_settled,
    wait_until,
    write_backlog,
)
from support.http import clean_env
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase

from example_app.accounts import Account
from example_app.app import build_router
from example_app.corporate_actions import CashTerms, CorporateAction
from framework.adapters.nats import JetStreamSettings
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.bus import CommandBus
from framework.dispatcher import Dispatcher
from framework.replay import rebuild
from framework.worker import ProjectionWorker, WorkerOptions
from projections import build_projectors
from projections.process import CorporateActionProcess

pytestmark = [pytest.mark.postgres]

NAMES = [p.name for p in build_projectors()]
STATUS_COLUMNS = ["name", "version", "active", "state", "position", "head", "lag_events", "lag_seconds",
                  "dead_letters"]
STATUS_FIELDS = [*STATUS_COLUMNS, "owner", "outbox_pending", "outbox_oldest_seconds", "deadlines_pending", "partitions"]
STATUS_TABLE = [*STATUS_COLUMNS, "outbox", "deadlines", "owner"]


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
               tmp_path: Path) -> Iterator[Deployment]:
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path) as deployed:
        yield deployed


def status_json(deployment: Deployment) -> dict[tuple[str, int], dict[str, Any]]:
    done = deployment.cli_ok("status", "--json")
    rows = json.loads(done.stdout)
    return {(row["name"], row["version"]): row for row in rows}


def one_error_line(done: Any, *mentions: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert TRACEBACK not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventfold:"), done.stderr
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])
    return lines[0]


# --- poison events ----------------------------------------------------------------------------


@pytest.mark.nats
def test_a_poison_event_is_parked_retried_discarded_or_halts_its_projection(
    pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings, tmp_path: Path,  # noqa: F811
) -> None:
    fault = tmp_path / "poisoned.json"
    set_poisoned(fault, [])
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path, app=POISON_APP,
                        extra_env={POISON_FILE_VARIABLE: str(fault)}) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        names = ["poison_park", "poison_halt"]
        isin = new_isin()
        relay, worker = deployment.start("relay"), deployment.start("project")

        def open_accounts(*numbers: str) -> dict[str, int]:
            """One append: the accounts' events arrive together, so a poison one sits mid-batch."""
            backlog = Backlog()
            for number in numbers:
                account = Account.open(number, f"Holder of {number}")
                account.credit(isin, 10)
                backlog.take(account)
            positions = backlog.append_to(store)
            return {number: positions[2 * i] for i, number in enumerate(numbers)}  # each AccountOpened

        open_accounts("OK-1", "OK-2")
        wait_settled(views, store, names, timeout=60)
        set_poisoned(fault, ["POISON-A", "POISON-B"])
        opened = open_accounts("OK-3", "POISON-A", "OK-4", "POISON-B", "OK-5")
        poison_a, poison_b = opened["POISON-A"], opened["POISON-B"]

        # park: both are retried, parked, and everything else applied, up to the head.
        wait_settled(views, store, ["poison_park"], timeout=60)
        letters = views.dead_letters("poison_park")
        assert [(d.position, d.event_name) for d in letters] == [(poison_a, "AccountOpened"),
                                                                (poison_b, "AccountOpened")]
        assert "poisoned account POISON-A" in letters[0].error
        # halt: stopped just before the first poison event, with the error in its state.
        wait_until(lambda: status_json(deployment)[("poison_halt", 1)]["state"] == "halted", timeout=30,
                   message="poison_halt to halt")
        statuses = status_json(deployment)
        head = store.head()
        parked, halted = statuses[("poison_park", 1)], statuses[("poison_halt", 1)]
        assert (parked["state"], parked["position"], parked["dead_letters"], parked["lag_events"]) == (
            "running", head, 2, 0)
        assert (halted["state"], halted["position"], halted["dead_letters"], halted["lag_events"]) == (
            "halted", poison_a - 1, 0, head - poison_a + 1)
        assert f"position {poison_a}" in halted["error"] and "poisoned account POISON-A" in halted["error"]
        assert halted["lag_seconds"] > 0
        plain = deployment.cli_ok("status").stdout
        assert "error: position" in plain and "halted" in plain

        listed = deployment.cli_ok("dead-letters", "list").stdout.strip().splitlines()
        assert len(listed) == 2, listed
        ids = [int(line.split("\t")[0]) for line in listed]
        assert [line.split("\t")[1:4] for line in listed] == [
            ["poison_park", str(poison_a), "AccountOpened"], ["poison_park", str(poison_b), "AccountOpened"]]
        assert "PoisonError: poisoned account POISON-B" in listed[1]
        assert deployment.cli_ok("dead-letters", "list", "poison_halt").stdout.strip() == ""

        # More events: the parking projection keeps up, the halted one does not move.
        open_accounts("OK-6")
        wait_settled(views, store, ["poison_park"], timeout=60)
        assert active_positions(views, ["poison_halt"]) == {"poison_halt": poison_a - 1}

        # Clear A's fault and ask for a retry: the live worker applies it and settles the letter.
        set_poisoned(fault, ["POISON-B"])
        retried = deployment.cli_ok("dead-letters", "retry", str(ids[0])).stdout
        assert f"dead letter {ids[0]} will be retried" in retried
        wait_until(lambda: [d.id for d in views.dead_letters()] == [ids[1]], timeout=30,
                   message="the retried letter to be settled")
        rows = {r.account_number for r in views.query("poison_park", PoisonAccount)}
        assert "POISON-A" in rows and "POISON-B" not in rows
        # Discard B: it is forgotten (and never applied).
        assert f"dead letter {ids[1]} was discarded" in deployment.cli_ok("dead-letters", "discard", str(ids[1])).stdout
        assert views.dead_letters() == []
        assert status_json(deployment)[("poison_park", 1)]["dead_letters"] == 0
        one_error_line(deployment.cli("dead-letters", "discard", str(ids[1])), f"no dead letter {ids[1]}")
        one_error_line(deployment.cli("dead-letters", "retry", "first"), "'first'")

        # The parking projection equals a replay in which B is still poisonous (and so parked).
        only_b = tmp_path / "only-b.json"
        set_poisoned(only_b, ["POISON-B"])
        assert_same_rows(views, replay(store, [ParkingPoisonProjector(only_b)]), [ParkingPoisonProjector(only_b)])

        # The halted projection resumes from where it stopped once the fault is gone and it restarts.
        set_poisoned(fault, [])
        worker.restart()
        wait_settled(views, store, names, timeout=60)
        statuses = status_json(deployment)
        assert (statuses[("poison_halt", 1)]["state"], statuses[("poison_halt", 1)]["error"]) == ("running", None)
        clean = tmp_path / "clean.json"
        set_poisoned(clean, [])
        assert_same_rows(views, replay(store, [HaltingPoisonProjector(clean)]), [HaltingPoisonProjector(clean)])
        assert relay.alive and worker.alive
        deployment.assert_no_tracebacks()


# --- replay -----------------------------------------------------------------------------------


@pytest.mark.nats
def test_a_replay_while_commands_keep_arriving_switches_in_a_complete_version(deployment: Deployment) -> None:
    deployment.init_db()
    store, views = deployment.store(), deployment.views()
    bus = deployment.bus(deployment.store())
    isin, writer_isin = new_isin(), new_isin()
    setup_security(bus, isin)
    setup_security(bus, writer_isin)
    write_backlog(store, isin, accounts=80, credits_each=50, actions=[("RP-CA-1", "validate")])
    relay, worker = deployment.start("relay"), deployment.start("project")
    wait_settled(views, store, timeout=90)

    writer = CommandWriter(bus, writer_isin, actions_every=20, pause=0.003)
    writer.start()
    wait_until(lambda: writer.sent > 20, timeout=30, message="the writer to get going")
    head_before = store.head()
    done = deployment.cli_ok("replay", "holdings")  # the live worker and the writer carry on meanwhile
    assert "replay holdings:" in done.stderr and "(100%)" in done.stderr, done.stderr
    assert "holdings version 2 is now active" in done.stderr
    head_at_switch, sent_at_switch = store.head(), writer.sent
    assert head_at_switch > head_before  # commands arrived while it ran
    wait_until(lambda: writer.sent > sent_at_switch + 30, timeout=30, message="commands after the switch")
    writer.stop()
    wait_settled(views, store, timeout=90)

    assert views.active_version("holdings") == 2
    assert_matches_replay(views, store)  # the active versions, v2 for holdings
    # The live worker followed the switch: v2 moved on after the replay ended, v1 stayed behind.
    positions = {(s.name, s.version): s.position for s in views.states()}
    assert positions[("holdings", 2)] == store.head() > head_at_switch
    assert positions[("holdings", 1)] <= head_at_switch
    statuses = status_json(deployment)
    assert (statuses[("holdings", 2)]["active"], statuses[("holdings", 2)]["state"]) == (True, "running")
    assert statuses[("holdings", 1)]["active"] is False
    assert statuses[("holdings", 2)]["lag_events"] == 0

    # A second replay keeps the previous version's tables and drops the older ones.
    deployment.cli_ok("replay", "holdings")
    assert views.active_version("holdings") == 3
    tables = _tables(deployment)
    assert {"rm_holdings_v2_holdings", "rm_holdings_v3_holdings"} <= tables
    assert not any(t.startswith("rm_holdings_v1_") for t in tables)
    assert {s.version for s in views.states() if s.name == "holdings"} == {2, 3}

    # A process manager rebuilt issues no command again.
    head = store.head()
    deployment.cli_ok("replay", "corporate_action_process")
    assert views.active_version("corporate_action_process") == 2
    assert store.head() == head
    wait_settled(views, store, timeout=30)
    assert_matches_replay(views, store)
    assert_process_outcomes(store)
    assert relay.alive and worker.alive
    deployment.assert_no_tracebacks()


def _tables(deployment: Deployment) -> set[str]:
    with deployment.pg_database.connect() as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                            (deployment.schema,)).fetchall()
    return {row[0] for row in rows}


def test_a_replay_of_an_unknown_projection_or_bad_position_is_one_line(
    pg_database: PgDatabase, pg_schema: str, tmp_path: Path,
) -> None:
    with deployment_for(pg_database, pg_schema, JetStreamSettings(), tmp_path) as deployment:
        deployment.init_db()
        one_error_line(deployment.cli("replay", "nonesuch"), "unknown projection 'nonesuch'")
        one_error_line(deployment.cli("replay", "holdings", "--from", "-5"), "--from -5")


def test_catch_up_in_small_batches_sees_the_previous_batch(pg_database: PgDatabase, pg_schema: str) -> None:
    """Staged catch-up overlaps work on consecutive batches; a handler that selects rows (the
    process's holdings at the record date and who was entitled, entitlements on cancellation)
    must still see every row of the batch before its own, committed or not."""

    settings = pg_database.settings(pg_schema, pool_size=4)
    store, views = PostgresEventStore(settings), PostgresViewStore(settings)
    try:
        store.create_schema()
        views.create_schema()
        bus = CommandBus(build_router(), store)
        isin = new_isin()
        setup_security(bus, isin)
        # A validation right after a movement; entitlements right before a cancellation.
        backlog = Backlog()
        accounts = [Account.open(f"SB-{i}", "Holder") for i in range(4)]
        first = CorporateAction.announce("SB-1", isin, record_date(), None, _cash())
        second = CorporateAction.announce("SB-2", isin, record_date(), None, _cash())
        for index, account in enumerate(accounts):
            account.credit(isin, 10 + index)
            backlog.take(account)
        backlog.take(first)
        backlog.take(second)
        for index, account in enumerate(accounts):
            account.credit(isin, 100 * (index + 1))
            backlog.take(account)
            if index == 2:
                first.validate_action()  # sees the movements just before it, not the one after
                backlog.take(first)
        held = {"SB-0": 110, "SB-1": 211, "SB-2": 312, "SB-3": 413}
        second.validate_action()
        second.record_entitlements(second.entitle(held))
        second.cancel("withdrawn")
        backlog.take(second)
        backlog.append_to(store)

        small = WorkerOptions(catch_up_batch=1)
        process = ProjectionWorker(CorporateActionProcess(), views, store, bus, small)
        process.catch_up()
        Dispatcher(process, bus).run_once()  # entitlements recorded
        process.catch_up()
        Dispatcher(process, bus).run_once()  # the notices they lead to
        outcome = assert_process_outcomes(store)
        assert outcome.entitled["SB-1"] == {"SB-0": 110, "SB-1": 211, "SB-2": 312, "SB-3": 13}
        assert {k for k in outcome.notified if k[0] == "SB-2"} == {
            ("SB-2", account, kind) for account in held for kind in ("entitlement", "cancellation")}
        for projector in build_projectors():
            rebuild(projector, views, store, options=small)
        assert_matches_replay(views, store)
    finally:
        views.close()
        store.close()


def _cash() -> CashTerms:
    return CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.25"), currency="USD")


# --- status -----------------------------------------------------------------------------------


def test_status_shows_positions_head_lag_and_state_plain_and_json(
    pg_database: PgDatabase, pg_schema: str, tmp_path: Path,
) -> None:
    with deployment_for(pg_database, pg_schema, JetStreamSettings(), tmp_path) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        bus = deployment.bus(store)
        isin = new_isin()
        setup_security(bus, isin)
        write_backlog(store, isin, accounts=10, credits_each=3, actions=[("ST-1", "announce")])
        head = store.head()
        projectors = {p.name: p for p in build_projectors()}
        # holdings caught up and running; cards half-way and running; entitlements never started;
        # notifications halted with an error; the process running but quiet for two minutes: stalled.
        ProjectionWorker(projectors["holdings"], views, store).catch_up()
        ProjectionWorker(projectors["cards"], views, store).catch_up(until=head // 2)
        ProjectionWorker(projectors["corporate_action_process"], views, store).catch_up(until=3)
        for name in ("holdings", "cards", "corporate_action_process"):  # as their workers would
            assert views.acquire_lease(name, "worker-1", 600)
            assert views.set_state_if_owner(name, 1, "worker-1", "running")
        views.set_state("notifications", 1, "halted", "position 7: RuntimeError: boom")
        with deployment.pg_database.connect() as conn:
            conn.execute(f'UPDATE "{deployment.schema}".eventfold_projection_positions'
                         " SET updated_at = now() - interval '2 minutes' WHERE name = %s",
                         ("corporate_action_process",))
            conn.execute(f'UPDATE "{deployment.schema}".eventfold_projection_leases'
                         " SET progress_at = now() - interval '2 minutes' WHERE name = %s",
                         ("corporate_action_process",))

        expected = {
            "holdings": ("running", head, None),
            "cards": ("running", head // 2, None),
            "entitlements": ("stopped", 0, None),
            "notifications": ("halted", 0, "position 7: RuntimeError: boom"),
            "corporate_action_process": ("stalled", 3, None),
        }
        statuses = status_json(deployment)
        assert set(statuses) == {(name, 1) for name in NAMES}
        for name, (state, position, error) in expected.items():
            row = statuses[(name, 1)]
            assert set(row) == {*STATUS_FIELDS, "error"}
            assert row["owner"] == ("worker-1" if state in ("running", "stalled") else None), row
            assert (row["active"], row["state"], row["position"], row["head"], row["lag_events"], row["error"],
                    row["dead_letters"]) == (True, state, position, head, head - position, error, 0), row
            assert (row["lag_seconds"] == 0) == (position == head), row

        lines = deployment.cli_ok("status").stdout.splitlines()
        assert lines[0].split() == STATUS_TABLE
        by_name = {line.split()[0]: line.split() for line in lines[1:] if not line.strip().startswith("error:")}
        assert set(by_name) == set(NAMES)
        for name, (state, position, _) in expected.items():
            fields = by_name[name]
            assert fields[1:7] == ["1", "True", state, str(position), str(head), str(head - position)], fields
        errors = [line.strip() for line in lines if line.strip().startswith("error:")]
        assert errors == ["error: position 7: RuntimeError: boom"]
        after_notifications = lines[lines.index(next(x for x in lines if x.split()[0] == "notifications")) + 1]
        assert after_notifications.strip() == "error: position 7: RuntimeError: boom"

        # Caught up, the stalled one is running again (stalled only means quiet while behind).
        ProjectionWorker(projectors["corporate_action_process"], views, store).catch_up()
        assert status_json(deployment)[("corporate_action_process", 1)]["state"] == "running"


def test_status_without_a_database_is_one_line() -> None:
    done = subprocess.run([eventfold_executable(), "status"], env=clean_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    one_error_line(done, "EVENTFOLD_DATABASE_URL")
