"""``eventfold events`` and ``eventfold replay NAME --aggregate`` as a user runs them: real subprocesses on
a real PostgreSQL (and, for a replay beside a live worker, the relay and ``project`` roles on NATS).

A rebuild for one aggregate is held to the standard of every projection test: afterwards every table
equals a full replay of the event store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streaming_helpers import (
    TRACEBACK,
    CommandWriter,
    Deployment,
    assert_matches_replay,
    deployment_for,
    new_isin,
    setup_security,
    wait_settled,
    wait_until,
    write_backlog,
)
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase

from example_app.accounts import Account
from example_app.commands import CreditHoldings, DebitHoldings, OpenAccount
from framework import History
from framework.adapters.nats import JetStreamSettings

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def offline(pg_database: PgDatabase, pg_schema: str, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of which only the CLI runs (no NATS needed)."""
    with deployment_for(pg_database, pg_schema, JetStreamSettings(), tmp_path) as deployed:
        deployed.init_db()
        yield deployed


def one_error_line(done: Any, *mentions: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert TRACEBACK not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventfold:"), done.stderr
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def open_and_move(deployment: Deployment, number: str, isin: str) -> None:
    bus = deployment.bus(deployment.store())
    bus.execute(OpenAccount(account_number=number, holder_name="Ada Lovelace"))
    bus.execute(CreditHoldings(account_number=number, isin=isin, quantity=10))
    bus.execute(DebitHoldings(account_number=number, isin=isin, quantity=4))


# --- eventfold events ----------------------------------------------------------------------------


def test_events_prints_and_exports_an_aggregates_stream(offline: Deployment) -> None:
    store, isin = offline.store(), new_isin()
    setup_security(offline.bus(store), isin)
    open_and_move(offline, "EV-1", isin)
    open_and_move(offline, "EV-2", isin)
    stored = History(store).events(Account.id_for("EV-1"))

    text = offline.cli_ok("events", "Account:EV-1").stdout.splitlines()
    assert text[0].split() == ["position", "aggregate", "version", "recorded_at", "event", "data"]
    assert [line.split()[:3] for line in text[1:]] == [
        [str(e.position), f"Account:{e.aggregate_id}", str(e.version)] for e in stored]
    assert [line.split()[4] for line in text[1:]] == ["AccountOpened", "SecuritiesCredited", "SecuritiesDebited"]
    assert text[1].endswith('{"account_number":"EV-1","holder_name":"Ada Lovelace"}')

    exported = json_lines(offline.cli_ok("events", "Account:EV-1", "--json").stdout)
    assert exported == [{
        "position": e.position, "aggregate_type": "Account", "aggregate_id": str(e.aggregate_id),
        "version": e.version, "event": e.event_name,
        "metadata": e.metadata.model_dump(mode="json", exclude_none=True), "data": e.event.model_dump(mode="json"),
    } for e in stored]
    by_id = json_lines(offline.cli_ok("events", str(Account.id_for("EV-1")), "--json", "--from-version", "2").stdout)
    assert by_id == exported[1:]


def test_events_pages_through_the_global_stream(offline: Deployment) -> None:
    store, isin = offline.store(), new_isin()
    setup_security(offline.bus(store), isin)
    open_and_move(offline, "PG-1", isin)
    positions = [n.id for n in store.read_all(0, 100)]
    assert len(positions) == 4

    first = offline.cli("events", "--limit", "3", "--json")
    assert first.returncode == 0, first.stderr
    assert [row["position"] for row in json_lines(first.stdout)] == positions[:3]
    assert first.stderr.strip() == f"eventfold: more events follow: eventfold events --after {positions[2]} --limit 3"
    last = offline.cli("events", "--after", str(positions[2]), "--limit", "3")
    assert last.returncode == 0 and last.stderr == "", last.stderr
    rows = last.stdout.splitlines()
    assert len(rows) == 2 and rows[1].split()[0] == str(positions[3]) and "SecuritiesDebited" in rows[1]
    assert offline.cli_ok("events", "--after", str(positions[3]), "--json").stdout == ""


EVENTS_MISTAKES = [
    (["Acount:X-1"], ["no aggregate type 'Acount'", "Account, CorporateAction, Notification, Security"]),
    (["Account:NOBODY"], ["there are no events of account 'NOBODY'"]),
    (["not-an-id"], ["neither an aggregate id (a UUID) nor TYPE:KEY"]),
    (["00000000-0000-0000-0000-000000000000"], ["there are no events of aggregate 00000000-"]),
    (["Account:EV-9", "--from-version", "7"], ["account 'EV-9'", "no events from version 7: its latest is 3"]),
    (["Account:EV-9", "--from-version", "0"], ["--from-version must be 1 or more"]),
    (["Account:EV-9", "--limit", "5"], ["--after and --limit page the global stream"]),
    (["--from-version", "2"], ["--from-version needs an aggregate"]),
    (["--limit", "0"], ["--limit must be between 1 and 100000"]),
    (["--after", "-3"], ["--after must be a position"]),
]


def test_events_says_what_is_wrong_in_one_line(offline: Deployment) -> None:
    store, isin = offline.store(), new_isin()
    setup_security(offline.bus(store), isin)
    open_and_move(offline, "EV-9", isin)
    for args, mentions in EVENTS_MISTAKES:
        one_error_line(offline.cli("events", *args), *mentions)


def test_events_without_a_store_is_one_line(tmp_path: Path) -> None:
    from support.http import clean_env
    from test_cli_subprocess import run_cli

    done = run_cli("events", "--store", str(tmp_path / "none.sqlite3"), env=clean_env())
    one_error_line(done, "there is no event store at", "none.sqlite3")


# --- eventfold replay NAME --aggregate ------------------------------------------------------------


def damage(deployment: Deployment, version: int, number: str, isin: str) -> None:
    """What a handler's bug could have left for one account: a wrong quantity, a lost account row."""
    schema = deployment.schema
    with deployment.pg_database.connect() as conn:
        conn.execute(f'UPDATE "{schema}".rm_holdings_v{version}_holdings SET quantity = quantity + 1000'
                     " WHERE account_number = %s AND isin = %s", (number, isin))
        conn.execute(f'DELETE FROM "{schema}".rm_holdings_v{version}_accounts WHERE account_number = %s', (number,))


def test_replay_of_one_aggregate_equals_a_full_replay(offline: Deployment) -> None:
    store, views, isin = offline.store(), offline.views(), new_isin()
    setup_security(offline.bus(store), isin)
    write_backlog(store, isin, accounts=12, credits_each=5, actions=[("RA-CA-1", "validate")], prefix="RA")
    open_and_move(offline, "RA-X", isin)
    offline.cli_ok("replay", "holdings", "--processes", "2")  # version 2, from scratch, its partitions in 2 processes
    damage(offline, 2, "RA-0003", isin)
    damage(offline, 2, "RA-X", isin)

    done = offline.cli_ok("replay", "holdings", "--aggregate", "Account:RA-0003")
    assert done.stderr.strip().splitlines()[-1] == (
        f"eventfold: holdings version 3 is now active, with the rows of account 'RA-0003'"
        f" (id {Account.id_for('RA-0003')}) rebuilt (7 written, 0 deleted)")
    offline.cli_ok("replay", "holdings", "--aggregate", str(Account.id_for("RA-X")))
    assert views.active_version("holdings") == 4
    for name in ("cards", "entitlements", "notifications", "corporate_action_process"):
        offline.cli_ok("replay", name)  # the other projections, so that every table can be compared
    assert_matches_replay(views, store)
    assert {s.version for s in views.states() if s.name == "holdings"} == {3, 4}


REPLAY_MISTAKES = [
    (["cards", "--aggregate", "Account:RA-1"], ["cards cannot be rebuilt for one aggregate", "per_aggregate = True",
                                               "`eventfold replay cards`"]),
    (["holdings", "--aggregate", "Account:NOBODY"], ["there are no events of account 'NOBODY'"]),
    (["holdings", "--aggregate", "Acount:RA-1"], ["no aggregate type 'Acount'"]),
    (["holdings", "--aggregate", "Account:RA-1", "--from", "3"], ["--from and --aggregate do not combine"]),
    (["holdings", "--processes", "0"], ["--processes 0 must be at least 1"]),
]


def test_replay_of_one_aggregate_refuses_in_one_line(offline: Deployment) -> None:
    store, isin = offline.store(), new_isin()
    setup_security(offline.bus(store), isin)
    open_and_move(offline, "RA-1", isin)
    for args, mentions in REPLAY_MISTAKES:
        one_error_line(offline.cli("replay", *args), *mentions)
    assert {s.version for s in offline.views().states()} == {1}  # no version was made


@pytest.mark.nats
def test_replay_of_one_aggregate_beside_a_live_worker_and_arriving_commands(
    pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings, tmp_path: Path,  # noqa: F811
) -> None:
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        bus = deployment.bus(deployment.store())
        isin, writer_isin = new_isin(), new_isin()
        setup_security(bus, isin)
        setup_security(bus, writer_isin)
        write_backlog(store, isin, accounts=20, credits_each=10, prefix="LW")
        relay, worker = deployment.start("relay"), deployment.start("project")
        wait_settled(views, store, timeout=90)
        damage(deployment, 1, "LW-0007", isin)

        writer = CommandWriter(bus, writer_isin, actions_every=15, pause=0.003)
        writer.start()
        wait_until(lambda: writer.sent > 20, timeout=30, message="the writer to get going")
        deployment.cli_ok("replay", "holdings", "--aggregate", "Account:LW-0007")
        sent_at_switch, head_at_switch = writer.sent, store.head()
        wait_until(lambda: writer.sent > sent_at_switch + 20, timeout=30, message="commands after the switch")
        writer.stop()
        wait_settled(views, store, timeout=90)

        assert views.active_version("holdings") == 2
        assert_matches_replay(views, store)  # the damage is gone, and nothing the writer sent was lost
        positions = {(s.name, s.version): s.position for s in views.states()}
        assert positions[("holdings", 2)] == store.head() > head_at_switch  # the live worker followed
        assert relay.alive and worker.alive
        deployment.assert_no_tracebacks()
