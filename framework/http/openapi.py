"""The OpenAPI 3.1 document of the write API, generated from the command models.

It says what the server takes, no looser: a request that follows it is never refused for its form
(400, 415, or a 422 ``invalid_command``), only for what it asks (a rule, a missing aggregate, a
conflict). So the schemas are pydantic's, narrowed to how ``CommandRouter.parse_json`` reads a
body (strict JSON) and to what every command refuses (``framework.storable``): ints within a
signed 64-bit range, strings without NUL, decimals in plain notation within their digits. The
headers carry the formats the server checks, every response the server can give is listed with its
problem codes, and the security (a bearer token, or none) and the roles of each command follow how
the server was built (``access_of``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from framework.commands import Command, CommandRouter
from framework.http.auth import AllowAnonymous, JwtAuthenticator
from framework.http.edge import CORRELATION_HEADER
from framework.http.problems import PROBLEM_JSON
from framework.security import ANONYMOUS, Authenticator, Principal, has_any_role
from framework.storable import INT64_MAX, INT64_MIN, NUMERIC_MAX_FRACTION_DIGITS, NUMERIC_MAX_INTEGER_DIGITS

__all__ = ["Access", "access_of", "openapi_document"]

_REF = "#/components/schemas/{model}"
_BEARER = "bearer"
_TEXT = "^[^\\u0000]*$"  # every command refuses a NUL in any string
IDEMPOTENCY_KEY_PATTERN = "^[\\x21-\\x7e]{1,255}$"  # what write_api._header accepts
CORRELATION_ID_PATTERN = "^[A-Za-z0-9._~:/+=@,;-]{1,255}$"  # what edge.valid_correlation_id keeps
IF_MATCH_PATTERN = '^("(0|[1-9][0-9]{0,17})"|(0|[1-9][0-9]{0,17}))$'  # what write_api._expected_version takes


@dataclass(frozen=True)
class Access:
    """Who the server lets in, as far as the document tells.

    ``checks_tokens``: a bearer token is verified (401 when it cannot be). ``anonymous``: who a
    caller without a token is (None: refused). The default is the library's write API without an
    authenticator: no token is read and every caller may send every command.
    """

    checks_tokens: bool = False
    anonymous: Principal | None = ANONYMOUS


def access_of(authenticator: Authenticator | None) -> Access:
    """The ``Access`` of a write API built with this authenticator; one of our own types tells who a
    caller without a token is, any other is taken to require a token."""
    if authenticator is None:
        return Access()
    if isinstance(authenticator, AllowAnonymous):
        return Access(checks_tokens=False, anonymous=authenticator.principal)
    if isinstance(authenticator, JwtAuthenticator):
        return Access(checks_tokens=True, anonymous=authenticator.anonymous)
    return Access(checks_tokens=True, anonymous=None)


def openapi_document(router: CommandRouter, title: str = "Eventfold write API", *, access: Access | None = None,
                     rate_limited: bool = False, max_body_bytes: int | None = None) -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves: one ``POST /commands/{Name}`` per command.

    ``rate_limited``: a per-client limit may answer 429. ``max_body_bytes``: the body limit (413).
    """
    access = access or Access()
    commands = router.public_commands()  # internal commands have no route
    keys, schemas = models_json_schema([(c, "validation") for c in commands], ref_template=_REF,
                                       schema_generator=_StrictCommandSchema)
    components: dict[str, Any] = {
        "schemas": {**schemas.get("$defs", {}), "CommandAccepted": _ACCEPTED, "Problem": _PROBLEM},
        "headers": _HEADERS,
    }
    if access.checks_tokens:
        components["securitySchemes"] = {_BEARER: _BEARER_SCHEME}
    paths = {
        f"/commands/{c.command_name}": {
            "post": _operation(c, keys[(c, "validation")], access, rate_limited, max_body_bytes)
        }
        for c in commands
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": _DESCRIPTION},
        "paths": paths,
        "components": components,
    }


