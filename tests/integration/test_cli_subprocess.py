"""The ``eventfold`` console script, run as a real subprocess."""

from __future__ import annotations

import signal
import subprocess

import httpx
import pytest
from http_helpers import TRACEBACK_MARKERS, accepted, new_code
from support.http import CliServer, clean_env, eventfold_executable
from support.postgres import PgDatabase, free_port

from example_app.accounts import Account
from example_app.app import build_router
from example_app.commands import OpenAccount
from framework.adapters.postgres import PostgresEventStore
from framework.bus import CommandBus
from framework.mapper import from_stored

TABLES = {"stored_events", "idempotency_keys", "snapshots"}


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [eventfold_executable(), *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def assert_no_traceback(text: str) -> None:
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, text


def assert_one_error_line(done: subprocess.CompletedProcess[str], *mentions: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert_no_traceback(done.stderr + done.stdout)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("eventfold:"), lines
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])
    return lines[0]


def tables_in(pg_database: PgDatabase, schema: str) -> set[str]:
    with pg_database.connect() as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


# --- init-db -------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_init_db_creates_the_tables_and_is_idempotent(pg_database: PgDatabase, pg_schema: str) -> None:
    env = clean_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=pg_schema)
    assert tables_in(pg_database, pg_schema) == set()

    first = run_cli("init-db", env=env)
    assert first.returncode == 0, first.stderr
    assert_no_traceback(first.stdout + first.stderr)
    success = first.stdout.strip().splitlines()
    assert len(success) == 1 and success[0].startswith("eventfold:") and "ready" in success[0], success
    assert tables_in(pg_database, pg_schema) >= TABLES

    store = PostgresEventStore(pg_database.settings(pg_schema))
    try:
        CommandBus(build_router(), store).execute(OpenAccount(account_number="CLI-1", holder_name="Grace"))

        second = run_cli("init-db", env=env)
        assert second.returncode == 0, second.stderr
        assert_no_traceback(second.stdout + second.stderr)
        assert second.stdout.strip().splitlines() == success
        kept = [from_stored(s).event_name for s in store.read_stream(Account.id_for("CLI-1"))]
        assert kept == ["AccountOpened"]  # running it again destroyed nothing
    finally:
        store.close()


@pytest.mark.postgres
def test_init_db_against_a_missing_database_is_one_line(pg_database: PgDatabase) -> None:
    missing = pg_database.server.url("eventfold_no_such_database")
    done = run_cli("init-db", env=clean_env(EVENTFOLD_DATABASE_URL=missing, EVENTFOLD_DB_CONNECT_TIMEOUT="1"))
    assert_one_error_line(done)


@pytest.mark.postgres
def test_init_db_with_a_missing_schema_is_one_line(pg_database: PgDatabase) -> None:
    env = clean_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=new_code("absent"))
    done = run_cli("init-db", env=env)
    if done.returncode == 0:  # creating the schema is an acceptable fix too
        return
    assert_one_error_line(done)


# --- configuration errors: one line on stderr, status 2, no traceback ----------------------------

UNREACHABLE = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


@pytest.mark.parametrize(
    ("variables", "mentions"),
    [
        ({"EVENTFOLD_DATABASE_URL": "mysql://root@localhost/app"}, ["EVENTFOLD_DATABASE_URL"]),
        ({"EVENTFOLD_DATABASE_URL": "postgresql://u@localhost:99999/app"},
         ["EVENTFOLD_DATABASE_URL", "port"]),
        ({"EVENTFOLD_DATABASE_URL": "postgresql://u@localhost"}, ["EVENTFOLD_DATABASE_URL"]),
        ({"EVENTFOLD_DATABASE_URL": UNREACHABLE, "EVENTFOLD_PORT": "abc"}, ["EVENTFOLD_PORT", "abc"]),
        ({"EVENTFOLD_DATABASE_URL": UNREACHABLE, "EVENTFOLD_PORT": "-1"}, ["EVENTFOLD_PORT"]),
        ({"EVENTFOLD_DATABASE_URL": UNREACHABLE, "EVENTFOLD_DB_POOL_SIZE": "many"},
         ["EVENTFOLD_DB_POOL_SIZE"]),
        ({}, ["EVENTFOLD_DATABASE_URL"]),
    ],
    ids=["not-postgres-url", "bad-port-in-url", "no-database", "port-abc", "port-negative", "pool-size",
         "no-url"],
)
def test_write_api_misconfigured_says_one_line(variables: dict[str, str], mentions: list[str]) -> None:
    done = run_cli("write-api", env=clean_env(**variables), timeout=30)
    assert_one_error_line(done, *mentions)
    assert done.stdout == ""


def test_a_password_in_a_bad_url_is_not_echoed() -> None:
    done = run_cli("write-api", env=clean_env(EVENTFOLD_DATABASE_URL="mysql://root:s3cret@localhost/app"))
    line = assert_one_error_line(done, "EVENTFOLD_DATABASE_URL")
    assert "s3cret" not in line


# --- the write API served by the CLI -------------------------------------------------------------


@pytest.mark.postgres
def test_write_api_serves_commands_from_the_cli(pg_database: PgDatabase, pg_schema: str) -> None:
    env = clean_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=pg_schema,
                    EVENTFOLD_DB_POOL_SIZE="2")
    assert run_cli("init-db", env=env).returncode == 0
    number = new_code("CLI")
    server = CliServer("write-api", env)
    with server:
        response = httpx.post(f"{server.base_url}/commands/OpenAccount",
                              json={"account_number": number, "holder_name": "Served By CLI"}, timeout=30)
        body = accepted(response)
        assert body["aggregate_id"] == str(Account.id_for(number))
        assert httpx.get(f"{server.base_url}/openapi.json", timeout=30).status_code == 200
    # uvicorn shuts down gracefully, then re-raises SIGTERM: a clean exit either way
    assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM), server.stderr
    assert "Application shutdown complete" in server.stderr
    assert_no_traceback(server.stderr)

    store = PostgresEventStore(pg_database.settings(pg_schema))
    try:
        assert [from_stored(s).event_name for s in store.read_stream(Account.id_for(number))] == [
            "AccountOpened"
        ]
    finally:
        store.close()


def test_a_server_that_logs_more_than_a_pipe_holds_keeps_serving() -> None:
    """CliServer keeps a server's output in files: a pipe nobody read would block it at 64 KiB of logs."""
    padding = "x" * 2_000
    with CliServer("dev", clean_env(EVENTFOLD_SQLITE_PATH=":memory:"), args=["--access-log"]) as server, \
            httpx.Client(base_url=server.base_url, timeout=15) as client:
        for n in range(80):  # each request logs a line of over 2 KB: 160 KB in all
            assert client.get(f"/healthz?n={n}&pad={padding}").status_code == 200
        assert (server.stdout + server.stderr).count(padding) >= 80  # read while it runs...
    assert (server.stdout + server.stderr).count(padding) >= 80  # ...and kept once it stopped
