"""Which projections a GraphQL operation reads, from what its fields declare.

    @strawberry.type
    class Card(CardFields):
        @strawberry.field
        @reads("entitlements")
        async def entitlements(self, info: Info) -> list[Entitlement]: ...

    @strawberry.type
    class Query:
        @strawberry.field
        @reads("cards")
        async def card(self, info: Info, action_id: str) -> Card | None: ...

Read-your-writes waits for the projections of every field an operation selects, nested ones
included: ``{ card(actionId: "A") { status } }`` waits for ``cards``, and
``{ card(actionId: "A") { entitlements { holding } } }`` for ``cards`` and ``entitlements``.
A field that declares nothing adds nothing (its parent's declaration covers what it reads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import strawberry
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLUnionType,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
)
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types import Info
from strawberry.types.base import get_object_definition
from strawberry.types.field import StrawberryField
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField

from framework.errors import ConfigurationError

__all__ = ["ReadMap", "reads", "selects"]

F = TypeVar("F", bound=Callable[..., Any])
_READS = "__eventfold_reads__"


def reads(*projections: str) -> Callable[[F], F]:
    """Declare the projections a field's resolver reads; put it under ``@strawberry.field``."""
    if not projections or not all(isinstance(p, str) and p for p in projections):
        raise ConfigurationError("reads(...) takes the names of the projections the field reads")

    def mark(resolver: F) -> F:
        if isinstance(resolver, StrawberryField):
            raise ConfigurationError("put @reads(...) under @strawberry.field, on the resolver function")
        setattr(resolver, _READS, frozenset(projections) | getattr(resolver, _READS, frozenset()))
        return resolver

    return mark


def selects(info: Info[Any, Any], *paths: str) -> bool:
    """Whether the field being resolved selects any of ``paths`` (dotted field names below it, through
    fragments), e.g. ``selects(info, "edges.node.security", "nodes.security")``: a resolver reads what its
    children will need only when they are asked for."""
    below = [s for field in info.selected_fields for s in field.selections]  # the resolved field's own
    return any(_selected(below, tuple(path.split("."))) for path in paths)


def _selected(selections: list[Any], path: tuple[str, ...]) -> bool:
    if not path:
        return True
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == path[0] and _selected(selection.selections, path[1:]):
                return True
        elif isinstance(selection, FragmentSpread | InlineFragment) and _selected(selection.selections, path):
            return True
    return False


@dataclass(frozen=True)
class _Field:
    projections: frozenset[str]
    result: str  # the named type of the field's value: where its selections are looked up


class ReadMap:
    """Every object type's fields with what they declare, walked along an operation's selections."""

    def __init__(self, fields: Mapping[str, Mapping[str, _Field]], possible: Mapping[str, tuple[str, ...]],
                 query: str) -> None:
        self._fields, self._possible, self._query = fields, possible, query

    @classmethod
    def of(cls, schema: strawberry.Schema) -> ReadMap:
        fields: dict[str, dict[str, _Field]] = {}
        possible: dict[str, tuple[str, ...]] = {}
        implementations = [c.implementation for c in schema.schema_converter.type_map.values()]
        for graphql_type in implementations:
            if isinstance(graphql_type, GraphQLObjectType | GraphQLInterfaceType):
                fields[graphql_type.name] = {n: _declared(f) for n, f in graphql_type.fields.items()}
            if isinstance(graphql_type, GraphQLUnionType):
                possible[graphql_type.name] = tuple(t.name for t in graphql_type.types)
            if isinstance(graphql_type, GraphQLObjectType):
                for interface in graphql_type.interfaces:
                    possible[interface.name] = (*possible.get(interface.name, ()), graphql_type.name)
        query = schema.config.name_converter.from_object(get_object_definition(schema.query, strict=True))
        return cls(fields, possible, query)

    def projections(self, document: DocumentNode | None, operation_name: str | None) -> set[str]:
        """The projections the chosen operation's selections declare (none for an unknown operation)."""
        operation = _operation(document, operation_name)
        if document is None or operation is None:
            return set()
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        found: set[str] = set()
        for field in self._fields_selected(operation.selection_set, fragments):
            found |= field.projections
        return found

    def root_projections(self, field_name: str) -> frozenset[str]:
        """What the root query type's field ``field_name`` declares (nothing for an unknown field)."""
        found = self._fields.get(self._query, {}).get(field_name)
        return found.projections if found else frozenset()

    def declared(self) -> set[str]:
        """Every projection some field declares (to check them against the application's projections)."""
        return {p for by_name in self._fields.values() for f in by_name.values() for p in f.projections}

    def _fields_selected(self, root: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]
                         ) -> Iterator[_Field]:
        """Each selection set is walked once per type it is seen at, so fragments spread many times cost once."""
        stack, seen = [(root, self._query)], set()
        while stack:
            selections, parent = stack.pop()
            if (id(selections), parent) in seen:
                continue
            seen.add((id(selections), parent))
            for selection in selections.selections:
                if isinstance(selection, FieldNode):
                    for field in self._field(parent, selection.name.value):
                        yield field
                        if selection.selection_set is not None:
                            stack.append((selection.selection_set, field.result))
                elif isinstance(selection, InlineFragmentNode):
                    condition = selection.type_condition
                    stack.append((selection.selection_set, condition.name.value if condition else parent))
                elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
                    fragment = fragments[selection.name.value]
                    stack.append((fragment.selection_set, fragment.type_condition.name.value))

    def _field(self, parent: str, name: str) -> Iterator[_Field]:
        """The field on ``parent``, or on each type it may be (an interface, a union)."""
        for type_name in self._possible.get(parent, (parent,)):
            field = self._fields.get(type_name, {}).get(name)
            if field is not None:
                yield field


def _declared(field: Any) -> _Field:
    definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    resolver = getattr(definition, "base_resolver", None)
    function = resolver.wrapped_func if resolver is not None else None
    projections: frozenset[str] = getattr(function, _READS, frozenset())
    return _Field(projections, get_named_type(field.type).name)


def _operation(document: DocumentNode | None, operation_name: str | None) -> OperationDefinitionNode | None:
    if document is None:
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = [o for o in operations if operation_name is None or (o.name and o.name.value == operation_name)]
    return chosen[0] if chosen else None
