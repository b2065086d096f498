"""Token keys from a JWKS URL, served over real HTTP: checked at start-up, rotated, and a key server
outage (503 ``keys_unavailable``, never the client's 401)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from http_helpers import accepted, new_code, problem
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support.http import ServerThread, clean_env
from support.postgres import free_port
from support.tokens import AUDIENCE, ISSUER, Issuer, make_issuer
from test_cli_subprocess import assert_one_error_line, run_cli

from example_app.app import build_router
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.bus import CommandBus
from framework.errors import ConfigurationError, KeysUnavailable, Unauthenticated
from framework.graphql import create_query_app
from framework.http.auth import JwtAuthenticator, JwtSettings
from framework.http.write_api import WriteApiOptions, create_write_app
from projections.graphql import build_graphql

REFETCH = 0.3  # seconds between two fetches in these tests (the default is 5)


class KeyServer:
    """A JWKS document at ``url`` over real HTTP; what it answers can change, and it counts requests."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.document: Any = {"keys": list(keys)}  # a str is served as HTML
        self.status = 200
        self.fetches = 0
        self._stopped = False
        self._server = ServerThread(Starlette(routes=[Route("/jwks.json", self._serve)]))
        self.url = f"{self._server.base_url}/jwks.json"

    async def _serve(self, _: Request) -> Response:
        self.fetches += 1
        if isinstance(self.document, str):
            return Response(self.document, status_code=self.status, media_type="text/html")
        return JSONResponse(self.document, status_code=self.status)

    def __enter__(self) -> KeyServer:
        self._server.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Go away: connections to ``url`` are refused from now on."""
        if not self._stopped:
            self._stopped = True
            self._server.stop()


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    """The identity provider's next key, published after the services started."""
    return make_issuer(tmp_path_factory.mktemp("rotated"), kid="rotated-key")


@pytest.fixture
def keys(issuer: Issuer) -> Iterator[KeyServer]:
    with KeyServer(jwk(issuer)) as server:
        yield server


def jwk(issuer: Issuer) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(Path(issuer.jwks_file).read_text())
    return dict(document["keys"][0])


def settings(url: str, **overrides: Any) -> JwtSettings:
    base = JwtSettings(jwks_url=url, algorithms=("RS256",), issuer=ISSUER, audience=AUDIENCE,
                       jwks_refetch_seconds=REFETCH)
    return replace(base, **overrides)


def bearer(issuer: Issuer, kid: str | None = None, roles: list[str] | None = None) -> str:
    return f"Bearer {replace(issuer, kid=kid or issuer.kid).token('alice', roles)}"


# --- start-up ------------------------------------------------------------------------------------


def test_an_unreachable_url_stops_start_up() -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    with pytest.raises(ConfigurationError) as refused:
        JwtAuthenticator(settings(url))
    assert str(refused.value).startswith(f"EVENTFOLD_JWKS_URL={url!r} cannot be fetched: ")
    assert "Connection refused" in str(refused.value)


def test_a_url_answering_404_stops_start_up(keys: KeyServer) -> None:
    url = keys.url.replace("jwks.json", "missing.json")
    with pytest.raises(ConfigurationError, match=r"cannot be fetched: HTTP Error 404: Not Found$"):
        JwtAuthenticator(settings(url))


@pytest.mark.parametrize("document", [{"hello": "world"}, {"keys": "none"}, [1, 2], "<html>sign in</html>"],
                         ids=["json-object", "keys-not-a-list", "json-array", "html"])
def test_a_url_not_answering_a_jwks_stops_start_up(keys: KeyServer, document: Any) -> None:
    keys.document = document
    with pytest.raises(ConfigurationError, match=r"^EVENTFOLD_JWKS_URL='.*' is not a JWKS document: "):
        JwtAuthenticator(settings(keys.url))


