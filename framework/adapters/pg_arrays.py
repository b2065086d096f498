"""Binary ``bigint[]``, ``text[]`` and ``date[]`` parameters packed in one pass.

psycopg dumps a list parameter element by element in Python (a dumper call, a length and two appends
per value, after a scan that picks the narrowest integer type); a batch's bulk upsert sends one array
per column, so that loop ran for every column of every row written. For the common column kinds
this module builds PostgreSQL's binary array format (``array_send``: dimensions, then a length and the
bytes of each element) with C-level iteration (``struct.pack``, ``map``, ``bytes.join``); any other
column, or a value these cannot carry (an integer beyond 64 bits, a string that does not encode), is
left to psycopg, which dumps it, or refuses it, as before.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Sequence
from datetime import date
from itertools import chain, repeat
from typing import Any

from psycopg import postgres
from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper
from psycopg.pq import Format

__all__ = ["packed", "register_packed_arrays"]

_INT8_OID = postgres.types["int8"].oid
_TEXT_OID = postgres.types["text"].oid
_DATE_OID = postgres.types["date"].oid
_LENGTH = struct.Struct(">i").pack
_J2000 = date(2000, 1, 1).toordinal()  # PostgreSQL's binary date: days since 2000-01-01


class PackedArray:
    """A one-dimensional array without NULLs, already in PostgreSQL's binary format."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class PackedInt8Array(PackedArray):
    __slots__ = ()


class PackedTextArray(PackedArray):
    __slots__ = ()


class PackedDateArray(PackedArray):
    __slots__ = ()


class _PackedDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        data: bytes = obj.data
        return data


class _Int8ArrayDumper(_PackedDumper):
    oid = postgres.types["int8"].array_oid


class _TextArrayDumper(_PackedDumper):
    oid = postgres.types["text"].array_oid


class _DateArrayDumper(_PackedDumper):
    oid = postgres.types["date"].array_oid


def register_packed_arrays(context: AdaptContext) -> None:
    """Teach a connection (or cursor) to send packed arrays (idempotent)."""
    context.adapters.register_dumper(PackedInt8Array, _Int8ArrayDumper)
    context.adapters.register_dumper(PackedTextArray, _TextArrayDumper)
    context.adapters.register_dumper(PackedDateArray, _DateArrayDumper)


def packed(values: Sequence[Any], kind: type) -> Any:
    """``values`` (all of exactly Python type ``kind``: int, str or date, no None) as a packed array when
    it can be one, else as given."""
    try:
        if kind is int:
            return PackedInt8Array(_header(_INT8_OID, len(values)) + struct.pack(
                f">{'iq' * len(values)}", *chain.from_iterable(zip(repeat(8), values))))
        if kind is str:
            encoded = list(map(str.encode, values))
            return PackedTextArray(_header(_TEXT_OID, len(encoded)) + b"".join(
                chain.from_iterable(zip(map(_LENGTH, map(len, encoded)), encoded, strict=True))))
        if kind is date:
            days = map(operator.sub, map(date.toordinal, values), repeat(_J2000))
            return PackedDateArray(_header(_DATE_OID, len(values)) + struct.pack(
                f">{'ii' * len(values)}", *chain.from_iterable(zip(repeat(4), days))))
    except (struct.error, UnicodeEncodeError):
        pass  # beyond bigint, or not encodable: psycopg dumps it (or refuses it) as it always did
    return values


def _header(element_oid: int, count: int) -> bytes:
    # ndim, has-nulls flag, element type, then (size, lower bound) of the one dimension
    return struct.pack(">iiiii", 1, 0, element_oid, count, 1)
