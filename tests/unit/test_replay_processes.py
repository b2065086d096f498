"""How ``eventfold replay`` reads its pool of processes breaking under it."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from typing import Any, cast

import pytest

from framework import replay


class _Pool:
    """A pool whose second submit fails as CPython's does when a process died while it spawned the next."""

    def __init__(self, broken: bool) -> None:
        self._broken, self.submitted = broken, 0

    def submit(self, *_: Any) -> object:
        self.submitted += 1
        if self.submitted == 2:
            raise OSError("handle is closed")
        return object()


def test_a_pool_broken_while_it_spawns_is_a_broken_pool_not_an_os_error() -> None:
    with pytest.raises(BrokenProcessPool, match="ended while the next one was started"):
        replay._submitted(cast(Any, _Pool(broken=True)), [(), ()])


def test_an_os_error_of_a_pool_that_is_not_broken_is_its_own() -> None:
    with pytest.raises(OSError, match="handle is closed"):
        replay._submitted(cast(Any, _Pool(broken=False)), [(), ()])
