"""The query API's settings: EVENTFOLD_GRAPHQL_INTROSPECTION and the document limits, and how each role uses them."""

from __future__ import annotations

import pytest

from framework.cli.serve import _query_options
from framework.errors import ConfigurationError
from framework.settings import Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.graphql_introspection is None
    assert (settings.graphql_max_depth, settings.graphql_max_aliases, settings.graphql_max_tokens,
            settings.graphql_max_cost) == (10, 15, 2_000, 5_000)


def test_values_are_read() -> None:
    settings = Settings.from_env({"EVENTFOLD_GRAPHQL_INTROSPECTION": "yes", "EVENTFOLD_GRAPHQL_MAX_DEPTH": "5",
                                  "EVENTFOLD_GRAPHQL_MAX_ALIASES": "0", "EVENTFOLD_GRAPHQL_MAX_TOKENS": "500",
                                  "EVENTFOLD_GRAPHQL_MAX_COST": "20000"})
    assert settings.graphql_introspection is True
    assert (settings.graphql_max_depth, settings.graphql_max_aliases, settings.graphql_max_tokens,
            settings.graphql_max_cost) == (5, 0, 500, 20_000)


@pytest.mark.parametrize(("name", "value"), [
    ("EVENTFOLD_GRAPHQL_INTROSPECTION", "maybe"), ("EVENTFOLD_GRAPHQL_MAX_DEPTH", "0"),
    ("EVENTFOLD_GRAPHQL_MAX_DEPTH", "31"), ("EVENTFOLD_GRAPHQL_MAX_ALIASES", "-1"),
    ("EVENTFOLD_GRAPHQL_MAX_TOKENS", "5"), ("EVENTFOLD_GRAPHQL_MAX_TOKENS", "lots"),
    ("EVENTFOLD_GRAPHQL_MAX_COST", "0"), ("EVENTFOLD_GRAPHQL_MAX_COST", "1.5"),
])
def test_a_bad_value_names_the_variable_and_the_value(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({name: value})
    assert name in str(raised.value) and repr(value) in str(raised.value)


@pytest.mark.parametrize(("setting", "role_default", "expected"), [
    (None, False, False), (None, True, True), ("true", False, True), ("false", True, False),
])
def test_introspection_is_the_roles_default_unless_set(setting: str | None, role_default: bool,
                                                       expected: bool) -> None:
    env = {} if setting is None else {"EVENTFOLD_GRAPHQL_INTROSPECTION": setting}
    assert _query_options(Settings.from_env(env), introspection=role_default).introspection is expected


def test_the_limits_reach_the_query_options() -> None:
    settings = Settings.from_env({"EVENTFOLD_GRAPHQL_MAX_DEPTH": "4", "EVENTFOLD_GRAPHQL_MAX_ALIASES": "3",
                                  "EVENTFOLD_GRAPHQL_MAX_TOKENS": "100", "EVENTFOLD_GRAPHQL_MAX_COST": "99"})
    options = _query_options(settings, introspection=False)
    assert (options.max_depth, options.max_aliases, options.max_tokens, options.max_cost) == (4, 3, 100, 99)
