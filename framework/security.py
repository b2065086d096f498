"""Who is asking, and may they: the core's whole view of authentication.

Tokens are verified at the edge (``framework.http.auth``); the core sees only a
``Principal`` and answers one question with ``authorize``: may this principal
send this command? Process managers call the bus directly and are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from framework.commands import Command
from framework.errors import Forbidden

__all__ = ["ANONYMOUS", "AllowAnonymous", "Authenticator", "Principal", "anonymous", "authorize", "has_any_role"]


@dataclass(frozen=True)
class Principal:
    """The caller: a verified token's subject and roles, or the anonymous caller (no token).

    ``every_role`` is only ever true for the caller of a server that checks no tokens at all
    (``EVENTFOLD_ANONYMOUS_ROLES=*``, or no authenticator in a library set-up); no token grants it.
    """

    subject: str | None
    roles: frozenset[str] = field(default_factory=frozenset)
    anonymous: bool = False
    every_role: bool = False


ANONYMOUS = Principal(subject=None, anonymous=True, every_role=True)  # no authentication at all


def anonymous(roles: frozenset[str]) -> Principal:
    """A caller without a token, holding exactly ``roles``."""
    return Principal(subject=None, roles=roles, anonymous=True)


class Authenticator(Protocol):
    """Turns an ``Authorization`` header (or its absence) into a principal.

    Raises ``Unauthenticated`` for a missing (when anonymous access is off),
    malformed, expired or otherwise invalid token; never the token library's own errors.
    ``blocking`` is true when ``authenticate`` may wait on the network (keys fetched from a
    URL): the edge then calls it off the event loop.
    """

    @property
    def blocking(self) -> bool: ...

    def authenticate(self, authorization: str | None) -> Principal: ...


class AllowAnonymous:
    """No tokens checked: every caller is ``principal`` (by default, allowed everything)."""

    blocking = False

    def __init__(self, principal: Principal = ANONYMOUS) -> None:
        self.principal = principal

    def authenticate(self, authorization: str | None) -> Principal:
        return self.principal


def has_any_role(principal: Principal, roles: frozenset[str]) -> bool:
    """No roles required, a caller holding every role, or one role in common."""
    return not roles or principal.every_role or bool(principal.roles & roles)


def authorize(command_type: type[Command], principal: Principal) -> None:
    """Raise ``Forbidden`` unless the principal holds one of the command's ``allowed_roles``."""
    if not has_any_role(principal, command_type.allowed_roles):
        needed = ", ".join(sorted(command_type.allowed_roles))
        raise Forbidden(f"{command_type.command_name} needs one of the roles: {needed}")
