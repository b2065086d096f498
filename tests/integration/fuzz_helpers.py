"""Shared pieces of the property-based fuzzing of both APIs: schemathesis draws the cases, these judge them.

The runs are deterministic (``derandomize``: the same cases in the same order on every machine, and no
example database) and bounded by a number of cases per operation, so that both fuzz modules together
take about a minute on a 2-core machine.

What is checked of every answer:

- never a 5xx;
- write API: the status, content type, headers and body are those ``/openapi.json`` documents
  (schemathesis's conformance checks), and every error is a problem document whose ``status`` is the
  HTTP status and whose ``type`` names its ``code``;
- GraphQL: a JSON object whose every error has a message and an ``extensions.code``, and whose data,
  when there is no error, has the shape and types the query asks of the schema;
- a positive case (valid by the document) is never refused for its form: the write API answers 200 or
  a refusal of what it asks (404, 409, or a 422 that is not ``invalid_command``), GraphQL runs the
  query or refuses it with a code the schema cannot express (a limit, an argument out of range).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import schemathesis
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.http import clean_env, eventfold_executable
from support.tokens import AUDIENCE, ISSUER, Issuer

from example_app.securities import check_isin

PROBLEM_JSON = "application/problem+json"
DOCUMENTED = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance, response_headers_conformance]
# Refusals of what a well-formed request asks, which no schema can foresee.
REFUSED_FOR_WHAT_IT_ASKS = {404, 409, 422}
# GraphQL codes a valid query may still get: limits on cost and depth, and argument values the schema
# cannot constrain (first with last, a negative count, a cursor that is not one).
GRAPHQL_CODES_OF_VALID_QUERIES = {"BAD_USER_INPUT", "QUERY_TOO_LARGE", "QUERY_TOO_DEEP"}
GRAPHQL_CODES_OF_INVALID_QUERIES = {"GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED", "BAD_REQUEST",
                                    *GRAPHQL_CODES_OF_VALID_QUERIES}


# --- running ------------------------------------------------------------------------------------------


def fuzz(strategy: st.SearchStrategy[Case], check: Callable[[Case], None], *, max_examples: int) -> None:
    """``check`` on ``max_examples`` cases drawn from ``strategy``, the same ones on every run."""

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate, Phase.shrink),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=strategy)
    def run(case: Case) -> None:
        check(case)

    run()


def operations(schema: Any) -> list[Any]:
    """Every operation of a loaded schema (an unusable one fails the test)."""
    return [result.ok() for result in schema.get_all_operations()]


# --- generation the schema cannot say alone ----------------------------------------------------------


def valid_isins() -> st.SearchStrategy[str]:
    """ISINs with the right check digit: what the document's ``format: isin`` means beside its pattern."""
    return st.from_regex(r"[A-Z]{2}[A-Z0-9]{9}", fullmatch=True).map(_with_check_digit)


def _with_check_digit(body: str) -> str:
    for digit in "0123456789":
        try:
            return check_isin(body + digit)
        except ValueError:
            continue
    raise AssertionError(f"no check digit fits {body}")


schemathesis.openapi.format("isin", valid_isins())


def integers_as_literals(value: Any) -> Any:
    """The body with every whole float (``8706.0``) written as an integer literal.

    In JSON Schema 2020-12 (OpenAPI 3.1) 8706.0 *is* an integer, so no schema can keep schemathesis
    from sending it for ``type: integer``; the write API takes integers in JSON's integer form only
    (as the document's description says), so a positive case is sent in that form.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: integers_as_literals(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integers_as_literals(item) for item in value]
    return value


# --- judging the write API ---------------------------------------------------------------------------


def check_write_answer(case: Case, response: Response, mode: GenerationMode) -> None:
    case.validate_response(response, checks=DOCUMENTED)
    if response.status_code >= 400:
        assert_problem(response)
    if mode is GenerationMode.POSITIVE:
        assert_not_refused_for_its_form(case, response)


def assert_problem(response: Response) -> dict[str, Any]:
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(PROBLEM_JSON), (response.status_code, content_type, response.content[:300])
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    assert body["status"] == response.status_code, body
    assert body["type"] == f"urn:eventfold:problem:{body['code']}", body
    assert isinstance(body["title"], str) and isinstance(body["detail"], str), body
    return body


def assert_not_refused_for_its_form(case: Case, response: Response) -> None:
    status = response.status_code
    if status == 200:
        return
    body = json.loads(response.content)
    refused_for_form = status not in REFUSED_FOR_WHAT_IT_ASKS or body.get("code") == "invalid_command"
    assert not refused_for_form, f"a valid {case.operation.label} was refused: {status} {body}\nbody: {case.body!r}"


# --- judging GraphQL ---------------------------------------------------------------------------------


def check_graphql_answer(case: Case, response: Response, mode: GenerationMode, schema: GraphQLSchema) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])
    body = json.loads(response.content)
    assert isinstance(body, dict) and ("data" in body or "errors" in body), body
    codes = graphql_error_codes(body)
    allowed = GRAPHQL_CODES_OF_VALID_QUERIES if mode is GenerationMode.POSITIVE else GRAPHQL_CODES_OF_INVALID_QUERIES
    unexpected = set(codes) - allowed
    assert not unexpected, f"{mode.value} query answered {sorted(unexpected)}: {body}\nquery: {case.body!r}"
    if not codes:
        assert response.status_code == 200, body
        assert isinstance(case.body, str)  # a GraphQL case's body is its query
        assert_data_conforms(schema, case.body, body.get("data"))


def graphql_error_codes(body: dict[str, Any]) -> list[str]:
    errors = body.get("errors") or []
    assert isinstance(errors, list), body
    codes = []
    for error in errors:
        assert isinstance(error.get("message"), str), error
        code = (error.get("extensions") or {}).get("code")
        assert isinstance(code, str), f"an error without a code: {error}"
        codes.append(code)
    return codes


def assert_data_conforms(schema: GraphQLSchema, query: str, data: Any) -> None:
    """``data`` has every field the query selects, each of the schema's type (nullability, lists, scalars)."""
    document = parse(query)
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    assert schema.query_type is not None
    _conforms(schema.query_type, operation.selection_set, data, fragments, "data")


