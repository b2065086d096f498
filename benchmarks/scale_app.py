"""The application of ``partitions.py``: the example's commands and projections ``scale_1``, ``scale_2`` and
``scale_4``, each partitioned (``EFBENCH_PARTITIONS``, default 8), whose handler keeps one row per account
and waits ``EFBENCH_IO_MS`` (default 20) per 100 events it handles: an I/O-bound read model."""

from __future__ import annotations

import os
import time
from typing import ClassVar
from uuid import UUID

from example_app.accounts import AccountOpened, SecuritiesCredited, SecuritiesDebited
from example_app.app import build_router
from framework import App
from framework.events import Event
from framework.read import HandlerContext, Projector, ReadModel, on

PARTITIONS = int(os.environ.get("EFBENCH_PARTITIONS", "8"))
IO_SECONDS = float(os.environ.get("EFBENCH_IO_MS", "20")) / 1000


class Touched(ReadModel):
    table = "touched"
    key = ("aggregate_id",)

    aggregate_id: UUID
    events: int


class _Scale(Projector):
    read_models = (Touched,)
    partitions = PARTITIONS
    handled = 0

    def _touch(self, context: HandlerContext) -> None:
        seen = context.views.get(Touched, context.envelope.aggregate_id)
        context.views.put(Touched(aggregate_id=context.envelope.aggregate_id, events=(seen.events if seen else 0) + 1))
        type(self).handled += 1
        if type(self).handled % 100 == 0:
            time.sleep(IO_SECONDS)  # the read model's I/O, per 100 events

    @on(AccountOpened)
    def opened(self, event: Event, context: HandlerContext) -> None:
        self._touch(context)

    @on(SecuritiesCredited)
    def credited(self, event: Event, context: HandlerContext) -> None:
        self._touch(context)

    @on(SecuritiesDebited)
    def debited(self, event: Event, context: HandlerContext) -> None:
        self._touch(context)


class Scale1(_Scale):
    name: ClassVar[str] = "scale_1"


class Scale2(_Scale):
    name: ClassVar[str] = "scale_2"


class Scale4(_Scale):
    name: ClassVar[str] = "scale_4"


app = App(name="scale", commands=build_router(), projections=[Scale1, Scale2, Scale4])
