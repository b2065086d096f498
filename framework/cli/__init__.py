"""The ``eventfold`` command line. Every error a user can cause ends in one line, exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace

from framework.cli import history, operate, scaffold, serve, stream
from framework.cli.startup import (
    CATCH_UP_COMMANDS,
    SERVING_COMMANDS,
    tune_collector_for_catch_up,
    tune_collector_for_replay,
    tune_collector_for_serving,
)
from framework.errors import EventfoldError
from framework.faults import arm_faults
from framework.logs import configure_logging
from framework.settings import Settings

__all__ = ["hand_to_workers", "main", "worker_settings"]

Runner = Callable[[Settings, argparse.Namespace], int]
_JSON_LOGS_BY_DEFAULT = {"write-api", "query-api", "relay", "project"}  # the roles a deployment runs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "replay":
        tune_collector_for_replay()
    elif args.command in CATCH_UP_COMMANDS:
        tune_collector_for_catch_up()
    elif args.command in SERVING_COMMANDS:
        tune_collector_for_serving()
    configure_logging("text", logging.INFO)
    try:
        settings = _with_overrides(Settings.from_env(os.environ), args)
        arm_faults(settings.faults)
        default_format = "json" if args.command in _JSON_LOGS_BY_DEFAULT else "text"
        settings = replace(settings, log_format=settings.log_format or default_format)
        configure_logging(settings.log_format or default_format, logging.INFO)
        run: Runner = args.run
        return run(settings, args)
    except EventfoldError as error:
        print(f"eventfold: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def worker_settings() -> Settings:
    """The start of a worker process a command spawned (``write-api --workers N``): the settings from
    the environment its parent handed on, applied as ``main`` applies them (fault points, logging)."""
    settings = Settings.from_env(os.environ)
    arm_faults(settings.faults)
    configure_logging(settings.log_format or "json", logging.INFO)
    return settings


def hand_to_workers(variables: dict[str, str]) -> None:
    """Put ``variables`` in the environment the worker processes about to be spawned inherit."""
    os.environ.update(variables)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventfold", description="Eventfold event-sourcing framework")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scaffold.register(commands)
    serve.register(commands)
    stream.register(commands)
    operate.register(commands)
    history.register(commands)
    return parser


def _with_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "sqlite_path": getattr(args, "store", None),
        "write_workers": getattr(args, "workers", None),
    }
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