def test_a_jwks_without_a_key_for_the_algorithms_stops_start_up(keys: KeyServer, issuer: Issuer) -> None:
    encryption = {**jwk(issuer), "use": "enc"}
    ec_key = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    keys.document = {"keys": [encryption, {**ec_key, "kid": "ec"}]}
    with pytest.raises(ConfigurationError, match=r"holds no signing key for RS256$"):
        JwtAuthenticator(settings(keys.url))
    with pytest.raises(ConfigurationError, match=r"holds no signing key for RS256$"):  # every one named needs a key
        JwtAuthenticator(settings(keys.url, algorithms=("RS256", "ES256")))
    assert JwtAuthenticator(settings(keys.url, algorithms=("ES256",))).blocking  # the EC key fits
    assert JwtAuthenticator(settings(keys.url, algorithms=())).blocking  # ...as it does the keys' own algorithms


def test_a_url_that_does_not_answer_stops_start_up_within_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        with pytest.raises(ConfigurationError, match=r"cannot be fetched: .*timed out"):  # the timeout applied
            JwtAuthenticator(settings(url, jwks_timeout_seconds=0.5))


def test_a_url_that_is_not_http_stops_start_up(issuer: Issuer) -> None:
    url = Path(issuer.jwks_file).as_uri()
    with pytest.raises(ConfigurationError, match=r"^EVENTFOLD_JWKS_URL='file://.*' is not usable: "):
        JwtAuthenticator(settings(url))


def test_write_api_with_an_unreachable_jwks_url_exits_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    env = clean_env(EVENTFOLD_ALLOW_ANONYMOUS="false", EVENTFOLD_JWKS_URL=url,
                    EVENTFOLD_DATABASE_URL=f"postgresql://127.0.0.1:{free_port()}/nowhere")
    done = run_cli("write-api", "--port", str(free_port()), env=env)
    assert_one_error_line(done, f"EVENTFOLD_JWKS_URL={url!r}", "cannot be fetched", "Connection refused")


# --- run time ------------------------------------------------------------------------------------


def test_a_valid_token_is_accepted_from_the_keys_fetched_at_start_up(keys: KeyServer, issuer: Issuer) -> None:
    auth = JwtAuthenticator(settings(keys.url))
    assert keys.fetches == 1  # at start-up, before any token
    for _ in range(5):
        assert auth.authenticate(bearer(issuer, roles=["ops"])).roles == {"ops"}
    assert keys.fetches == 1  # cached


def test_a_key_published_after_start_up_is_accepted(keys: KeyServer, issuer: Issuer, rotated: Issuer) -> None:
    auth = JwtAuthenticator(settings(keys.url))
    keys.document = {"keys": [jwk(issuer), jwk(rotated)]}
    time.sleep(REFETCH * 1.5)
    assert auth.authenticate(bearer(rotated)).subject == "alice"
    assert auth.authenticate(bearer(issuer)).subject == "alice"
    assert keys.fetches == 2

    time.sleep(REFETCH * 1.5)
    with pytest.raises(Unauthenticated, match="no signing key matches"):  # not in a freshly fetched set
        auth.authenticate(bearer(issuer, kid="unknown"))
    assert keys.fetches == 3


def test_a_key_removed_from_the_jwks_stops_verifying_once_the_set_is_refetched(
    keys: KeyServer, issuer: Issuer, rotated: Issuer
) -> None:
    auth = JwtAuthenticator(settings(keys.url, jwks_max_age_seconds=REFETCH))
    keys.document = {"keys": [jwk(rotated)]}
    time.sleep(REFETCH * 1.5)
    with pytest.raises(Unauthenticated, match="no signing key matches"):
        auth.authenticate(bearer(issuer))
    assert auth.authenticate(bearer(rotated)).subject == "alice"


