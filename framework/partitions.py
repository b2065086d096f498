"""Partitioned projections: which partition an event belongs to, the same on every machine.

A projector that declares ``partitions = N`` (a power of two, at most 256) is split into N
partitions by a key: the event's aggregate id by default, or ``partition_key(envelope)``.
Order is kept within a partition, which is all a read model keyed by that key needs.

The key goes through CRC-32 (``zlib.crc32`` of its UTF-8 bytes: the same in every process and
Python version, unlike ``hash()``), whose top 8 bits are its *bucket* (0..255). A partition of N
is the run of buckets sharing the bucket's top log2(N) bits, so the bus can carry the bucket's
bits as subject tokens and a consumer of one partition needs one filter subject (NATS 2.9 has no
multiple filter subjects) — ``framework.adapters.nats`` does that for aggregate-id keys.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from framework.errors import ConfigurationError

__all__ = [
    "BUCKET_BITS",
    "MAX_PARTITIONS",
    "Partition",
    "bucket_of",
    "bucket_tokens",
    "check_partition_count",
    "partition_of",
]

BUCKET_BITS = 8
MAX_PARTITIONS = 1 << BUCKET_BITS


def bucket_of(key: str) -> int:
    """The key's bucket, 0..255: the top 8 bits of its CRC-32."""
    return zlib.crc32(key.encode("utf-8")) >> (32 - BUCKET_BITS)


def check_partition_count(name: str, count: object) -> int:
    """``count`` if it is a power of two from 1 to 256, else ``ConfigurationError`` naming it."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1 or count > MAX_PARTITIONS \
            or count & (count - 1):
        raise ConfigurationError(
            f"{name}: partitions must be a power of two from 1 to {MAX_PARTITIONS}, not {count!r}")
    return count


def _bits(count: int) -> int:
    return count.bit_length() - 1


def partition_of(key: str, count: int) -> int:
    """The partition (0..count-1) of ``key`` among ``count`` partitions."""
    return bucket_of(key) >> (BUCKET_BITS - _bits(count))


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``: its tracking row, lease and bus filter are its own."""

    index: int
    count: int

    def __post_init__(self) -> None:
        check_partition_count("partition", self.count)
        if not 0 <= self.index < self.count:
            raise ConfigurationError(f"partition {self.index} is not one of 0..{self.count - 1}")

    def holds(self, key: str) -> bool:
        return partition_of(key, self.count) == self.index

    def bucket_prefix(self) -> tuple[str, ...]:
        """The leading bucket bits every key of this partition shares, as '0'/'1' tokens."""
        bits = _bits(self.count)
        return tuple(str((self.index >> (bits - 1 - i)) & 1) for i in range(bits))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def bucket_tokens(key: str) -> tuple[str, ...]:
    """The key's bucket as 8 '0'/'1' tokens, most significant first (what a subject carries)."""
    bucket = bucket_of(key)
    return tuple(str((bucket >> (BUCKET_BITS - 1 - i)) & 1) for i in range(BUCKET_BITS))
