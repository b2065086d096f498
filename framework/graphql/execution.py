"""Execution with a short path for plain leaf fields.

Most fields of a read model's type are plain: no resolver, no permission, no argument, a scalar or enum
value (``actionId``, ``status`` of each card of a page). graphql-core executes each like any other field:
it builds a resolve info, calls Strawberry's resolver wrapper, then dispatches the completion on the
field's type. Here such a field takes its value as Strawberry's own resolver does
(``StrawberryField.get_result``) and coerces it as graphql-core's completion does
(``coerce_output_value``); anything else, and any value that would not complete plainly (null for a
non-null field, a value that cannot be read, a coercion that fails, an awaitable), goes the general
way, which then answers exactly as it always does (the same value, or the same error).
Strawberry passes this class to graphql-core as its ``execution_context_class``.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from graphql import (
    GraphQLField,
    GraphQLLeafType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    Undefined,
    is_leaf_type,
)
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

__all__ = ["PlainLeavesExecutor"]

_Plain = tuple[StrawberryField, GraphQLLeafType, bool]  # the field, its leaf type, whether it is non-null


class PlainLeavesExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's executor (as Strawberry configures it), plain leaf fields completed directly."""

    def execute_field(self, parent_type: GraphQLObjectType, source: Any, field_details_list: Any, path: Any,
                      position_context: Any) -> Any:
        node = field_details_list[0].node
        plain = None if node.arguments or self._wrapped() else _plain(
            self._fields(), self.schema.get_field(parent_type, node.name.value))
        if plain is not None:
            completed = self._plainly(plain, source)
            if completed is not Undefined:
                return completed
        return super().execute_field(parent_type, source, field_details_list, path, position_context)

    def _plainly(self, plain: _Plain, source: Any) -> Any:
        """The plain field's completed value, or ``Undefined`` when the general way must answer (and report)."""
        field, leaf, non_null = plain
        try:
            value = field.get_result(source, None, [], {})
        except Exception:  # reading it failed: the general way reports it as this field's error
            return Undefined
        if value is None:
            return Undefined if non_null else None
        if isinstance(value, Exception) or self.is_awaitable(value):
            return Undefined
        try:
            coerced = leaf.coerce_output_value(value)
        except Exception:
            return Undefined
        return Undefined if coerced is None else coerced

    _known: dict[int, _Plain | None] | None = None  # this request's schema's entry in _PLAIN

    def _fields(self) -> dict[int, _Plain | None]:
        known = self._known
        if known is None:
            known = self._known = _PLAIN.setdefault(self.schema, {})
        return known

    def _wrapped(self) -> bool:
        """Resolvers are wrapped by middleware (an extension's ``resolve``): every field goes the general way."""
        manager = self.middleware_manager
        return manager is not None and bool(manager.middlewares)


# What is known of each schema's fields, by the field's id (fields compare by value): a schema holds its
# fields, so an id stays its field's while the schema lives; a dropped schema takes its entry with it.
_PLAIN: WeakKeyDictionary[GraphQLSchema, dict[int, _Plain | None]] = WeakKeyDictionary()


def _plain(known: dict[int, _Plain | None], field_def: GraphQLField | None) -> _Plain | None:
    if field_def is None:
        return None
    try:
        return known[id(field_def)]
    except KeyError:
        found = known[id(field_def)] = _plain_of(field_def)
        return found


def _plain_of(field_def: GraphQLField) -> _Plain | None:
    """A field whose value is its source's attribute (Strawberry's "basic" field: no resolver, no
    permission or other field extension), without arguments, of a scalar or enum type."""
    field = (field_def.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if not isinstance(field, StrawberryField) or not field.is_basic_field or field_def.args:
        return None
    kind, non_null = field_def.type, False
    if isinstance(kind, GraphQLNonNull):
        kind, non_null = kind.of_type, True
    return (field, kind, non_null) if is_leaf_type(kind) else None
