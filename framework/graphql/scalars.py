"""``Long``: the GraphQL type of read-model integers, which PostgreSQL keeps as 64-bit ``bigint``.

GraphQL's own ``Int`` is 32-bit (the spec requires an error above 2,147,483,647), too small for a
holding of 10**15 units or a position in a long-lived store. ``Long`` holds -2**63 to 2**63 - 1 and
is written as a JSON *number*, as ``Int`` is (what Hasura's ``bigint`` and graphql-java's ``Long``
do), so a client reading ``Int`` reads ``Long`` unchanged. JSON numbers are exact; JavaScript's
``JSON.parse`` is exact up to 2**53 (about 9 * 10**15): a browser client of larger values parses
with a big-integer reviver. As input it takes an integer literal or a string of digits.
"""

from __future__ import annotations

import warnings
from typing import Any, NewType

import strawberry
from graphql import IntValueNode, StringValueNode, ValueNode

__all__ = ["LONG_MAX", "LONG_MIN", "Long"]

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


def _checked(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"Long takes an integer, not {type(value).__name__}")
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit() or len(text) > 20:
            raise ValueError(f"Long takes an integer or a string of digits, not {value[:30]!r}")
        value = int(text)
    number = int(value)
    if not LONG_MIN <= number <= LONG_MAX:
        raise ValueError("Long holds -2^63 to 2^63 - 1")
    return number


def _literal(node: ValueNode, _variables: Any = None) -> int:
    if isinstance(node, IntValueNode | StringValueNode):
        return _checked(int(node.value) if isinstance(node, IntValueNode) else node.value)
    raise ValueError("Long takes an integer")


with warnings.catch_warnings():  # a scalar carrying its definition works in any schema, without a scalar_map
    warnings.simplefilter("ignore", DeprecationWarning)
    Long = strawberry.scalar(
        NewType("Long", int),
        name="Long",
        description="A 64-bit integer (-2^63 to 2^63 - 1), written as a JSON number; as input, a number or a "
                    "string of digits.",
        serialize=_checked,
        parse_value=_checked,
        parse_literal=_literal,
    )
