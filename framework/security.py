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

__all__ = ["ANONYMOUS", "Authenticator", "Principal", "authorize", "has_any_role"]


@dataclass(frozen=True)
class Principal:
    """The caller: the token's subject and roles, or the anonymous caller (allowed everything)."""

    subject: str | None
    roles: frozenset[str] = field(default_factory=frozenset)
    anonymous: bool = False


ANONYMOUS = Principal(subject=None, anonymous=True)


class Authenticator(Protocol):
    """Turns an ``Authorization`` header (or its absence) into a principal.

    Raises ``Unauthenticated`` for a missing (when anonymous access is off),
    malformed, expired or otherwise invalid token.
    """

    def authenticate(self, authorization: str | None) -> Principal: ...


def has_any_role(principal: Principal, roles: frozenset[str]) -> bool:
    """No roles required, an anonymous (trusted) caller, or one role in common."""
    return not roles or principal.anonymous or bool(principal.roles & roles)


def authorize(command_type: type[Command], principal: Principal) -> None:
    """Raise ``Forbidden`` unless the principal holds one of the command's ``allowed_roles``."""
    if not has_any_role(principal, command_type.allowed_roles):
        needed = ", ".join(sorted(command_type.allowed_roles))
        raise Forbidden(f"{command_type.command_name} needs one of the roles: {needed}")
