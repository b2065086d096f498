"""One-dimensional arrays of a known element type, sent to PostgreSQL in its binary array format.

An append's parameters are a handful of arrays (``pg_appends``). Given plain lists, psycopg looks at
each list's elements to choose a dumper and builds a new one for every list of every statement: about
a tenth of a lone command's CPU. A list typed here (``UuidArray``, ``BigintArray``, ...) is written by
its own dumper in one pass, on a connection whose adapters have them: ``pg_pool`` registers them on
each connection's own adapters as it connects (``register_array_dumpers``), so the connection still
starts from psycopg's global adapters as they are then, an application's late registrations included;
``ARRAY_CONTEXT`` is for a connection made apart. On any other connection it is still a list, dumped as
psycopg dumps lists.

``None`` elements are SQL NULLs, as psycopg sends them. A value its column cannot hold (a number out of
range, text that is not a UUID, anything but bytes for ``bytea``) raises ``psycopg.DataError``, as
PostgreSQL refused it in a plain list, so the store translates it as before: never another value written
in its place.

A read model's bulk upserts (``postgres_views``) send one array per column of up to thousands of rows:
for those, ``packed`` builds bigint, text and date arrays without NULLs with C-level iteration
(``struct.pack``, ``map``, ``bytes.join``) instead of a Python step per element; a column it cannot
carry (an integer beyond 64 bits, a string that does not encode) is left to psycopg, which dumps it,
or refuses it, as before.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from datetime import date
from itertools import chain, repeat
from typing import Any, ClassVar
from uuid import UUID

import psycopg
from psycopg.abc import AdaptContext
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

__all__ = ["ARRAY_CONTEXT", "BigintArray", "ByteaArray", "IntArray", "PackedArray", "TextArray", "UuidArray", "packed",
           "register_array_dumpers"]

_LENGTH = struct.Struct("!i")
_HEAD = struct.Struct("!iiIii")  # dimensions, has NULLs, element type, length, lower bound
_EMPTY = struct.Struct("!iiI")  # an empty array has no dimension
_NULL = _LENGTH.pack(-1)
_BIGINT, _INT = struct.Struct("!q"), struct.Struct("!i")
_BYTES = (bytes, bytearray, memoryview)


class _TypedArray(list[Any]):
    element_oid: ClassVar[int]
    array_oid: ClassVar[int]

    @staticmethod
    def encode(value: Any) -> bytes:  # one element, not NULL, in PostgreSQL's binary format
        raise NotImplementedError


class UuidArray(_TypedArray):
    element_oid, array_oid = 2950, 2951

    @staticmethod
    def encode(value: Any) -> bytes:
        return (value if isinstance(value, UUID) else UUID(str(value))).bytes


class BigintArray(_TypedArray):
    element_oid, array_oid = 20, 1016

    @staticmethod
    def encode(value: Any) -> bytes:
        return _BIGINT.pack(value if type(value) is int else _whole(value))


class IntArray(_TypedArray):
    element_oid, array_oid = 23, 1007

    @staticmethod
    def encode(value: Any) -> bytes:
        return _INT.pack(value if type(value) is int else _whole(value))


class TextArray(_TypedArray):
    element_oid, array_oid = 25, 1009

    @staticmethod
    def encode(value: Any) -> bytes:
        if type(value) is str:
            return value.encode()
        if isinstance(value, _BYTES):  # str() of them is their repr
            raise TypeError(f"text, not {type(value).__name__}")
        return str(value).encode()


class ByteaArray(_TypedArray):
    element_oid, array_oid = 17, 1001

    @staticmethod
    def encode(value: Any) -> bytes:
        if type(value) is bytes:
            return value
        if not isinstance(value, _BYTES):  # bytes(3) is three NUL bytes
            raise TypeError(f"bytes, not {type(value).__name__}")
        return bytes(value)


def _whole(value: Any) -> int:
    """``value`` if it is an int (a subclass such as ``IntEnum`` too), never a bool: struct packs True as 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a whole number, not {type(value).__name__}")
    return value


def _text_in(encoding: str) -> Callable[[Any], bytes]:
    def encode(value: Any) -> bytes:
        if isinstance(value, _BYTES):  # str() of them is their repr
            raise TypeError(f"text, not {type(value).__name__}")
        return str(value).encode(encoding)
    return encode


def binary_array(values: _TypedArray, encode: Callable[[Any], bytes] | None = None) -> bytes:
    """``values`` in PostgreSQL's binary array format (``array_send``); ``encode``: each element's, if
    not its type's own."""
    kind = type(values)
    if not values:
        return _EMPTY.pack(0, 0, kind.element_oid)
    encode, pack, parts = encode or kind.encode, _LENGTH.pack, []
    has_null = 0
    for value in values:
        if value is None:
            has_null = 1
            parts.append(_NULL)
        else:
            data = encode(value)
            parts.append(pack(len(data)))
            parts.append(data)
    return _HEAD.pack(1, has_null, kind.element_oid, len(values), 1) + b"".join(parts)


