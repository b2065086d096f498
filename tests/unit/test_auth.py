"""Bearer tokens, roles, rate limits and the circuit breaker, without a network."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jwt
import pytest
from support.tokens import AUDIENCE, ISSUER, Issuer, make_issuer, new_key

from example_app.app import build_router
from example_app.commands import AnnounceCorporateAction, OpenAccount
from framework import CommandBus, CommandContext, ConfigurationError, StoreUnavailable
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.breaker import BreakingEventStore, CircuitBreaker
from framework.errors import Forbidden, RateLimited, Unauthenticated
from framework.graphql import create_query_app
from framework.http.auth import (
    NOT_VERIFIED,
    AllowAnonymous,
    JwtAuthenticator,
    JwtSettings,
    authenticator_from_settings,
)
from framework.http.ratelimit import RateLimiter
from framework.http.write_api import WriteApiOptions, create_write_app
from framework.mapper import from_stored
from framework.security import ANONYMOUS, Principal, anonymous, authorize, has_any_role
from projections.graphql import build_graphql

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


def refused(issuer: Issuer, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        issuer.authenticator().authenticate(f"Bearer {token}")
    return caught.value.message


# --- tokens ---------------------------------------------------------------------------------------

def test_a_valid_token_gives_its_subject_and_roles(issuer: Issuer) -> None:
    token = issuer.token("alice", ["custody"], scope="ops registrar")
    principal = issuer.authenticator().authenticate(f"Bearer {token}")
    assert principal == Principal("alice", frozenset({"custody", "ops", "registrar"}))


def test_an_expired_token_is_refused(issuer: Issuer) -> None:
    assert "expired" in refused(issuer, issuer.token(expires_in=-60))


def test_a_token_for_another_audience_is_refused(issuer: Issuer) -> None:
    assert "audience" in refused(issuer, issuer.token(audience="someone-else"))


def test_a_token_from_another_issuer_is_refused(issuer: Issuer) -> None:
    assert "issuer" in refused(issuer, issuer.token(issuer="https://evil.test"))


def test_a_token_signed_by_another_key_is_refused(issuer: Issuer) -> None:
    assert refused(issuer, issuer.token(key=new_key())) == NOT_VERIFIED


def test_an_unsigned_or_garbled_token_is_refused(issuer: Issuer) -> None:
    unsigned = jwt.encode({"sub": "a", "iss": ISSUER, "aud": AUDIENCE, "exp": 2**31}, None, algorithm="none")
    refused(issuer, unsigned)
    refused(issuer, "not.a.token")
    with pytest.raises(Unauthenticated):
        issuer.authenticator().authenticate("Basic dXNlcjpwYXNz")


def test_no_token_is_refused_unless_anonymous_roles_are_set(issuer: Issuer) -> None:
    with pytest.raises(Unauthenticated):
        issuer.authenticator().authenticate(None)
    nobody = issuer.authenticator(anonymous_roles=frozenset()).authenticate(None)
    assert nobody == Principal(None, frozenset(), anonymous=True)
    assert not has_any_role(nobody, frozenset({"ops"}))
    assert has_any_role(nobody, frozenset())


def test_a_token_holds_the_anonymous_roles_too(issuer: Issuer) -> None:
    auth = issuer.authenticator(anonymous_roles=frozenset({"registrar"}))
    assert auth.authenticate(None).roles == {"registrar"}
    assert auth.authenticate(f"Bearer {issuer.token('al', ['custody'])}").roles == {"custody", "registrar"}


def test_a_configured_hmac_secret_verifies_tokens() -> None:
    auth = JwtAuthenticator(JwtSettings(key="s3cret-s3cret-s3cret-s3cret-s3cret", algorithms=("HS256",)))
    token = jwt.encode({"sub": "bob", "exp": 2**31, "roles": ["ops"]}, "s3cret-s3cret-s3cret-s3cret-s3cret",
                       algorithm="HS256")
    assert auth.authenticate(f"Bearer {token}") == Principal("bob", frozenset({"ops"}))


def test_a_configured_pem_public_key_verifies_tokens(issuer: Issuer) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = issuer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    auth = JwtAuthenticator(JwtSettings(key=pem, algorithms=("RS256",), issuer=ISSUER, audience=AUDIENCE))
    assert auth.authenticate(f"Bearer {issuer.token('carol')}").subject == "carol"


def test_misconfigurations_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="EVENTFOLD_ANONYMOUS_ROLES"):
        authenticator_from_settings(JwtSettings())
    with pytest.raises(ConfigurationError, match="cannot be read"):
        authenticator_from_settings(JwtSettings(jwks_file=str(tmp_path / "missing.json")))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="not a JWKS document"):
        authenticator_from_settings(JwtSettings(jwks_file=str(tmp_path / "bad.json")))
    with pytest.raises(ConfigurationError, match="PEM"):
        authenticator_from_settings(JwtSettings(key="not a key"))
    assert authenticator_from_settings(JwtSettings(anonymous_roles=frozenset("*"))).authenticate(None) is ANONYMOUS
    bounded = authenticator_from_settings(JwtSettings(anonymous_roles=frozenset({"custody"})))
    assert bounded.authenticate("Bearer anything") == Principal(None, frozenset({"custody"}), anonymous=True)
    with pytest.raises(ConfigurationError, match=r"EVENTFOLD_ANONYMOUS_ROLES='\*'"):
        authenticator_from_settings(JwtSettings(jwks_file=str(tmp_path / "bad.json"), anonymous_roles=frozenset("*")))


# --- roles ----------------------------------------------------------------------------------------

def test_roles_are_checked_against_the_command() -> None:
    authorize(OpenAccount, Principal("a", frozenset({"custody"})))
    authorize(OpenAccount, ANONYMOUS)  # a server that checks no tokens
    with pytest.raises(Forbidden):
        authorize(OpenAccount, anonymous(frozenset({"viewer"})))
    authorize(OpenAccount, anonymous(frozenset({"custody"})))
    with pytest.raises(Forbidden, match="custody"):
        authorize(OpenAccount, Principal("a", frozenset({"registrar"})))
    with pytest.raises(Forbidden):
        authorize(AnnounceCorporateAction, Principal("a", frozenset({"custody"})))


# --- write API ------------------------------------------------------------------------------------

def write_client(issuer: Issuer, store: MemoryEventStore, **options: Any) -> TestClient:
    bus = CommandBus(build_router(), store)
    app = create_write_app(bus, WriteApiOptions(**options), authenticator=issuer.authenticator())
    return TestClient(app, raise_server_exceptions=False)


def open_account(client: TestClient, headers: dict[str, str], number: str = "ACC-1") -> Any:
    return client.post("/commands/OpenAccount", json={"account_number": number, "holder_name": "A"},
                       headers=headers)


def test_the_write_api_answers_401_403_and_records_the_actor(issuer: Issuer) -> None:
    store = MemoryEventStore()
    client = write_client(issuer, store)
    missing = open_account(client, {})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert missing.json()["code"] == "unauthenticated"
    expired = open_account(client, issuer.bearer(roles=["custody"], expires_in=-10))
    assert (expired.status_code, expired.json()["code"]) == (401, "unauthenticated")
    forbidden = open_account(client, issuer.bearer(roles=["registrar"]))
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"].startswith("application/problem+json")
    assert forbidden.json()["code"] == "forbidden"
    assert store.head() == 0
    ok = open_account(client, issuer.bearer("dora", roles=["custody"]))
    assert ok.status_code == 200, ok.text
    [stored] = store.read_all(0, 10)
    assert from_stored(stored).metadata.actor == "dora"


def test_process_managers_are_not_checked_by_the_bus() -> None:
    bus = CommandBus(build_router(), MemoryEventStore())
    executed = bus.execute(OpenAccount(account_number="ACC-9", holder_name="P"), CommandContext(actor=None))
    assert executed.result.version == 1


def test_the_write_api_without_authenticator_lets_everyone_in() -> None:
    client = TestClient(create_write_app(CommandBus(build_router(), MemoryEventStore())))
    assert open_account(client, {}).status_code == 200


def test_the_write_api_rate_limits_per_client(issuer: Issuer) -> None:
    client = write_client(issuer, MemoryEventStore(), rate_limit_per_second=2)
    headers = issuer.bearer("eve", roles=["custody"])
    statuses = [open_account(client, headers, f"ACC-R{i}").status_code for i in range(4)]
    assert statuses[:2] == [200, 200]
    limited = open_account(client, headers, "ACC-R9")
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    other = open_account(client, issuer.bearer("frank", roles=["custody"]), "ACC-F1")
    assert other.status_code == 200  # buckets are per client


def test_a_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, burst=2, clock=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited) as caught:
        limiter.check("a")
    assert caught.value.retry_after == 1
    now[0] = 1.0
    limiter.check("a")


# --- GraphQL --------------------------------------------------------------------------------------

def query_client(issuer: Issuer) -> TestClient:
    app = create_query_app(build_graphql(), MemoryViewStore(), authenticator=issuer.authenticator())
    return TestClient(app, raise_server_exceptions=False)


def test_a_graphql_field_with_a_role_answers_forbidden_without_it(issuer: Issuer) -> None:
    client = query_client(issuer)
    body = {"query": "{ projections { name } }"}
    denied = client.post("/graphql", json=body, headers=issuer.bearer(roles=["custody"])).json()
    assert [e["extensions"]["code"] for e in denied["errors"]] == ["FORBIDDEN"]
    allowed = client.post("/graphql", json=body, headers=issuer.bearer(roles=["ops"])).json()
    assert allowed == {"data": {"projections": []}}


def test_graphql_without_a_valid_token_is_unauthenticated(issuer: Issuer) -> None:
    client = query_client(issuer)
    for headers in ({}, issuer.bearer(audience="other"), {"Authorization": "Bearer junk"}):
        response = client.post("/graphql", json={"query": "{ projections { name } }"}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


# --- one way to the principal: the gate admits, both APIs read what it admitted ---------------------------

class BlockingAuthenticator:
    """Declares that it blocks: the gate must call it off the event loop."""

    blocking = True

    def __init__(self) -> None:
        self.threads: list[str] = []

    def authenticate(self, authorization: str | None) -> Principal:
        import threading

        self.threads.append(threading.current_thread().name)
        return Principal("bob", frozenset({"ops", "custody"}))


def test_the_gate_calls_a_blocking_authenticator_off_the_event_loop() -> None:
    import asyncio
    import threading

    from starlette.requests import Request

    from framework.http.gate import Gate, admitted

    authenticator = BlockingAuthenticator()
    request = Request({"type": "http", "headers": [], "client": ("10.0.0.1", 1)})
    principal = asyncio.run(Gate(authenticator).admit(request))
    assert principal == admitted(request) == Principal("bob", frozenset({"ops", "custody"}))
    assert authenticator.threads and authenticator.threads[0] != threading.main_thread().name


def test_without_an_authenticator_the_gate_admits_everyone_as_the_anonymous_principal() -> None:
    import asyncio

    from starlette.requests import Request

    from framework.http.gate import Gate, admitted

    request = Request({"type": "http", "headers": [], "client": ("10.0.0.1", 1)})
    assert asyncio.run(Gate(None).admit(request)) is ANONYMOUS
    assert admitted(request) is ANONYMOUS


def test_a_request_the_gate_did_not_admit_has_no_principal() -> None:
    from starlette.requests import Request

    from framework.http.gate import admitted

    with pytest.raises(Unauthenticated):
        admitted(Request({"type": "http", "headers": []}))


def test_a_blocking_authenticator_answers_graphql_and_commands() -> None:
    authenticator = BlockingAuthenticator()
    query = TestClient(create_query_app(build_graphql(), MemoryViewStore(), authenticator=authenticator))
    assert query.post("/graphql", json={"query": "{ projections { name } }"}).json() == {"data": {"projections": []}}
    bus = CommandBus(build_router(), MemoryEventStore())
    writes = TestClient(create_write_app(bus, WriteApiOptions(), authenticator=authenticator))
    response = writes.post("/commands/OpenAccount", json={"account_number": "GATE-1", "holder_name": "Bob"})
    assert response.status_code == 200, response.text
    assert from_stored(bus.store.read_all(0, 1)[0]).metadata.actor == "bob"
    assert len(authenticator.threads) == 2


# --- circuit breaker ------------------------------------------------------------------------------

class FlakyStore(MemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def head(self) -> int:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("down")
        return super().head()


def test_the_breaker_opens_after_failures_then_probes_and_closes() -> None:
    now = [0.0]
    flaky = FlakyStore()
    store = BreakingEventStore(flaky, CircuitBreaker(threshold=2, cool_down=5, clock=lambda: now[0]))
    flaky.down = True
    for _ in range(2):
        with pytest.raises(StoreUnavailable, match="down"):
            store.head()
    assert store.breaker.state == "open"
    with pytest.raises(StoreUnavailable, match="not trying again"):
        store.head()
    assert flaky.calls == 2  # failed fast, the store was not asked
    now[0] = 5.0
    assert store.breaker.state == "half-open"
    with pytest.raises(StoreUnavailable, match="down"):  # the probe fails: open again
        store.head()
    assert store.breaker.state == "open"
    flaky.down = False
    now[0] = 10.0
    assert store.head() == 0  # the probe succeeds
    assert store.breaker.state == "closed"


# --- settings -------------------------------------------------------------------------------------

def test_security_settings_are_read_from_the_environment() -> None:
    from framework.cli.common import authenticator
    from framework.settings import Settings

    settings = Settings.from_env({"EVENTFOLD_JWT_ALGORITHMS": "RS256, HS256", "EVENTFOLD_RATE_LIMIT_PER_SECOND": "5",
                                  "EVENTFOLD_ALLOW_ANONYMOUS": "no"})
    assert settings.jwt_algorithms == ("RS256", "HS256")
    assert settings.rate_limit_per_second == 5.0
    assert settings.allow_anonymous is False
    with pytest.raises(ConfigurationError, match="EVENTFOLD_ALLOW_ANONYMOUS='maybe'"):
        Settings.from_env({"EVENTFOLD_ALLOW_ANONYMOUS": "maybe"})
    assert isinstance(authenticator(Settings(), "dev"), AllowAnonymous)
    with pytest.raises(ConfigurationError, match="no token key"):
        authenticator(Settings(), "write-api")
    assert isinstance(authenticator(Settings(allow_anonymous=True), "query-api"), AllowAnonymous)
