"""Commands: pydantic models routed to handlers in one declarative table.

A handler receives the command and a ``UnitOfWork``; it loads aggregates,
calls their methods and returns the aggregate the caller should hear about.
The bus saves what the unit of work collected, so handlers never talk to
storage and stay trivially testable.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, TypeAdapter, ValidationError, model_validator
from pydantic_core import CoreSchema, core_schema

from framework.aggregate import Aggregate
from framework.errors import ConfigurationError, FieldError, InvalidCommand, MalformedJson, UnknownCommand
from framework.storable import unstorable
from framework.unit_of_work import UnitOfWork

__all__ = ["MAX_STRING_LENGTH", "Command", "CommandRouter", "Handler", "Lax", "decode_json", "field_errors"]

C = TypeVar("C", bound="Command")
MAX_STRING_LENGTH = 10_000
"""The default bound of every string in a command (field values, list items and dict keys)."""
Handler = Callable[[Any, UnitOfWork], Aggregate | None]


class Command(BaseModel):
    """Base class of commands: imperative names, typed and validated fields.

    A command meant only for process managers and deadlines is declared internal, on the class line::

        class NotifyDepositor(Command, internal=True):
            account_number: str

    The write API then has no route for it (``POST /commands/NotifyDepositor`` answers 404
    ``unknown_command``, exactly as for a name that does not exist) and ``/openapi.json`` leaves it
    out; the command bus runs it as any other (idempotency keys, retries, tracing), so a process
    manager's ``context.issue`` and a dead letter's retry send it as before. Subclasses inherit it.
    """

    # Every string a client sends is bounded; a field that needs more declares its own max_length.
    # Every value must also fit a store: see _refuse_unstorable.
    model_config = ConfigDict(frozen=True, extra="forbid", str_max_length=MAX_STRING_LENGTH)

    command_name: ClassVar[str]
    allowed_roles: ClassVar[frozenset[str]] = frozenset()
    """Roles that may send this command over the write API (empty: any authenticated caller)."""
    internal: ClassVar[bool] = False
    """Sent only through the bus (process managers, deadlines), never over the write API: set it with
    ``class Name(Command, internal=True)``."""

    @model_validator(mode="after")
    def _refuse_unstorable(self) -> Self:
        """Every value must fit a store, or the command is refused (422) before anything is written.

        No NUL character (nor unpaired surrogate) in any string, no int outside the signed 64-bit
        range, no Decimal beyond PostgreSQL numeric: checked everywhere inside the fields (list
        items, dict keys and values, nested models, plain ones too), each bad value at its path.
        An int field that declares its own ``ge``/``gt`` or ``le``/``lt`` keeps it on that side,
        as a field's own ``max_length`` replaces ``MAX_STRING_LENGTH``. See ``framework.storable``.
        """
        errors = unstorable(self)
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def __init_subclass__(cls, *, internal: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if internal is not None:
            cls.internal = internal

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "command_name" not in cls.__dict__:
            cls.command_name = cls.__name__


class CommandRouter:
    """The one place that says which handler runs each command."""

    def __init__(self) -> None:
        self._handlers: dict[type[Command], Handler] = {}
        self._by_name: dict[str, type[Command]] = {}

    def handles(self, handler: Callable[[C, UnitOfWork], Aggregate | None]) -> Handler:
        """Register a handler for the command type its first parameter names."""
        hints = get_type_hints(handler)
        command_type = next(iter(hints.values()), None)
        if not (isinstance(command_type, type) and issubclass(command_type, Command)):
            raise ConfigurationError(f"{handler.__name__} must annotate its command parameter")
        self.route(command_type, handler)
        return handler

    def route(self, command_type: type[Command], handler: Handler) -> None:
        if command_type.command_name in self._by_name:
            raise ConfigurationError(f"command {command_type.command_name} is routed twice")
        self._by_name[command_type.command_name] = command_type
        self._handlers[command_type] = handler

    def __iter__(self) -> Iterator[type[Command]]:
        return iter(self._by_name.values())

    def command_type(self, name: str) -> type[Command]:
        """The command routed under ``name``, internal or not (what the bus may run)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownCommand(f"there is no command named {name!r}") from None

    def public_command_type(self, name: str) -> type[Command]:
        """The command a client may send under ``name``: an internal one is unknown here, in the
        same words as a name that does not exist (a client cannot tell them apart)."""
        command_type = self._by_name.get(name)
        if command_type is None or command_type.internal:
            raise UnknownCommand(f"there is no command named {name!r}")
        return command_type

    def public_commands(self) -> list[type[Command]]:
        """The commands the write API serves (every routed one but the internal ones)."""
        return [c for c in self._by_name.values() if not c.internal]

    def handler_for(self, command: Command) -> Handler:
        try:
            return self._handlers[type(command)]
        except KeyError:
            raise UnknownCommand(f"no handler is routed for {command.command_name}") from None

    def parse(self, name: str, payload: object) -> Command:
        """Validate a Python payload into the named command, with pydantic's usual conversions.

        For what the framework itself built (a process manager's command read back from its outbox).
        What a client sends goes through ``parse_json``, which is strict.
        """
        command_type = self.command_type(name)
        try:
            return command_type.model_validate(payload)
        except ValidationError as e:
            raise InvalidCommand(f"{name} is not valid", field_errors(e, payload)) from None

    def parse_json(self, name: str, body: bytes) -> Command:
        """Validate a client's JSON document into the named command, strictly.

        The body must be UTF-8 JSON without a byte order mark, NaN, Infinity or a key twice in one
        object (``MalformedJson``). Each value must then be JSON's own form of its field's type
        (``InvalidCommand`` otherwise): a number for an int (``true``, ``"7"`` and ``7.5`` are refused),
        a string for a str, while what JSON has no type for comes as a string (dates, UUIDs, enums)
        and a Decimal as a string or a number. A field marked ``Lax()`` takes pydantic's conversions.
        An internal command is unknown here (``UnknownCommand``): clients cannot send it.
        """
        command_type = self.public_command_type(name)
        payload = decode_json(body)  # its duplicate keys and constants; and the paths of any errors below
        try:
            return command_type.model_validate_json(body, strict=True)
        except ValidationError as e:
            invalid_json = [d for d in e.errors(include_url=False) if d["type"] == "json_invalid"]
            if invalid_json:  # what json accepts and pydantic's parser does not: an unpaired surrogate, deep nesting
                raise MalformedJson(f"the body is not valid JSON: {_jiter_reason(invalid_json[0]['msg'])}") from None
            raise InvalidCommand(f"{name} is not valid", field_errors(e, payload)) from None


