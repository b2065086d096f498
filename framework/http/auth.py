"""JWT bearer authentication (PyJWT): the adapter that turns a token into a ``Principal``.

Signature, expiry, issuer and audience are checked. Keys come from a JWKS
document (a file, or a URL through ``PyJWKClient``) or one configured key (a PEM
public key, or an HMAC secret for HS* algorithms). Roles are the union of the
token's ``roles`` claim (a list) and its ``scope``/``scp`` claim (space-separated
or a list). Every failure is ``Unauthenticated`` and never says more than why
the token was refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from framework.errors import ConfigurationError, Unauthenticated
from framework.security import ANONYMOUS, Authenticator, Principal

__all__ = ["AllowAnonymous", "JwtAuthenticator", "JwtSettings", "authenticator_from_settings"]


@dataclass(frozen=True)
class JwtSettings:
    """Where keys come from and what a token must say; exactly one key source is set."""

    jwks_file: str | None = None
    jwks_url: str | None = None
    key: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    issuer: str | None = None
    audience: str | None = None
    allow_anonymous: bool = False
    leeway_seconds: float = 0.0

    @property
    def has_key_source(self) -> bool:
        return bool(self.jwks_file or self.jwks_url or self.key)


class AllowAnonymous:
    """No verification at all: every caller is the anonymous principal (development only)."""

    def authenticate(self, authorization: str | None) -> Principal:
        return ANONYMOUS


class JwtAuthenticator:
    """Verifies ``Authorization: Bearer <jwt>``; without a header, anonymous only when allowed."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._keys = _key_resolver(settings)
        self.blocking = bool(settings.jwks_url)  # may fetch keys over the network: call off the event loop

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            if self._settings.allow_anonymous:
                return ANONYMOUS
            raise Unauthenticated("a bearer token is required")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be `Bearer <token>`")
        return self._verify(token.strip())

    def _verify(self, token: str) -> Principal:
        options = {"require": ["exp", "sub"], "verify_aud": self._settings.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key=self._keys(token),
                algorithms=list(self._settings.algorithms),
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is not meant for this audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token comes from an unexpected issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"the token is not valid: {e}") from None
        return Principal(subject=str(claims["sub"]), roles=_roles(claims))


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    roles: set[str] = set()
    for name in ("roles", "scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            roles.update(value.split())
        elif isinstance(value, Sequence):
            roles.update(str(v) for v in value)
    return frozenset(roles)


def _key_resolver(settings: JwtSettings) -> Any:
    """A function from a token to the key that must have signed it."""
    if settings.jwks_url:
        client = PyJWKClient(settings.jwks_url, cache_keys=True)

        def from_url(token: str) -> Any:
            try:
                return client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError as e:
                raise Unauthenticated(f"the signing keys cannot be fetched: {e}") from None
            except jwt.PyJWKClientError as e:
                raise Unauthenticated(f"no signing key for this token: {e}") from None

        return from_url
    if settings.jwks_file:
        return _from_jwks(_read_jwks(settings.jwks_file))
    if settings.key:
        key = _configured_key(settings.key, settings.algorithms)
        return lambda _token: key
    raise ConfigurationError(
        "no token key is configured: set EVENTFOLD_JWKS_FILE, EVENTFOLD_JWKS_URL or EVENTFOLD_JWT_KEY, "
        "or EVENTFOLD_ALLOW_ANONYMOUS=true (development and trusted networks only)"
    )


def _read_jwks(path: str) -> PyJWKSet:
    try:
        return PyJWKSet.from_dict(json.loads(Path(path).read_text()))
    except OSError as e:
        raise ConfigurationError(f"EVENTFOLD_JWKS_FILE={path!r} cannot be read: {e.strerror or e}") from None
    except (ValueError, jwt.PyJWTError) as e:
        raise ConfigurationError(f"EVENTFOLD_JWKS_FILE={path!r} is not a JWKS document: {e}") from None


def _from_jwks(keys: PyJWKSet) -> Any:
    by_id = {k.key_id: k for k in keys.keys}

    def resolve(token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"the token is not valid: {e}") from None
        key: PyJWK | None = by_id.get(kid) if kid is not None else None
        if key is None and kid is None and len(keys.keys) == 1:
            key = keys.keys[0]
        if key is None:
            raise Unauthenticated("no signing key matches the token's key id")
        return key.key

    return resolve


def _configured_key(raw: str, algorithms: tuple[str, ...]) -> Any:
    if all(a.startswith("HS") for a in algorithms):
        return raw.encode()
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(raw.encode())
    except ValueError as e:
        raise ConfigurationError(f"EVENTFOLD_JWT_KEY is not a PEM public key: {e}") from None


def authenticator_from_settings(settings: JwtSettings) -> Authenticator:
    """The JWT authenticator when a key source is set; ``AllowAnonymous`` when only that is allowed."""
    if not settings.has_key_source and settings.allow_anonymous:
        return AllowAnonymous()
    return JwtAuthenticator(settings)
