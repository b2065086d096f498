"""The OpenAPI 3.1 document of the write API, generated from the command models."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from framework.commands import CommandRouter
from framework.http.problems import PROBLEM_JSON

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"

_ACCEPTED = {
    "type": "object",
    "required": ["aggregate_id", "version", "position"],
    "properties": {
        "aggregate_id": {"type": ["string", "null"], "format": "uuid"},
        "version": {"type": "integer", "description": "the aggregate's version after the command"},
        "position": {
            "type": ["integer", "null"],
            "description": "global position of the last event written; pass it to queries "
            "to read your own write",
        },
    },
}

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable machine-readable error code"},
        "reason": {"type": "string", "description": "which domain rule, for rule violations"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_ERRORS = {
    "400": "Malformed JSON or header",
    "404": "Unknown command or aggregate",
    "409": "Concurrency conflict, invalid state transition, or idempotency key in flight",
    "413": "Body too large",
    "415": "Body is not JSON",
    "422": "Validation failed, a rule was violated, or an idempotency key was reused",
    "503": "Event store unavailable; retry after the Retry-After header",
}


def openapi_document(router: CommandRouter, title: str = "Eventfold write API") -> dict[str, Any]:
    commands = router.public_commands()  # internal commands have no route
    keys, schemas = models_json_schema(
        [(c, "validation") for c in commands], ref_template=_REF
    )
    components = dict(schemas.get("$defs", {}))
    components["CommandAccepted"] = _ACCEPTED
    components["Problem"] = _PROBLEM
    paths = {
        f"/commands/{c.command_name}": {"post": _operation(c.command_name, keys[(c, "validation")])}
        for c in commands
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }


def _operation(name: str, body_schema: dict[str, Any]) -> dict[str, Any]:
    problem = {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model="Problem")}}}
    responses: dict[str, Any] = {
        "200": {
            "description": "Accepted and stored",
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="CommandAccepted")}}},
        }
    }
    responses.update({code: {"description": text, "content": problem} for code, text in _ERRORS.items()})
    return {
        "operationId": name,
        "parameters": [
            _header_parameter("Idempotency-Key", "replays the first result for a repeated request"),
            _header_parameter("X-Correlation-ID", "copied into every event's metadata"),
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
        "responses": responses,
    }


def _header_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
