"""JWT bearer authentication (PyJWT): the adapter that turns a token into a ``Principal``.

Signature, expiry, issuer and audience are checked. Keys come from a JWKS
document (a file, or a URL fetched with ``PyJWKClient``) or one configured key (a
PEM public key, or an HMAC secret for HS* algorithms); each verifies only the
algorithms of its type (``framework.http.keys``). Roles are the union of the
token's ``roles`` claim (a list) and its ``scope``/``scp`` claim (space-separated
or a list), plus the anonymous roles: a token never gets less than no token.

A refused token is ``Unauthenticated`` with one of a few fixed details in our
words, whatever PyJWT said. A caller without a token is the anonymous principal
with ``EVENTFOLD_ANONYMOUS_ROLES`` when set, else refused. A JWKS URL that cannot
be fetched is ``ConfigurationError`` at start-up and ``KeysUnavailable`` (not the
client's fault) afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError

import jwt
from jwt import PyJWKClient

from framework.errors import ConfigurationError, KeysUnavailable, Unauthenticated
from framework.http.keys import (
    SigningKey,
    check_algorithm_names,
    check_keys,
    configured_key,
    jwks_keys,
    read_jwks_file,
    usable,
)
from framework.security import ANONYMOUS, AllowAnonymous, Authenticator, Principal, anonymous
from framework.settings import Settings

__all__ = [
    "EVERY_ROLE",
    "NOT_VERIFIED",
    "AllowAnonymous",
    "JwtAuthenticator",
    "JwtSettings",
    "authenticator_from_settings",
    "jwt_settings",
]

log = logging.getLogger(__name__)

NOT_VERIFIED = "the bearer token could not be verified"
EVERY_ROLE = "*"  # EVENTFOLD_ANONYMOUS_ROLES=*: every caller may do everything (no key source only)
_EVERY = frozenset({EVERY_ROLE})


@dataclass(frozen=True)
class JwtSettings:
    """Where keys come from, what a token must say, and who a caller without one is."""

    jwks_file: str | None = None
    jwks_url: str | None = None
    key: str | None = None
    algorithms: tuple[str, ...] = ()  # empty: every algorithm of the configured keys' types
    issuer: str | None = None
    audience: str | None = None
    anonymous_roles: frozenset[str] | None = None  # a caller without a token; None: refused (401)
    leeway_seconds: float = 0.0
    jwks_timeout_seconds: float = 5.0  # a JWKS URL: how long one fetch may take (start-up waits this at most)
    jwks_refetch_seconds: float = 5.0  # ...the least time between two fetches, whatever kids tokens name
    jwks_max_age_seconds: float = 300.0  # ...how long a fetched set is used before it is fetched again

    @property
    def has_key_source(self) -> bool:
        return bool(self.jwks_file or self.jwks_url or self.key)


class JwtAuthenticator:
    """Verifies ``Authorization: Bearer <jwt>``; without a header, the anonymous roles when configured."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._extra = settings.anonymous_roles or frozenset()
        self._anonymous = None if settings.anonymous_roles is None else anonymous(settings.anonymous_roles)
        self._keys = _key_resolver(settings)
        self.blocking = bool(settings.jwks_url)  # may fetch keys over the network: call off the event loop

    @property
    def anonymous(self) -> Principal | None:
        """Who a caller without a token is (None: refused)."""
        return self._anonymous

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            if self._anonymous is not None:
                return self._anonymous
            raise Unauthenticated("a bearer token is required")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be `Bearer <token>`")
        return self._verify(token.strip())

    def _verify(self, token: str) -> Principal:
        key = self._keys(token)
        options = {"require": ["exp", "sub"], "verify_aud": self._settings.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=sorted(key.algorithms),  # the key's type decides, not the token's header
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
        except Exception as e:  # whatever decoding raised, the token is not verified
            log.debug("a bearer token was refused: %s", type(e).__name__)
            raise Unauthenticated(NOT_VERIFIED) from None
        return Principal(subject=str(claims["sub"]), roles=_roles(claims) | self._extra)


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    roles: set[str] = set()
    for name in ("roles", "scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            roles.update(value.split())
        elif isinstance(value, Sequence):
            roles.update(str(v) for v in value)
    return frozenset(roles)


def _key_resolver(settings: JwtSettings) -> Callable[[str], SigningKey]:
    """A function from a token to the key that must have signed it (and the algorithms it may use)."""
    check_algorithm_names(settings.algorithms)
    if settings.jwks_url:
        remote = _RemoteKeys(settings.jwks_url, settings)
        return lambda token: remote.key_for(*_header(token))
    if settings.jwks_file:
        keys = check_keys(read_jwks_file(settings.jwks_file), settings.algorithms,
                          f"EVENTFOLD_JWKS_FILE={settings.jwks_file!r}")
        return lambda token: _known(keys, *_header(token))
    if settings.key:
        [key] = check_keys([configured_key(settings.key, settings.algorithms)], settings.algorithms,
                           "EVENTFOLD_JWT_KEY")
        return lambda _token: key
    raise ConfigurationError(
        "no token key is configured: set EVENTFOLD_JWKS_FILE, EVENTFOLD_JWKS_URL or EVENTFOLD_JWT_KEY, "
        "or EVENTFOLD_ANONYMOUS_ROLES=* to serve every caller without a token (development and trusted "
        "networks only)"
    )


def _known(keys: Sequence[SigningKey], kid: str | None, algorithm: str | None) -> SigningKey:
    key = _find(keys, kid, algorithm)
    if key is None:
        raise Unauthenticated("no signing key matches the token's key id")
    return key


def _header(token: str) -> tuple[str | None, str | None]:
    """The token's ``kid`` and ``alg``, unverified: only to choose the key."""
    try:
        header = jwt.get_unverified_header(token)
    except Exception:  # a header PyJWT cannot read: a token we cannot verify
        raise Unauthenticated(NOT_VERIFIED) from None
    kid, algorithm = header.get("kid"), header.get("alg")
    return (None if kid is None else str(kid)), (algorithm if isinstance(algorithm, str) else None)


def _find(keys: Sequence[SigningKey], kid: str | None, algorithm: str | None) -> SigningKey | None:
    """The key named ``kid`` (the one for ``algorithm`` if two share it); without a kid, a lone key."""
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    named = [k for k in keys if k.kid == kid]
    return next((k for k in named if algorithm in k.algorithms), named[0] if named else None)


class _FetchFailed(Exception):
    """Why the JWKS URL gave no usable keys, worded to follow ``EVENTFOLD_JWKS_URL='...'``."""


class _RemoteKeys:
    """The signing keys at a JWKS URL: fetched at start-up, then again when the set is older than
    ``jwks_max_age_seconds`` or when a token names a key id it lacks (a rotation). At most one fetch
    per ``jwks_refetch_seconds``, so tokens with made-up key ids cannot flood the key server. While
    the key server is down, the keys already fetched keep verifying tokens. HMAC secrets are never
    taken from a URL: whoever can fetch a published secret can sign with it.
    """

    def __init__(self, url: str, settings: JwtSettings) -> None:
        self._url, self._algorithms = url, settings.algorithms
        self._refetch, self._max_age = settings.jwks_refetch_seconds, settings.jwks_max_age_seconds
        source = f"EVENTFOLD_JWKS_URL={url!r}"
        try:  # PyJWKClient's own cache is off: this class decides when to fetch
            self._client = PyJWKClient(url, cache_jwk_set=False, timeout=settings.jwks_timeout_seconds)
            self._keys = check_keys(self._download(), self._algorithms, source)
        except jwt.PyJWKClientError as e:  # the constructor refuses schemes other than http(s)
            raise ConfigurationError(f"{source} is not usable: {e}") from None
        except _FetchFailed as e:
            raise ConfigurationError(f"{source} {e}") from None
        self._fetched_at = self._tried_at = time.monotonic()
        self._failure: str | None = None
        self._lock = threading.Lock()

    def key_for(self, kid: str | None, algorithm: str | None) -> SigningKey:
        if time.monotonic() - self._fetched_at >= self._max_age:
            self._refresh(wait=False)  # stale; if this fails, the keys we have go on verifying
        key = _find(self._keys, kid, algorithm)
        if key is None:
            if not self._refresh(wait=True):  # maybe a rotation, but the key server cannot tell us
                raise KeysUnavailable("the token signing keys cannot be fetched; try again later")
            key = _known(self._keys, kid, algorithm)
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

    def _fetch(self) -> list[SigningKey]:
        keys = usable(self._download(), self._algorithms)
        if not keys:
            raise _FetchFailed(f"holds no signing key for {', '.join(self._algorithms) or 'any algorithm'}")
        return keys

    def _download(self) -> list[SigningKey]:
        try:
            document = self._client.fetch_data()
        except (jwt.PyJWKClientConnectionError, OSError) as e:
            raise _FetchFailed(f"cannot be fetched: {_reason(e)}") from None
        except (jwt.PyJWKClientError, ValueError):  # ValueError: not JSON
            raise _FetchFailed("is not a JWKS document: it is not a JSON object") from None
        try:
            return [k for k in jwks_keys(document) if not k.is_secret]
        except ValueError as e:
            raise _FetchFailed(f"is not a JWKS document: {e}") from None


def _reason(error: BaseException) -> str:
    """The cause without PyJWT's wrapping: ``HTTP Error 404: Not Found``, ``[Errno 111] Connection refused``."""
    cause = error.__cause__ or error
    if isinstance(cause, URLError) and not isinstance(cause, HTTPError):
        return str(cause.reason)
    return str(cause) or type(cause).__name__


def authenticator_from_settings(settings: JwtSettings) -> Authenticator:
    """The JWT authenticator when a key source is set; ``AllowAnonymous`` (every caller the anonymous
    principal) when there is none and anonymous roles are set; else ``ConfigurationError``."""
    roles = settings.anonymous_roles
    if settings.has_key_source and roles is not None and EVERY_ROLE in roles:
        raise ConfigurationError(
            "EVENTFOLD_ANONYMOUS_ROLES='*' gives callers without a token every role, so the token key would "
            "restrict nothing; name the roles they may have, or leave it unset to require a token")
    if settings.has_key_source or roles is None:
        return JwtAuthenticator(settings)  # without a key source: the "no token key" error
    return AllowAnonymous(ANONYMOUS if EVERY_ROLE in roles else anonymous(roles))


def jwt_settings(settings: Settings, role: str) -> JwtSettings:
    """The token settings of a role (``dev``, ``write-api``, ``query-api``) from ``Settings``."""
    return JwtSettings(
        jwks_file=settings.jwks_file,
        jwks_url=settings.jwks_url,
        key=settings.jwt_key,
        algorithms=settings.jwt_algorithms,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        anonymous_roles=_anonymous_roles(settings, role),
    )


def _anonymous_roles(settings: Settings, role: str) -> frozenset[str] | None:
    """EVENTFOLD_ANONYMOUS_ROLES; ``*`` for a ``dev`` without keys; the deprecated
    EVENTFOLD_ALLOW_ANONYMOUS=true means ``*`` and only without keys, =false means no anonymous access."""
    keys = bool(settings.jwks_file or settings.jwks_url or settings.jwt_key)
    roles = None if settings.anonymous_roles is None else frozenset(settings.anonymous_roles)
    if settings.allow_anonymous is False:
        return None
    if settings.allow_anonymous:
        return _legacy_open(keys, roles)
    if roles is None and role == "dev" and not keys:
        return _EVERY  # a newcomer's `eventfold dev` needs no token
    return roles


def _legacy_open(keys: bool, roles: frozenset[str] | None) -> frozenset[str]:
    if keys:
        raise ConfigurationError(
            "EVENTFOLD_ALLOW_ANONYMOUS=true beside a token key would let callers without a token do "
            "everything; set EVENTFOLD_ANONYMOUS_ROLES to the roles they may have, or neither to require a token")
    if roles not in (None, _EVERY):
        raise ConfigurationError("EVENTFOLD_ALLOW_ANONYMOUS=true and EVENTFOLD_ANONYMOUS_ROLES disagree; "
                                 "keep only EVENTFOLD_ANONYMOUS_ROLES")
    log.warning("EVENTFOLD_ALLOW_ANONYMOUS is deprecated: set EVENTFOLD_ANONYMOUS_ROLES=* instead "
                "(every caller may do everything, no token is checked)")
    return _EVERY
