"""The command router and the unit of work handlers receive."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from pydantic import Field

from example_app import commands as example_commands
from example_app.accounts import Account
from example_app.corporate_actions import CorporateAction
from example_app.handlers import router as example_router
from framework import (
    AggregateNotFound,
    AlreadyExists,
    Command,
    CommandRouter,
    ConfigurationError,
    InvalidCommand,
    UnitOfWork,
    UnknownCommand,
)
from framework.adapters.memory import MemoryEventStore
from framework.commands import MAX_STRING_LENGTH
from framework.errors import FieldError

from .domain import Counter, CounterIncremented, CounterStarted, PlainCounter, append_events


class UnitPing(Command):
    target: UUID


class UnitPong(Command):
    command_name: ClassVar[str] = "Unit.Pong"
    count: int = 0


class UnitNested(Command):
    class Item(Command):
        sku: str
        quantity: int

    items: list[Item]
    meta: dict[str, int] = Field(default_factory=dict)


def ping(command: UnitPing, unit: UnitOfWork) -> None:
    return None


def pong(command: UnitPong, unit: UnitOfWork) -> None:
    return None


def unannotated(command, unit):  # type: ignore[no-untyped-def]
    return None


def annotated_with_something_else(command: int, unit: UnitOfWork) -> None:
    return None


def only_the_unit_annotated(command, unit: UnitOfWork) -> None:  # type: ignore[no-untyped-def]
    return None


# --- routing ---------------------------------------------------------------------------------


def test_handles_routes_by_the_first_parameters_annotation() -> None:
    router = CommandRouter()
    assert router.handles(ping) is ping
    command = UnitPing(target=uuid4())
    assert router.handler_for(command) is ping
    assert router.command_type("UnitPing") is UnitPing
    assert list(router) == [UnitPing]


def test_the_command_name_defaults_to_the_class_name_and_can_be_overridden() -> None:
    router = CommandRouter()
    router.handles(pong)
    assert UnitPing.command_name == "UnitPing"
    assert router.command_type("Unit.Pong") is UnitPong
    with pytest.raises(UnknownCommand):
        router.command_type("UnitPong")


@pytest.mark.parametrize("handler", [unannotated, annotated_with_something_else, only_the_unit_annotated])
def test_a_handler_without_a_command_annotation_is_a_configuration_error(handler: Any) -> None:
    with pytest.raises(ConfigurationError, match=handler.__name__):
        CommandRouter().handles(handler)


def test_routing_a_command_twice_is_a_configuration_error() -> None:
    router = CommandRouter()
    router.handles(ping)
    with pytest.raises(ConfigurationError, match="UnitPing"):
        router.handles(ping)
    with pytest.raises(ConfigurationError, match="routed twice"):
        router.route(UnitPing, pong)
    assert router.handler_for(UnitPing(target=uuid4())) is ping


def test_an_unknown_name_is_an_unknown_command() -> None:
    with pytest.raises(UnknownCommand, match="Nope"):
        CommandRouter().parse("Nope", {})


def test_an_unrouted_command_instance_is_an_unknown_command() -> None:
    with pytest.raises(UnknownCommand, match="UnitPing"):
        CommandRouter().handler_for(UnitPing(target=uuid4()))


class UnitNotify(Command, internal=True):
    """Sent by a process manager only."""

    target: UUID


class UnitNotifyAgain(UnitNotify):
    pass


class UnitNotifyInPublic(UnitNotify, internal=False):
    pass


def notify(command: UnitNotify, unit: UnitOfWork) -> None:
    return None


def test_an_internal_command_is_declared_on_the_class_line_and_inherited() -> None:
    assert (UnitPing.internal, UnitNotify.internal, UnitNotifyAgain.internal) == (False, True, True)
    assert UnitNotifyInPublic.internal is False
    assert UnitNotify(target=uuid4()).model_dump().keys() == {"target"}  # a class setting, not a field


def test_an_internal_command_is_routed_but_unknown_to_clients() -> None:
    router = CommandRouter()
    router.handles(ping)
    router.handles(notify)
    target = uuid4()
    assert router.command_type("UnitNotify") is UnitNotify
    assert router.parse("UnitNotify", {"target": str(target)}) == UnitNotify(target=target)  # the outbox's path
    assert router.handler_for(UnitNotify(target=target)) is notify
    assert router.public_commands() == [UnitPing]
    assert list(router) == [UnitPing, UnitNotify]
    assert router.public_command_type("UnitPing") is UnitPing
    for lookup in (lambda: router.public_command_type("UnitNotify"),
                   lambda: router.parse_json("UnitNotify", f'{{"target": "{target}"}}'.encode())):
        with pytest.raises(UnknownCommand) as internal:
            lookup()
        with pytest.raises(UnknownCommand) as unknown:
            router.public_command_type("UnitNowhere")
        assert internal.value.message == unknown.value.message.replace("UnitNowhere", "UnitNotify")


def test_the_example_marks_the_process_s_commands_internal() -> None:
    internal = {c.command_name for c in example_router if c.internal}
    assert internal == {"RecordEntitlements", "NotifyDepositor"}


def test_the_example_routes_every_command_it_defines() -> None:
    defined = {getattr(example_commands, name) for name in example_commands.__all__}
    assert set(example_router) == defined


def test_example_command_names_are_imperative() -> None:
    for command_type in example_router:
        assert not command_type.command_name.endswith("ed"), command_type.command_name


# --- parsing ---------------------------------------------------------------------------------


def errors_of(router: CommandRouter, name: str, payload: object) -> list[FieldError]:
    with pytest.raises(InvalidCommand) as caught:
        router.parse(name, payload)
    assert caught.value.code == "invalid_command"
    assert name in caught.value.message
    return list(caught.value.errors)


@pytest.fixture
def nested_router() -> CommandRouter:
    router = CommandRouter()
    router.route(UnitNested, lambda command, unit: None)
    return router


def test_parse_returns_a_validated_command(nested_router: CommandRouter) -> None:
    command = nested_router.parse("UnitNested", {"items": [{"sku": "a", "quantity": "3"}]})
    assert command == UnitNested(items=[UnitNested.Item(sku="a", quantity=3)])


def test_field_paths_point_into_lists_and_nested_models(nested_router: CommandRouter) -> None:
    payload = {"items": [{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": "x"}], "meta": {"k": "v"}}
    errors = errors_of(nested_router, "UnitNested", payload)
    assert [e.path for e in errors] == ["/items/1/quantity", "/meta/k"]
    assert all(e.message for e in errors)


def test_missing_and_extra_fields_are_reported(nested_router: CommandRouter) -> None:
    errors = errors_of(nested_router, "UnitNested", {"items": [{"sku": "a"}], "surplus": 1})
    assert {(e.path, e.message) for e in errors} == {
        ("/items/0/quantity", "Field required"),
        ("/surplus", "Extra inputs are not permitted"),
    }


class UnitNote(Command):
    text: str
    long_text: str = Field("", max_length=50_000)  # a field may allow more than the default


def test_every_string_is_bounded_unless_its_field_says_otherwise() -> None:
    router = CommandRouter()
    router.route(UnitNested, lambda command, unit: None)
    router.route(UnitNote, lambda command, unit: None)
    too_long = "x" * (MAX_STRING_LENGTH + 1)
    assert [e.path for e in errors_of(router, "UnitNote", {"text": too_long})] == ["/text"]
    assert [e.path for e in errors_of(router, "UnitNested", {"items": [{"sku": too_long, "quantity": 1}]})] == [
        "/items/0/sku"]
    assert [e.path for e in errors_of(router, "UnitNested", {"items": [], "meta": {too_long: 1}})] == [
        f"/meta/{too_long}/[key]"]
    assert router.parse("UnitNote", {"text": "x" * MAX_STRING_LENGTH, "long_text": too_long})


@pytest.mark.parametrize("payload", [[], "text", 3, None])
def test_a_payload_that_is_not_an_object_is_reported_at_the_root(
    nested_router: CommandRouter, payload: object
) -> None:
    assert [e.path for e in errors_of(nested_router, "UnitNested", payload)] == ["/"]


def test_parse_errors_do_not_chain_the_pydantic_error(nested_router: CommandRouter) -> None:
    with pytest.raises(InvalidCommand) as caught:
        nested_router.parse("UnitNested", {})
    assert caught.value.__cause__ is None


def test_commands_are_immutable() -> None:
    command = UnitPong(count=1)
    with pytest.raises(Exception, match="frozen"):
        command.count = 2  # type: ignore[misc]


# --- the unit of work ------------------------------------------------------------------------


@pytest.fixture
def store() -> MemoryEventStore:
    return MemoryEventStore()


def test_find_returns_none_for_an_unknown_aggregate(store: MemoryEventStore) -> None:
    assert UnitOfWork(store).find(Counter, uuid4()) is None


def test_get_names_the_missing_aggregate_by_label(store: MemoryEventStore) -> None:
    with pytest.raises(AggregateNotFound, match="counter 'C-7' does not exist"):
        UnitOfWork(store).get(Counter, uuid4(), label="C-7")


def test_get_by_key_names_the_key_the_command_carried(store: MemoryEventStore) -> None:
    missing = uuid4()
    with pytest.raises(AggregateNotFound) as by_key:
        UnitOfWork(store).get(Account, key="ACC-404")
    assert by_key.value.message == "account 'ACC-404' does not exist"
    with pytest.raises(AggregateNotFound) as by_id:
        UnitOfWork(store).get(Account, missing)
    assert by_id.value.message == f"account {missing} does not exist"
    with pytest.raises(AggregateNotFound, match="corporate action 'CA 1' does not exist"):
        UnitOfWork(store).get(CorporateAction, key="CA 1")


def test_get_and_find_by_key_load_the_id_the_key_derives(store: MemoryEventStore) -> None:
    opened = Account.open("ACC-1", "Ada")
    append_events(store, Account, opened.id, *opened.collect_events())
    unit = UnitOfWork(store)
    account = unit.get(Account, key="ACC-1")
    assert account.id == Account.id_for("ACC-1") and account.holder_name == "Ada"
    assert unit.find(Account, key="ACC-1") is account  # the same instance within a unit
    assert UnitOfWork(store).find(Account, key="ACC-2") is None


@pytest.mark.parametrize("arguments", [{}, {"aggregate_id": uuid4(), "key": "ACC-1"}])
def test_get_takes_an_id_or_a_key(store: MemoryEventStore, arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="either the id or the key of the account"):
        UnitOfWork(store).get(Account, **arguments)


def test_add_by_key_names_the_key_and_checks_it(store: MemoryEventStore) -> None:
    UnitOfWork(store).add(Account.open("ACC-1", "Ada"), key="ACC-1")
    opened = Account.open("ACC-1", "Ada")
    append_events(store, Account, opened.id, *opened.collect_events())
    with pytest.raises(AlreadyExists) as refused:
        UnitOfWork(store).add(Account.open("ACC-1", "Ada"), key="ACC-1")
    assert refused.value.message == "account 'ACC-1' already exists"
    with pytest.raises(ConfigurationError, match="not created for the key 'ACC-2'"):
        UnitOfWork(store).add(Account.open("ACC-3", "Bob"), key="ACC-2")


def test_get_returns_the_same_instance_within_a_unit(store: MemoryEventStore) -> None:
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"), CounterIncremented(by=2))
    unit = UnitOfWork(store)
    first = unit.get(Counter, counter_id)
    assert unit.get(Counter, counter_id) is first
    assert (first.version, first.total) == (2, 2)
    assert [t.loaded_version for t in unit.touched] == [2]


def test_an_aggregate_of_another_type_is_not_found(store: MemoryEventStore) -> None:
    counter_id = uuid4()
    append_events(store, PlainCounter, counter_id, CounterStarted(label="c"))
    assert UnitOfWork(store).find(Counter, counter_id) is None  # stored as a PlainCounter
    unit = UnitOfWork(store)
    unit.get(PlainCounter, counter_id)
    with pytest.raises(AggregateNotFound, match=f"account {counter_id} does not exist .* is a plain counter"):
        unit.get(Account, counter_id)  # already loaded, as something else


def test_add_refuses_an_aggregate_that_is_stored(store: MemoryEventStore) -> None:
    counter_id = uuid4()
    append_events(store, Counter, counter_id, CounterStarted(label="c"))
    with pytest.raises(AlreadyExists, match="counter 'C-1' already exists"):
        UnitOfWork(store).add(Counter.start(counter_id, "again"), label="C-1")


def test_add_refuses_the_same_aggregate_twice_in_one_unit(store: MemoryEventStore) -> None:
    unit = UnitOfWork(store)
    counter_id = uuid4()
    unit.add(Counter.start(counter_id, "c"))
    with pytest.raises(AlreadyExists):
        unit.add(Counter.start(counter_id, "c"))


def test_collect_numbers_new_events_after_the_loaded_version(store: MemoryEventStore) -> None:
    from framework import EventMetadata

    loaded_id, new_id = uuid4(), uuid4()
    append_events(store, Counter, loaded_id, CounterStarted(label="c"), CounterIncremented(by=1))
    unit = UnitOfWork(store)
    unit.get(Counter, loaded_id).increment(5)
    created = unit.add(Counter.start(new_id, "n"))
    created.increment(1)
    envelopes = unit.collect(EventMetadata(actor="me"))
    assert [(e.aggregate_id, e.version, e.event) for e in envelopes] == [
        (loaded_id, 3, CounterIncremented(by=5)),
        (new_id, 1, CounterStarted(label="n")),
        (new_id, 2, CounterIncremented(by=1)),
    ]
    assert {e.metadata.actor for e in envelopes} == {"me"}
    assert unit.collect(EventMetadata()) == []  # handed over once
