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
        ("EVENTFOLD_WRITE_WORKERS", "0"),
        ("EVENTFOLD_WRITE_WORKERS", "two"),
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


# --- the stream, fault points and OpenTelemetry: read here too, nowhere else --------------------------------

def test_the_stream_settings_are_read_here() -> None:
    settings = Settings.from_env({
        "EVENTFOLD_NATS_URL": " nats://a:4222, nats://user:secret@b:4223 ,",
        "EVENTFOLD_STREAM": "events_v2",
        "EVENTFOLD_SUBJECT_PREFIX": "acme.events",
        "EVENTFOLD_STREAM_STORAGE": "Memory",
        "EVENTFOLD_STREAM_REPLICAS": "3",
        "EVENTFOLD_STREAM_RETENTION": "interest",
        "EVENTFOLD_STREAM_MAX_AGE_SECONDS": "86400",
        "EVENTFOLD_STREAM_DUPLICATE_WINDOW_SECONDS": "300",
        "EVENTFOLD_CONSUMER_PREFIX": "",
    })
    assert settings.nats_servers() == ("nats://a:4222", "nats://user:secret@b:4223")
    assert (settings.stream, settings.subject_prefix, settings.consumer_prefix) == ("events_v2", "acme.events", "")
    assert (settings.stream_storage, settings.stream_replicas, settings.stream_retention) == ("memory", 3, "interest")
    assert (settings.stream_max_age_seconds, settings.stream_duplicate_window_seconds) == (86400.0, 300.0)
    assert Settings().nats_servers() == ("nats://127.0.0.1:4222",)


@pytest.mark.parametrize(("name", "value"), [
    ("EVENTFOLD_NATS_URL", "http://localhost:4222"),
    ("EVENTFOLD_STREAM", "bad.name"),
    ("EVENTFOLD_SUBJECT_PREFIX", "a.>"),
    ("EVENTFOLD_STREAM_STORAGE", "disk"),
    ("EVENTFOLD_STREAM_REPLICAS", "6"),
])
def test_a_bad_stream_setting_is_refused_at_start_up(name: str, value: str) -> None:
    message = error_for({name: value})
    assert name in message and repr(value) in message


def test_a_password_in_a_bad_nats_url_is_hidden() -> None:
    message = error_for({"EVENTFOLD_NATS_URL": "nats://u:hunter2@ok:4222,bogus"})
    assert "hunter2" not in message and "u:***@ok" in message


def test_fault_points_and_opentelemetry_variables_are_carried_as_they_are() -> None:
    settings = Settings.from_env({"EVENTFOLD_FAULTS": " command.claimed@3 ", "OTEL_TRACES_EXPORTER": "console",
                                  "OTEL_SERVICE_NAME": "billing", "OTHER": "x"})
    assert settings.faults == "command.claimed@3"
    assert dict(settings.otel) == {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "billing"}


def test_fault_points_are_armed_by_name_and_hit() -> None:
    from framework import faults

    try:
        faults.arm_faults("command.claimed@3, batch.committed,")
        assert faults._ARMED == {"command.claimed": 3, "batch.committed": 1}
        faults.arm_faults("")
        assert faults._ARMED == {}
        faults.fault_point("command.claimed")  # unarmed: nothing happens
    finally:
        faults.arm_faults("")


