"""No value is fatal: values a read model cannot hold, sent through the real write API, parked by the
projection that cannot hold them while the worker process, its other projections and the events after
them go on (real PostgreSQL, real JetStream, ``eventfold write-api``/``relay``/``project`` subprocesses).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from poison_values import Entry, LedgerRow, LedgerTotal, Posted
from streaming_helpers import Deployment, deployment_for, wait_until
from support.http import CliServer
from support.nats import jetstream_settings  # noqa: F401
from support.postgres import PgDatabase

from framework.adapters.nats import JetStreamSettings
from framework.events import EventEnvelope, EventMetadata
from framework.mapper import from_stored, to_stored

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

PAST_BIGINT_WHEN_SCALED = 2**62  # a valid 64-bit amount; times 1,000 it is past PostgreSQL's bigint
LONG_NOTE = "x" * 100_000


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,  # noqa: F811
               tmp_path: Path) -> Iterator[Deployment]:
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path,
                        app="poison_values:app") as deployed:
        yield deployed


def post(client: httpx.Client, entry_id: str, note: str = "", amount: int = 1) -> httpx.Response:
    return client.post("/commands/Post", json={"entry_id": entry_id, "note": note, "amount": amount})


def test_poison_values_are_parked_and_nothing_else_stops(deployment: Deployment) -> None:
    deployment.init_db()
    store, views = deployment.store(), deployment.views()
    relay, worker = deployment.start("relay"), deployment.start("project")
    with CliServer("write-api", deployment.env()) as api, httpx.Client(base_url=api.base_url, timeout=30) as client:
        for i in range(5):
            assert post(client, f"before-{i}").status_code == 200
        assert post(client, "huge", amount=PAST_BIGINT_WHEN_SCALED).status_code == 200
        assert post(client, "long", note=LONG_NOTE).status_code == 200  # text holds it: applied, not parked
        refused = post(client, "nul", note="Ann\u0000")
        assert refused.status_code == 422, refused.text  # the command refuses what no column can hold ...
        # ... but an event stored earlier (by an older version that accepted it) still reaches the workers:
        nul_position = store.append([to_stored(EventEnvelope(
            Entry.aggregate_name, Entry.id_for("nul"), 1, Posted(entry_id="nul", note="Ann\u0000", amount=1),
            EventMetadata()))])[-1]
        # A lone surrogate, which JSON carries (escaped) but no UTF-8 text column can: parked, not retried for ever
        surrogate_position = store.append([to_stored(EventEnvelope(
            Entry.aggregate_name, Entry.id_for("surrogate"), 1,
            Posted(entry_id="surrogate", note="Ann\ud800", amount=1), EventMetadata()))])[-1]
        for i in range(5):
            assert post(client, f"after-{i}").status_code == 200

    head = store.head()
    wait_until(lambda: views.active_position("ledger") == head and views.active_position("count") == head,
               timeout=60, message="the ledger and the count to reach the head")
    wait_until(lambda: any(s.name == "strict_ledger" and s.state == "halted" for s in views.states()), timeout=30)

    # The parking projection parked exactly the two poison events and applied everything else.
    letters = views.dead_letters("ledger")
    positions = {n.id: from_stored(n).event for n in store.read_all(0, head)}
    huge_position = next(p for p, e in positions.items() if getattr(e, "entry_id", None) == "huge")
    assert sorted(letter.position for letter in letters) == sorted([huge_position, nul_position, surrogate_position])
    assert all("RowRejected" in letter.error for letter in letters), [letter.error for letter in letters]
    rows = {row.entry_id: row for row in views.query("ledger", LedgerRow)}
    expected = {e.entry_id for e in positions.values() if isinstance(e, Posted)} - {"huge", "nul", "surrogate"}
    assert set(rows) == expected
    assert rows["long"].note == LONG_NOTE and rows["after-4"].milli == 1000

    # The halting projection stopped at the first poison event, alone: the rest of the process went on.
    (strict,) = [s for s in views.states() if s.name == "strict_ledger"]
    assert strict.position == huge_position - 1 and "RowRejected" in (strict.error or "")
    (total,) = views.query("count", LedgerTotal)
    assert total.entries == len(expected) + 3  # it counts every entry, the poison ones too
    assert worker.alive and relay.alive
    status = deployment.cli_ok("status", "--json").stdout
    assert '"halted"' in status and '"dead_letters": 3' in status
    deployment.assert_no_tracebacks()