def _dumper_for(kind: type[_TypedArray]) -> type[Dumper]:
    class _ArrayDumper(Dumper):
        format = Format.BINARY
        oid = kind.array_oid

        def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
            super().__init__(cls, context)
            # Text is sent in the connection's client encoding, as psycopg's own text dumper sends it.
            encoding = self.connection.info.encoding if self.connection is not None else "utf-8"
            if encoding == "ascii":  # SQL_ASCII, no encoding at all: psycopg's text dumper sends UTF-8
                encoding = "utf-8"
            self._encode = None if kind is not TextArray or encoding == "utf-8" else _text_in(encoding)

        def dump(self, obj: Any) -> bytes:
            try:
                return binary_array(obj, self._encode)
            except UnicodeEncodeError:  # a lone surrogate, a character the client encoding lacks: as psycopg raises it
                raise
            except (struct.error, ValueError, TypeError) as error:
                raise psycopg.DataError(f"{kind.__name__}: a value {kind.__name__[:-5].lower()} cannot hold"
                                        f" ({error})") from error

    _ArrayDumper.__name__ = f"{kind.__name__}Dumper"
    return _ArrayDumper


class PackedArray:
    """A one-dimensional array without NULLs, already in PostgreSQL's binary format (``packed``)."""

    __slots__ = ("data",)
    array_oid: ClassVar[int]

    def __init__(self, data: bytes) -> None:
        self.data = data


class _PackedBigints(PackedArray):
    __slots__ = ()
    array_oid = BigintArray.array_oid


class _PackedTexts(PackedArray):
    __slots__ = ()
    array_oid = TextArray.array_oid


class _PackedDates(PackedArray):
    __slots__ = ()
    array_oid = 1182


_DATE_OID = 1082
_J2000 = date(2000, 1, 1).toordinal()  # PostgreSQL's binary date: days since 2000-01-01


def packed(values: Sequence[Any], kind: type) -> Any:
    """``values`` (all of exactly Python type ``kind``: int, str or date; no None) as a packed array when
    it can be one, else ``values`` as given."""
    try:
        if kind is int:
            return _PackedBigints(_HEAD.pack(1, 0, BigintArray.element_oid, len(values), 1) + struct.pack(
                f"!{'iq' * len(values)}", *chain.from_iterable(zip(repeat(8), values))))
        if kind is str:
            encoded = list(map(str.encode, values))
            return _PackedTexts(_HEAD.pack(1, 0, TextArray.element_oid, len(encoded), 1) + b"".join(
                chain.from_iterable(zip(map(_LENGTH.pack, map(len, encoded)), encoded, strict=True))))
        if kind is date:
            days = map(operator.sub, map(date.toordinal, values), repeat(_J2000))
            return _PackedDates(_HEAD.pack(1, 0, _DATE_OID, len(values), 1) + struct.pack(
                f"!{'ii' * len(values)}", *chain.from_iterable(zip(repeat(4), days))))
    except (struct.error, UnicodeEncodeError):
        pass  # beyond bigint, or not encodable: psycopg dumps it (or refuses it) as it always did
    return values


def _packed_dumper_for(kind: type[PackedArray]) -> type[Dumper]:
    class _PackedDumper(Dumper):
        format = Format.BINARY
        oid = kind.array_oid

        def dump(self, obj: Any) -> bytes:
            data: bytes = obj.data
            return data

    _PackedDumper.__name__ = f"{kind.__name__}Dumper"
    return _PackedDumper


_DUMPERS = [
    *((kind, _dumper_for(kind)) for kind in (UuidArray, BigintArray, IntArray, TextArray, ByteaArray)),
    *((kind, _packed_dumper_for(kind)) for kind in (_PackedBigints, _PackedTexts, _PackedDates)),
]


def register_array_dumpers(adapters: AdaptersMap) -> None:
    """Give ``adapters`` (a connection's own, ``conn.adapters``) the typed arrays' dumpers."""
    for kind, dumper in _DUMPERS:
        adapters.register_dumper(kind, dumper)


def _array_context() -> AdaptersMap:
    adapters = AdaptersMap(psycopg.adapters)
    register_array_dumpers(adapters)
    return adapters


# psycopg's global adapters as they were when this module was imported, with the arrays' dumpers: a
# snapshot, so not what the pools give their connections (see the module docstring).
ARRAY_CONTEXT = _array_context()
