"""``eventfold events``: an aggregate's stream, or the global stream page by page, as text or JSON lines.

Also how every command names an aggregate: its id (a UUID), or ``TYPE:KEY`` (``Account:ACC-1``), the
natural key its id derives from (``Aggregate.id_for``), as ``replay --aggregate`` takes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from framework.aggregate import Aggregate
from framework.cli.common import add_app_option, application, open_store
from framework.errors import ConfigurationError, EventSchemaError
from framework.mapper import from_stored
from framework.settings import Settings
from framework.store import EventStore, Notification
from framework.unit_of_work import describe

__all__ = ["AggregateReference", "aggregate_reference", "register"]

MAX_LIMIT = 100_000
"""The most events one page of the global stream holds (``--limit``): a page is held in memory."""


def register(commands: Any) -> None:
    events = commands.add_parser(
        "events", help="print or export an aggregate's events, or the global stream page by page",
        description="With AGGREGATE (an id, or TYPE:KEY such as Account:ACC-1): that aggregate's events. "
                    "Without: the events of every aggregate after --after, at most --limit.")
    events.add_argument("aggregate", nargs="?", metavar="AGGREGATE", help="an aggregate id, or TYPE:KEY")
    events.add_argument("--json", action="store_true", help="one JSON object per line (an export)")
    events.add_argument("--from-version", type=int, help="an aggregate's events from this version on (default 1)")
    events.add_argument("--after", type=int, help="the global stream after this position (default 0)")
    events.add_argument("--limit", type=int, help=f"events in one page of the global stream (default 100, at most "
                                                  f"{MAX_LIMIT:,})")
    events.add_argument("--store", help="the SQLite file `eventfold dev` keeps events in (without "
                                        "EVENTFOLD_DATABASE_URL; default .eventfold/events.sqlite3)")
    add_app_option(events)
    events.set_defaults(run=run_events)


@dataclass(frozen=True)
class AggregateReference:
    """An aggregate as the user named it: its id, and how to say it in a message."""

    aggregate_id: UUID
    words: str


def aggregate_reference(text: str) -> AggregateReference:
    """``text`` as an aggregate: a UUID, or ``TYPE:KEY`` of an aggregate type the application defines.
    Call it once the application is loaded (its aggregate types are then known)."""
    try:
        aggregate_id = UUID(text)
    except ValueError:
        pass
    else:
        return AggregateReference(aggregate_id, f"aggregate {aggregate_id}")
    type_name, colon, key = text.partition(":")
    if not colon or not type_name or not key:
        raise ConfigurationError(f"{text!r} is neither an aggregate id (a UUID) nor TYPE:KEY (such as Account:ACC-1)")
    known = _aggregate_types()
    if type_name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ConfigurationError(f"the application has no aggregate type {type_name!r} (known: {names})")
    aggregate_type = known[type_name]
    aggregate_id = aggregate_type.id_for(key)
    return AggregateReference(aggregate_id, f"{describe(aggregate_type, aggregate_id, key)} (id {aggregate_id})")


def _aggregate_types() -> dict[str, type[Aggregate]]:
    """Every aggregate class imported so far, by its stored name."""
    found: dict[str, type[Aggregate]] = {}
    pending = list(Aggregate.__subclasses__())
    while pending:
        klass = pending.pop()
        found.setdefault(klass.aggregate_name, klass)
        pending.extend(klass.__subclasses__())
    return found


def run_events(settings: Settings, args: argparse.Namespace) -> int:
    _check_options(args)
    application(settings, args)  # its event classes read the events, its aggregate types name them
    reference = aggregate_reference(args.aggregate) if args.aggregate is not None else None
    store = _open_existing_store(settings)
    try:
        if reference is not None:
            _print(_aggregate_rows(store, reference, args.from_version or 1), as_json=args.json)
        else:
            _print_page(store, args.after or 0, args.limit or 100, as_json=args.json)
    finally:
        store.close()
    return 0


def _check_options(args: argparse.Namespace) -> None:
    if args.aggregate is not None and (args.after is not None or args.limit is not None):
        raise ConfigurationError("--after and --limit page the global stream: give them without an aggregate "
                                 "(an aggregate's events start at --from-version)")
    if args.aggregate is None and args.from_version is not None:
        raise ConfigurationError("--from-version needs an aggregate (an id, or TYPE:KEY such as Account:ACC-1)")
    if args.from_version is not None and args.from_version < 1:
        raise ConfigurationError(f"--from-version must be 1 or more (an aggregate's first event), "
                                 f"not {args.from_version}")
    if args.after is not None and args.after < 0:
        raise ConfigurationError(f"--after must be a position, 0 or more, not {args.after}")
    if args.limit is not None and not 1 <= args.limit <= MAX_LIMIT:
        raise ConfigurationError(f"--limit must be between 1 and {MAX_LIMIT}, not {args.limit}")


def _open_existing_store(settings: Settings) -> EventStore:
    """The store to read; an embedded file that does not exist is a mistake, not an empty store."""
    if settings.postgres() is None:
        path = settings.sqlite_path
        if path == ":memory:" or not os.path.exists(path):
            raise ConfigurationError(f"there is no event store at {path!r}: set EVENTFOLD_DATABASE_URL, or give "
                                     "--store the SQLite file `eventfold dev` writes")
    return open_store(settings)


def _aggregate_rows(store: EventStore, reference: AggregateReference, from_version: int) -> list[dict[str, Any]]:
    stream = store.read_stream_with_positions(reference.aggregate_id, after_version=from_version - 1)
    if not stream:
        whole = store.read_stream_with_positions(reference.aggregate_id)
        if not whole:
            raise ConfigurationError(f"there are no events of {reference.words}")
        raise ConfigurationError(f"{reference.words} has no events from version {from_version}: its latest is "
                                 f"{whole[-1].originator_version}")
    return [_row(n) for n in stream]


def _print_page(store: EventStore, after: int, limit: int, *, as_json: bool) -> None:
    """One page of the global stream; the command for the next page, if any, on stderr."""
    page = store.read_all(after, limit)
    _print([_row(n) for n in page], as_json=as_json)
    sys.stdout.flush()
    if len(page) == limit and page[-1].id < store.head():
        print(f"eventfold: more events follow: eventfold events --after {page[-1].id} --limit {limit}",
              file=sys.stderr)


def _row(notification: Notification) -> dict[str, Any]:
    """One stored event as printed; one the application cannot read says why instead of its data."""
    try:
        envelope = from_stored(notification)
    except EventSchemaError as error:
        return {"position": notification.id, "aggregate_type": None, "aggregate_id": str(notification.originator_id),
                "version": notification.originator_version, "event": notification.topic, "error": error.message}
    return {"position": envelope.position, "aggregate_type": envelope.aggregate_type,
            "aggregate_id": str(envelope.aggregate_id), "version": envelope.version, "event": envelope.event_name,
            "metadata": envelope.metadata.model_dump(mode="json", exclude_none=True),
            "data": envelope.event.model_dump(mode="json")}


def _print(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row, separators=(",", ":"), ensure_ascii=False))
        return
    columns = ["position", "aggregate", "version", "recorded_at", "event", "data"]
    table = list(_text_rows(rows))
    widths = {c: max([len(c), *(len(r[c]) for r in table)]) for c in columns[:-1]}
    print("  ".join(c.ljust(widths.get(c, 0)) for c in columns).rstrip())
    for line in table:
        print("  ".join(line[c].ljust(widths.get(c, 0)) for c in columns).rstrip())


def _text_rows(rows: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    for row in rows:
        data = json.dumps(row["data"], separators=(",", ":"), ensure_ascii=False) if "data" in row else (
            f"(cannot be read: {row['error']})")
        yield {"position": str(row["position"]), "aggregate": f"{row['aggregate_type'] or '?'}:{row['aggregate_id']}",
               "version": str(row["version"]), "recorded_at": row.get("metadata", {}).get("recorded_at", "-"),
               "event": row["event"], "data": data}
