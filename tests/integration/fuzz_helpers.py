"""Shared pieces of the property-based fuzzing of both APIs: schemathesis draws the cases, these judge them.

The runs are deterministic (``derandomize``: the same cases in the same order on every machine, and no
example database) and bounded by a number of cases per operation, so that both fuzz modules together
take about a minute on a 2-core machine.

What is checked of every answer:

- never a 5xx;
- write API: the status, content type, headers and body are those ``/openapi.json`` documents
  (schemathesis's conformance checks), and every error is a problem document whose ``status`` is the
  HTTP status and whose ``type`` names its ``code``;
- GraphQL: a JSON object whose every error has a message and an ``extensions.code``;
- a positive case (valid by the document) is never refused for its form: the write API answers 200 or
  a refusal of what it asks (404, 409, or a 422 that is not ``invalid_command``), GraphQL runs the
  query or refuses it with a code the schema cannot express (a limit, an argument out of range).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import schemathesis
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


def check_graphql_answer(case: Case, response: Response, mode: GenerationMode) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])
    body = json.loads(response.content)
    assert isinstance(body, dict) and ("data" in body or "errors" in body), body
    codes = graphql_error_codes(body)
    allowed = GRAPHQL_CODES_OF_VALID_QUERIES if mode is GenerationMode.POSITIVE else GRAPHQL_CODES_OF_INVALID_QUERIES
    unexpected = set(codes) - allowed
    assert not unexpected, f"{mode.value} query answered {sorted(unexpected)}: {body}\nquery: {case.body!r}"
    if not codes:
        assert response.status_code == 200 and isinstance(body.get("data"), dict), body


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
