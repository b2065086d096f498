"""``query-api`` reading from a PostgreSQL streaming replica of the read-model database
(``EVENTFOLD_QUERY_DATABASE_URL``), with read-your-writes still honest.

A private primary holds the read models (``EVENTFOLD_READ_DATABASE_URL``: the workers write there) and a
hot standby streams from it (``pg_basebackup -R`` on loopback); query-api reads the standby only. With the
standby's replay paused, a write the workers already committed on the primary is not visible on the
query-api, and a query carrying the write's ``Eventfold-Position`` waits: the positions it waits for are
read from the replica it answers from. Once replay resumes, the waiting query answers with the write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql_helpers import GraphQLClient
from streaming_helpers import Deployment, deployment_for, new_isin, short_token, wait_until
from support.http import CliServer
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.pg_replica import PrimaryAndStandby, primary_and_standby  # noqa: F401  (fixture)
from support.postgres import PgDatabase, create_database

from framework.adapters.nats import JetStreamSettings
from framework.adapters.postgres_views import PostgresViewStore

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

READS = "eventfold_reads"
HOLDINGS = "query($account: String!) { holdings(accountNumber: $account) { isin quantity } }"


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, primary_and_standby: PrimaryAndStandby,  # noqa: F811
               jetstream_settings: JetStreamSettings, tmp_path: Path) -> Iterator[Deployment]:  # noqa: F811
    pair = primary_and_standby
    create_database(pair.primary, READS)
    extra = {"EVENTFOLD_READ_DATABASE_URL": pair.primary.url(READS),
             "EVENTFOLD_QUERY_DATABASE_URL": pair.standby.url(READS),
             "EVENTFOLD_READ_DB_SCHEMA": "public", "EVENTFOLD_CONSISTENCY_TIMEOUT_SECONDS": "60"}
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path, extra_env=extra) as deployed:
        yield deployed


def post_command(client: httpx.Client, name: str, body: dict[str, object]) -> int:
    response = client.post(f"/commands/{name}", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["position"])


def test_query_api_answers_from_the_replica_and_waits_for_its_replay(
        deployment: Deployment, primary_and_standby: PrimaryAndStandby) -> None:  # noqa: F811
    pair = primary_and_standby
    deployment.init_db()
    pair.wait_caught_up()  # the read side's tables reached the standby
    primary_views = PostgresViewStore(PgDatabase(pair.primary, READS).settings(pool_size=1))
    try:
        deployment.start("relay")
        deployment.start("project")
        account, isin = f"RQ{short_token()}", new_isin("BE")
        with CliServer("write-api", deployment.env()) as write_api, \
                CliServer("query-api", deployment.env()) as query_api, \
                httpx.Client(base_url=write_api.base_url, timeout=30) as client, \
                GraphQLClient(query_api.base_url, timeout=90) as graphql:
            post_command(client, "RegisterSecurity", {"isin": isin, "name": "Replica NV", "currency": "EUR"})
            post_command(client, "OpenAccount", {"account_number": account, "holder_name": "Rosa"})
            first = post_command(client, "CreditHoldings", {"account_number": account, "isin": isin, "quantity": 42})
            assert graphql.data(HOLDINGS, {"account": account}, position=first)["holdings"] == [
                {"isin": isin, "quantity": 42}]

            pair.pause_replay()  # the standby stops applying WAL: the primary goes on without it
            try:
                second = post_command(client, "CreditHoldings",
                                      {"account_number": account, "isin": isin, "quantity": 8})
                wait_until(lambda: primary_views.active_position("holdings") >= second, timeout=60,
                           message="the worker to apply the second credit on the primary")
                # Committed on the primary, not replayed on the replica: query-api does not see it...
                assert graphql.data(HOLDINGS, {"account": account})["holdings"] == [{"isin": isin, "quantity": 42}]
                # ...and a query asking for its position waits, reading the positions from the replica.
                waiting = Answer(query_api.base_url, account, second)
                waiting.start()
                # A waiting request costs no SQL and no metric shows it: give it time to arrive (nothing timed
                # is asserted: while replay is paused it cannot be answered with the position reached).
                time.sleep(1.0)
                assert waiting.is_alive(), waiting.body
            finally:
                pair.resume_replay()
            waiting.join(90)
            assert not waiting.is_alive()
            body = waiting.body
            assert body is not None and "errors" not in body, body
            assert body["extensions"]["consistency"]["reached"] is True, body
            assert body["extensions"]["consistency"]["positions"]["holdings"] >= second
            assert body["data"]["holdings"] == [{"isin": isin, "quantity": 50}]
            assert "Traceback" not in query_api.stderr, query_api.stderr
        deployment.assert_no_tracebacks()
    finally:
        primary_views.close()


class Answer(threading.Thread):
    """One GraphQL query with ``Eventfold-Position``, sent from a thread of its own."""

    def __init__(self, base_url: str, account: str, position: int) -> None:
        super().__init__(name="waiting-query", daemon=True)
        self.base_url, self.account, self.position = base_url, account, position
        self.body: dict[str, Any] | None = None

    def run(self) -> None:
        with GraphQLClient(self.base_url, timeout=90) as graphql:
            self.body = graphql.execute(HOLDINGS, {"account": self.account}, position=self.position)
