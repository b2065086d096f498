"""The write API's OpenAPI document: valid, no looser than the server, and true to how it was built.

What the server takes is checked against what the document says: the headers' patterns against the
server's own checks, every pattern against the regex engines that read it, the documented examples
against the command models (strictly, as a client's JSON is read), and text drawn from the decimal
and ISIN patterns against the server. The fuzzing over real HTTP is tests/integration/test_fuzz_*.py.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import Field
from support.tokens import make_issuer

from example_app.commands import AnnounceCorporateAction
from example_app.handlers import router as example_router
from example_app.securities import check_isin
from framework import Command, CommandBus, CommandRouter, InvalidCommand
from framework.adapters.memory import MemoryEventStore
from framework.http.auth import AllowAnonymous
from framework.http.edge import valid_correlation_id
from framework.http.openapi import Access, access_of, openapi_document
from framework.http.write_api import WriteApiOptions, create_write_app
from framework.security import ANONYMOUS, Principal, anonymous
from framework.storable import INT64_MAX, INT64_MIN

from .domain import APPLE

with warnings.catch_warnings():  # starlette would rather have httpx2, which is not installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ROLES = {c.command_name: sorted(c.allowed_roles) for c in example_router.public_commands()}  # internal: no route
ALWAYS = {"200", "400", "404", "408", "409", "413", "415", "422", "431", "500", "503"}
TOKENS_ONLY = Access(checks_tokens=True, anonymous=None)
TOKENS_OR_CUSTODY = Access(checks_tokens=True, anonymous=anonymous(frozenset({"custody"})))


@functools.cache  # the property tests read it once per drawn case; nobody changes it
def document(access: Access | None = None, **options: Any) -> dict[str, Any]:
    return openapi_document(example_router, access=access, **options)


def operation(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = doc["paths"][f"/commands/{name}"]["post"]
    return found


def schema_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = doc["components"]["schemas"][name]
    return found


# --- valid OpenAPI, whoever is let in --------------------------------------------------------------


@pytest.mark.parametrize("access", [Access(), Access(anonymous=anonymous(frozenset({"custody"}))),
                                    TOKENS_ONLY, TOKENS_OR_CUSTODY], ids=["open", "anonymous-custody", "tokens",
                                                                          "tokens-or-anonymous-custody"])
@pytest.mark.parametrize("rate_limited", [False, True])
def test_the_document_is_valid_openapi_3_1(access: Access, rate_limited: bool) -> None:
    doc = document(access, rate_limited=rate_limited, max_body_bytes=4096)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {f"/commands/{name}" for name in ROLES}


def test_every_pattern_compiles_in_python_and_in_the_engine_schemathesis_uses() -> None:
    for pattern in _patterns(document(TOKENS_ONLY)):
        re.compile(pattern)
        jsonschema_rs.validator_for({"type": "string", "pattern": pattern})  # raises on a regex it cannot read


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


# --- security and roles ----------------------------------------------------------------------------


def test_without_token_checks_there_is_no_security_scheme_and_no_401() -> None:
    doc = document(Access())
    assert "securitySchemes" not in doc["components"]
    for name in ROLES:
        op = operation(doc, name)
        assert "security" not in op
        assert set(op["responses"]) == ALWAYS, name  # every caller may do everything: no 401, 403 nor 429


def test_anonymous_roles_without_tokens_document_403_where_they_fall_short() -> None:
    doc = document(Access(anonymous=anonymous(frozenset({"custody"}))))
    assert "securitySchemes" not in doc["components"]
    assert "403" not in operation(doc, "OpenAccount")["responses"]
    assert "403" in operation(doc, "RegisterSecurity")["responses"]
    assert "401" not in operation(doc, "RegisterSecurity")["responses"]


def test_with_tokens_each_command_names_its_roles_as_alternatives() -> None:
    doc = document(TOKENS_ONLY)
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for name, roles in ROLES.items():
        op = operation(doc, name)
        assert op["x-eventfold-roles"] == roles
        assert op["security"] == [{"bearer": [role]} for role in roles], name
        assert ", ".join(roles) in op["description"]
        assert {"401", "403"} <= set(op["responses"]), name
    assert operation(doc, "OpenAccount")["security"] == [{"bearer": ["custody"]}]


def test_a_command_anonymous_callers_may_send_needs_no_token() -> None:
    doc = document(TOKENS_OR_CUSTODY)
    assert operation(doc, "OpenAccount")["security"] == [{"bearer": ["custody"]}, {}]
    assert operation(doc, "RegisterSecurity")["security"] == [{"bearer": ["registrar"]}]


def test_a_command_without_roles_takes_any_token() -> None:
    router = CommandRouter()
    router.route(_Free, lambda command, unit: None)
    op = openapi_document(router, access=TOKENS_ONLY)["paths"]["/commands/_Free"]["post"]
    assert op["security"] == [{"bearer": []}]
    assert "403" not in op["responses"]
    assert op["description"].startswith("A command anyone let in may send.")


class _Free(Command):
    """A command anyone let in may send."""

    note: str


def test_429_is_documented_only_when_a_rate_limit_applies() -> None:
    assert "429" not in operation(document(TOKENS_ONLY), "OpenAccount")["responses"]
    limited = operation(document(TOKENS_ONLY, rate_limited=True), "OpenAccount")["responses"]["429"]
    assert limited["headers"]["Retry-After"] == {"$ref": "#/components/headers/Retry-After"}


@pytest.mark.parametrize(("authenticator", "expected"), [
    (None, Access()),
    (AllowAnonymous(), Access()),
    (AllowAnonymous(anonymous(frozenset({"custody"}))), Access(anonymous=anonymous(frozenset({"custody"})))),
])
def test_the_access_of_an_authenticator(authenticator: Any, expected: Access) -> None:
    assert access_of(authenticator) == expected


def test_a_jwt_authenticator_checks_tokens_and_names_its_anonymous_caller(tmp_path: Path) -> None:
    issuer = make_issuer(tmp_path)
    assert access_of(issuer.authenticator()) == Access(checks_tokens=True, anonymous=None)
    with_anonymous = access_of(issuer.authenticator(anonymous_roles=frozenset({"custody"})))
    assert with_anonymous == Access(checks_tokens=True, anonymous=anonymous(frozenset({"custody"})))


def test_an_unknown_authenticator_is_taken_to_require_a_token() -> None:
    class Custom:
        def authenticate(self, authorization: str | None) -> Principal:
            return ANONYMOUS

    assert access_of(Custom()) == TOKENS_ONLY


def test_the_served_document_follows_the_app_s_authenticator_and_limits() -> None:
    bus = CommandBus(example_router, MemoryEventStore())
    options = WriteApiOptions(max_body_bytes=2048, rate_limit_per_second=5)
    app = create_write_app(bus, options, authenticator=AllowAnonymous(anonymous(frozenset({"custody"}))))
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()
    op = operation(doc, "RegisterSecurity")
    assert "security" not in op and "401" not in op["responses"]
    assert {"403", "429"} <= set(op["responses"])
    assert "at most 2048 bytes" in op["description"]


# --- responses -------------------------------------------------------------------------------------


def test_every_error_is_a_problem_document_with_its_codes() -> None:
    doc = document(TOKENS_ONLY, rate_limited=True)
    responses = operation(doc, "CreditHoldings")["responses"]
    assert set(responses) == ALWAYS | {"401", "403", "429"}
    codes = {status: set(r["content"]["application/problem+json"]["examples"]) for status, r in responses.items()
             if status != "200"}
    assert codes["400"] == {"malformed_json", "malformed_header", "malformed_request"}
    assert codes["422"] == {"invalid_command", "rule_violation", "idempotency_key_reused"}
    assert codes["409"] >= {"already_exists", "invalid_transition", "concurrency_conflict",
                            "idempotency_key_in_flight"}
    assert codes["503"] == {"store_unavailable", "too_many_connections", "keys_unavailable"}
    assert codes["401"] == {"unauthenticated"} and codes["403"] == {"forbidden"} and codes["429"] == {"rate_limited"}
    assert codes["408"] == {"request_timeout"} and codes["431"] == {"headers_too_large"}
    for status, response in responses.items():
        if status == "200":
            continue
        content = response["content"]["application/problem+json"]
        assert content["schema"] == {"$ref": "#/components/schemas/Problem"}
        for code, example in content["examples"].items():
            assert example["value"]["status"] == int(status) and example["value"]["code"] == code
    assert "Retry-After" in responses["503"]["headers"] and "WWW-Authenticate" in responses["401"]["headers"]
    assert doc["components"]["headers"]["Retry-After"]["required"] is True


def test_without_tokens_the_key_source_cannot_be_unavailable() -> None:
    examples = operation(document(Access()), "CreditHoldings")["responses"]["503"]["content"]
    assert set(examples["application/problem+json"]["examples"]) == {"store_unavailable", "too_many_connections"}


def test_a_success_says_how_to_read_your_own_write() -> None:
    doc = document()
    accepted = doc["components"]["schemas"]["CommandAccepted"]
    assert "Eventfold-Position" in accepted["properties"]["position"]["description"]
    assert "Eventfold-Position" in doc["info"]["description"]
    headers = operation(doc, "OpenAccount")["responses"]["200"]["headers"]
    assert set(headers) == {"X-Correlation-ID", "Idempotent-Replayed", "ETag"}


# --- headers: the server's own checks --------------------------------------------------------------

_HEADER_SAMPLES = ["a", "order-7f3a9c", "x" * 255, "x" * 256, "", "has space", "tab\there", "é", "~!", "\x7f",
                   "Root=1-5f84c7a5-…;Parent=1", "Root=1-5f84c7a5;Parent=1", "a/b:c@d,e;f+g=h", "<script>", '"q"']


def _parameter(name: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = operation(document(), "OpenAccount")["parameters"]
    return next(p for p in params if p["name"] == name)


@pytest.mark.parametrize("value", _HEADER_SAMPLES)
def test_the_idempotency_key_pattern_is_what_the_server_accepts(value: str) -> None:
    schema = _parameter("Idempotency-Key")["schema"]
    with TestClient(create_write_app(CommandBus(example_router, MemoryEventStore()))) as client:
        try:
            response = client.post("/commands/OpenAccount", json={"account_number": "A1", "holder_name": "Ann"},
                                   headers={"Idempotency-Key": value})
        except Exception:  # the client itself refuses some values (non-latin-1): the pattern must too
            assert not re.search(schema["pattern"], value)
            return
    documented = re.search(schema["pattern"], value) is not None and len(value) <= schema["maxLength"]
    assert documented == (response.status_code == 200), (value, response.status_code, response.text)


_IF_MATCH_SAMPLES = ['"0"', "0", '"3"', "3", '"123456789012345678"', "123456789012345678", '"1234567890123456789"',
                     "01", '"01"', "-1", 'W/"3"', "*", '"3", "4"', '"3', "3.0", '""', "", "abc", " 3", "3 "]


@pytest.mark.parametrize("value", _IF_MATCH_SAMPLES)
def test_the_if_match_pattern_is_what_the_server_accepts(value: str) -> None:
    """Taken: a new account expected at 0 is opened (200), at any other version refused for what it asks
    (409 version_mismatch); never 400 for a documented value, always 400 for another."""
    pattern = _parameter("If-Match")["schema"]["pattern"]
    with TestClient(create_write_app(CommandBus(example_router, MemoryEventStore()))) as client:
        response = client.post("/commands/OpenAccount", json={"account_number": "A1", "holder_name": "Ann"},
                               headers={"If-Match": value})
    sent = value.strip()  # what a client puts around a header's value is not part of it (RFC 9110 5.5)
    documented = re.search(pattern, sent) is not None
    assert documented == (response.status_code != 400), (value, response.status_code, response.text)
    if documented:
        expected = int(sent.strip('"'))
        assert response.status_code == (200 if expected == 0 else 409), response.text
        assert response.json().get("code") in (None, "version_mismatch")


def test_a_version_mismatch_is_documented_with_its_members_and_a_success_with_its_etag() -> None:
    doc = document()
    responses = operation(doc, "DebitHoldings")["responses"]
    example = responses["409"]["content"]["application/problem+json"]["examples"]["version_mismatch"]["value"]
    assert {"expected_version", "current_version"} <= set(example)
    members = schema_of(doc, "Problem")["properties"]
    assert members["expected_version"]["type"] == members["current_version"]["type"] == "integer"
    etag = responses["200"]["headers"]["ETag"]
    assert etag["required"] is True
    assert "If-Match" in doc["info"]["description"] and "If-Match" in responses["400"]["description"]
    with TestClient(create_write_app(CommandBus(example_router, MemoryEventStore()))) as client:
        opened = client.post("/commands/OpenAccount", json={"account_number": "A1", "holder_name": "Ann"})
        refused = client.post("/commands/OpenAccount", json={"account_number": "A2", "holder_name": "Bo"},
                              headers={"If-Match": "5"})
    assert re.search(etag["schema"]["pattern"], opened.headers["etag"]) and opened.headers["etag"] == '"1"'
    body = refused.json()
    assert (refused.status_code, body["expected_version"], body["current_version"]) == (409, 5, 0)
    assert set(body) <= set(members)


@pytest.mark.parametrize("value", _HEADER_SAMPLES)
def test_the_correlation_id_pattern_is_what_the_server_keeps(value: str) -> None:
    pattern = _parameter("X-Correlation-ID")["schema"]["pattern"]
    assert (re.search(pattern, value) is not None) == valid_correlation_id(value), value


# --- bodies: strict JSON, storable values ----------------------------------------------------------


def _request_schemas() -> dict[str, Any]:
    """The schemas of what a client sends: the commands and the models inside them."""
    schemas: dict[str, Any] = dict(document()["components"]["schemas"])
    del schemas["Problem"], schemas["CommandAccepted"]
    return schemas


def test_integers_are_bounded_to_what_a_store_holds() -> None:
    for integer in _schemas_of_type(_request_schemas(), "integer"):
        assert {"minimum", "exclusiveMinimum"} & integer.keys(), integer
        assert {"maximum", "exclusiveMaximum"} & integer.keys(), integer
        assert INT64_MIN <= integer.get("minimum", integer.get("exclusiveMinimum", 0)) <= INT64_MAX
        assert INT64_MIN <= integer.get("maximum", integer.get("exclusiveMaximum", 0)) <= INT64_MAX
    quantity = schema_of(document(), "CreditHoldings")["properties"]["quantity"]
    assert (quantity["exclusiveMinimum"], quantity["maximum"]) == (0, 10**15)  # the field's own bounds


def test_every_string_refuses_nul() -> None:
    for text in _schemas_of_type(_request_schemas(), "string"):
        if "enum" in text or "const" in text or ("format" in text and "pattern" not in text):
            continue  # fixed values, or a format such as a date
        assert "pattern" in text, text
        assert not re.search(text["pattern"], "A\u0000B"), text


def _schemas_of_type(node: Any, kind: str) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == kind:
            yield node
        for value in node.values():
            yield from _schemas_of_type(value, kind)
    elif isinstance(node, list):
        for item in node:
            yield from _schemas_of_type(item, kind)


def test_the_isin_is_described_with_its_pattern_format_and_check_digit() -> None:
    isin = schema_of(document(), "RegisterSecurity")["properties"]["isin"]
    assert isin["format"] == "isin"
    assert "check digit" in isin["description"] and "Luhn" in isin["description"]
    for example in isin["examples"]:
        assert re.fullmatch(isin["pattern"], example) and check_isin(example) == example


@settings(max_examples=60, derandomize=True, database=None)
@given(st.data())
def test_an_isin_of_the_pattern_with_its_check_digit_is_taken(data: st.DataObject) -> None:
    isin = schema_of(document(), "RegisterSecurity")["properties"]["isin"]
    body = data.draw(st.from_regex(isin["pattern"], fullmatch=True))
    digit = next(d for d in "0123456789" if _isin_ok(body[:-1] + d))
    command = {"isin": body[:-1] + digit, "name": "Test", "currency": "EUR"}
    example_router.parse_json("RegisterSecurity", json.dumps(command).encode())


def _isin_ok(value: str) -> bool:
    try:
        check_isin(value)
    except ValueError:
        return False
    return True


@settings(max_examples=100, derandomize=True, database=None)
@given(st.data())
def test_a_decimal_of_the_documented_forms_is_taken(data: st.DataObject) -> None:
    forms = schema_of(document(), "CashTerms")["properties"]["amount_per_unit"]["anyOf"]
    text, whole = (next(f for f in forms if f["type"] == kind) for kind in ("string", "integer"))
    amount = data.draw(st.from_regex(text["pattern"], fullmatch=True)
                       | st.integers(whole["minimum"], whole["maximum"]))
    announce = {"action_id": "DIV-1", "isin": APPLE, "record_date": "2026-06-30",
                "terms": {"kind": "cash_dividend", "amount_per_unit": amount, "currency": "USD"}}
    command = example_router.parse_json("AnnounceCorporateAction", json.dumps(announce).encode())
    assert isinstance(command, AnnounceCorporateAction) and command.terms.amount_per_unit > 0


class _Amounts(Command):
    plain: Decimal
    digits_only: Annotated[Decimal, Field(max_digits=5)]
    places_only: Annotated[Decimal, Field(decimal_places=2, ge=0)]
    bounded: Annotated[Decimal, Field(max_digits=6, decimal_places=2, gt=-10, le=100)]


_AMOUNTS = CommandRouter()
_AMOUNTS.route(_Amounts, lambda command, unit: None)


@functools.cache
def _amount_forms() -> dict[str, list[dict[str, Any]]]:
    props = openapi_document(_AMOUNTS)["components"]["schemas"]["_Amounts"]["properties"]
    return {name: prop["anyOf"] if "anyOf" in prop else [{k: v for k, v in prop.items() if k != "title"}]
            for name, prop in props.items()}


@settings(max_examples=100, derandomize=True, database=None)
@given(st.data())
def test_decimals_of_every_constraint_in_the_documented_forms_are_taken(data: st.DataObject) -> None:
    payload = {}
    for name, forms in _amount_forms().items():
        payload[name] = data.draw(st.one_of([_drawn(form) for form in forms]))
    _AMOUNTS.parse_json("_Amounts", json.dumps(payload).encode())


def _drawn(form: dict[str, Any]) -> st.SearchStrategy[Any]:
    if form["type"] == "string":
        return st.from_regex(form["pattern"], fullmatch=True).filter(lambda text: len(text) < 400)
    if form["type"] == "integer":
        return st.integers(form.get("minimum"), form.get("maximum"))
    return st.floats(allow_nan=False, allow_infinity=False)


def test_decimal_bounds_reach_the_number_form() -> None:
    forms = _amount_forms()
    assert forms["bounded"] == [{"type": "integer", "minimum": -9, "maximum": 100}]  # no pattern says -9.99..100
    assert forms["places_only"][0]["pattern"].startswith("^(")  # no sign: not negative
    assert forms["places_only"][1] == {"type": "integer", "minimum": 0}
    assert forms["plain"][1] == {"type": "number"}
    assert not re.fullmatch(forms["digits_only"][0]["pattern"], "1.5")  # max_digits alone: whole numbers


# --- examples: every field a user fills in has one, and they make valid commands --------------------


@pytest.mark.parametrize("name", sorted(ROLES))
def test_the_documented_examples_make_a_valid_command(name: str) -> None:
    doc = document()
    body_schema = operation(doc, name)["requestBody"]["content"]["application/json"]["schema"]
    example = _example(doc, body_schema, name)
    try:
        example_router.parse_json(name, json.dumps(example).encode())
    except InvalidCommand as error:
        pytest.fail(f"{name}'s documented example {example} is refused: {error.errors}")


def _example(doc: dict[str, Any], schema: dict[str, Any], where: str) -> Any:
    if "$ref" in schema:
        return _example(doc, doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]], where)
    if "examples" in schema:
        return schema["examples"][0]
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "oneOf" in schema or "anyOf" in schema:
        return _example(doc, (schema.get("oneOf") or schema["anyOf"])[0], where)
    if schema.get("type") == "array":
        return [_example(doc, schema["items"], f"{where}[]")]
    if schema.get("type") == "object":
        props = schema["properties"]
        return {key: _example(doc, props[key], f"{where}.{key}") for key in props
                if key in schema.get("required", []) or "examples" in props[key]}
    raise AssertionError(f"{where} has no example")


@settings(max_examples=100, derandomize=True, database=None)
@given(st.data())
def test_text_of_the_documented_pattern_and_length_is_taken(data: st.DataObject) -> None:
    """Names and reasons: the pattern asks for what stripping surrounding whitespace leaves non-empty."""
    doc = document()
    holder = schema_of(doc, "OpenAccount")["properties"]["holder_name"]
    reason = schema_of(doc, "CancelCorporateAction")["properties"]["reason"]
    opening = {"account_number": "ACC-1", "holder_name": data.draw(_text(holder))}
    example_router.parse_json("OpenAccount", json.dumps(opening).encode())
    cancelling = {"action_id": "DIV-1", "reason": data.draw(_text(reason))}
    example_router.parse_json("CancelCorporateAction", json.dumps(cancelling).encode())


def _text(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.from_regex(schema["pattern"], fullmatch=True).filter(
        lambda text: schema["minLength"] <= len(text) <= schema["maxLength"])
