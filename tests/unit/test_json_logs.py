"""JSON log lines: one object per line, with the correlation id, one line per command and per batch."""

from __future__ import annotations

import io
import json
import linecache
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from example_app.commands import OpenAccount
from example_app.handlers import router as example_router
from framework import CommandBus, CommandContext
from framework.adapters.memory import MemoryEventStore
from framework.logs import JsonFormatter
from framework.observe import correlation_id


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def parsed(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_the_context_correlation_id(lines: io.StringIO) -> None:
    token = correlation_id.set("corr-42")
    try:
        logging.getLogger("eventfold.test").warning("hello %s", "world")
    finally:
        correlation_id.reset(token)
    (line,) = [x for x in parsed(lines) if x["logger"] == "eventfold.test"]
    assert line["message"] == "hello world"
    assert line["level"] == "WARNING"
    assert line["correlation_id"] == "corr-42"
    assert str(line["time"]).endswith("+00:00")


def test_one_line_per_command_with_its_outcome_and_position(lines: io.StringIO) -> None:
    bus = CommandBus(example_router, MemoryEventStore())
    result = bus.execute(OpenAccount(account_number="ACC-9", holder_name="Ada"),
                         CommandContext(correlation_id="req-7")).result
    (line,) = [x for x in parsed(lines) if x.get("command") == "OpenAccount"]
    assert line["outcome"] == "ok"
    assert line["correlation_id"] == "req-7"
    assert line["aggregate_id"] == str(result.aggregate_id)
    assert line["position"] == result.position
    assert isinstance(line["duration_ms"], float)


def test_exceptions_stay_on_one_line(lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("eventfold.test").exception("failed")
    (line,) = [x for x in parsed(lines) if x["logger"] == "eventfold.test"]
    assert "ValueError: boom" in str(line["exception"])


@settings(max_examples=500)
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False))
def test_the_time_of_a_line_is_what_datetime_writes(created: float) -> None:
    formatter = JsonFormatter()
    for moment in (created, created + 0.0004, created + 0.9995, 1_765_069_500.9999996, 1_765_069_500.0005):
        assert formatter.utc_time(moment) == datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_command_record_is_the_one_log_info_would_make() -> None:
    """The bus makes its per-command record itself (no stack walk): same logger, level, message, extras
    and place (the bus's ``_log_outcome``), and the logger's level still decides whether there is one."""
    import framework.bus

    logger = logging.getLogger("framework.bus")
    handler, old_level = _Records(), logger.level
    logger.addHandler(handler)
    try:
        logger.setLevel(logging.INFO)
        bus = CommandBus(example_router, MemoryEventStore())
        bus.execute(OpenAccount(account_number="ACC-1", holder_name="Ada"), CommandContext(correlation_id="c-1"))
        logger.setLevel(logging.WARNING)
        bus.execute(OpenAccount(account_number="ACC-2", holder_name="Bo"), CommandContext(correlation_id="c-2"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    (record,) = handler.records
    assert (record.name, record.levelno, record.funcName) == ("framework.bus", logging.INFO, "_log_outcome")
    assert record.pathname == framework.bus.__file__
    # the line of the logging call, as log.info's record names it (%(lineno)d), not the method's first line
    assert "log.handle(log.makeRecord(" in linecache.getline(record.pathname, record.lineno)
    assert record.getMessage().startswith("command OpenAccount ok in ")
    assert record.__dict__["correlation_id"] == "c-1" and record.__dict__["command"] == "OpenAccount"
