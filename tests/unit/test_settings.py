"""Settings: read once from EVENTFOLD_* variables; every bad value is named in the error."""

from __future__ import annotations

import dataclasses

import pytest

from framework import ConfigurationError, Settings
from framework.settings import PostgresSettings


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url is None
    assert settings.postgres() is None  # embedded mode
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.db_pool_size == 8
    assert settings.command_max_attempts == 5
    assert settings.max_body_bytes == 1_048_576
    assert settings.app is None  # the framework knows no application: the user names theirs


@pytest.mark.parametrize("name", ["EVENTFOLD_PROJECTIONS", "EVENTFOLD_GRAPHQL"])
def test_retired_variables_are_refused_not_ignored(name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name} is no longer read: .*App"):
        Settings.from_env({name: "projections:build_projectors"})


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_unprefixed_and_unknown_variables_are_ignored() -> None:
    env = {"PORT": "abc", "DATABASE_URL": "mysql://x", "EVENTFOLD_NOPE": "1"}
    assert Settings.from_env(env) == Settings()


def test_values_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {
            "EVENTFOLD_PORT": " 9001 ",
            "EVENTFOLD_HOST": "0.0.0.0",
            "EVENTFOLD_DB_POOL_SIZE": "3",
            "EVENTFOLD_DB_CONNECT_TIMEOUT": "0.5",
            "EVENTFOLD_MAX_BODY_BYTES": "1024",
            "EVENTFOLD_COMMAND_MAX_ATTEMPTS": "2",
            "EVENTFOLD_IDEMPOTENCY_LEASE_SECONDS": "30",
            "EVENTFOLD_RETRY_AFTER_SECONDS": "0",
            "EVENTFOLD_SQLITE_PATH": "/tmp/x.sqlite3",
            "EVENTFOLD_APP": "pkg.mod:factory",
        }
    )
    assert settings.port == 9001 and isinstance(settings.port, int)
    assert settings.db_connect_timeout == 0.5 and isinstance(settings.db_connect_timeout, float)
    assert settings.idempotency_lease_seconds == 30.0
    assert isinstance(settings.idempotency_lease_seconds, float)
    assert (settings.host, settings.db_pool_size, settings.max_body_bytes) == ("0.0.0.0", 3, 1024)
    assert (settings.command_max_attempts, settings.retry_after_seconds) == (2, 0)
    assert (settings.sqlite_path, settings.app) == ("/tmp/x.sqlite3", "pkg.mod:factory")


def test_blank_values_fall_back_to_defaults() -> None:
    env = {"EVENTFOLD_PORT": "", "EVENTFOLD_HOST": "  ", "EVENTFOLD_DB_POOL_SIZE": " ", "EVENTFOLD_APP": ""}
    assert Settings.from_env(env) == Settings()


def test_the_postgres_url_is_parsed() -> None:
    settings = Settings.from_env(
        {
            "EVENTFOLD_DATABASE_URL": "postgresql://app:p%40ss%3Aword@db.internal:5433/events",
            "EVENTFOLD_DB_SCHEMA": "eventfold",
            "EVENTFOLD_DB_POOL_SIZE": "4",
            "EVENTFOLD_DB_CONNECT_TIMEOUT": "1.5",
        }
    )
    assert settings.postgres() == PostgresSettings(
        host="db.internal",
        port=5433,
        dbname="events",
        user="app",
        password="p@ss:word",
        schema="eventfold",
        pool_size=4,
        connect_timeout=1.5,
    )


def test_postgres_url_defaults() -> None:
    parsed = PostgresSettings.from_url("postgres://db.internal/events")
    assert (parsed.host, parsed.port, parsed.user, parsed.password) == ("db.internal", 5432, "postgres", "")


def error_for(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    assert caught.value.code == "configuration_error"
    return caught.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENTFOLD_PORT", "abc"),
        ("EVENTFOLD_PORT", "80.5"),
        ("EVENTFOLD_PORT", "-1"),
        ("EVENTFOLD_DB_POOL_SIZE", "0"),
        ("EVENTFOLD_DB_POOL_SIZE", "many"),
        ("EVENTFOLD_DB_CONNECT_TIMEOUT", "0"),
        ("EVENTFOLD_DB_CONNECT_TIMEOUT", "soon"),
        ("EVENTFOLD_MAX_BODY_BYTES", "0"),
        ("EVENTFOLD_COMMAND_MAX_ATTEMPTS", "0"),
        ("EVENTFOLD_IDEMPOTENCY_LEASE_SECONDS", "0.5"),
        ("EVENTFOLD_RETRY_AFTER_SECONDS", "-3"),
        ("EVENTFOLD_DATABASE_URL", "mysql://x"),
        ("EVENTFOLD_DATABASE_URL", "postgresql://host-without-a-database"),
        ("EVENTFOLD_DATABASE_URL", "localhost:5432/events"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(name: str, value: str) -> None:
    message = error_for({name: value})
    assert name in message
    assert repr(value) in message


@pytest.mark.parametrize(
    "url",
    [
        "mysql://admin:hunter2@db/events",  # wrong scheme
        "postgresql://admin:hunter2@db",  # no database
        "postgresql://admin:hunter2@db:99999/events",  # bad port
        "postgresql://admin:hunter2@db:port/events",
    ],
)
def test_the_password_is_redacted_from_errors(url: str) -> None:
    message = error_for({"EVENTFOLD_DATABASE_URL": url})
    assert "hunter2" not in message
    assert "EVENTFOLD_DATABASE_URL" in message
    assert "admin:***@db" in message


def test_the_first_bad_value_is_reported_even_with_others_fine() -> None:
    message = error_for({"EVENTFOLD_HOST": "example.org", "EVENTFOLD_DB_POOL_SIZE": "0"})
    assert "EVENTFOLD_DB_POOL_SIZE='0'" in message



def test_a_port_above_65535_is_rejected() -> None:
    assert "EVENTFOLD_PORT" in error_for({"EVENTFOLD_PORT": "70000"})



def test_nan_is_not_a_timeout() -> None:
    assert "EVENTFOLD_DB_CONNECT_TIMEOUT" in error_for({"EVENTFOLD_DB_CONNECT_TIMEOUT": "nan"})
