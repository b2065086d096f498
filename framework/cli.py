"""The ``eventfold`` command line. Every error a user can cause ends in one line, exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace

from framework.errors import EventfoldError
from framework.settings import Settings
from framework.store import EventStore

__all__ = ["main"]

log = logging.getLogger("eventfold")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _with_overrides(Settings.from_env(os.environ), args)
        command: Callable[[Settings, argparse.Namespace], int] = args.run
        return command(settings, args)
    except EventfoldError as error:
        print(f"eventfold: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventfold", description="Eventfold event-sourcing framework")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run the example app embedded: one process, no servers")
    _serve_options(dev)
    dev.add_argument("--store", help="SQLite file for events (default .eventfold/events.sqlite3), "
                     "or :memory:")
    dev.set_defaults(run=_run_dev)

    write_api = commands.add_parser("write-api", help="serve the write API on PostgreSQL")
    _serve_options(write_api)
    write_api.set_defaults(run=_run_write_api)

    init_db = commands.add_parser("init-db", help="create the event store's tables (idempotent)")
    init_db.set_defaults(run=_run_init_db)
    return parser


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to listen on (EVENTFOLD_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (EVENTFOLD_PORT)")
    parser.add_argument("--access-log", action="store_true", help="log every request")


def _with_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "sqlite_path": getattr(args, "store", None),
    }
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _run_dev(settings: Settings, args: argparse.Namespace) -> int:
    embedded = replace(settings, database_url=None)
    store = _open(embedded)
    store.create_schema()  # an embedded file is private to this process: set it up in place
    log.info("events are kept in %s", embedded.sqlite_path)
    return _serve(embedded, store, args)


def _run_write_api(settings: Settings, args: argparse.Namespace) -> int:
    if settings.postgres() is None:
        print("eventfold: write-api needs EVENTFOLD_DATABASE_URL (postgresql://...); "
              "use `eventfold dev` for the embedded mode", file=sys.stderr)
        return 2
    return _serve(settings, _open(settings), args)


def _run_init_db(settings: Settings, _: argparse.Namespace) -> int:
    store = _open(settings)
    store.create_schema()
    where = "PostgreSQL" if settings.postgres() else settings.sqlite_path
    print(f"eventfold: event store schema is ready ({where})")
    return 0


def _open(settings: Settings) -> EventStore:
    from framework.adapters.factory import open_store

    return open_store(settings)


def _serve(settings: Settings, store: EventStore, args: argparse.Namespace) -> int:
    import uvicorn

    from framework.adapters.factory import load_router
    from framework.bus import CommandBus
    from framework.http.write_api import WriteApiOptions, create_write_app

    bus = CommandBus(
        load_router(settings.app),
        store,
        max_attempts=settings.command_max_attempts,
        idempotency_lease_seconds=settings.idempotency_lease_seconds,
    )
    options = WriteApiOptions(settings.max_body_bytes, settings.retry_after_seconds)
    app = create_write_app(bus, options)
    log.info("write API on http://%s:%d (POST /commands/{Name}, GET /openapi.json)",
             settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=args.access_log,
                log_level="info")
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
