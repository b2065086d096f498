"""Session fixtures for tests that need PostgreSQL.

``pg_server`` finds a server or starts a throwaway one (see ``support.postgres``
for the order and the ``EVENTFOLD_TEST_DATABASE_URL`` / ``EVENTFOLD_TEST_NO_LOCAL``
switches). ``pg_database`` is this process's own database (each pytest-xdist worker
has its own), dropped at the end;
``pg_schema`` is an empty schema in it for one test.

Without a server the PostgreSQL tests are skipped, except when ``CI=true``:
then they fail, so a broken CI set-up can never pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.browser import chromium_browser, chromium_page  # noqa: F401  (shared fixtures)
from support.nats import jetstream_settings, nats_server, private_nats  # noqa: F401  (shared fixtures)
from support.postgres import (
    NoPostgres,
    PgDatabase,
    PostgresServer,
    ThrowawayCluster,
    create_database,
    drop_database,
    find_or_start_server,
    unique_name,
)

# The example application lives in the repository, not in the installed distribution: the CLI
# processes the tests start import it from here, whatever their working directory.
_REPOSITORY = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [_REPOSITORY, os.environ.get("PYTHONPATH", "")] if p)

_USED: list[str] = []
_PG_FIXTURES = {"pg_server", "pg_database", "pg_schema", "private_postgres"}
_NATS_FIXTURES = {"nats_server", "jetstream_settings", "private_nats"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = find_or_start_server()
    except NoPostgres as e:
        if _in_ci():
            pytest.fail(f"CI=true and PostgreSQL is required: {e}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {e}")
    _USED.append(server.origin)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own, to stop (``cluster.pause()``) and start again; removed after."""
    try:
        cluster = ThrowawayCluster.start()
    except NoPostgres as e:
        if _in_ci():
            pytest.fail(f"CI=true and a throwaway PostgreSQL cluster is required: {e}", pytrace=False)
        pytest.skip(f"no throwaway PostgreSQL cluster: {e}")
    try:
        yield cluster.server()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_database(pg_server: PostgresServer) -> Iterator[PgDatabase]:
    name = unique_name("eventfold_test")
    create_database(pg_server, name)
    try:
        yield PgDatabase(pg_server, name)
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def pg_schema(pg_database: PgDatabase) -> Iterator[str]:
    with pg_database.fresh_schema() as schema:
        yield schema


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Anything using the PostgreSQL fixtures carries the ``postgres`` marker (for ``-m``)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _PG_FIXTURES & fixtures:
            item.add_marker(pytest.mark.postgres)
        if _NATS_FIXTURES & fixtures:
            item.add_marker(pytest.mark.nats)
        if item.config.pluginmanager.hasplugin("xdist"):
            item.add_marker(pytest.mark.xdist_group(_worker_group(item)))


# Tests that kill, restart or cut servers and then wait for recovery within a bound: two of them at once on
# 2 cores starve each other's recovery, so under pytest-xdist they share one worker, one after another.
_KILLS_AND_RESTARTS = frozenset({
    "test_breakers.py", "test_jetstream_cluster.py", "test_partitioned_projections.py", "test_postgres_restart.py",
    "test_process_outbox.py", "test_projection_leases.py", "test_soak.py", "test_streaming_crashes.py",
    "test_write_processes.py",
})


def _worker_group(item: pytest.Item) -> str:
    """The pytest-xdist group (``--dist loadgroup``): a file's tests stay together (its servers start once)."""
    name = item.path.name
    return "kills-and-restarts" if name in _KILLS_AND_RESTARTS else str(item.path)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist a worker hands where its PostgreSQL came from to the controller, which reports it."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["eventfold_pg_origins"] = list(_USED)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: only called on the controller of a -n run
def pytest_testnodedown(node: object, error: object) -> None:
    for origin in getattr(node, "workeroutput", {}).get("eventfold_pg_origins", []):
        if origin not in _USED:
            _USED.append(origin)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for origin in _USED:
        terminalreporter.write_line(f"PostgreSQL for the tests: {origin}")
