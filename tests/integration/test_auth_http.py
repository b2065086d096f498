"""Security over real HTTP: bearer tokens and roles on the write API and GraphQL, the actor in the
events, start-up misconfiguration, the circuit breaker in front of PostgreSQL, and rate limits."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import MAX_BODY_BYTES, RETRY_AFTER_SECONDS, accepted, account_id, new_code, problem, stream
from support.http import CliServer, ServerThread, clean_env, eventfold_executable
from support.postgres import PgDatabase, PostgresServer
from support.tcp_proxy import TcpProxy
from support.tokens import AUDIENCE, ISSUER, Issuer, make_issuer, new_key

from example_app.app import build_router
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.postgres import PostgresEventStore
from framework.breaker import BreakingEventStore, CircuitBreaker
from framework.bus import CommandBus
from framework.errors import Unauthenticated
from framework.graphql import create_query_app
from framework.http.write_api import WriteApiOptions, create_write_app
from projections.graphql import build_graphql

INVALID_TOKEN = 'Bearer error="invalid_token"'


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def secured(pg_database: PgDatabase, app_schema: str, issuer: Issuer) -> Iterator[tuple[str, PostgresEventStore]]:
    """A write API that checks tokens, on PostgreSQL; its base URL and a store to check what it wrote."""
    store = PostgresEventStore(pg_database.settings(app_schema, pool_size=4))
    store.create_schema()
    bus = CommandBus(build_router(), store)
    app = create_write_app(bus, WriteApiOptions(MAX_BODY_BYTES, RETRY_AFTER_SECONDS),
                           authenticator=issuer.authenticator())
    with ServerThread(app) as server:
        yield server.base_url, store
    store.close()


def open_account(base_url: str, headers: dict[str, str], number: str | None = None) -> httpx.Response:
    body = {"account_number": number or new_code("AUTH"), "holder_name": "Token Holder"}
    return httpx.post(f"{base_url}/commands/OpenAccount", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("case", ["missing", "expired", "wrong_audience", "wrong_issuer", "wrong_signature",
                                  "garbled"])
def test_a_command_without_a_valid_token_is_401(
    secured: tuple[str, PostgresEventStore], issuer: Issuer, case: str
) -> None:
    base_url, _ = secured
    roles = ["custody"]
    headers = {
        "missing": {},
        "expired": issuer.bearer(roles=roles, expires_in=-30),
        "wrong_audience": issuer.bearer(roles=roles, audience="another-api"),
        "wrong_issuer": issuer.bearer(roles=roles, issuer="https://elsewhere.test"),
        "wrong_signature": issuer.bearer(roles=roles, key=new_key()),
        "garbled": {"Authorization": "Bearer abc.def.ghi"},
    }[case]
    response = open_account(base_url, headers)
    problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == INVALID_TOKEN


def test_a_command_without_its_role_is_403_and_writes_nothing(
    secured: tuple[str, PostgresEventStore], issuer: Issuer
) -> None:
    base_url, store = secured
    number = new_code("DENY")
    body = problem(open_account(base_url, issuer.bearer(roles=["registrar"]), number), 403, "forbidden")
    assert "custody" in body["detail"]
    assert stream(store, account_id(number)) == []


def test_a_valid_token_with_the_role_is_accepted_and_its_subject_is_the_actor(
    secured: tuple[str, PostgresEventStore], issuer: Issuer
) -> None:
    base_url, store = secured
    number = new_code("OK")
    accepted(open_account(base_url, issuer.bearer("ops-desk-7", roles=["custody", "registrar"]), number))
    [opened] = stream(store, account_id(number))
    assert opened.metadata.actor == "ops-desk-7"


def graphql(base_url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{base_url}/graphql", json={"query": "{ projections { name } }"}, headers=headers,
                      timeout=30)


def test_a_graphql_field_checks_tokens_and_roles(issuer: Issuer) -> None:
    app = create_query_app(build_graphql(), MemoryViewStore(), authenticator=issuer.authenticator())
    with ServerThread(app) as server:
        missing = graphql(server.base_url, {})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == INVALID_TOKEN
        assert missing.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        for bad in (issuer.bearer(roles=["ops"], expires_in=-30), issuer.bearer(roles=["ops"], key=new_key()),
                    issuer.bearer(roles=["ops"], audience="x")):
            assert graphql(server.base_url, bad).json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        forbidden = graphql(server.base_url, issuer.bearer(roles=["custody"])).json()
        assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert forbidden["errors"][0]["path"] == ["projections"]
        assert graphql(server.base_url, issuer.bearer(roles=["ops"])).json() == {"data": {"projections": []}}


# --- the CLI --------------------------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([eventfold_executable(), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("role", ["write-api", "query-api"])
def test_without_a_token_key_or_anonymous_access_the_roles_refuse_to_start(role: str, tmp_path: Path) -> None:
    url = "postgresql://nobody@127.0.0.1:1/never"  # never reached: the check comes first
    cases = {
        "no key": {},
        "missing file": {"EVENTFOLD_JWKS_FILE": str(tmp_path / "absent.json")},
        "bad file": {"EVENTFOLD_JWKS_FILE": str(tmp_path / "bad.json")},
        "bad pem": {"EVENTFOLD_JWT_KEY": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"},
    }
    (tmp_path / "bad.json").write_text('{"keys": "nope"}')
    for name, variables in cases.items():
        done = run_cli(role, env=clean_env(EVENTFOLD_DATABASE_URL=url, EVENTFOLD_ALLOW_ANONYMOUS="false",
                                           **variables))
        assert done.returncode == 2, (name, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("eventfold: "), (name, done.stderr)
        assert "Traceback" not in done.stderr


def test_the_write_api_role_checks_tokens_from_a_jwks_file(
    pg_database: PgDatabase, pg_schema: str, issuer: Issuer
) -> None:
    env = clean_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=pg_schema,
                    EVENTFOLD_ALLOW_ANONYMOUS="false", EVENTFOLD_JWKS_FILE=str(issuer.jwks_file),
                    EVENTFOLD_JWT_ALGORITHMS="RS256", EVENTFOLD_JWT_ISSUER=ISSUER, EVENTFOLD_JWT_AUDIENCE=AUDIENCE)
    assert run_cli("init-db", env=env).returncode == 0
    with CliServer("write-api", env) as server:
        problem(open_account(server.base_url, {}), 401, "unauthenticated")
        problem(open_account(server.base_url, issuer.bearer(roles=["ops"])), 403, "forbidden")
        accepted(open_account(server.base_url, issuer.bearer(roles=["custody"])))


# --- rate limit -----------------------------------------------------------------------------------

def test_a_client_over_its_rate_gets_429_with_retry_after(
    pg_database: PgDatabase, app_schema: str, issuer: Issuer
) -> None:
    store = PostgresEventStore(pg_database.settings(app_schema, pool_size=2))
    store.create_schema()  # idempotent; this test must not depend on another having run first
    app = create_write_app(CommandBus(build_router(), store), WriteApiOptions(rate_limit_per_second=1),
                           authenticator=issuer.authenticator())
    try:
        with ServerThread(app) as server:
            headers = issuer.bearer("hasty", roles=["custody"])
            statuses = [open_account(server.base_url, headers).status_code for _ in range(3)]
            assert statuses[0] == 200 and 429 in statuses, statuses
            limited = open_account(server.base_url, headers)
            problem(limited, 429, "rate_limited")
            assert int(limited.headers["retry-after"]) >= 1
            accepted(open_account(server.base_url, issuer.bearer("patient", roles=["custody"])))
    finally:
        store.close()


# --- circuit breaker ------------------------------------------------------------------------------

def test_the_breaker_opens_when_postgres_is_cut_and_closes_when_it_returns(
    pg_server: PostgresServer, pg_database: PgDatabase, app_schema: str
) -> None:
    if pg_server.host.startswith("/"):
        pytest.skip("the proxy needs PostgreSQL on TCP, not a unix socket")
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        settings = replace(pg_database.settings(app_schema, pool_size=2), host=proxy.host, port=proxy.port,
                           connect_timeout=1.0)
        store = BreakingEventStore(PostgresEventStore(settings), CircuitBreaker(threshold=2, cool_down=1.0))
        store.create_schema()  # idempotent; this test must not depend on another having run first
        app = create_write_app(CommandBus(build_router(), store), WriteApiOptions(retry_after_seconds=1))
        try:
            with ServerThread(app) as server:
                _open_then_close(server.base_url, proxy, store)
        finally:
            store.close()


def _open_then_close(base_url: str, proxy: TcpProxy, store: BreakingEventStore) -> None:
    accepted(open_account(base_url, {}))
    proxy.cut()
    details = [_unavailable(open_account(base_url, {})) for _ in range(6)]
    assert store.breaker.state == "open", details
    assert any("not trying again" in d for d in details), details
    refused = store.breaker.refused_total
    fast = _unavailable(open_account(base_url, {}))  # answered by the breaker, PostgreSQL not tried
    assert "not trying again" in fast
    assert store.breaker.refused_total > refused  # (the pool may reconnect in the background meanwhile)

    proxy.restore()
    for _ in range(100):  # bounded by attempts: a probe after each cool-down until PostgreSQL answers
        response = open_account(base_url, {})
        if response.status_code == 200:
            break
        _unavailable(response)
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    assert store.breaker.state == "closed"


def _unavailable(response: httpx.Response) -> str:
    body: dict[str, Any] = problem(response, 503, "store_unavailable")
    assert response.headers["retry-after"] == "1"
    return str(body["detail"])


def test_keys_can_come_from_a_jwks_url(issuer: Issuer) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from framework.http.auth import JwtAuthenticator, JwtSettings

    async def jwks(_: Any) -> Response:
        return Response(issuer.jwks_file.read_text(), media_type="application/json")

    with ServerThread(Starlette(routes=[Route("/jwks.json", jwks)])) as keys:
        auth = JwtAuthenticator(JwtSettings(jwks_url=f"{keys.base_url}/jwks.json", algorithms=("RS256",),
                                            issuer=ISSUER, audience=AUDIENCE))
        assert auth.blocking
        assert auth.authenticate(f"Bearer {issuer.token('remote', ['ops'])}").subject == "remote"
        with pytest.raises(Unauthenticated, match="could not be verified"):
            auth.authenticate(f"Bearer {issuer.token(key=new_key())}")
