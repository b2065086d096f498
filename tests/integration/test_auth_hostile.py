"""Hostile tokens, anonymous callers and failed-authentication floods, over real HTTP (issue 10, rows 2,
3, 9 and the token part of 11), on ``eventfold write-api``, ``query-api`` and ``dev``.

Tokens are signed here with RSA, EC and HMAC keys, or forged by hand. Every token that cannot be
verified is 401 with one of a few fixed details in our words, never a 500, never PyJWT's wording and
never a traceback in the server's log; a configuration whose algorithms do not match its keys does not
start; a caller without a token never has more rights than one with a valid token; bad tokens are
limited per client address before they are verified, and the query API limits requests like the write
API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from http_helpers import TRACEBACK_MARKERS, new_code, new_isin
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support.http import CliServer, ServerThread, clean_env, eventfold_executable
from support.postgres import PgDatabase, free_port
from support.tokens import AUDIENCE, ISSUER, new_key

from example_app.app import build_router
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.bus import CommandBus
from framework.graphql import QueryApiOptions, create_query_app
from framework.http.auth import JwtAuthenticator, JwtSettings
from framework.http.write_api import WriteApiOptions, create_write_app
from framework.security import Principal
from projections.graphql import build_graphql

# The only details a 401 may carry: our words, never the token library's.
NOT_VERIFIED = "the bearer token could not be verified"
FIXED_DETAILS = {
    "a bearer token is required",
    "the Authorization header must be `Bearer <token>`",
    "the token has expired",
    "the token is not meant for this audience",
    "the token comes from an unexpected issuer",
    "no signing key matches the token's key id",
    NOT_VERIFIED,
}
INVALID_TOKEN = 'Bearer error="invalid_token"'
HMAC_SECRET = "a-shared-secret-long-enough-for-hs512-" + "x" * 27  # 64 bytes
KID = "k1"


# --- keys and tokens --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Keys:
    """An RSA key and an EC key, each published alone in a JWKS file under the same kid."""

    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    rsa_jwks: Path
    ec_jwks: Path
    mixed_jwks: Path  # an HMAC secret beside the RSA key: never a valid configuration

    @property
    def rsa_pem(self) -> str:
        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("hostile-keys")
    rsa_key, ec_key = new_key(), ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": KID, "use": "sig"}
    ec_jwk = {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": KID, "use": "sig"}
    oct_jwk = {"kty": "oct", "kid": "shared", "k": b64(HMAC_SECRET.encode())}
    paths = {name: folder / f"{name}.json" for name in ("rsa", "ec", "mixed")}
    paths["rsa"].write_text(json.dumps({"keys": [rsa_jwk]}))
    paths["ec"].write_text(json.dumps({"keys": [ec_jwk]}))
    paths["mixed"].write_text(json.dumps({"keys": [rsa_jwk, oct_jwk]}))
    return Keys(rsa_key, ec_key, paths["rsa"], paths["ec"], paths["mixed"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(subject: str = "alice", roles: tuple[str, ...] = (), expires_in: int = 300, **more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + expires_in,
            "roles": list(roles), **more}


def signed(key: Any, algorithm: str, payload: dict[str, Any], kid: str | None = KID) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def forged(header: dict[str, Any], payload: dict[str, Any], signing_key: bytes | None = None) -> str:
    """A token put together by hand; signed with HMAC over ``signing_key`` when given, else junk."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (hmac.new(signing_key, signing_input.encode(), hashlib.sha256).digest() if signing_key
                 else os.urandom(64))
    return f"{signing_input}.{b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unverifiable(keys: Keys) -> dict[str, str]:
    """Tokens an RSA JWKS (kid ``k1``) must refuse, by what is wrong with them."""
    good = claims(roles=("custody", "registrar", "ops"))
    return {
        "es256-header-on-rsa-kid": forged({"alg": "ES256", "kid": KID}, good),
        "es256-signed-by-an-ec-key": signed(keys.ec, "ES256", good),
        "hs256-keyed-with-the-rsa-public-pem": forged({"alg": "HS256", "kid": KID}, good, keys.rsa_pem.encode()),
        "hs256-keyed-with-a-guess": forged({"alg": "HS256", "kid": KID}, good, b"secret"),
        "alg-none": jwt.encode(good, None, algorithm="none", headers={"kid": KID}),
        "alg-missing": forged({"kid": KID}, good),
        "unknown-kid": signed(keys.rsa, "RS256", good, kid="nope"),
        "another-rsa-key": signed(new_key(), "RS256", good),
        "ps256-by-another-key": signed(new_key(), "PS256", good),
        "header-not-json": f"{b64(b'{')}.{b64(json.dumps(good).encode())}.{b64(b'x')}",
        "header-a-list": f"{b64(b'[1]')}.{b64(json.dumps(good).encode())}.{b64(b'x')}",
        "three-junk-parts": "abc.def.ghi",
        "one-part": "not-a-jwt",
        "bad-padding": "e30.e30.===",
        "no-subject": signed(keys.rsa, "RS256", {k: v for k, v in good.items() if k != "sub"}),
        "no-expiry": signed(keys.rsa, "RS256", {k: v for k, v in good.items() if k != "exp"}),
        "not-yet-valid": signed(keys.rsa, "RS256", {**good, "nbf": int(time.time()) + 3600}),
        "expired": signed(keys.rsa, "RS256", claims(roles=("custody",), expires_in=-60)),
        "other-audience": signed(keys.rsa, "RS256", {**good, "aud": "another-api"}),
    }


