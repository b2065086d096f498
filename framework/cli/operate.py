"""``eventfold replay`` (whole, or one aggregate's rows), ``status`` and ``dead-letters``: operating projections."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from framework.cli.common import (
    add_app_option,
    application,
    open_store,
    open_views,
    require_postgres,
    select_projectors,
)
from framework.cli.history import aggregate_reference
from framework.errors import ConfigurationError
from framework.projector import Projector
from framework.settings import PostgresSettings, Settings
from framework.status import projection_statuses

__all__ = ["register"]


def register(commands: Any) -> None:
    replay = commands.add_parser("replay", help="rebuild a read model from the event store, then switch to it")
    replay.add_argument("name", metavar="NAME")
    replay.add_argument("--from", dest="from_position", type=int, default=0,
                        help="start from this position (events before it are not applied)")
    replay.add_argument("--aggregate", metavar="AGGREGATE",
                        help="rebuild only this aggregate's rows (an id, or TYPE:KEY such as Account:ACC-1), in a "
                             "new version otherwise copied from the active one; the projection must declare "
                             "per_aggregate = True")
    replay.add_argument("--parallel", type=int, default=4, metavar="N",
                        help="a partitioned projection's partitions rebuilt at once (default 4); its partition "
                             "count is the projector's, or EVENTFOLD_PARTITIONS'")
    replay.add_argument("--processes", type=int, default=None, metavar="P",
                        help="processes a partitioned projection's partitions are divided among (default: one "
                             "per partition, at most one per core; 1: threads of this process; each process "
                             "reads the whole log)")
    add_app_option(replay)
    replay.set_defaults(run=run_replay)

    status = commands.add_parser("status", help="positions, lag and state of every projection")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=run_status)

    letters = commands.add_parser("dead-letters", help="list, retry or discard parked events")
    letters.add_argument("action", choices=["list", "retry", "discard"])
    letters.add_argument("target", nargs="?", help="a projection name (list) or a letter id")
    letters.set_defaults(run=run_dead_letters)


class _Progress:
    """One self-rewriting line on stderr: position, percentage and rate."""

    def __init__(self, label: str) -> None:
        self._label, self._started = label, time.monotonic()
        self._first: int | None = None

    def __call__(self, position: int, head: int) -> None:
        if self._first is None:
            self._first = position
        elapsed = max(time.monotonic() - self._started, 1e-6)
        share = 100 * position / head if head else 100
        rate = (position - self._first) / elapsed
        print(f"\r{self._label}: {position}/{head} ({share:.0f}%) {rate:,.0f} events/s",
              end="", file=sys.stderr, flush=True)


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    from framework.replay import default_processes, rebuild

    postgres = require_postgres(settings, "replay")
    app = application(settings, args)  # importing it defines its aggregate types, for --aggregate TYPE:KEY
    (projector,) = select_projectors(app.build_projectors(), [args.name], settings.partitions)
    if args.from_position < 0:
        raise ConfigurationError(f"--from {args.from_position} must not be negative")
    if args.parallel < 1:
        raise ConfigurationError(f"--parallel {args.parallel} must be at least 1")
    processes = default_processes(projector) if args.processes is None else args.processes
    if processes < 1:
        raise ConfigurationError(f"--processes {args.processes} must be at least 1")
    if args.aggregate is not None:
        return _replay_aggregate(settings, postgres, projector, args)
    store, views = open_store(settings), open_views(settings, "replay")
    try:
        version = rebuild(projector, views, store, from_position=args.from_position,
                          progress=_Progress(f"replay {projector.name}"), parallel=args.parallel,
                          processes=processes, opener=_ReplayOpener(settings, getattr(args, "app", None),
                                                                    projector.name))
    finally:
        views.close()
        store.close()
    print(f"\neventfold: {projector.name} version {version} is now active", file=sys.stderr)
    return 0


@dataclass(frozen=True)
class _ReplayOpener:
    """What a replay process opens (``framework.replay.ReplayOpener``): the same application,
    projector (with the same partition count) and databases as this command."""

    settings: Settings
    app: str | None
    name: str

    def __call__(self) -> tuple[Projector, Any, Any]:
        from framework.cli.startup import tune_collector_for_replay

        tune_collector_for_replay()  # as this command started: the replay process is a command's too
        app = application(self.settings, argparse.Namespace(app=self.app))
        (projector,) = select_projectors(app.build_projectors(), [self.name], self.settings.partitions)
        return projector, open_views(self.settings, "replay"), open_store(self.settings)


def _replay_aggregate(settings: Settings, postgres: PostgresSettings, projector: Projector,
                      args: argparse.Namespace) -> int:
    from framework.replay import rebuild_aggregate

    if args.from_position:
        raise ConfigurationError("--from and --aggregate do not combine: an aggregate's rows are rebuilt from its "
                                 "first event")
    reference = aggregate_reference(args.aggregate)  # TYPE among the aggregates the application imported
    store, views = open_store(settings), open_views(settings, "replay")
    try:
        if not store.read_stream_with_positions(reference.aggregate_id)[:1]:
            raise ConfigurationError(f"there are no events of {reference.words}")
        done = rebuild_aggregate(projector, views, store, reference.aggregate_id,
                                 progress=_Progress(f"replay {projector.name} --aggregate"))
    finally:
        views.close()
        store.close()
    print(f"\neventfold: {projector.name} version {done.version} is now active, with the rows of "
          f"{reference.words} rebuilt ({done.written} written, {done.deleted} deleted)", file=sys.stderr)
    return 0


def run_status(settings: Settings, args: argparse.Namespace) -> int:
    require_postgres(settings, "status")
    store, views = open_store(settings), open_views(settings, "status")
    try:
        rows = [status.as_dict() for status in projection_statuses(store, views)]
    finally:
        views.close()
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    columns = ["name", "version", "active", "state", "position", "head", "lag_events", "lag_seconds",
               "dead_letters", "outbox", "deadlines", "owner"]
    for row in rows:
        row.update(outbox=row["outbox_pending"], deadlines=row["deadlines_pending"], owner=row["owner"] or "-")
    widths = {c: max([len(c), *(len(str(row[c])) for row in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
        if row["error"]:
            print(f"  error: {row['error']}")
        for part in row["partitions"]:
            print(f"  partition {part['index']}/{part['count']}  position {part['position']}"
                  f"  lag {part['lag_events']}  owner {part['owner'] or '-'}")
    return 0


def run_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    views = open_views(settings, "dead-letters")
    try:
        if args.action == "list":
            for letter in views.dead_letters(args.target):
                print(f"{letter.id}\t{letter.projection}\t{letter.position}\t{letter.event_name}\t"
                      f"{letter.failed_at}\t{letter.error}")
            return 0
        letter_id = _letter_id(args.target)
        done = views.request_retry(letter_id) if args.action == "retry" else views.discard_dead_letter(letter_id)
        if not done:
            raise ConfigurationError(f"there is no dead letter {letter_id}")
        verb = "will be retried by its projection's worker" if args.action == "retry" else "was discarded"
        print(f"eventfold: dead letter {letter_id} {verb}")
        return 0
    finally:
        views.close()


def _letter_id(target: str | None) -> int:
    if target is None or not target.isdigit():
        raise ConfigurationError(f"give the dead letter's id (a number), not {target!r}")
    return int(target)