def _conforms(parent: GraphQLObjectType, selections: SelectionSetNode, value: Any,
              fragments: Mapping[str, FragmentDefinitionNode], path: str) -> None:
    assert isinstance(value, dict), f"{path} is not an object: {value!r}"
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            key = (selection.alias or selection.name).value
            assert key in value, f"{path}.{key} is missing"
            if selection.name.value == "__typename":
                assert value[key] == parent.name, f"{path}.{key} is {value[key]!r}"
                continue
            field = parent.fields[selection.name.value]
            _value_conforms(field.type, selection.selection_set, value[key], fragments, f"{path}.{key}")
        elif isinstance(selection, FragmentSpreadNode):  # on the same type: this schema has no interfaces
            _conforms(parent, fragments[selection.name.value].selection_set, value, fragments, path)
        elif isinstance(selection, InlineFragmentNode):
            _conforms(parent, selection.selection_set, value, fragments, path)


def _value_conforms(kind: GraphQLOutputType, selections: SelectionSetNode | None, value: Any,
                    fragments: Mapping[str, FragmentDefinitionNode], path: str) -> None:
    if isinstance(kind, GraphQLNonNull):
        assert value is not None, f"{path} is null, but {kind} is not"
        kind = kind.of_type
    if value is None:
        return
    if isinstance(kind, GraphQLList):
        assert isinstance(value, list), f"{path} is not a list: {value!r}"
        for index, item in enumerate(value):
            _value_conforms(kind.of_type, selections, item, fragments, f"{path}[{index}]")
    elif isinstance(kind, GraphQLObjectType):
        assert selections is not None
        _conforms(kind, selections, value, fragments, path)
    elif isinstance(kind, GraphQLEnumType):
        assert value in kind.values, f"{path} is not a {kind.name}: {value!r}"
    else:
        assert isinstance(kind, GraphQLScalarType)
        assert _SCALARS.get(kind.name, lambda _: True)(value), f"{path} is not a {kind.name}: {value!r}"


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SCALARS: dict[str, Callable[[Any], bool]] = {
    "String": lambda v: isinstance(v, str),
    "ID": lambda v: isinstance(v, str),
    "Boolean": lambda v: isinstance(v, bool),
    "Int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
    "Float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "Date": lambda v: isinstance(v, str) and _DATE.fullmatch(v) is not None,
    "DateTime": lambda v: isinstance(v, str) and _DATE.match(v) is not None,
    "Decimal": lambda v: isinstance(v, str),
}


def tokened_env(database_url: str, schema: str, issuer: Issuer) -> dict[str, str]:
    """A server of the fuzz tests: tokens required (the issuer's key), limits out of the fuzzer's way;
    the schema initialised."""
    env = clean_env(
        EVENTFOLD_DATABASE_URL=database_url, EVENTFOLD_DB_SCHEMA=schema, EVENTFOLD_DB_POOL_SIZE="2",
        EVENTFOLD_ALLOW_ANONYMOUS="false", EVENTFOLD_JWKS_FILE=str(issuer.jwks_file),
        EVENTFOLD_JWT_ALGORITHMS="RS256", EVENTFOLD_JWT_ISSUER=ISSUER, EVENTFOLD_JWT_AUDIENCE=AUDIENCE,
        EVENTFOLD_RATE_LIMIT_PER_SECOND="100000", EVENTFOLD_AUTH_FAILURES_PER_MINUTE="100000")
    init = subprocess.run([eventfold_executable(), "init-db"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    return env