# --- servers ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def database(pg_database: PgDatabase, app_schema: str) -> dict[str, str]:
    """What write-api and query-api need to reach their (initialised) tables."""
    env = {"EVENTFOLD_DATABASE_URL": pg_database.url(), "EVENTFOLD_DB_SCHEMA": app_schema}
    done = subprocess.run([eventfold_executable(), "init-db"], env=clean_env(**env), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return env


@dataclass(frozen=True)
class Endpoint:
    """Where a role takes commands or GraphQL queries: write-api and query-api one each, dev both."""

    role: str
    kind: str  # "commands" or "graphql"

    def __str__(self) -> str:
        return f"{self.role}-{self.kind}"


ENDPOINTS = [Endpoint("write-api", "commands"), Endpoint("query-api", "graphql"), Endpoint("dev", "commands"),
             Endpoint("dev", "graphql")]


@pytest.fixture
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Start ``eventfold <role>`` with the variables given (no anonymous access unless they say so)."""
    started: list[CliServer] = []

    def start(role: str, **variables: str) -> CliServer:
        env = clean_env(**{"EVENTFOLD_ANONYMOUS_ROLES": "", "EVENTFOLD_ALLOW_ANONYMOUS": "",
                           "EVENTFOLD_JWT_ISSUER": ISSUER, "EVENTFOLD_JWT_AUDIENCE": AUDIENCE, **variables})
        if role == "dev":
            env["EVENTFOLD_SQLITE_PATH"] = str(tmp_path / f"events-{len(started)}.sqlite3")
        else:
            env.update(request.getfixturevalue("database"))
        server = CliServer(role, env)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def stopped_cleanly(server: CliServer) -> str:
    """Stop the server and return its log, which must hold no traceback."""
    server.stop()
    log = server.stderr + server.stdout
    for marker in TRACEBACK_MARKERS:
        assert marker not in log, log[-3000:]
    return log


def call(server: CliServer | ServerThread, endpoint: Endpoint, headers: dict[str, str], *, command: str = "OpenAccount",
         query: str = "{ projections { name } }") -> httpx.Response:
    """A command (OpenAccount needs `custody`, RegisterSecurity `registrar`) or a GraphQL query."""
    if endpoint.kind == "graphql":
        return httpx.post(f"{server.base_url}/graphql", json={"query": query}, headers=headers, timeout=30)
    body: dict[str, Any] = {"account_number": new_code("HOST"), "holder_name": "Hostile Test"}
    if command == "RegisterSecurity":
        body = {"isin": new_isin(), "name": "Hostile Test plc", "currency": "EUR"}
    return httpx.post(f"{server.base_url}/commands/{command}", json=body, headers=headers, timeout=30)


def refusal(response: httpx.Response, endpoint: Endpoint, status: int) -> tuple[str, str]:
    """(code, detail) of a refusal in the shape of the endpoint: problem details, or a GraphQL error."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    if endpoint.kind == "graphql":
        [error] = body["errors"]
        return str(error["extensions"]["code"]), str(error["message"])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    return str(body["code"]), str(body["detail"])


def field_errors(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["extensions"]["code"] for e in response.json().get("errors", [])]


# --- row 2 and row 11: tokens that cannot be verified -------------------------------------------------

@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_every_unverifiable_token_is_401_in_our_words_without_a_traceback(
    serve: Any, keys: Keys, endpoint: Endpoint
) -> None:
    server = serve(endpoint.role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks), EVENTFOLD_AUTH_FAILURES_PER_MINUTE="0")
    answers = {}
    for case, token in unverifiable(keys).items():
        response = call(server, endpoint, bearer(token))
        answers[case] = refusal(response, endpoint, 401)
        assert response.headers["www-authenticate"] == INVALID_TOKEN, case
    for case, (code, detail) in answers.items():
        assert code.lower() == "unauthenticated", (case, code)
        assert detail in FIXED_DETAILS, (case, detail)
    assert answers["expired"][1] == "the token has expired"  # a client may refresh on this one
    assert answers["es256-header-on-rsa-kid"][1] == NOT_VERIFIED
    good = signed(keys.rsa, "RS256", claims(roles=("custody", "ops")))
    assert call(server, endpoint, bearer(good)).status_code == 200  # the server is still fine
    stopped_cleanly(server)