@dataclass(frozen=True)
class Lax:
    """A command field that takes pydantic's lax conversions from a client, where every other field
    takes only JSON's own form of its type (``CommandRouter.parse_json``)::

        class Order(Command):
            quantity: Annotated[int, Lax()]  # "7" and 7.0 are 7, as pydantic converts by default
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # A strict validation cannot be loosened from inside; converting first leaves a value it accepts.
        convert = functools.partial(TypeAdapter(source).validate_python, strict=False)
        return core_schema.no_info_before_validator_function(convert, handler(source))


def decode_json(body: bytes) -> Any:
    """A JSON document as the write API takes it, or ``MalformedJson`` saying what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedJson(f"the body is not valid JSON: it is not UTF-8 (byte {e.start})") from None
    if text.startswith("\ufeff"):
        raise MalformedJson("the body is not valid JSON: it starts with a byte order mark")
    try:
        return _STRICT_JSON.decode(text)  # what json.loads does with these hooks, its decoder made once
    except json.JSONDecodeError as e:
        raise MalformedJson(f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:  # a duplicate key, a constant, a number too long, too deep
        raise MalformedJson(f"the body is not valid JSON: {str(e) or 'it is nested too deeply'}") from None


def _jiter_reason(message: str) -> str:
    """pydantic's JSON error in our words where its own are cryptic."""
    reason = message.removeprefix("Invalid JSON: ")
    what, at, where = reason.partition(" at line ")
    if "surrogate" in what or "hex escape" in what:  # json.loads took the escape: it can only be a lone surrogate
        return f"a \\u escape is an unpaired surrogate (not Unicode){at}{where}"
    return reason


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, unless a key comes twice: then which value counts depends on the parser (here the last)."""
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:100]!r} appears twice in one object")
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def field_errors(error: ValidationError, payload: object = None) -> list[FieldError]:
    """Each error with a JSON-pointer path into the payload the client sent."""
    return [
        FieldError(path=_pointer(detail["loc"], payload), message=detail["msg"])
        for detail in error.errors(include_url=False)
    ]


def _pointer(location: tuple[int | str, ...], payload: object) -> str:
    """pydantic's location as a path into the payload, minus a tagged union's tag.

    A step that the payload does not have is kept when it is the last one (a
    missing field) and dropped otherwise (pydantic's name for a union member).
    """
    parts: list[str] = []
    node = payload
    for index, step in enumerate(location):
        last = index == len(location) - 1
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        elif isinstance(node, dict) and not last:
            continue
        else:
            node = None
        parts.append(str(step))
    return "/" + "/".join(parts)


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
