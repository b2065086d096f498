"""Pages of the event log shared by the partitions of one projection that catch up side by side."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

from framework.store import EventLog, Notification

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
        return rows

    def head(self) -> int:
        return self._store.head()


class _Page:
    """One page being read (by the first partition to ask) or read: the others wait for it."""

    def __init__(self) -> None:
        self.readers = 0
        self._done = threading.Event()
        self._rows: list[Notification] = []
        self._error: BaseException | None = None

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