@pytest.mark.parametrize(("jwks", "algorithm"), [("rsa", "RS256"), ("rsa", "RS512"), ("rsa", "PS256"),
                                                 ("ec", "ES256")])
def test_each_key_verifies_the_algorithms_of_its_type_and_no_other(
    serve: Any, keys: Keys, jwks: str, algorithm: str
) -> None:
    key: Any = keys.rsa if jwks == "rsa" else keys.ec
    server = serve("dev", EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks if jwks == "rsa" else keys.ec_jwks))
    endpoint = Endpoint("dev", "commands")
    assert call(server, endpoint, bearer(signed(key, algorithm, claims(roles=("custody",))))).status_code == 200
    other = signed(keys.ec, "ES256", claims(roles=("custody",))) if jwks == "rsa" else \
        signed(keys.rsa, "RS256", claims(roles=("custody",)))
    assert refusal(call(server, endpoint, bearer(other)), endpoint, 401)[1] == NOT_VERIFIED
    stopped_cleanly(server)


def test_an_hmac_secret_verifies_only_the_hmac_algorithm_configured(serve: Any, keys: Keys) -> None:
    server = serve("dev", EVENTFOLD_JWT_KEY=HMAC_SECRET, EVENTFOLD_JWT_ALGORITHMS="HS256")
    endpoint = Endpoint("dev", "commands")
    payload = claims(roles=("custody",))
    assert call(server, endpoint, bearer(jwt.encode(payload, HMAC_SECRET, algorithm="HS256"))).status_code == 200
    for token in (jwt.encode(payload, HMAC_SECRET, algorithm="HS512"), signed(keys.rsa, "RS256", payload),
                  jwt.encode(payload, None, algorithm="none")):
        assert refusal(call(server, endpoint, bearer(token)), endpoint, 401)[1] == NOT_VERIFIED
    stopped_cleanly(server)


