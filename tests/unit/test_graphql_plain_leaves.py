"""Plain leaf fields completed directly (``PlainLeavesExecutor``) answer exactly as graphql-core's general
way: values, nulls, enums, dates, decimals, big ints, text, errors (null for a non-null field, a value a
scalar refuses), permissions, aliases, directives, fragments, middleware."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import pytest
import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.permission import BasePermission
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from framework.graphql.execution import PlainLeavesExecutor
from framework.graphql.scalars import Long


@strawberry.enum
class Colour(Enum):
    RED = "red"
    DARK_BLUE = "dark blue"


class Never(BasePermission):
    message = "not for you"

    def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
        return False


@strawberry.type
class Item:
    text: str
    maybe_text: str | None
    count: int
    big: Long
    ratio: float
    flag: bool
    colour: Colour
    maybe_colour: Colour | None
    day: date
    at: datetime
    amount: Decimal
    uid: UUID
    data: JSON
    ident: strawberry.ID
    secret: str = strawberry.field(permission_classes=[Never], default="s")

    @strawberry.field
    def shout(self, suffix: str = "!") -> str:
        return self.text.upper() + suffix


class Failing:
    """A source that is not its type's class (resolvers may return any object with the attributes): one
    attribute raises when read, one is missing."""

    text = "t"

    @property
    def count(self) -> int:
        raise ValueError("no count")


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item]:
        return ITEMS

    @strawberry.field
    def failing(self) -> list[Item]:
        return [Failing(), Failing()]  # type: ignore[list-item]

    @strawberry.field
    def one_failing(self) -> Item | None:
        return Failing()  # type: ignore[return-value]

    @strawberry.field
    def broken(self) -> list[Item]:
        return BROKEN


def item(**changes: Any) -> Item:
    values: dict[str, Any] = dict(
        text='Zoë 東京 "q" \\ \U0001f600', maybe_text=None, count=2**31 - 1, big=2**63 - 1, ratio=0.1, flag=False,
        colour=Colour.DARK_BLUE, maybe_colour=None, day=date(1, 1, 1),
        at=datetime(2026, 12, 7, 3, 12, 28, 123456, tzinfo=UTC), amount=Decimal("1.10"), uid=UUID(int=5),
        data={"a": [1, None, "x"]}, ident="7")
    values.update(changes)
    return Item(**values)


ITEMS = [item(), item(maybe_text="", count=-(2**31), big=-(2**63), maybe_colour=Colour.RED, ident=8, flag=True)]
BROKEN = [
    item(text=None),  # null for a non-null field: an error, the item nulled
    item(count=2**31),  # past GraphQL's Int: the scalar refuses it
    item(colour="green"),  # not a member
    item(maybe_colour="green"),
    item(ratio="not a float"),
    item(flag="yes"),
]

ALL = "text maybeText count big ratio flag colour maybeColour day at amount uid data ident"
DOCUMENTS = [
    f"{{ items {{ {ALL} }} }}",
    "{ items { a: text b: text count shout(suffix: \"?\") } }",
    "{ items { ...F } } fragment F on Item { colour day @include(if: true) at @skip(if: true) }",
    "{ items { text secret } }",
    "{ broken { text } }",
    "{ broken { count } }",
    "{ broken { colour } }",
    "{ broken { maybeColour } }",
    "{ broken { ratio } }",
    "{ broken { flag text } }",
    "query($yes: Boolean!) { items { text @include(if: $yes) count } }",
    "{ failing { text maybeText } }",  # reading the value fails: the error is the field's, its siblings stay
    "{ failing { text count } }",  # ... and for a non-null field the item is nulled, not the whole list
    "{ oneFailing { text maybeText } items { text } }",
]


class Shouting(SchemaExtension):
    """A middleware (``resolve``) wraps every resolver: plain fields too."""

    def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        value = _next(root, info, *args, **kwargs)
        return value.upper() if isinstance(value, str) else value


def run(executor: type | None, document: str, extensions: list[Any] | None = None) -> str:
    schema = strawberry.Schema(Query, execution_context_class=executor, extensions=extensions or [])
    result = asyncio.run(schema.execute(document, variable_values={"yes": True}))
    errors = [{"message": e.message, "path": e.path, "locations": [(loc.line, loc.column) for loc in e.locations or []]}
              for e in result.errors or []]
    return json.dumps({"data": result.data, "errors": errors}, sort_keys=True, default=str)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_plain_leaves_answer_as_the_general_way(document: str) -> None:
    assert run(PlainLeavesExecutor, document) == run(StrawberryGraphQLCoreExecutionContext, document)


def test_the_cases_cover_values_and_errors() -> None:
    answer = json.loads(run(PlainLeavesExecutor, DOCUMENTS[0]))
    assert answer["data"]["items"][0]["big"] == 2**63 - 1 and answer["data"]["items"][0]["colour"] == "DARK_BLUE"
    assert answer["data"]["items"][1]["maybeText"] == "" and answer["data"]["items"][0]["maybeText"] is None
    for document in DOCUMENTS[3:10]:
        assert json.loads(run(PlainLeavesExecutor, document))["errors"], document


@pytest.mark.parametrize("document", DOCUMENTS[:2])
def test_middleware_sees_plain_fields_too(document: str) -> None:
    mine = run(PlainLeavesExecutor, document, [Shouting])
    assert mine == run(StrawberryGraphQLCoreExecutionContext, document, [Shouting])
    assert mine != run(PlainLeavesExecutor, document)  # the middleware did run on them


def test_plain_leaves_build_no_resolve_info() -> None:
    built: list[str] = []

    class Counting(PlainLeavesExecutor):
        def build_resolve_info(self, field_def: Any, field_nodes: Any, parent_type: Any, path: Any) -> Any:
            built.append(field_nodes[0].name.value)
            return super().build_resolve_info(field_def, field_nodes, parent_type, path)

    run(Counting, "{ items { text count colour shout } }")
    assert built == ["items", "shout", "shout"]  # the field with a resolver, not the plain ones


def test_a_dropped_schema_is_not_kept_by_what_the_executor_learnt_of_its_fields() -> None:
    """A process that builds schemas (tests, a reload) does not keep every one alive through the cache of
    which fields are plain."""
    import gc
    import weakref

    schema = strawberry.Schema(Query, execution_context_class=PlainLeavesExecutor)
    assert schema.execute_sync("{ items { text count } }").errors is None
    built = weakref.ref(schema._schema)
    del schema
    gc.collect()
    assert built() is None
