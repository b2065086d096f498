"""Test signing keys and tokens: an RSA key generated per test run, its JWKS document, token minting."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from framework.http.auth import JwtAuthenticator, JwtSettings

ISSUER = "https://issuer.test"
AUDIENCE = "eventfold-tests"


@dataclass
class Issuer:
    """A private key that signs tokens, and the JWKS file that publishes its public half."""

    key: rsa.RSAPrivateKey
    kid: str
    jwks_file: Path

    def token(self, subject: str = "alice", roles: list[str] | None = None, *, expires_in: float = 300,
              issuer: str = ISSUER, audience: str = AUDIENCE, key: rsa.RSAPrivateKey | None = None,
              **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": subject, "iss": issuer, "aud": audience, "iat": now, "exp": int(now + expires_in),
                   "roles": roles or [], **claims}
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    def bearer(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*args, **kwargs)}"}

    def settings(self, *, anonymous_roles: frozenset[str] | None = None) -> JwtSettings:
        return JwtSettings(jwks_file=str(self.jwks_file), algorithms=("RS256",), issuer=ISSUER,
                           audience=AUDIENCE, anonymous_roles=anonymous_roles)

    def authenticator(self, *, anonymous_roles: frozenset[str] | None = None) -> JwtAuthenticator:
        return JwtAuthenticator(self.settings(anonymous_roles=anonymous_roles))


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_issuer(directory: Path, kid: str = "test-key") -> Issuer:
    key = new_key()
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    path = directory / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Issuer(key, kid, path)
