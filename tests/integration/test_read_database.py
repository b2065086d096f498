"""Read models on their own PostgreSQL database (``EVENTFOLD_READ_DATABASE_URL``), end to end.

The event store lives in the run's database, the read models in another one: commands over HTTP,
the relay to JetStream, the workers into the read database, and a GraphQL answer that waits for the
command's position; then ``status`` and ``replay`` work against the read database too, and nothing
of the read side is left in the event store's database (nor the other way round).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from graphql_helpers import GraphQLClient
from streaming_helpers import Deployment, assert_matches_replay, deployment_for, new_isin, short_token, wait_settled
from support.http import CliServer
from support.nats import jetstream_settings, nats_server  # noqa: F401  (fixtures)
from support.postgres import PgDatabase, PostgresServer, create_database, drop_database, unique_name

from framework.adapters.nats import JetStreamSettings
from framework.adapters.postgres_views import PostgresViewStore
from projections.holdings import Holding

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

READ_SCHEMA = "read_side"
HOLDINGS = "query($account: String!) { holdings(accountNumber: $account) { isin quantity } }"


@pytest.fixture
def read_database(pg_server: PostgresServer) -> Iterator[PgDatabase]:
    """A database of this test's own for the read models, dropped afterwards."""
    name = unique_name("eventfold_reads")
    create_database(pg_server, name)
    try:
        yield PgDatabase(pg_server, name)
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def deployment(pg_database: PgDatabase, pg_schema: str, read_database: PgDatabase,
               jetstream_settings: JetStreamSettings, tmp_path: Path) -> Iterator[Deployment]:  # noqa: F811
    read_env = {"EVENTFOLD_READ_DATABASE_URL": read_database.url(), "EVENTFOLD_READ_DB_SCHEMA": READ_SCHEMA}
    with deployment_for(pg_database, pg_schema, jetstream_settings, tmp_path, extra_env=read_env) as deployed:
        yield deployed


def tables(database: PgDatabase, schema: str) -> set[str]:
    with database.connect() as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                            (schema,)).fetchall()
    return {row[0] for row in rows}


def post_command(client: httpx.Client, name: str, body: dict[str, object]) -> int:
    response = client.post(f"/commands/{name}", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["position"])


def test_read_models_in_another_database_end_to_end(deployment: Deployment, pg_database: PgDatabase,
                                                    read_database: PgDatabase) -> None:
    deployment.init_db()
    store_tables, read_tables = tables(pg_database, deployment.schema), tables(read_database, READ_SCHEMA)
    assert "stored_events" in store_tables and "eventfold_projection_positions" not in store_tables
    assert "eventfold_projection_positions" in read_tables and "stored_events" not in read_tables
    assert any(t.startswith("rm_holdings_") for t in read_tables)

    store = deployment.store()
    views = PostgresViewStore(read_database.settings(READ_SCHEMA, pool_size=2))
    try:
        deployment.start("relay")
        deployment.start("project")
        account, isin = f"RD{short_token()}", new_isin("FR")
        with CliServer("write-api", deployment.env()) as write_api, \
                CliServer("query-api", deployment.env()) as query_api, \
                httpx.Client(base_url=write_api.base_url, timeout=30) as client, \
                GraphQLClient(query_api.base_url) as graphql:
            post_command(client, "RegisterSecurity", {"isin": isin, "name": "Read Side SA", "currency": "EUR"})
            post_command(client, "OpenAccount", {"account_number": account, "holder_name": "Ada"})
            position = post_command(client, "CreditHoldings", {"account_number": account, "isin": isin,
                                                               "quantity": 42})
            # Read-your-writes: the answer waits until the workers wrote the read database.
            data = graphql.data(HOLDINGS, {"account": account}, position=position)
            assert data["holdings"] == [{"isin": isin, "quantity": 42}]

        wait_settled(views, store)
        assert_matches_replay(views, store)
        assert "rm_holdings_v1_holdings" not in tables(pg_database, deployment.schema)

        status = json.loads(deployment.cli_ok("status", "--json").stdout)
        assert {row["name"]: row["position"] for row in status}["holdings"] == store.head()

        deployment.cli_ok("replay", "holdings")
        assert views.active_version("holdings") == 2
        assert "rm_holdings_v2_holdings" in tables(read_database, READ_SCHEMA)
        assert [(h.isin, h.quantity) for h in views.query("holdings", Holding) if h.account_number == account] == [
            (isin, 42)]
        assert_matches_replay(views, store)
        deployment.assert_no_tracebacks()
    finally:
        views.close()
