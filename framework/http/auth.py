"""JWT bearer authentication (PyJWT): the adapter that turns a token into a ``Principal``.

Signature, expiry, issuer and audience are checked. Keys come from a JWKS
document (a file, or a URL fetched with ``PyJWKClient``) or one configured key (a
PEM public key, or an HMAC secret for HS* algorithms). Roles are the union of the
token's ``roles`` claim (a list) and its ``scope``/``scp`` claim (space-separated
or a list). A refused token is ``Unauthenticated`` and never says more than why
it was refused; a JWKS URL that cannot be fetched is ``ConfigurationError`` at
start-up and ``KeysUnavailable`` (not the client's fault) afterwards.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.algorithms import get_default_algorithms

from framework.errors import ConfigurationError, KeysUnavailable, Unauthenticated
from framework.security import ANONYMOUS, Authenticator, Principal

__all__ = ["AllowAnonymous", "JwtAuthenticator", "JwtSettings", "authenticator_from_settings"]

log = logging.getLogger(__name__)


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
    jwks_timeout_seconds: float = 5.0  # a JWKS URL: how long one fetch may take (start-up waits this at most)
    jwks_refetch_seconds: float = 5.0  # ...the least time between two fetches, whatever kids tokens name
    jwks_max_age_seconds: float = 300.0  # ...how long a fetched set is used before it is fetched again

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
        remote = _RemoteKeys(settings.jwks_url, settings)
        return lambda token: remote.key_for(_kid(token)).key
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
    def resolve(token: str) -> Any:
        key = _find(keys.keys, _kid(token))
        if key is None:
            raise Unauthenticated("no signing key matches the token's key id")
        return key.key

    return resolve


def _kid(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as e:
        raise Unauthenticated(f"the token is not valid: {e}") from None
    return None if kid is None else str(kid)


def _find(keys: Sequence[PyJWK], kid: str | None) -> PyJWK | None:
    """The key named ``kid``; a token without one may use a set of exactly one key."""
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((k for k in keys if k.key_id == kid), None)


class _FetchFailed(Exception):
    """Why the JWKS URL gave no usable keys, worded to follow ``EVENTFOLD_JWKS_URL='...'``."""


class _RemoteKeys:
    """The signing keys at a JWKS URL: fetched at start-up, then again when the set is older than
    ``jwks_max_age_seconds`` or when a token names a key id it lacks (a rotation). At most one fetch
    per ``jwks_refetch_seconds``, so tokens with made-up key ids cannot flood the key server. While
    the key server is down, the keys already fetched keep verifying tokens.
    """

    def __init__(self, url: str, settings: JwtSettings) -> None:
        self._url, self._algorithms = url, settings.algorithms
        self._refetch, self._max_age = settings.jwks_refetch_seconds, settings.jwks_max_age_seconds
        try:  # PyJWKClient's own cache is off: this class decides when to fetch
            self._client = PyJWKClient(url, cache_jwk_set=False, timeout=settings.jwks_timeout_seconds)
            self._keys = self._fetch()
        except jwt.PyJWKClientError as e:  # the constructor refuses schemes other than http(s)
            raise ConfigurationError(f"EVENTFOLD_JWKS_URL={url!r} is not usable: {e}") from None
        except _FetchFailed as e:
            raise ConfigurationError(f"EVENTFOLD_JWKS_URL={url!r} {e}") from None
        self._fetched_at = self._tried_at = time.monotonic()
        self._failure: str | None = None
        self._lock = threading.Lock()

    def key_for(self, kid: str | None) -> PyJWK:
        if time.monotonic() - self._fetched_at >= self._max_age:
            self._refresh(wait=False)  # stale; if this fails, the keys we have go on verifying
        key = _find(self._keys, kid)
        if key is None:
            if not self._refresh(wait=True):  # maybe a rotation, but the key server cannot tell us
                raise KeysUnavailable("the token signing keys cannot be fetched; try again later")
            key = _find(self._keys, kid)
        if key is None:
            raise Unauthenticated("no signing key matches the token's key id")
        return key

    def _refresh(self, *, wait: bool) -> bool:
        """Fetch the set unless one was tried within ``refetch`` seconds, or (``wait`` false) another
        thread is fetching it; False while the last try failed."""
        if not self._lock.acquire(blocking=wait):
            return True
        try:
            if time.monotonic() - self._tried_at >= self._refetch:
                self._tried_at = time.monotonic()
                try:
                    self._keys, self._fetched_at, self._failure = self._fetch(), self._tried_at, None
                except _FetchFailed as e:  # the URL and reason go to the log, not to clients
                    self._failure = str(e)
                    log.warning("EVENTFOLD_JWKS_URL=%r %s; the keys fetched before stay in use", self._url, e)
            return self._failure is None
        finally:
            self._lock.release()

    def _fetch(self) -> list[PyJWK]:
        try:
            jwk_set = self._client.get_jwk_set()
        except (jwt.PyJWKClientConnectionError, OSError) as e:
            raise _FetchFailed(f"cannot be fetched: {_reason(e)}") from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as e:  # ValueError: not JSON
            raise _FetchFailed(f"is not a JWKS document: {e}") from None
        keys = [k for k in jwk_set.keys if _usable(k, self._algorithms)]
        if not keys:
            raise _FetchFailed(f"holds no signing key for {', '.join(self._algorithms)}")
        return keys


def _reason(error: BaseException) -> str:
    """The cause without PyJWT's wrapping: ``HTTP Error 404: Not Found``, ``[Errno 111] Connection refused``."""
    cause = error.__cause__ or error
    if isinstance(cause, URLError) and not isinstance(cause, HTTPError):
        return str(cause.reason)
    return str(cause) or type(cause).__name__


def _usable(key: PyJWK, algorithms: tuple[str, ...]) -> bool:
    """A signing key (``use`` is ``sig`` or unset) of a type one of ``algorithms`` verifies with."""
    if key.public_key_use not in ("sig", None):
        return False
    known = get_default_algorithms()
    return any(isinstance(known[name], type(key.Algorithm)) for name in algorithms if name in known)


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