def run_role(role: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``eventfold <role>`` expected to refuse to start (killed after 20 s if it serves instead)."""
    env = clean_env(**{"EVENTFOLD_ANONYMOUS_ROLES": "", "EVENTFOLD_ALLOW_ANONYMOUS": "",
                       "EVENTFOLD_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/never", **variables})
    if role == "dev":
        env.pop("EVENTFOLD_DATABASE_URL")
    command = [eventfold_executable(), role, "--port", str(free_port())]
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{role} started with {variables}")


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], *mentions: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventfold: "), done.stderr
    for marker in TRACEBACK_MARKERS:
        assert marker not in done.stderr
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])


MISMATCHES = {
    "hmac-beside-rsa-algorithms": ({"EVENTFOLD_JWT_ALGORITHMS": "RS256,HS256", "jwks": "rsa"}, "HS256"),
    "hmac-algorithm-for-a-pem": ({"EVENTFOLD_JWT_ALGORITHMS": "HS256", "pem": "rsa"}, "HS256"),
    "ec-algorithm-for-rsa-keys": ({"EVENTFOLD_JWT_ALGORITHMS": "ES256", "jwks": "rsa"}, "ES256"),
    "hmac-secret-in-a-jwks-of-public-keys": ({"jwks": "mixed"}, "EVENTFOLD_JWKS_FILE"),
    "alg-none": ({"EVENTFOLD_JWT_ALGORITHMS": "none", "jwks": "rsa"}, "'none'"),
    "unknown-algorithm": ({"EVENTFOLD_JWT_ALGORITHMS": "RS257", "jwks": "rsa"}, "'RS257'"),
    "secret-with-public-key-algorithms": ({"EVENTFOLD_JWT_ALGORITHMS": "RS256,HS256", "secret": ""}, "HS256"),
}


def mismatch_env(keys: Keys, case: str) -> tuple[dict[str, str], str]:
    spec, mention = MISMATCHES[case]
    env = {k: v for k, v in spec.items() if k.startswith("EVENTFOLD_")}
    if "jwks" in spec:
        env["EVENTFOLD_JWKS_FILE"] = str({"rsa": keys.rsa_jwks, "mixed": keys.mixed_jwks}[spec["jwks"]])
    if "pem" in spec:
        env["EVENTFOLD_JWT_KEY"] = keys.rsa_pem
    if "secret" in spec:
        env["EVENTFOLD_JWT_KEY"] = HMAC_SECRET
    return env, mention


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_algorithms_that_do_not_match_the_keys_stop_write_api_in_one_line(keys: Keys, case: str) -> None:
    env, mention = mismatch_env(keys, case)
    assert_refused_in_one_line(run_role("write-api", **env), mention)


@pytest.mark.parametrize("role", ["query-api", "dev"])
def test_hmac_beside_public_key_algorithms_stops_every_role_in_one_line(keys: Keys, role: str) -> None:
    env, mention = mismatch_env(keys, "hmac-beside-rsa-algorithms")
    assert_refused_in_one_line(run_role(role, **env), mention, "EVENTFOLD_JWT_ALGORITHMS")


# --- row 3: anonymous callers ---------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["write-api", "query-api", "dev"])
def test_allow_anonymous_beside_a_token_key_stops_the_role_in_one_line(keys: Keys, role: str) -> None:
    done = run_role(role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks), EVENTFOLD_ALLOW_ANONYMOUS="true")
    assert_refused_in_one_line(done, "EVENTFOLD_ALLOW_ANONYMOUS", "EVENTFOLD_ANONYMOUS_ROLES")


def test_every_role_for_anonymous_callers_beside_a_token_key_stops_the_role(keys: Keys) -> None:
    done = run_role("write-api", EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks), EVENTFOLD_ANONYMOUS_ROLES="*")
    assert_refused_in_one_line(done, "EVENTFOLD_ANONYMOUS_ROLES='*'")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_with_a_key_and_no_anonymous_roles_a_caller_without_a_token_is_401(
    serve: Any, keys: Keys, endpoint: Endpoint
) -> None:
    server = serve(endpoint.role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks))
    code, detail = refusal(call(server, endpoint, {}), endpoint, 401)
    assert (code.lower(), detail) == ("unauthenticated", "a bearer token is required")
    stopped_cleanly(server)


@pytest.mark.parametrize("role", ["write-api", "dev"])
def test_a_caller_without_a_token_gets_only_the_anonymous_roles_for_commands(
    serve: Any, keys: Keys, role: str
) -> None:
    endpoint = Endpoint(role, "commands")
    server = serve(role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks), EVENTFOLD_ANONYMOUS_ROLES="custody")
    custody = bearer(signed(keys.rsa, "RS256", claims(roles=("custody",))))
    assert call(server, endpoint, {}).status_code == 200  # OpenAccount: custody
    assert refusal(call(server, endpoint, {}, command="RegisterSecurity"), endpoint, 403)[0] == "forbidden"
    assert refusal(call(server, endpoint, custody, command="RegisterSecurity"), endpoint, 403)[0] == "forbidden"
    stopped_cleanly(server)


@pytest.mark.parametrize("role", ["query-api", "dev"])
def test_a_caller_without_a_token_gets_only_the_anonymous_roles_for_fields(
    serve: Any, keys: Keys, role: str
) -> None:
    endpoint = Endpoint(role, "graphql")
    server = serve(role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks), EVENTFOLD_ANONYMOUS_ROLES="viewer")
    assert field_errors(call(server, endpoint, {})) == ["FORBIDDEN"]  # projections needs `ops`
    cards = call(server, endpoint, {}, query="{ cards(first: 1) { nodes { actionId } } }")
    assert field_errors(cards) == [] and "cards" in cards.json()["data"]
    ops = bearer(signed(keys.rsa, "RS256", claims(roles=("ops",))))
    assert field_errors(call(server, endpoint, ops)) == []
    stopped_cleanly(server)


@pytest.mark.parametrize("role", ["write-api", "dev"])
def test_a_token_never_gets_less_than_a_caller_without_one(serve: Any, keys: Keys, role: str) -> None:
    endpoint = Endpoint(role, "commands")
    server = serve(role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks), EVENTFOLD_ANONYMOUS_ROLES="registrar")
    custody = bearer(signed(keys.rsa, "RS256", claims(roles=("custody",))))
    assert call(server, endpoint, {}, command="RegisterSecurity").status_code == 200
    assert call(server, endpoint, custody, command="RegisterSecurity").status_code == 200
    stopped_cleanly(server)


def test_without_a_key_anonymous_roles_bound_what_every_caller_may_do(serve: Any) -> None:
    endpoint = Endpoint("write-api", "commands")
    server = serve("write-api", EVENTFOLD_ANONYMOUS_ROLES="custody")
    assert call(server, endpoint, {}).status_code == 200
    assert refusal(call(server, endpoint, {}, command="RegisterSecurity"), endpoint, 403)[0] == "forbidden"
    stopped_cleanly(server)


def test_dev_without_a_key_serves_a_newcomer_without_a_token(serve: Any) -> None:
    server = serve("dev")
    assert call(server, Endpoint("dev", "commands"), {}, command="RegisterSecurity").status_code == 200
    assert field_errors(call(server, Endpoint("dev", "graphql"), {})) == []
    log = stopped_cleanly(server)
    assert "deprecated" not in log


def test_the_deprecated_allow_anonymous_still_opens_a_server_without_keys(serve: Any) -> None:
    server = serve("write-api", EVENTFOLD_ALLOW_ANONYMOUS="true")
    assert call(server, Endpoint("write-api", "commands"), {}, command="RegisterSecurity").status_code == 200
    assert "EVENTFOLD_ANONYMOUS_ROLES=*" in stopped_cleanly(server)  # the warning says what to use


# --- row 3: scripts/distributed.sh ----------------------------------------------------------------------

def distributed(tmp_path: Path, **variables: str) -> list[str]:
    """Run a copy of scripts/distributed.sh whose `eventfold` only records how each role was started."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / ".venv" / "bin").mkdir(parents=True)
    script = Path(__file__).resolve().parents[2] / "scripts" / "distributed.sh"
    shutil.copy(script, root / "scripts" / "distributed.sh")
    recorder = root / ".venv" / "bin" / "eventfold"
    recorder.write_text(  # a role stays up until all four have recorded: the script stops them all when one ends
        '#!/usr/bin/env bash\necho "$1 roles=${EVENTFOLD_ANONYMOUS_ROLES-unset} '
        'allow=${EVENTFOLD_ALLOW_ANONYMOUS-unset}" >> "$RECORD"\n[ "$1" = init-db ] && exit 0\n'
        'for _ in $(seq 200); do [ "$(wc -l < "$RECORD")" -ge 5 ] && exit 0; sleep 0.05; done\n')
    recorder.chmod(0o755)
    record = tmp_path / "record.txt"
    env = clean_env(EVENTFOLD_DATABASE_URL="postgresql://x@127.0.0.1/x", EVENTFOLD_NATS_URL="nats://127.0.0.1:1",
                    RECORD=str(record), **variables)
    for name in ("EVENTFOLD_ALLOW_ANONYMOUS", "EVENTFOLD_ANONYMOUS_ROLES"):
        if name not in variables:
            env.pop(name, None)
    done = subprocess.run(["bash", str(root / "scripts" / "distributed.sh")], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return sorted(record.read_text().splitlines())


def test_distributed_sh_opens_the_roles_only_when_no_key_is_set(tmp_path: Path, keys: Keys) -> None:
    with_key = distributed(tmp_path / "a", EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks))
    assert all(line.endswith("roles=unset allow=unset") for line in with_key), with_key
    assert len(with_key) == 5, with_key
    without = distributed(tmp_path / "b")
    assert without == sorted(f"{role} roles=* allow=unset" for role in ROLES), without


ROLES = ("init-db", "write-api", "relay", "project", "query-api")


# --- row 9: failed authentication and request rates -----------------------------------------------------

@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_bad_tokens_from_one_address_are_limited_before_they_are_verified(
    serve: Any, keys: Keys, endpoint: Endpoint
) -> None:
    server = serve(endpoint.role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks))  # the default: 20 a minute
    tokens = list(unverifiable(keys).values())
    responses = [call(server, endpoint, bearer(tokens[i % len(tokens)])) for i in range(40)]
    statuses = [r.status_code for r in responses]
    assert statuses[:20] == [401] * 20, statuses
    assert set(statuses[20:]) <= {401, 429} and 429 in statuses[20:], statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert refusal(limited, endpoint, 429)[0].lower() == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    stopped_cleanly(server)


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.kind == "graphql"], ids=str)
def test_graphql_limits_requests_per_client_like_the_write_api(serve: Any, keys: Keys, endpoint: Endpoint) -> None:
    server = serve(endpoint.role, EVENTFOLD_JWKS_FILE=str(keys.rsa_jwks), EVENTFOLD_RATE_LIMIT_PER_SECOND="1")
    hasty = bearer(signed(keys.rsa, "RS256", claims("hasty", roles=("ops",))))
    responses = [call(server, endpoint, hasty) for _ in range(4)]
    statuses = [r.status_code for r in responses]
    assert statuses[0] == 200 and 429 in statuses, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert refusal(limited, endpoint, 429)[0] == "RATE_LIMITED"
    assert int(limited.headers["retry-after"]) >= 1
    patient = bearer(signed(keys.rsa, "RS256", claims("patient", roles=("ops",))))
    assert field_errors(call(server, endpoint, patient)) == []  # buckets are per client
    stopped_cleanly(server)


