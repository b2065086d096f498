"""Pages of the event log shared by the partitions of one projection that catch up side by side."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator

from framework.store import EventLog, Notification

Split = Callable[[list[Notification]], dict[int, list[Notification]]]
"""A page's events by partition (the partitions' own events, of the kinds they handle)."""

__all__ = ["SharedPages"]


class SharedPages:
    """The event log as several partitions of one projection read it while they catch up: each reads
    the same pages (``read_all(after, limit)`` with the same arguments, since every partition moves past
    every event of a page), so a page is read from the store once and kept until ``readers`` partitions
    have had it, or until ``keep`` newer pages push it out (a partition far behind, or one that started
    elsewhere, reads from the store itself). Only a full page is kept: its events can no longer change,
    so a kept page is exactly what the store would answer now. The last, partial, page of the log is
    read by each partition itself (the log may have grown since).

    ``readers=None``: the partitions a worker process applies, which start and stop catching up at
    any time: a page is kept for as many as are catching up (``catching_up``) when it is read, and
    nothing is kept once none is."""

    def __init__(self, store: EventLog, *, readers: int | None = None, keep: int = 8) -> None:
        self._store, self._readers, self._keep = store, readers, keep
        self._pages: OrderedDict[tuple[int, int], _Page] = OrderedDict()
        self._lock = threading.Lock()
        self._catching_up = 0

    @contextlib.contextmanager
    def catching_up(self) -> Iterator[None]:
        """Around one partition's catch-up (with ``readers=None``)."""
        with self._lock:
            self._catching_up += 1
        try:
            yield
        finally:
            with self._lock:
                self._catching_up -= 1
                if not self._catching_up:
                    self._pages.clear()

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        return self._read(after_position, limit).take()

    def read_split(self, after_position: int, limit: int, key: Hashable, split: Split,
                   ) -> tuple[list[Notification], dict[int, list[Notification]]]:
        """The page, and its events by partition: ``split`` runs once per page for the partitions that
        give the same ``key`` (one projection, one partition count), not once per partition."""
        page = self._read(after_position, limit)
        return page.take(), page.split(key, split)

    def _read(self, after_position: int, limit: int) -> _Page:
        key = (after_position, limit)
        with self._lock:
            page = self._pages.get(key)
            if page is None:
                page = self._pages[key] = _Page()
                while len(self._pages) > self._keep:
                    self._pages.popitem(last=False)
                first = True
            else:
                first = False
        if first:
            try:
                page.fill(self._store.read_all, after_position, limit)
            except BaseException:
                with self._lock:  # not kept: whoever asks again reads again
                    if self._pages.get(key) is page:
                        del self._pages[key]
                raise
        rows = page.take()
        with self._lock:
            page.readers += 1
            readers = self._readers if self._readers is not None else self._catching_up
            if (page.readers >= readers or len(rows) < limit) and self._pages.get(key) is page:
                del self._pages[key]
        return page

    def head(self) -> int:
        return self._store.head()


class _Page:
    """One page being read (by the first partition to ask) or read: the others wait for it."""

    def __init__(self) -> None:
        self.readers = 0
        self._done = threading.Event()
        self._rows: list[Notification] = []
        self._error: BaseException | None = None
        self._splits: dict[Hashable, dict[int, list[Notification]]] = {}
        self._splitting = threading.Lock()

    def fill(self, read: Callable[[int, int], list[Notification]], after: int, limit: int) -> None:
        try:
            self._rows = read(after, limit)
        except BaseException as error:
            self._error = error
            raise
        finally:
            self._done.set()

    def take(self) -> list[Notification]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._rows

    def split(self, key: Hashable, split: Split) -> dict[int, list[Notification]]:
        with self._splitting:  # the first partition to ask splits it; the others wait for that
            parts = self._splits.get(key)
            if parts is None:
                parts = self._splits[key] = split(self._rows)
            return parts
