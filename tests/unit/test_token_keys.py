"""Which algorithms each key verifies, the configurations refused at start-up, who a caller without a
token is, and the counting side of the rate limiter: without a network."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support.tokens import new_key

from framework.errors import ConfigurationError, Unauthenticated
from framework.http.auth import NOT_VERIFIED, JwtAuthenticator, JwtSettings, jwt_settings
from framework.http.keys import (
    HMAC_ALGORITHMS,
    RSA_ALGORITHMS,
    SigningKey,
    check_algorithm_names,
    check_keys,
    configured_key,
    jwks_keys,
    key_algorithms,
)
from framework.http.ratelimit import RateLimiter
from framework.settings import Settings

SECRET = "s" * 32


def pem(public_key: object) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_each_key_type_verifies_its_own_algorithms() -> None:
    assert key_algorithms(new_key().public_key()) == RSA_ALGORITHMS
    assert key_algorithms(ec.generate_private_key(ec.SECP256R1()).public_key()) == {"ES256"}
    assert key_algorithms(ec.generate_private_key(ec.SECP384R1()).public_key()) == {"ES384"}
    assert key_algorithms(ed25519.Ed25519PrivateKey.generate().public_key()) == {"EdDSA"}
    assert key_algorithms(b"secret") == HMAC_ALGORITHMS


def test_a_jwks_entry_narrows_to_its_alg_and_skips_what_is_not_a_signing_key() -> None:
    rsa_jwk = RSAAlgorithm.to_jwk(new_key().public_key(), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    keys = jwks_keys({"keys": [{**rsa_jwk, "kid": "a", "alg": "PS256"}, {**rsa_jwk, "use": "enc"},
                               {**ec_jwk, "kid": "b"}, {"kty": "nope"}, "junk"]})
    assert [(k.kid, k.algorithms) for k in keys] == [("a", {"PS256"}), ("b", {"ES256"})]
    for document in ({"keys": "x"}, [1], {"keys": [{"kty": "nope"}]}):
        with pytest.raises(ValueError):
            jwks_keys(document)


@pytest.mark.parametrize(("names", "mention"), [(("none",), "'none'"), (("RS256", "HS256"), "mixes HMAC"),
                                                (("HS512", "ES256"), "mixes HMAC"), (("rs256",), "'rs256'")])
def test_algorithm_names_that_are_a_mistake_are_refused(names: tuple[str, ...], mention: str) -> None:
    with pytest.raises(ConfigurationError, match=mention):
        check_algorithm_names(names)
    check_algorithm_names(("RS256", "PS512", "ES256", "EdDSA"))


def test_keys_that_do_not_fit_the_algorithms_are_refused() -> None:
    rsa_key = SigningKey("r", new_key().public_key(), RSA_ALGORITHMS)
    secret = SigningKey("s", SECRET.encode(), HMAC_ALGORITHMS)
    with pytest.raises(ConfigurationError, match="mixes an HMAC secret with public keys"):
        check_keys([rsa_key, secret], (), "EVENTFOLD_JWKS_FILE='k.json'")
    with pytest.raises(ConfigurationError, match=r"names ES256, but EVENTFOLD_JWKS_FILE='k\.json' holds no signing"):
        check_keys([rsa_key], ("ES256",), "EVENTFOLD_JWKS_FILE='k.json'")
    [narrowed] = check_keys([rsa_key], ("RS256",), "source")
    assert narrowed.algorithms == {"RS256"}
    assert check_keys([rsa_key], (), "source") == [rsa_key]
    with pytest.raises(ConfigurationError, match="HMAC secret of 5 bytes; HS256, HS384, HS512 needs at least 64"):
        check_keys([SigningKey(None, b"short", HMAC_ALGORITHMS)], (), "EVENTFOLD_JWT_KEY")


def test_the_configured_key_is_a_pem_public_key_or_an_explicit_hmac_secret() -> None:
    public = new_key().public_key()
    assert configured_key(pem(public), ()).algorithms == RSA_ALGORITHMS
    assert configured_key(SECRET, ("HS256",)).key == SECRET.encode()
    with pytest.raises(ConfigurationError, match="set EVENTFOLD_JWT_ALGORITHMS=HS256"):
        configured_key(SECRET, ())
    with pytest.raises(ConfigurationError, match=r"^EVENTFOLD_JWT_KEY is not a PEM public key"):
        configured_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", ())
    with pytest.raises(ConfigurationError, match="holds no signing key for HS256"):  # a PEM named HS256
        JwtAuthenticator(JwtSettings(key=pem(public), algorithms=("HS256",)))


def test_a_token_whose_algorithm_is_not_its_keys_type_is_refused_in_our_words(tmp_path: Path) -> None:
    private = new_key()
    jwk = {**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k1"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    auth = JwtAuthenticator(JwtSettings(jwks_file=str(tmp_path / "jwks.json")))
    claims = {"sub": "a", "exp": 2**31}
    assert auth.authenticate(f"Bearer {jwt.encode(claims, private, 'PS384', headers={'kid': 'k1'})}").subject == "a"
    ec_token = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": "k1"})
    for token in (ec_token, "e30.e30.e30", "x", jwt.encode(claims, None, "none", headers={"kid": "k1"})):
        with pytest.raises(Unauthenticated) as refused:
            auth.authenticate(f"Bearer {token}")
        assert refused.value.message == NOT_VERIFIED


# --- who a caller without a token is -------------------------------------------------------------------

def anonymous_roles(role: str, **env: str) -> frozenset[str] | None:
    return jwt_settings(Settings.from_env({f"EVENTFOLD_{k}": v for k, v in env.items()}), role).anonymous_roles


def test_a_caller_without_a_token_has_the_configured_roles() -> None:
    assert anonymous_roles("dev") == {"*"}  # a newcomer's dev needs no token
    assert anonymous_roles("dev", JWKS_FILE="k.json") is None
    assert anonymous_roles("write-api") is None
    assert anonymous_roles("query-api", ANONYMOUS_ROLES="viewer, ops") == {"viewer", "ops"}
    assert anonymous_roles("write-api", JWKS_FILE="k.json", ANONYMOUS_ROLES="viewer") == {"viewer"}
    assert anonymous_roles("dev", ALLOW_ANONYMOUS="false", ANONYMOUS_ROLES="*") is None
    with pytest.raises(ConfigurationError, match="stands alone"):
        Settings.from_env({"EVENTFOLD_ANONYMOUS_ROLES": "ops,*"})


def test_the_deprecated_allow_anonymous_means_every_role_and_only_without_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert anonymous_roles("write-api", ALLOW_ANONYMOUS="true") == {"*"}
    assert "EVENTFOLD_ANONYMOUS_ROLES=*" in caplog.text
    with pytest.raises(ConfigurationError, match="EVENTFOLD_ALLOW_ANONYMOUS=true beside a token key"):
        anonymous_roles("write-api", ALLOW_ANONYMOUS="true", JWT_KEY="k")
    with pytest.raises(ConfigurationError, match="disagree"):
        anonymous_roles("write-api", ALLOW_ANONYMOUS="true", ANONYMOUS_ROLES="ops")


def test_the_failed_authentication_limit_is_read_from_the_environment() -> None:
    assert Settings().auth_failures_per_minute == 20
    assert Settings.from_env({"EVENTFOLD_AUTH_FAILURES_PER_MINUTE": "0"}).auth_failures_per_minute == 0
    with pytest.raises(ConfigurationError, match="EVENTFOLD_AUTH_FAILURES_PER_MINUTE='-1'"):
        Settings.from_env({"EVENTFOLD_AUTH_FAILURES_PER_MINUTE": "-1"})


# --- counting failures -----------------------------------------------------------------------------------

def test_spent_failures_block_an_address_until_its_bucket_refills() -> None:
    now = [0.0]
    failures = RateLimiter(3 / 60, burst=3, clock=lambda: now[0])
    for _ in range(3):
        assert failures.blocked("10.0.0.1") is None
        failures.spend("10.0.0.1")
    assert failures.blocked("10.0.0.1") == 20
    assert failures.blocked("10.0.0.2") is None  # per address
    failures.spend("10.0.0.1")  # spending an empty bucket does not push the wait further
    now[0] = 20.0
    assert failures.blocked("10.0.0.1") is None
    assert failures.blocked("10.0.0.1") is None  # asking takes nothing
