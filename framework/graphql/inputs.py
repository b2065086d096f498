"""What a GraphQL request carries besides its document: the JSON body and the variables.

Both are checked in time linear in their size, before anything recurses into them: the JSON must be
UTF-8 and nest at most ``max_depth`` levels (a 10,000-level array would otherwise exhaust the stack
of ``json.loads`` or of the variables' coercion), and strings in variables must hold no NUL and no
lone surrogate (neither can be stored in PostgreSQL text, nor encoded as UTF-8).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

__all__ = ["BadJson", "json_nesting", "parse_json", "unstorable_text"]

# A JSON string, or an unterminated one running to the end: every match attempt that starts at a quote
# succeeds in one pass (possessive, nothing to backtrack), so removing strings is linear whatever the body.
_STRING = re.compile(r'"(?:[^"\\]++|\\.|\\\Z)*+(?:"|\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}.__getitem__
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class BadJson(ValueError):
    """The body (or a JSON query parameter) cannot be read; the message says why, for the client."""


def parse_json(data: str | bytes, max_depth: int) -> Any:
    """``data`` as JSON: UTF-8 only, nested at most ``max_depth`` levels, no NaN or Infinity."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise BadJson("the body is not valid UTF-8") from None
    if json_nesting(text) > max_depth:
        raise BadJson(f"the JSON nests deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: belt and braces, the depth is bounded above
        raise BadJson("the body is not valid JSON") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_nesting(text: str) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings not counted)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP, brackets)), default=0)


def unstorable_text(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys included) holds a NUL or a lone surrogate."""
    return any(_UNSTORABLE.search(text) for text in _strings(value))


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