_DESCRIPTION = (
    "Commands are sent as `POST /commands/{Name}` with a JSON body (`Content-Type: application/json`, "
    "UTF-8, each key once per object). Values are taken in JSON's own forms only: an integer is an integer "
    "literal (`7`; `7.0`, `\"7\"` and `true` are refused, although JSON Schema counts 7.0 as an integer), "
    "a string a string, dates and UUIDs as text, decimals as text or numbers. A success returns the "
    "aggregate's id, its version and the global `position` of the last event written: send it as the "
    "`Eventfold-Position` header (a non-negative integer) of a GraphQL "
    "query to read your own write. The version comes back as the `ETag` too: send it as `If-Match` to act only "
    "on the version you saw (409 `version_mismatch` otherwise). Every error is an RFC 9457 problem document "
    "(`application/problem+json`) with a stable `code`."
)


# --- schemas of the commands ------------------------------------------------------------------------


class _StrictCommandSchema(GenerateJsonSchema):
    """pydantic's validation schema, narrowed to what the write API takes from a client."""

    def int_schema(self, schema: core_schema.IntSchema) -> JsonSchemaValue:
        json_schema = super().int_schema(schema)  # "integer": strict JSON refuses 7.0, "7" and true
        if not {"minimum", "exclusiveMinimum"} & json_schema.keys():
            json_schema["minimum"] = INT64_MIN
        if not {"maximum", "exclusiveMaximum"} & json_schema.keys():
            json_schema["maximum"] = INT64_MAX
        return json_schema

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        json_schema = super().str_schema(schema)
        json_schema.setdefault("pattern", _TEXT)  # a field's own pattern says what it takes instead
        return json_schema

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        return _decimal(schema)


def _decimal(schema: core_schema.DecimalSchema) -> JsonSchemaValue:
    """A decimal as a JSON number, and as text in plain notation (``"12.50"``) where a pattern can say
    which text the field takes.

    The text has at most the digits the field and PostgreSQL's numeric allow, and a lower bound of zero
    keeps it above zero (or not negative); other bounds no pattern can say, so a field with them is
    documented as a number only (the server takes text all the same). With ``max_digits`` or
    ``decimal_places`` the number must be whole: 0.1 sent as a binary float has more digits than it shows.
    """
    bounds = cast(dict[str, Any], schema)
    max_digits, places = bounds.get("max_digits"), bounds.get("decimal_places")
    whole = NUMERIC_MAX_INTEGER_DIGITS if max_digits is None else max_digits - (places or 0)
    fraction = (NUMERIC_MAX_FRACTION_DIGITS if max_digits is None else 0) if places is None else places
    low, exclusive = _decimal_floor(bounds)
    forms: list[JsonSchemaValue] = []
    if low in (None, 0) and bounds.get("le") is None and bounds.get("lt") is None:
        forms.append({"type": "string", "pattern": _decimal_pattern(whole, fraction, low, exclusive)})
    if max_digits is None and places is None:
        forms.append({"type": "number", **{key: float(bounds[name]) for name, key in _BOUND_KEYWORDS
                                           if bounds.get(name) is not None}})
    elif whole > 0:
        forms.extend(_whole_number(bounds, whole, low, exclusive))
    if not forms:  # only fractions, and bounds no pattern can say: the digits at least
        forms.append({"type": "string", "pattern": _decimal_pattern(whole, fraction, None, False)})
    return forms[0] if len(forms) == 1 else {"anyOf": forms}


_BOUND_KEYWORDS = (("gt", "exclusiveMinimum"), ("ge", "minimum"), ("lt", "exclusiveMaximum"), ("le", "maximum"))
_COUNTED = 1_000  # more digits than this are left unbounded: regex engines refuse huge counts