def test_the_collector_is_tuned_at_the_start_of_a_catch_up_process_only() -> None:
    import subprocess
    import sys

    probe = ("import gc; from framework.cli.startup import tune_collector_for_catch_up as t;"
             " before = gc.get_threshold(); t(); print(before[0], gc.get_threshold()[0], gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout
    default, tuned, frozen = out.split()
    assert (int(default) < 50_000, int(tuned), frozen) == (True, 50_000, "True")
    from framework.cli.startup import CATCH_UP_COMMANDS

    assert {"project", "replay"} == CATCH_UP_COMMANDS


def test_a_replay_process_collects_its_youngest_generation_least_often() -> None:
    import subprocess
    import sys

    probe = ("import gc; from framework.cli.startup import tune_collector_for_replay as t;"
             " before = gc.get_threshold(); t(); after = gc.get_threshold();"
             " print(before[0], after[0], before[1:] == after[1:], gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout
    default, tuned, older_kept, frozen = out.split()
    assert (int(default) < 50_000, int(tuned), older_kept, frozen) == (True, 200_000, "True", "True")


def test_the_cli_tunes_replay_for_replay_and_project_for_catch_up(monkeypatch) -> None:
    import framework.cli as cli
    from framework.cli import operate, stream

    tuned: list[tuple[str, str]] = []
    monkeypatch.setattr(operate, "run_replay", lambda settings, args: 0)
    monkeypatch.setattr(stream, "run_project_command", lambda settings, args: 0)
    monkeypatch.setattr(cli, "configure_logging", lambda *a: None)
    for command in (["replay", "holdings"], ["project", "holdings"]):
        monkeypatch.setattr(cli, "tune_collector_for_replay", lambda c=command[0]: tuned.append((c, "replay")))
        monkeypatch.setattr(cli, "tune_collector_for_catch_up", lambda c=command[0]: tuned.append((c, "catch-up")))
        assert cli.main(command) == 0
    assert tuned == [("replay", "replay"), ("project", "catch-up")]


def test_the_query_api_collects_its_youngest_generation_less_often_and_freezes_nothing() -> None:
    import subprocess
    import sys

    probe = ("import gc; from framework.cli.startup import tune_collector_for_serving as t;"
             " before = gc.get_threshold(); t(); after = gc.get_threshold();"
             " print(before[0], after[0], before[1:] == after[1:], gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout
    default, tuned, older_kept, frozen = out.split()
    assert (int(default) < 10_000, int(tuned), older_kept, frozen) == (True, 10_000, "True", "0")
    from framework.cli.startup import CATCH_UP_COMMANDS, SERVING_COMMANDS

    assert {"query-api"} == SERVING_COMMANDS and not SERVING_COMMANDS & CATCH_UP_COMMANDS


def test_the_cli_tunes_the_collector_of_the_query_api_and_of_no_other_serving_role(monkeypatch) -> None:
    import framework.cli as cli
    from framework.cli import serve

    tuned: list[tuple[str, str]] = []
    for role in ("query_api", "write_api", "dev"):
        monkeypatch.setattr(serve, f"run_{role}", lambda settings, args: 0)
    monkeypatch.setattr(cli, "configure_logging", lambda *a: None)
    for command in ("query-api", "write-api", "dev"):
        monkeypatch.setattr(cli, "tune_collector_for_serving", lambda c=command: tuned.append((c, "serving")))
        monkeypatch.setattr(cli, "tune_collector_for_catch_up", lambda c=command: tuned.append((c, "catch-up")))
        assert cli.main([command]) == 0
    assert tuned == [("query-api", "serving")]


def test_group_commit_is_on_unless_turned_off_and_reaches_the_postgres_settings() -> None:
    url = {"EVENTFOLD_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/events"}
    on = Settings.from_env(url).postgres()
    off = Settings.from_env({**url, "EVENTFOLD_GROUP_COMMIT": "false"}).postgres()
    assert on is not None and on.group_commit is True
    assert off is not None and off.group_commit is False
    assert "EVENTFOLD_GROUP_COMMIT='maybe'" in error_for({"EVENTFOLD_GROUP_COMMIT": "maybe"})


def test_the_async_write_path_is_on_unless_turned_off_and_a_bad_value_names_the_key() -> None:
    assert Settings.from_env({}).write_async is True
    assert Settings.from_env({"EVENTFOLD_WRITE_ASYNC": "on"}).write_async is True
    assert Settings.from_env({"EVENTFOLD_WRITE_ASYNC": "off"}).write_async is False
    assert "EVENTFOLD_WRITE_ASYNC='sometimes'" in error_for({"EVENTFOLD_WRITE_ASYNC": "sometimes"})


def test_write_workers_default_to_one_process() -> None:
    assert Settings.from_env({}).write_workers == 1
    assert Settings.from_env({"EVENTFOLD_WRITE_WORKERS": "4"}).write_workers == 4


def test_the_server_protocol_keeps_its_limits_when_pickled_into_a_worker() -> None:
    """uvicorn spawns each worker with its Config pickled: the protocol class must arrive with its limits."""
    import pickle

    from framework.http.server import ServerLimits, uvicorn_options

    limits = ServerLimits(max_header_bytes=4_096, header_timeout_seconds=3.0, max_connections=7)
    protocol = uvicorn_options(limits)["http"]
    rebuilt = pickle.loads(pickle.dumps(protocol))
    assert rebuilt.limits == limits  # type: ignore[attr-defined]
    assert rebuilt.__mro__[1:] == protocol.__mro__[1:]


# --- the read models' database and the query replica ---------------------------------------------

STORE_URL = "postgresql://app@store.example:5432/events"
READ_URL = "postgresql://reader:pw@reads.example:6432/views"
REPLICA_URL = "postgresql://reader@replica.example:5432/views"


def test_read_models_share_the_event_store_database_by_default() -> None:
    settings = Settings.from_env({"EVENTFOLD_DATABASE_URL": STORE_URL, "EVENTFOLD_DB_SCHEMA": "app"})
    assert settings.read_postgres() == settings.postgres() == settings.query_postgres()


def test_read_models_on_their_own_database_and_query_api_on_a_replica() -> None:
    settings = Settings.from_env({
        "EVENTFOLD_DATABASE_URL": STORE_URL, "EVENTFOLD_READ_DATABASE_URL": READ_URL,
        "EVENTFOLD_QUERY_DATABASE_URL": REPLICA_URL, "EVENTFOLD_DB_SCHEMA": "app",
        "EVENTFOLD_READ_DB_SCHEMA": "views", "EVENTFOLD_DB_POOL_SIZE": "3",
    })
    store, read, query = settings.postgres(), settings.read_postgres(), settings.query_postgres()
    assert store is not None and read is not None and query is not None
    assert (store.host, store.dbname, store.schema) == ("store.example", "events", "app")
    assert (read.host, read.port, read.dbname, read.user, read.password, read.schema, read.pool_size) == (
        "reads.example", 6432, "views", "reader", "pw", "views", 3)
    assert (query.host, query.dbname, query.schema) == ("replica.example", "views", "views")


def test_the_query_database_defaults_to_the_read_database() -> None:
    settings = Settings.from_env({"EVENTFOLD_DATABASE_URL": STORE_URL, "EVENTFOLD_READ_DATABASE_URL": READ_URL})
    assert settings.query_postgres() == settings.read_postgres() != settings.postgres()


@pytest.mark.parametrize("name", ["EVENTFOLD_READ_DATABASE_URL", "EVENTFOLD_QUERY_DATABASE_URL"])
def test_a_bad_read_or_query_url_names_its_variable(name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}='mysql://u:\\*\\*\\*@x/db'") as caught:
        Settings.from_env({"EVENTFOLD_DATABASE_URL": STORE_URL, name: "mysql://u:secret@x/db"})
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("name", ["EVENTFOLD_READ_DATABASE_URL", "EVENTFOLD_QUERY_DATABASE_URL"])
def test_a_read_or_query_url_without_the_event_store_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}=.* needs EVENTFOLD_DATABASE_URL"):
        Settings.from_env({name: READ_URL})


def test_stream_placement_is_read_and_reaches_the_stream_config() -> None:
    from framework.adapters.nats import JetStreamSettings

    settings = Settings.from_env({"EVENTFOLD_STREAM_PLACEMENT_CLUSTER": "east-1", "EVENTFOLD_STREAM_REPLICAS": "3",
                                  "EVENTFOLD_STREAM_PLACEMENT_TAGS": " az:eu-1 , ssd "})
    assert (settings.stream_placement_cluster, settings.stream_placement_tags) == ("east-1", ("az:eu-1", "ssd"))
    config = JetStreamSettings.from_settings(settings).stream_config()
    assert config.num_replicas == 3
    assert config.placement is not None
    assert (config.placement.cluster, config.placement.tags) == ("east-1", ["az:eu-1", "ssd"])
    assert JetStreamSettings.from_settings(Settings()).stream_config().placement is None


@pytest.mark.parametrize(("name", "value"), [
    ("EVENTFOLD_STREAM_PLACEMENT_CLUSTER", "east 1"),
    ("EVENTFOLD_STREAM_PLACEMENT_TAGS", "ssd,bad tag"),
    ("EVENTFOLD_STREAM_PLACEMENT_TAGS", "a,*"),
])
def test_a_bad_placement_names_the_variable_and_the_value(name: str, value: str) -> None:
    message = error_for({name: value})
    assert name in message and repr(value) in message