# --- the failed-authentication limit comes before verification --------------------------------------------

class CountingAuthenticator:
    """A real JWT authenticator that counts the tokens it was asked to verify."""

    blocking = False  # its keys come from a file

    def __init__(self, keys: Keys) -> None:
        self.calls = 0
        self._inner = JwtAuthenticator(JwtSettings(jwks_file=str(keys.rsa_jwks), issuer=ISSUER, audience=AUDIENCE))

    def authenticate(self, authorization: str | None) -> Principal:
        self.calls += 1
        return self._inner.authenticate(authorization)


def in_process_app(kind: str, authenticator: CountingAuthenticator) -> Any:
    if kind == "graphql":
        options = QueryApiOptions(auth_failures_per_minute=3)
        return create_query_app(build_graphql(), MemoryViewStore(), options=options, authenticator=authenticator)
    bus = CommandBus(build_router(), MemoryEventStore())
    return create_write_app(bus, WriteApiOptions(auth_failures_per_minute=3), authenticator=authenticator)


@pytest.mark.parametrize("kind", ["commands", "graphql"])
def test_once_an_address_is_over_its_failures_no_token_from_it_is_verified(keys: Keys, kind: str) -> None:
    authenticator = CountingAuthenticator(keys)
    endpoint = Endpoint("in-process", kind)
    with ServerThread(in_process_app(kind, authenticator)) as server:
        forged_token = bearer(unverifiable(keys)["es256-header-on-rsa-kid"])
        statuses = [call(server, endpoint, forged_token).status_code for _ in range(10)]
        assert statuses == [401] * 3 + [429] * 7, statuses
        valid = bearer(signed(keys.rsa, "RS256", claims(roles=("custody", "ops"))))
        assert call(server, endpoint, valid).status_code == 429
    assert authenticator.calls == 3  # the refused ones cost no signature check and no key lookup


