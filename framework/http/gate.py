"""Who may come in, before any other work is done for a request: the same on both APIs.

1. An address that failed authentication too often lately is refused (429) before its token is even
   read, so a flood of forged tokens costs no signature check and no JWKS fetch.
2. The token is verified (401 on failure, which counts against the address).
3. The caller's request rate is checked (429), per token subject, else per address.

The client address is the peer uvicorn reports: behind a proxy, set uvicorn's ``FORWARDED_ALLOW_IPS``
to it so that ``X-Forwarded-For`` names the real client, or every caller shares the proxy's bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request

from framework.errors import RateLimited, Unauthenticated
from framework.http.ratelimit import RateLimiter
from framework.security import AllowAnonymous, Authenticator, Principal

__all__ = ["Gate", "admitted", "client_address"]

_PRINCIPAL = "eventfold.principal"  # the scope key under which a request's admitted principal is kept


class Gate:
    """``admit(request)``: the caller's principal, or ``Unauthenticated`` / ``RateLimited``. The one
    place either API learns who is asking; ``admitted(request)`` reads the answer back later.

    Without an authenticator every caller is ``ANONYMOUS`` (the library default). Each limit is off
    when its figure is None or 0.
    """

    def __init__(self, authenticator: Authenticator | None, *, rate_per_second: float | None = None,
                 failures_per_minute: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._authenticator = authenticator or AllowAnonymous()
        self._blocking = self._authenticator.blocking  # a port's declared member, read once
        self._requests = RateLimiter(rate_per_second, clock=clock) if rate_per_second else None
        self._failures = (RateLimiter(failures_per_minute / 60.0, burst=failures_per_minute, clock=clock)
                          if failures_per_minute else None)

    async def admit(self, request: Request) -> Principal:
        return await self.admit_header(request, request.headers.get("authorization"))

    async def admit_header(self, request: HTTPConnection, authorization: str | None) -> Principal:
        """``admit`` with the ``Authorization`` value given apart (a WebSocket's ``connection_init``)."""
        address = client_address(request)
        self._refuse_a_failing_address(address)
        try:
            principal = await self._authenticate(authorization)
        except Unauthenticated:
            if self._failures is not None:
                self._failures.spend(address)
            raise
        if self._requests is not None:
            self._requests.check(f"sub:{principal.subject}" if principal.subject else f"ip:{address}")
        request.scope[_PRINCIPAL] = principal
        return principal

    def _refuse_a_failing_address(self, address: str) -> None:
        retry_after = self._failures.blocked(address) if self._failures is not None else None
        if retry_after is not None:
            raise RateLimited(f"too many failed authentications from this address; retry in {retry_after}s",
                              retry_after=retry_after)

    async def _authenticate(self, header: str | None) -> Principal:
        if self._blocking:  # a JWKS URL may be fetched
            return await run_in_threadpool(self._authenticator.authenticate, header)
        return self._authenticator.authenticate(header)


def admitted(request: HTTPConnection) -> Principal:
    """The principal ``Gate.admit`` let in with this request (``Unauthenticated`` if it let none in)."""
    principal = request.scope.get(_PRINCIPAL)
    if not isinstance(principal, Principal):
        raise Unauthenticated("a bearer token is required")
    return principal


def client_address(request: HTTPConnection) -> str:
    return request.client.host if request.client else "unknown"
