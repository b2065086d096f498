"""Log output: text for people, or one JSON object per line for log collectors.

A JSON line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``correlation_id`` (the record's own, else ``framework.observe.correlation_id``),
the record's extra fields (the bus's ``command``, ``outcome``, ``duration_ms``,
``aggregate_id``, ``position``; a worker's ``projection``, ``first_position``,
``last_position``, ``size``, ``duration_ms``) and ``exception`` when there is one.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime
from typing import Any

from framework.observe import correlation_id

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
# What json.dumps(line, default=str, ensure_ascii=False) builds on every call, built once.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self) -> None:
        super().__init__()
        self._second, self._second_text = math.nan, ""  # the last second written, as datetime writes it

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None) or correlation_id.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(line)

    def utc_time(self, created: float) -> str:
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, rounded as it
        rounds, with the date and time of day made once per second (a line per command)."""
        fraction, second = math.modf(created)
        micros = round(fraction * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            moment = datetime.fromtimestamp(second, UTC).replace(tzinfo=None)
            self._second, self._second_text = second, moment.isoformat(timespec="seconds")
        return f"{self._second_text}.{micros // 1000:03d}+00:00"


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send every log record to stderr, as ``json`` lines or ``text``; replaces earlier handlers.

    Neither format shows a record's thread or process, so records do not look them up (the logging
    module's documented switches): the write path logs a line per command, and a process id is a
    system call each time."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
