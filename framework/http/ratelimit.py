"""An in-process token bucket per client: cheap protection, not a distributed quota.

Each client (the token's subject, else the peer address) gets ``rate`` tokens a
second up to a burst of ``burst``; a request with no token left is refused with
``RateLimited`` carrying the seconds until the next token. Buckets idle long
enough to be full again are forgotten, so memory stays bounded by active clients.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from framework.errors import RateLimited

__all__ = ["RateLimiter"]


class RateLimiter:
    """``check(client)`` takes one token from that client's bucket or raises ``RateLimited``;
    ``blocked`` and ``spend`` count events (failed authentications) apart from admitting them."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()
        self._next_sweep = clock()

    def check(self, client: str) -> None:
        with self._lock:
            now, tokens = self._refilled(client)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                retry_after = self._retry_after(tokens)
                raise RateLimited(f"more than {self._rate:g} requests a second; retry in {retry_after}s",
                                  retry_after=retry_after)
            self._buckets[client] = (tokens - 1.0, now)
            self._sweep(now)

    def blocked(self, client: str) -> int | None:
        """Seconds until ``client`` has a token again, or None if it has one now; takes nothing."""
        with self._lock:
            _, tokens = self._refilled(client)
            return self._retry_after(tokens) if tokens < 1.0 else None

    def spend(self, client: str) -> None:
        """Take one token from ``client``'s bucket if it has one: counting, never refusing."""
        with self._lock:
            now, tokens = self._refilled(client)
            self._buckets[client] = (max(0.0, tokens - 1.0), now)
            self._sweep(now)

    def _refilled(self, client: str) -> tuple[float, float]:
        now = self._clock()
        tokens, at = self._buckets.get(client, (self._burst, now))
        return now, min(self._burst, tokens + (now - at) * self._rate)

    def _retry_after(self, tokens: float) -> int:
        return max(1, math.ceil((1.0 - tokens) / self._rate))

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        full_after = self._burst / self._rate
        self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < full_after}
        self._next_sweep = now + max(1.0, full_after)