def _whole_number(bounds: dict[str, Any], whole: int, low: Decimal | None, exclusive: bool) -> list[JsonSchemaValue]:
    """The integers within the field's digits and bounds (none: an empty list)."""
    largest = 10**whole - 1 if whole <= _COUNTED else None
    ceilings = [c for c in (largest, _floor_of(bounds.get("le")), _below(bounds.get("lt"))) if c is not None]
    highest = min(ceilings) if ceilings else None
    if low is not None:
        lowest: int | None = math.floor(low) + 1 if exclusive else math.ceil(low)
    else:
        lowest = -largest if largest is not None else None
    if lowest is not None and highest is not None and lowest > highest:
        return []
    number: JsonSchemaValue = {"type": "integer"}
    if lowest is not None:
        number["minimum"] = lowest
    if highest is not None:
        number["maximum"] = highest
    return [number]


def _floor_of(value: Any) -> int | None:
    return None if value is None else math.floor(Decimal(value))


def _below(value: Any) -> int | None:
    return None if value is None else math.ceil(Decimal(value)) - 1


def _decimal_floor(bounds: dict[str, Any]) -> tuple[Decimal | None, bool]:
    """The lower bound, and whether it is exclusive."""
    if bounds.get("gt") is not None:
        return Decimal(bounds["gt"]), True
    if bounds.get("ge") is not None:
        return Decimal(bounds["ge"]), False
    return None, False


def _up_to(count: int) -> str:
    return f"{{0,{count}}}" if count <= _COUNTED else "*"


def _decimal_pattern(whole: int, fraction: int, low: Decimal | None, exclusive: bool) -> str:
    """Plain notation, no leading zeros; without a sign when the bound is zero, and above zero when it
    excludes zero (a whole part, or a fraction that ends in a digit other than 0)."""
    digits = f"[1-9][0-9]{_up_to(whole - 1)}" if whole > 0 else None
    dot = "" if not fraction else f"(\\.[0-9]{{1,{fraction}}})?" if fraction <= _COUNTED else "(\\.[0-9]+)?"
    if low is not None and exclusive:
        choices = [f"{digits}{dot}"] if digits else []
        if fraction:
            choices.append(f"0\\.[0-9]{_up_to(fraction - 1)}[1-9]")
        return "^(" + "|".join(choices) + ")$"
    sign = "" if low is not None else "-?"
    return f"^{sign}({digits}|0){dot}$" if digits else f"^{sign}0{dot}$"


# --- operations ---------------------------------------------------------------------------------------


def _operation(command: type[Command], body_schema: dict[str, Any], access: Access, rate_limited: bool,
               max_body_bytes: int | None) -> dict[str, Any]:
    roles = sorted(command.allowed_roles)
    operation: dict[str, Any] = {
        "operationId": command.command_name,
        "summary": command.command_name,
        "description": _operation_description(command, roles, max_body_bytes),
        "x-eventfold-roles": roles,
        "parameters": list(_PARAMETERS),
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
        "responses": _responses(command, access, rate_limited),
    }
    if access.checks_tokens:
        operation["security"] = _security(command, access.anonymous)
    return operation


def _operation_description(command: type[Command], roles: list[str], max_body_bytes: int | None) -> str:
    doc = (command.__doc__ or "").strip()
    own = doc + "\n\n" if doc and doc != (Command.__doc__ or "").strip() else ""
    who = f"Needs one of the roles: {', '.join(roles)}." if roles else "Any caller let in may send it."
    size = f" The body is at most {max_body_bytes} bytes." if max_body_bytes else ""
    return own + who + size


def _security(command: type[Command], anonymous: Principal | None) -> list[dict[str, list[str]]]:
    """A token with any one of the roles (OpenAPI 3.1 lists role names for an http scheme); or none
    at all, when a caller without a token may send the command."""
    roles = sorted(command.allowed_roles)
    requirements: list[dict[str, list[str]]] = [{_BEARER: [role]} for role in roles] or [{_BEARER: []}]
    if anonymous is not None and has_any_role(anonymous, command.allowed_roles):
        requirements.append({})
    return requirements


@dataclass(frozen=True)
class _Error:
    status: int
    description: str
    codes: tuple[str, ...]
    headers: tuple[str, ...] = ()


