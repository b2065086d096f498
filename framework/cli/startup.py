"""What a CLI process sets for itself when it starts: process-wide settings belong to the process's
owner (the command line), never to a library call made inside it."""

from __future__ import annotations

import gc

__all__ = [
    "CATCH_UP_COMMANDS",
    "SERVING_COMMANDS",
    "freeze_start_up_objects",
    "tune_collector_for_catch_up",
    "tune_collector_for_replay",
    "tune_collector_for_serving",
]

CATCH_UP_COMMANDS = frozenset({"project", "replay"})  # the roles that apply stored events in bulk
SERVING_COMMANDS = frozenset({"query-api"})  # the roles holding many live subscriptions in one process
REPLAY_YOUNGEST = 200_000  # the youngest generation's threshold while replaying
SERVING_YOUNGEST = 10_000  # the youngest generation's threshold while serving (Python's default: 700)


def tune_collector_for_catch_up() -> None:
    """Bulk catch-up allocates many short-lived rows beside long-lived cached ones (the row cache),
    and the cyclic collector would walk the cached ones over and over: freeze what start-up
    allocated and collect the youngest generation less often. Measured with
    ``benchmarks/streaming.py --only replay --replay-variants defaultgc``: the replaying process
    spends about 40% less CPU per event than with the default thresholds."""
    gc.freeze()
    youngest, *older = gc.get_threshold()
    gc.set_threshold(max(youngest, 50_000), *older)


def tune_collector_for_replay() -> None:
    """``eventfold replay`` and its replay processes: as ``tune_collector_for_catch_up``, with the youngest
    generation collected every 200,000 allocations. A replay is a bounded bulk run whose objects die by
    reference counting; each young collection still walks everything allocated since the last one, and
    the survivors of a whole catch-up batch (its staged rows, 10,000 events' worth) are promoted and walked
    again. Measured (in-process rebuild of 200,000 events, same run, alternating): about 1-2 us less CPU per
    event than at 50,000, with the same peak RSS. Only for the replay: a live ``project`` worker keeps the
    catch-up setting (it runs for ever, beside whatever else its process holds)."""
    tune_collector_for_catch_up()
    youngest, *older = gc.get_threshold()
    gc.set_threshold(max(youngest, REPLAY_YOUNGEST), *older)


def tune_collector_for_serving() -> None:
    """A query API with many open subscriptions keeps a large heap (~400,000 objects at 1,000 of them).
    Python starts a full collection once the objects that survived two young collections reach a quarter
    of the heap; at the default threshold (700) a young collection runs while the objects of updates in
    flight are still alive, so they survive, and full collections came every few seconds (8-9 per run
    of ``benchmarks/graphql.py --only subs``), each holding the event loop 0.3-0.9 s (200-300 ms of
    CPU on a loaded 2-core machine): every subscriber's update waited. Collecting the youngest
    generation every 10,000 allocations lets those objects die first: 1 full collection per run, young
    collections ~4 ms of CPU (median). It complements the freeze of start-up objects every serving role
    makes (``freeze_start_up_objects``): that makes a full pass smaller, this
    makes full passes rare; the subscriptions' own heap, made after start-up, is never frozen."""
    youngest, *older = gc.get_threshold()
    gc.set_threshold(max(youngest, SERVING_YOUNGEST), *older)


def freeze_start_up_objects() -> None:
    """What a serving process made to start (modules, the app, its models: tens of thousands of objects)
    lives as long as the process: ``gc.freeze`` takes it out of the collector's passes, so that a full
    pass scans what requests made instead of everything (measured on the write API: 30-35 ms of CPU
    per full pass, a pause every request in flight waits out). The process owns this setting: the CLI
    sets it, the library never does. Collected first, so that no start-up garbage is kept for good."""
    gc.collect()
    gc.freeze()