def test_tokens_with_made_up_key_ids_fetch_at_most_once_per_interval(keys: KeyServer, issuer: Issuer) -> None:
    tokens = [bearer(issuer, kid=f"bogus-{i}") for i in range(60)]  # signed first: only checking is timed
    auth = JwtAuthenticator(settings(keys.url, jwks_refetch_seconds=1.0))

    def refused(token: str) -> None:
        with pytest.raises(Unauthenticated, match="no signing key matches"):
            auth.authenticate(token)

    for token in tokens[:20]:
        refused(token)
    assert keys.fetches == 1  # the start-up fetch is too recent
    time.sleep(1.2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(refused, tokens[20:]))
    assert keys.fetches == 2


def test_a_key_server_outage_is_keys_unavailable_and_cached_keys_still_verify(
    keys: KeyServer, issuer: Issuer, rotated: Issuer
) -> None:
    auth = JwtAuthenticator(settings(keys.url, jwks_max_age_seconds=REFETCH))
    keys.stop()
    time.sleep(REFETCH * 1.5)
    with pytest.raises(KeysUnavailable, match="cannot be fetched"):
        auth.authenticate(bearer(rotated))
    with pytest.raises(KeysUnavailable):  # within the interval: answered without trying again
        auth.authenticate(bearer(issuer, kid="bogus"))
    assert auth.authenticate(bearer(issuer)).subject == "alice"  # the set is stale, but it is all we have
    time.sleep(REFETCH * 1.5)
    assert auth.authenticate(bearer(issuer)).subject == "alice"


def test_keys_come_back_when_the_key_server_does(keys: KeyServer, issuer: Issuer, rotated: Issuer) -> None:
    auth = JwtAuthenticator(settings(keys.url))
    keys.status = 503
    time.sleep(REFETCH * 1.5)
    with pytest.raises(KeysUnavailable):
        auth.authenticate(bearer(rotated))
    keys.status, keys.document = 200, {"keys": [jwk(issuer), jwk(rotated)]}
    time.sleep(REFETCH * 1.5)
    assert auth.authenticate(bearer(rotated)).subject == "alice"


def test_the_write_api_answers_503_keys_unavailable_while_the_keys_cannot_be_fetched(
    keys: KeyServer, issuer: Issuer, rotated: Issuer
) -> None:
    auth = JwtAuthenticator(settings(keys.url))
    bus = CommandBus(build_router(), MemoryEventStore())
    app = create_write_app(bus, WriteApiOptions(retry_after_seconds=1), authenticator=auth)
    with ServerThread(app) as api, httpx.Client(base_url=api.base_url, timeout=30) as client:

        def open_account(authorization: str) -> httpx.Response:
            body = {"account_number": new_code("JWKS"), "holder_name": "Key Holder"}
            return client.post("/commands/OpenAccount", json=body, headers={"Authorization": authorization})

        keys.stop()
        time.sleep(REFETCH * 1.5)
        response = open_account(bearer(rotated, roles=["custody"]))
        body = problem(response, 503, "keys_unavailable")
        assert response.headers["retry-after"] == "1"
        assert "www-authenticate" not in response.headers
        assert keys.url not in body["detail"]  # the reason is logged on the server, not told to clients
        accepted(open_account(bearer(issuer, roles=["custody"])))  # a cached key still verifies


def test_the_query_api_answers_503_while_the_keys_cannot_be_fetched(
    keys: KeyServer, issuer: Issuer, rotated: Issuer
) -> None:
    app = create_query_app(build_graphql(), MemoryViewStore(), authenticator=JwtAuthenticator(settings(keys.url)))
    with ServerThread(app) as api:

        def projections(authorization: str) -> httpx.Response:
            return httpx.post(f"{api.base_url}/graphql", json={"query": "{ projections { name } }"},
                              headers={"Authorization": authorization}, timeout=30)

        keys.stop()
        time.sleep(REFETCH * 1.5)
        response = projections(bearer(rotated, roles=["ops"]))
        assert response.status_code == 503, response.text
        assert response.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        assert "retry-after" in response.headers
        assert projections(bearer(issuer, roles=["ops"])).json() == {"data": {"projections": []}}
