"""Property-based fuzzing of the write API from its own ``/openapi.json`` (schemathesis).

A real ``eventfold write-api`` on PostgreSQL, with bearer tokens (a JWKS file) and a rate limit out of
reach, is sent cases drawn from the document it serves: valid ones (every command, with a token holding
every role), invalid ones, and valid ones without a token or without the roles. Every answer must be the
one the document describes (``fuzz_helpers``). The runs are deterministic and bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import schemathesis
from fuzz_helpers import check_write_answer, fuzz, integers_as_literals, operations, tokened_env
from http_helpers import accepted
from openapi_spec_validator import validate
from schemathesis import Case, GenerationMode
from support.http import CliServer
from support.postgres import PgDatabase
from support.tokens import Issuer, make_issuer

pytestmark = pytest.mark.postgres

VALID_CASES = 25  # per command
INVALID_CASES = 12
UNAUTHORISED_CASES = 2
EVERY_ROLE = ["registrar", "custody", "corporate-actions", "process"]
# The document's own examples, made true, so that some drawn cases reach the success paths.
EXAMPLE_DATA = [
    ("RegisterSecurity", {"isin": "US0378331005", "name": "Apple Inc. common stock", "currency": "USD"}),
    ("OpenAccount", {"account_number": "ACC-0001", "holder_name": "Ann Example"}),
    ("OpenAccount", {"account_number": "ACC-0002", "holder_name": "Bob Example"}),
    ("CreditHoldings", {"account_number": "ACC-0001", "isin": "US0378331005", "quantity": 1_000}),
]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def write_api(pg_database: PgDatabase, issuer: Issuer) -> Iterator[CliServer]:
    with pg_database.fresh_schema("fuzz") as schema:
        env = tokened_env(pg_database.url(), schema, issuer)
        with CliServer("write-api", env) as server:
            yield server
        assert "Traceback" not in server.stderr, server.stderr[-3000:]


@pytest.fixture(scope="module")
def document(write_api: CliServer, issuer: Issuer) -> dict[str, Any]:
    token = issuer.bearer("fuzzer", roles=EVERY_ROLE)
    for name, body in EXAMPLE_DATA:
        accepted(httpx.post(f"{write_api.base_url}/commands/{name}", json=body, headers=token, timeout=30))
    served: dict[str, Any] = httpx.get(f"{write_api.base_url}/openapi.json", timeout=30).json()
    return served


def send(case: Case, base_url: str, headers: dict[str, str], mode: GenerationMode) -> None:
    if mode is GenerationMode.POSITIVE:
        case.body = integers_as_literals(case.body)
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    check_write_answer(case, response, mode)


def test_the_served_document_is_valid_openapi_with_a_bearer_scheme(document: dict[str, Any]) -> None:
    validate(document)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert set(document["paths"]) >= {f"/commands/{name}" for name, _ in EXAMPLE_DATA}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_drawn_commands_are_answered_as_the_document_says(
    write_api: CliServer, document: dict[str, Any], issuer: Issuer, mode: GenerationMode
) -> None:
    """Valid cases are accepted or refused for what they ask, invalid ones refused as problems, none a 5xx."""
    headers = issuer.bearer("fuzzer", roles=EVERY_ROLE)
    count = VALID_CASES if mode is GenerationMode.POSITIVE else INVALID_CASES
    for operation in operations(schemathesis.openapi.from_dict(document)):
        fuzz(operation.as_strategy(generation_mode=mode),
             partial(send, base_url=write_api.base_url, headers=headers, mode=mode), max_examples=count)


@pytest.mark.parametrize("who", ["no token", "no role"])
def test_callers_without_a_token_or_a_role_get_the_documented_401_and_403(
    write_api: CliServer, document: dict[str, Any], issuer: Issuer, who: str
) -> None:
    headers = {} if who == "no token" else issuer.bearer("nobody", roles=["reader"])
    expected = 401 if who == "no token" else 403
    statuses: set[int] = set()

    def check(case: Case) -> None:
        case.body = integers_as_literals(case.body)
        response = case.call(base_url=write_api.base_url, headers=headers, timeout=30)
        statuses.add(response.status_code)
        check_write_answer(case, response, GenerationMode.NEGATIVE)  # documented, a problem; not accepted

    for operation in operations(schemathesis.openapi.from_dict(document)):
        fuzz(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), check, max_examples=UNAUTHORISED_CASES)
    assert statuses == {expected}, statuses
