"""Token signing keys and the algorithms each may verify.

A key verifies the algorithms of its type and no other: an RSA key RS*/PS*, an EC key the ES*
algorithm of its curve, an Ed25519/Ed448 key EdDSA, an HMAC secret HS* (a JWK's ``alg``, when it
names one, narrows this to that one). ``EVENTFOLD_JWT_ALGORITHMS``, when set, narrows it further.
So a token whose header names another algorithm than its key's type is refused before any signature
code runs: an ES256 header on an RSA kid, or HS256 "signed" with an RSA public key as the secret.

Start-up refuses a configuration that could only be a mistake, in one line: an HMAC secret beside
public keys, algorithm names that are unknown (or ``none``), HMAC beside public-key algorithms, an
algorithm no configured key can verify, an HMAC secret shorter than its hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from framework.errors import ConfigurationError

__all__ = ["KNOWN_ALGORITHMS", "SigningKey", "check_algorithm_names", "check_keys", "configured_key",
           "jwks_keys", "read_jwks_file", "usable"]

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_EC_BY_CURVE = {"secp256r1": frozenset({"ES256"}), "secp384r1": frozenset({"ES384"}),
                "secp521r1": frozenset({"ES512", "ES521"}), "secp256k1": frozenset({"ES256K"})}
EC_ALGORITHMS = frozenset().union(*_EC_BY_CURVE.values())
KNOWN_ALGORITHMS = RSA_ALGORITHMS | EC_ALGORITHMS | HMAC_ALGORITHMS | {"EdDSA"}
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: at least the hash's size


@dataclass(frozen=True)
class SigningKey:
    """A key that verifies tokens, its ``kid`` (None for ``EVENTFOLD_JWT_KEY``) and what it may verify."""

    kid: str | None
    key: Any
    algorithms: frozenset[str]

    @property
    def is_secret(self) -> bool:
        return isinstance(self.key, bytes)


def key_algorithms(key: Any) -> frozenset[str]:
    """Every algorithm a key of this type verifies."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_BY_CURVE.get(key.curve.name, frozenset())
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    if isinstance(key, bytes):
        return HMAC_ALGORITHMS
    return frozenset()


def _public(key: Any) -> Any:
    """A private key published by mistake verifies as its public half."""
    private = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
    return key.public_key() if isinstance(key, private) else key


def _family(algorithms: Iterable[str]) -> str:
    return "HMAC" if set(algorithms) <= HMAC_ALGORITHMS else "public-key"


def check_algorithm_names(algorithms: Sequence[str]) -> None:
    """EVENTFOLD_JWT_ALGORITHMS names only signing algorithms, and not HMAC beside public-key ones."""
    for name in algorithms:
        if name not in KNOWN_ALGORITHMS:
            raise ConfigurationError(
                f"EVENTFOLD_JWT_ALGORITHMS names {name!r}, which is not a token signing algorithm "
                f"(use some of {', '.join(sorted(KNOWN_ALGORITHMS))})")
    hmac = sorted(set(algorithms) & HMAC_ALGORITHMS)
    public = sorted(set(algorithms) - HMAC_ALGORITHMS)
    if hmac and public:
        raise ConfigurationError(
            f"EVENTFOLD_JWT_ALGORITHMS={','.join(algorithms)!r} mixes HMAC ({', '.join(hmac)}) with public-key "
            f"algorithms ({', '.join(public)}); keep one family, the one of your keys")


def usable(keys: Iterable[SigningKey], algorithms: Sequence[str]) -> list[SigningKey]:
    """The keys narrowed to ``algorithms`` (all of theirs when empty), without those left with none."""
    allowed = frozenset(algorithms) or KNOWN_ALGORITHMS
    narrowed = (SigningKey(k.kid, k.key, k.algorithms & allowed) for k in keys)
    return [k for k in narrowed if k.algorithms]


def check_keys(keys: Sequence[SigningKey], algorithms: Sequence[str], source: str) -> list[SigningKey]:
    """The usable keys of ``source``, or ``ConfigurationError`` for a configuration that is a mistake."""
    if any(k.is_secret for k in keys) and not all(k.is_secret for k in keys):
        raise ConfigurationError(f"{source} mixes an HMAC secret with public keys; a token service uses one "
                                 "or the other: keep the public keys")
    for name in algorithms:
        if not any(name in k.algorithms for k in keys):
            raise ConfigurationError(f"EVENTFOLD_JWT_ALGORITHMS names {name}, but {source} holds no signing key "
                                     f"for {name}")
    found = usable(keys, algorithms)
    if not found:
        raise ConfigurationError(f"{source} holds no signing key")
    _check_secret_lengths(found, source)
    return found


def _check_secret_lengths(keys: Sequence[SigningKey], source: str) -> None:
    for key in keys:
        if key.is_secret:
            needed = max(_HMAC_MIN_BYTES[a] for a in key.algorithms)
            if len(key.key) < needed:
                raise ConfigurationError(f"{source} is an HMAC secret of {len(key.key)} bytes; "
                                         f"{', '.join(sorted(key.algorithms))} needs at least {needed}")


def configured_key(raw: str, algorithms: Sequence[str]) -> SigningKey:
    """EVENTFOLD_JWT_KEY: a PEM public key, or (only when every algorithm named is HS*) a shared secret."""
    if raw.lstrip().startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(raw.strip().encode())
        except (ValueError, TypeError):
            raise ConfigurationError("EVENTFOLD_JWT_KEY is not a PEM public key (a private key or a "
                                     "certificate will not do)") from None
        return SigningKey(None, key, key_algorithms(key))
    if algorithms and _family(algorithms) == "HMAC":
        return SigningKey(None, raw.encode(), HMAC_ALGORITHMS)
    raise ConfigurationError("EVENTFOLD_JWT_KEY is not a PEM public key; to use it as an HMAC secret, set "
                             "EVENTFOLD_JWT_ALGORITHMS=HS256 (or HS384, HS512)")


def read_jwks_file(path: str) -> list[SigningKey]:
    source = f"EVENTFOLD_JWKS_FILE={path!r}"
    try:
        document = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigurationError(f"{source} cannot be read: {e.strerror or e}") from None
    except ValueError:
        raise ConfigurationError(f"{source} is not a JWKS document: it is not JSON") from None
    try:
        return jwks_keys(document)
    except ValueError as e:
        raise ConfigurationError(f"{source} is not a JWKS document: {e}") from None


def jwks_keys(document: Any) -> list[SigningKey]:
    """The signing keys of a JWKS document (``use`` is ``sig`` or unset); others are skipped.

    Raises ``ValueError`` (in our words) when it is not a JWKS document at all."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('it has no "keys" list')
    keys = [k for k in map(_signing_key, entries) if k is not None]
    if not keys:
        raise ValueError("it holds no usable signing key")
    return keys


def _signing_key(entry: Any) -> SigningKey | None:
    if not isinstance(entry, dict) or entry.get("use") not in ("sig", None):
        return None
    try:
        key = _public(jwt.PyJWK(entry).key)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):  # an unsupported or malformed key
        return None
    algorithms = key_algorithms(key)
    declared = entry.get("alg")
    if isinstance(declared, str):
        algorithms &= {declared}
    kid = entry.get("kid")
    return SigningKey(None if kid is None else str(kid), key, algorithms)
