"""Limits on a GraphQL document, checked before graphql-core's validation, in time linear in the document.

Strawberry's depth and alias limiters walk a fragment again at every spread, so a chain of fragments
that each spread the next twice costs 2**n. Here each fragment is measured once, in dependency
order, and its measure is reused wherever it is spread; counts saturate instead of growing without
bound. What is measured, per operation, with fragments counted each time they are spread:

- depth: fields with selections nested in each other (introspection fields not counted, as
  Strawberry's limiter did); nesting: every selection set and list or object value, counted;
- aliases;
- cost: fields and fragment spreads, where a field taking ``first``/``last`` (a connection)
  counts its selections times its page size (a variable counts as the largest page);
- overlaps: pairs of selections with the same response name in the same place once fragments are
  inlined. graphql-core's ``OverlappingFieldsCanBeMergedRule`` compares each such pair, so its time
  grows with their square; this bounds it.

Then: no introspection unless allowed, no NUL in string literals (PostgreSQL text cannot hold it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    Node,
    ObjectValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    get_named_type,
)

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "DocumentLimits", "check_document"]

DEFAULT_PAGE = 20  # what a connection returns without first/last (framework.graphql.types.page_request)
MAX_PAGE = 100  # the largest page it returns
_CAP = 10**9  # counts saturate here: a fragment chain cannot make Python build huge integers
_PAGE_ARGUMENTS = ("first", "last")
_INTROSPECTION = ("__schema", "__type")


@dataclass(frozen=True)
class DocumentLimits:
    """What a document may ask for; see the module docstring for how each is counted."""

    max_depth: int = 10
    max_aliases: int = 15
    max_cost: int = 5_000
    max_overlaps: int = 1_000
    max_nesting: int = 32
    introspection: bool = False


@dataclass(frozen=True)
class _Measure:
    depth: int = 0
    nesting: int = 0
    aliases: int = 0
    cost: int = 0
    introspection: Node | None = None  # the first __schema / __type field, for the error's location

    def beside(self, other: _Measure) -> _Measure:
        """Two selections of one selection set."""
        return _Measure(max(self.depth, other.depth), max(self.nesting, other.nesting),
                        _sat(self.aliases + other.aliases), _sat(self.cost + other.cost),
                        self.introspection or other.introspection)


def _sat(value: int) -> int:
    return min(value, _CAP)


class _Refused(Exception):
    def __init__(self, error: GraphQLError) -> None:
        super().__init__(error.message)
        self.error = error


def _error(message: str, code: str, node: Node | None = None) -> GraphQLError:
    return GraphQLError(message, node, extensions={"code": code})


def check_document(schema: GraphQLSchema, document: DocumentNode, limits: DocumentLimits) -> list[GraphQLError]:
    """The first limit the document breaks, as a one-error list; empty when it is within all of them."""
    try:
        _Checker(schema, document, limits).check()
    except _Refused as refused:
        return [refused.error]
    except RecursionError:  # the parser accepted it, but it nests too deep to walk
        return [_too_deep(limits)]
    return []


def _too_deep(limits: DocumentLimits) -> GraphQLError:
    return _error(f"the document nests selections or values more than {limits.max_nesting} levels deep",
                  "QUERY_TOO_DEEP")


class _Checker:
    def __init__(self, schema: GraphQLSchema, document: DocumentNode, limits: DocumentLimits) -> None:
        self._schema, self._limits = schema, limits
        self._fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self._operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        self._measured: dict[str, _Measure] = {}

    def check(self) -> None:
        for name in _dependency_order(self._fragments):
            fragment = self._fragments[name]
            on = self._type(fragment.type_condition.name.value)
            self._measured[name] = self._selections(fragment.selection_set, on)
            self._values(fragment)
        for operation in self._operations:
            self._values(operation)
            root = self._schema.get_root_type(operation.operation)
            self._within_limits(self._selections(operation.selection_set, root), operation)
            overlaps = _overlaps(operation.selection_set, self._fragments, self._limits.max_overlaps)
            if overlaps > self._limits.max_overlaps:
                raise _Refused(_error(
                    "the operation selects the same fields in the same place too often (fragments inlined): "
                    f"more than {self._limits.max_overlaps} pairs to compare", "QUERY_TOO_LARGE", operation))

    def _within_limits(self, measure: _Measure, operation: OperationDefinitionNode) -> None:
        limits = self._limits
        if measure.nesting > limits.max_nesting:
            raise _Refused(_too_deep(limits))
        if measure.depth > limits.max_depth:
            raise _Refused(_error(f"the operation is deeper than the {limits.max_depth} levels allowed",
                                  "QUERY_TOO_DEEP", operation))
        if measure.aliases > limits.max_aliases:
            raise _Refused(_error(
                f"the operation uses more than the {limits.max_aliases} aliases allowed (fragments counted "
                "each time they are spread)", "QUERY_TOO_LARGE", operation))
        if measure.cost > limits.max_cost:
            raise _Refused(_error(
                f"the operation costs more than the {limits.max_cost} allowed (each field and fragment spread "
                "counts once per use, a connection's fields once per item of its page)", "QUERY_TOO_LARGE",
                operation))
        if measure.introspection is not None and not limits.introspection:
            raise _Refused(_error("introspection is disabled on this server", "GRAPHQL_VALIDATION_FAILED",
                                  measure.introspection))

    def _type(self, name: str) -> GraphQLNamedType | None:
        return self._schema.get_type(name)

    def _selections(self, selection_set: SelectionSetNode, parent: GraphQLNamedType | None) -> _Measure:
        total = _Measure()
        for selection in selection_set.selections:
            total = total.beside(self._selection(selection, parent))
        return total

    def _selection(self, selection: Node, parent: GraphQLNamedType | None) -> _Measure:
        if isinstance(selection, FieldNode):
            return self._field(selection, parent)
        if isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            inner = self._selections(selection.selection_set, self._type(condition.name.value) if condition else parent)
            return replace(inner, nesting=inner.nesting + 1)  # its braces nest like a field's
        assert isinstance(selection, FragmentSpreadNode)
        # An unknown fragment (KnownFragmentNamesRule reports it) or one in a cycle counts as the spread alone.
        inner = self._measured.get(selection.name.value, _Measure())
        return _Measure(inner.depth, inner.nesting, inner.aliases, _sat(1 + inner.cost), inner.introspection)

    def _field(self, node: FieldNode, parent: GraphQLNamedType | None) -> _Measure:
        name = node.name.value
        own = _Measure(aliases=1 if node.alias else 0, cost=1,
                       introspection=node if name in _INTROSPECTION else None)
        if node.selection_set is None:
            return own
        definition = _field_definition(parent, name)
        inner = self._selections(node.selection_set, get_named_type(definition.type) if definition else None)
        depth = 0 if name.startswith("__") else 1 + inner.depth
        per_item = _page_size(node, definition)
        return _Measure(depth, 1 + inner.nesting, _sat(own.aliases + inner.aliases),
                        _sat(1 + per_item * inner.cost), own.introspection or inner.introspection)

    def _values(self, definition: OperationDefinitionNode | FragmentDefinitionNode) -> None:
        for value, depth in _all_values(definition):
            if depth > self._limits.max_nesting:
                raise _Refused(_too_deep(self._limits))
            if isinstance(value, StringValueNode) and "\x00" in value.value:
                raise _Refused(_error("string values must not contain NUL (\\u0000) characters", "BAD_USER_INPUT",
                                      value))


def _field_definition(parent: GraphQLNamedType | None, name: str) -> Any:
    if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
        return parent.fields.get(name)
    return None


def _page_size(node: FieldNode, definition: Any) -> int:
    """How many items a connection field returns at most; 1 for any other field."""
    if definition is None or not any(a in definition.args for a in _PAGE_ARGUMENTS):
        return 1
    given = [a.value for a in node.arguments or () if a.name.value in _PAGE_ARGUMENTS]
    if not given:
        return DEFAULT_PAGE
    return max(1, *(_literal_page(v) for v in given))


def _literal_page(value: ValueNode) -> int:
    if not isinstance(value, IntValueNode):
        return MAX_PAGE  # a variable (or a wrong type, which validation reports): the largest page
    size = int(value.value)
    return size if size <= _MAX_INT else 1  # not a GraphQL Int: left for validation to report


_MAX_INT = 2**31 - 1


def _all_values(definition: OperationDefinitionNode | FragmentDefinitionNode) -> Iterator[tuple[ValueNode, int]]:
    """Every value in a definition (arguments, directives' arguments, variables' defaults), nested values
    too, each with how deep it sits in lists and objects; iteratively (the parser allows more than the stack)."""
    stack: list[tuple[Any, int]] = [(definition, -1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ValueNode):
            yield node, depth
            if isinstance(node, ListValueNode):
                stack.extend((v, depth + 1) for v in node.values)
            elif isinstance(node, ObjectValueNode):
                stack.extend((f.value, depth + 1) for f in node.fields)
        else:
            stack.extend((child, 0) for child in _children(node))


def _children(node: Any) -> Iterator[Any]:
    for variable in getattr(node, "variable_definitions", None) or ():
        if variable.default_value is not None:
            yield variable.default_value
    for directive in getattr(node, "directives", None) or ():
        yield from (a.value for a in directive.arguments or ())
    yield from (a.value for a in getattr(node, "arguments", None) or ())
    selection_set = getattr(node, "selection_set", None)
    if selection_set is not None:
        yield from selection_set.selections


def _dependency_order(fragments: Mapping[str, FragmentDefinitionNode]) -> list[str]:
    """Fragment names, each after every fragment it spreads; a cycle is refused (as NoFragmentCyclesRule would)."""
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "open" while its dependencies are walked, "done" after
    for start in fragments:
        if start in state:
            continue
        state[start] = "open"
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(_spread_names(fragments[start].selection_set)))]
        while stack:
            name, pending = stack[-1]
            following = next(pending, None)
            if following is None:
                stack.pop()
                state[name] = "done"
                order.append(name)
            elif following in fragments and state.get(following) is None:
                state[following] = "open"
                stack.append((following, iter(_spread_names(fragments[following].selection_set))))
            elif state.get(following) == "open":
                raise _Refused(_error(f"Cannot spread fragment '{following}' within itself.",
                                      "GRAPHQL_VALIDATION_FAILED", fragments[following]))
    return order


def _spread_names(selection_set: SelectionSetNode) -> list[str]:
    names: list[str] = []
    stack = [selection_set]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                names.append(selection.name.value)
            elif isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None:
                stack.append(selection.selection_set)
    return names


@dataclass
class _Place:
    """A place in the merged result: how many selections land on each response name, and which fragments
    were spread here (graphql-core compares a fragment's fields once per place, and each pair of fragments)."""

    count: int = 0
    children: dict[str, _Place] = field(default_factory=dict)
    spread: set[str] = field(default_factory=set)


def _overlaps(selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode], limit: int) -> int:
    """Pairs of same-named selections per place, plus pairs of fragments spread in one place.

    Called once the cost is within its limit, so inlining the fragments here is bounded by it."""
    pairs = 0
    stack: list[tuple[_Place, Sequence[Node]]] = [(_Place(), selection_set.selections)]
    while stack and pairs <= limit:
        place, selections = stack.pop()
        for selection in selections:
            if isinstance(selection, FieldNode):
                key = (selection.alias or selection.name).value
                child = place.children.setdefault(key, _Place())
                pairs += child.count
                child.count += 1
                if selection.selection_set is not None:
                    stack.append((child, selection.selection_set.selections))
            elif isinstance(selection, InlineFragmentNode):
                stack.append((place, selection.selection_set.selections))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in fragments and name not in place.spread:
                    pairs += len(place.spread)
                    place.spread.add(name)
                    stack.append((place, fragments[name].selection_set.selections))
    return pairs