def test_of_a_repeated_authorization_header_the_first_is_judged_whatever_the_name_s_case(serve: Any) -> None:
    """The commands route reads ``Authorization`` from headers it parses itself: the first of repeated
    ones, as Starlette's ``Headers.get`` answers (and the GraphQL endpoint), in any case of its name."""
    server = serve("write-api", EVENTFOLD_JWT_KEY=HMAC_SECRET, EVENTFOLD_JWT_ALGORITHMS="HS256",
                   EVENTFOLD_AUTH_FAILURES_PER_MINUTE="0")
    good = "Bearer " + jwt.encode(claims(roles=("custody",)), HMAC_SECRET, algorithm="HS256")

    def command(headers: list[tuple[str, str]]) -> httpx.Response:
        body = {"account_number": new_code("HOST"), "holder_name": "Hostile Test"}
        return httpx.post(f"{server.base_url}/commands/OpenAccount", json=body, headers=headers, timeout=30)

    assert command([("Authorization", good), ("Authorization", "Bearer forged")]).status_code == 200
    assert command([("AUTHORIZATION", good)]).status_code == 200
    for first in ("Bearer forged", "", "Basic YTpi"):
        refused = command([("Authorization", first), ("Authorization", good)])
        assert refusal(refused, Endpoint("write-api", "commands"), 401)[0] == "unauthenticated"
    stopped_cleanly(server)
