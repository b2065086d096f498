"""Roles on GraphQL fields: ``@strawberry.field(permission_classes=[requires("ops")])``.

A caller without one of the roles gets an error with ``extensions.code``
``FORBIDDEN`` for that field (``UNAUTHENTICATED`` if no caller is known). A
caller without a token holds the configured anonymous roles, and passes only
with one of ``roles`` (or on a server that checks no tokens at all).
"""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission
from strawberry.types import Info

from framework.errors import Forbidden, Unauthenticated
from framework.graphql.app import QueryContext
from framework.security import has_any_role

__all__ = ["requires"]


def requires(*roles: str) -> type[BasePermission]:
    """A permission class letting through callers holding at least one of ``roles``."""
    needed = frozenset(roles)

    class Requires(BasePermission):
        message = f"needs one of the roles: {', '.join(sorted(needed))}"

        def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
            if not isinstance(info.context, QueryContext):  # a schema served without the query API
                raise Unauthenticated("a bearer token is required")
            if not has_any_role(info.context.principal, needed):
                raise Forbidden(f"{info.field_name} {self.message}")
            return True

    Requires.__name__ = f"Requires_{'_'.join(sorted(needed)) or 'any'}"
    return Requires