_ERRORS = (
    _Error(400, "The body is not JSON the server takes (`malformed_json`: not UTF-8, a byte order mark, NaN, "
           "a key twice in one object...), `Idempotency-Key` or `If-Match` is malformed (`malformed_header`), or "
           "the request is not HTTP/1.1 (`malformed_request`, the connection is closed)",
           ("malformed_json", "malformed_header", "malformed_request")),
    _Error(401, "No bearer token, or one that cannot be verified", ("unauthenticated",), ("WWW-Authenticate",)),
    _Error(403, "The caller has none of the command's roles", ("forbidden",)),
    _Error(404, "The command names an aggregate that does not exist", ("aggregate_not_found",)),
    _Error(408, "The headers or the body did not arrive in time; the connection is closed", ("request_timeout",)),
    _Error(409, "The aggregate exists already or its state forbids the command, concurrent writes kept winning, "
           "the aggregate is not at the If-Match version (`version_mismatch`, with `expected_version` and "
           "`current_version`), or a request with this Idempotency-Key is still running",
           ("already_exists", "invalid_transition", "concurrency_conflict", "version_mismatch",
            "idempotency_key_in_flight")),
    _Error(413, "The body is over the limit", ("body_too_large",)),
    _Error(415, "The body is not sent as application/json (UTF-8)", ("unsupported_media_type",)),
    _Error(422, "The body does not validate (`invalid_command`, with `errors`), a domain rule refused the command "
           "(`rule_violation`, with `reason`, or a code of the application's own), or the Idempotency-Key was used "
           "for another request", ("invalid_command", "rule_violation", "idempotency_key_reused")),
    _Error(429, "Too many requests from this client; retry after Retry-After seconds", ("rate_limited",),
           ("Retry-After",)),
    _Error(431, "The request line and headers are too large; the connection is closed", ("headers_too_large",)),
    _Error(500, "An unexpected error, logged on the server; the problem says no more", ("internal_error",)),
    _Error(503, "The event store (or the token keys) cannot be reached, or the server has too many connections "
           "open; retry after Retry-After seconds",
           ("store_unavailable", "too_many_connections", "keys_unavailable"), ("Retry-After",)),
)


def _responses(command: type[Command], access: Access, rate_limited: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _SUCCESS}
    for error in _ERRORS:
        if _may_happen(error.status, command, access, rate_limited):
            responses[str(error.status)] = _error_response(error, access)
    return responses


def _may_happen(status: int, command: type[Command], access: Access, rate_limited: bool) -> bool:
    if status == 401:
        return access.checks_tokens
    if status == 403:  # a token without the roles, or a caller without a token who lacks them
        if not command.allowed_roles:
            return False
        return access.checks_tokens or access.anonymous is None or not has_any_role(access.anonymous,
                                                                                    command.allowed_roles)
    if status == 429:  # failed authentications count only where tokens are checked
        return rate_limited
    return True


def _error_response(error: _Error, access: Access) -> dict[str, Any]:
    codes = [c for c in error.codes if c != "keys_unavailable" or access.checks_tokens]
    headers: dict[str, Any] = {CORRELATION_HEADER: {"$ref": f"#/components/headers/{CORRELATION_HEADER}"}}
    headers.update({name: {"$ref": f"#/components/headers/{name}"} for name in error.headers})
    return {
        "description": error.description,
        "headers": headers,
        "content": {PROBLEM_JSON: {
            "schema": {"$ref": _REF.format(model="Problem")},
            "examples": {code: {"value": _problem_example(error.status, code)} for code in codes},
        }},
    }


def _problem_example(status: int, code: str) -> dict[str, Any]:
    example = {"type": f"urn:eventfold:problem:{code}", "title": code.replace("_", " ").capitalize(),
               "status": status, "detail": "what went wrong, in words for a person", "code": code}
    return {**example, **_EXTRA_MEMBERS.get(code, {})}


_EXTRA_MEMBERS: dict[str, dict[str, Any]] = {"version_mismatch": {"expected_version": 3, "current_version": 5}}


