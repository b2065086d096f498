"""The example application plus an ``audit`` projection that parks events while its archive is "down".

For the console's browser tests: while the file named by ``CONSOLE_TEST_ARCHIVE_DOWN`` exists, the
audit handler fails and its event becomes a dead letter (``on_error = "park"``); once the file is
removed, retrying the letter applies it — what an operator does after fixing the cause.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from example_app.app import app as example
from example_app.corporate_actions import CorporateActionRejected
from framework.read import HandlerContext, Projector, ReadModel, on

__all__ = ["AuditProjector", "AuditRow", "app"]


class AuditRow(ReadModel):
    table = "audit"
    key = ("action_id",)

    action_id: str
    event: str


class AuditProjector(Projector):
    name = "audit"
    read_models = (AuditRow,)
    on_error = "park"

    @on(CorporateActionRejected)
    def rejected(self, event: CorporateActionRejected, context: HandlerContext) -> None:
        marker = os.environ.get("CONSOLE_TEST_ARCHIVE_DOWN", "")
        if marker and Path(marker).exists():
            raise RuntimeError("the audit archive is unreachable")
        context.views.put(AuditRow(action_id=event.action_id, event="CorporateActionRejected"))


app = replace(example, projections=(*example.projections, AuditProjector), name="console-test")
