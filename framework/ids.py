"""Random (version 4) UUIDs drawn from a buffer of ``os.urandom`` bytes.

``uuid.uuid4()`` calls ``os.urandom(16)`` each time, a system call that releases the GIL: a write-api
process under load then waits to take the GIL back once per id (four per command: the correlation
and causation ids, the metadata's and each event's id), a visible share of its CPU. Here one system
call serves 256 ids; the bytes are the same operating-system randomness. A forked child starts
with a fresh buffer, so parent and child never hand out the same ids.
"""

from __future__ import annotations

import os
import threading
from uuid import UUID

__all__ = ["random_uuid", "random_uuid_text"]

_IDS_PER_REFILL = 256


class _RandomBytes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def take16(self) -> bytes:
        with self._lock:
            if self._offset >= len(self._buffer):
                self._buffer, self._offset = os.urandom(16 * _IDS_PER_REFILL), 0
            start = self._offset
            self._offset = start + 16
            return self._buffer[start:start + 16]

    def forget(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork stays held in the child
        self._buffer, self._offset = b"", 0


_bytes = _RandomBytes()
os.register_at_fork(after_in_child=_bytes.forget)


def random_uuid() -> UUID:
    """A random UUID, as ``uuid.uuid4()`` makes."""
    return UUID(bytes=_bytes.take16(), version=4)


def random_uuid_text() -> str:
    """``str(random_uuid())`` without the ``UUID`` object: the ids of requests (two per command) are text."""
    raw = bytearray(_bytes.take16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4, as UUID(..., version=4) sets it
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