_SUCCESS = {
    "description": "Accepted and stored (or, for a repeated Idempotency-Key and body, the first answer again)",
    "headers": {
        CORRELATION_HEADER: {"$ref": f"#/components/headers/{CORRELATION_HEADER}"},
        "Idempotent-Replayed": {"description": "`true` when this is the stored answer to an earlier request",
                                "schema": {"type": "string", "enum": ["true"]}},
        "ETag": {"description": "The aggregate's version after the command, as a strong entity tag (`\"4\"`): "
                 "send it back as If-Match to act only on this version", "required": True,
                 "schema": {"type": "string", "pattern": '^"(0|[1-9][0-9]*)"$'}},
    },
    "content": {"application/json": {"schema": {"$ref": _REF.format(model="CommandAccepted")}}},
}

_ACCEPTED = {
    "type": "object",
    "required": ["aggregate_id", "version", "position"],
    "properties": {
        "aggregate_id": {"type": ["string", "null"], "format": "uuid"},
        "version": {"type": "integer", "minimum": 0, "description": "the aggregate's version after the command"},
        "position": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "global position of the last event written (null: nothing was written); send it as "
            "the Eventfold-Position header of a query to read your own write",
        },
    },
    "examples": [{"aggregate_id": "86adfd40-7742-5f0d-99a2-12537867d1e3", "version": 3, "position": 6}],
}

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "`urn:eventfold:problem:` and the code"},
        "title": {"type": "string"},
        "status": {"type": "integer", "description": "the HTTP status"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable machine-readable error code"},
        "reason": {"type": "string", "description": "which domain rule, for rule violations"},
        "expected_version": {"type": "integer", "minimum": 0,
                             "description": "the version If-Match named (version_mismatch)"},
        "current_version": {"type": "integer", "minimum": 0,
                            "description": "the aggregate's version now, 0 if it does not exist (version_mismatch)"},
        "errors": {
            "type": "array",
            "description": "each field that failed validation (invalid_command)",
            "items": {
                "type": "object",
                "required": ["path", "message"],
                "properties": {"path": {"type": "string", "description": "a JSON pointer into the body"},
                               "message": {"type": "string"}},
            },
        },
    },
}

_PARAMETERS = (
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Repeating a request with the same key and body returns the first answer and writes nothing; "
        "the same key with another body is 422 idempotency_key_reused. 1 to 255 visible ASCII characters "
        "(else 400 malformed_header).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
        "example": "order-7f3a9c",
    },
    {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "description": "The version of the command's aggregate (the one the answer names) the client decided on: "
        "the ETag of an earlier answer (`\"3\"`) or the bare number (`3`); `0` means it must not exist yet. If the "
        "aggregate is at another version the command is refused with 409 version_mismatch (with "
        "`current_version`) and nothing is written; it is never retried for you. A weak tag, `*` or a list is 400 "
        "malformed_header. With an Idempotency-Key already answered, the first answer is returned whatever "
        "If-Match says.",
        "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
        "example": "\"3\"",
    },
    {
        "name": CORRELATION_HEADER,
        "in": "header",
        "required": False,
        "description": "Copied into every event's metadata and log line, and echoed on the response. 1 to 255 "
        "letters, digits and `._~:/+=@,;-`; anything else is replaced by a new id (a UUID), never refused.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": CORRELATION_ID_PATTERN},
        "example": "checkout-2026-05-01-0042",
    },
)

_HEADERS = {
    CORRELATION_HEADER: {
        "description": "The request's own id when it was well formed, else a new one; on every response except those "
        "refused before the request's headers were read",
        "schema": {"type": "string", "pattern": CORRELATION_ID_PATTERN},
    },
    "Retry-After": {"description": "Seconds to wait before retrying", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "WWW-Authenticate": {"description": "`Bearer error=\"invalid_token\"`", "required": True,
                         "schema": {"type": "string"}},
}

_BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "A JWT signed by a configured key, with `exp` and `sub`; its roles are its `roles` claim (a list) "
    "and its `scope` or `scp` claim. Each operation's security lists the roles that let a token send it "
    "(any one of them), and an empty requirement when a caller without a token may.",
}
