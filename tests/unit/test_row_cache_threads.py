"""The row cache answers lookups without its lock while it is at most half full. Another thread may be
storing and evicting meanwhile (the partitions of one process share the cache): a lookup must never answer
"no such row" (found, None) for a row that exists, whatever the interleaving."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from framework.readmodel import ReadModel
from framework.staging import RowCache


class Cell(ReadModel):
    table = "cells"
    key = ("name",)

    name: str
    value: int


class Sneaky:
    """A key part whose hashing runs ``hook`` once: the moment another thread could run in the middle of
    a lookup (hashing a key runs Python code, where the interpreter may switch threads)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hook: Callable[[], None] = lambda: None

    def __hash__(self) -> int:
        hook, self.hook = self.hook, lambda: None
        hook()
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sneaky) and other.name == self.name


def test_a_row_evicted_in_the_middle_of_its_lookup_is_never_answered_as_absent() -> None:
    for filled in (1, 2, 3, 4):  # the cache at most half full when the lookup starts (lock-free), and above
        cache = RowCache(maxsize=8, complete=[Cell])
        evicted = threading.Event()

        def evict_everything(cache: RowCache = cache, evicted: threading.Event = evicted) -> None:
            # what another thread's stores do: the oldest rows go
            for i in range(20):
                cache.store((Cell, (f"new-{i}",)), Cell(name=f"new-{i}", value=i))
            evicted.set()

        target = Sneaky("target")
        key = (Cell, (target,))
        cache.store(key, Cell(name="target", value=1))
        for i in range(filled - 1):
            cache.store((Cell, (f"old-{i}",)), Cell(name=f"old-{i}", value=i))
        target.hook = evict_everything
        found, row = cache.lookup(key)
        assert evicted.is_set()
        assert (found, row) in [(True, Cell(name="target", value=1)), (False, None)], (filled, found, row)


@contextmanager
def _switching_often() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def test_lookups_hammered_while_another_thread_stores_evicts_and_clears() -> None:
    """Each round: a fresh cache of a fresh table, a writer storing rows one by one and in batches (so
    past half full and past full: evictions), now and then clearing it; readers look up rows already
    stored. Every answer is the row, or "not known" (False, None): never "no such row"."""
    wrong: list[Any] = []
    with _switching_often():
        for round_ in range(40):
            cache = RowCache(maxsize=32, complete=[Cell])
            stored: list[tuple[type[ReadModel], tuple[Any, ...]]] = []
            done = threading.Event()
            rng = random.Random(round_)

            def write(cache: RowCache = cache, stored: list[Any] = stored, done: threading.Event = done,
                      rng: random.Random = rng) -> None:
                for i in range(400):
                    key = (Cell, (f"r{i}",))
                    if i % 50 == 49:
                        cache.publish({(Cell, (f"b{i}-{j}",)): Cell(name=f"b{i}-{j}", value=j) for j in range(40)})
                    cache.store(key, Cell(name=f"r{i}", value=i))
                    stored.append(key)
                    if rng.random() < 0.01:
                        cache.clear()
                done.set()

            def read(cache: RowCache = cache, stored: list[Any] = stored, done: threading.Event = done) -> None:
                while not done.is_set():
                    for key in stored[-40:]:
                        found, row = cache.lookup(key)
                        if found and (row is None or row.name != key[1][0]):
                            wrong.append((key, found, row))
            cache.read.add(Cell)
            threads = [threading.Thread(target=write), threading.Thread(target=read), threading.Thread(target=read)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
    assert not wrong, wrong[:5]
