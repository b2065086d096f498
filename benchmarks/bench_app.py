"""The example's command router plus a public twin of its internal ``NotifyDepositor``.

``NotifyDepositor`` is internal: only the corporate-action process sends it, and the write API has no
route for it. ``process_manager.py`` measures the write API sending that very command (same fields,
handler and aggregate, with and without an ``Idempotency-Key``) beside the process, so its write API
serves this router (``EVENTFOLD_APP=bench_app:build_router``), where the twin has a route.
"""

from __future__ import annotations

from example_app.commands import NotifyDepositor
from example_app.handlers import notify_depositor
from example_app.handlers import router as example_router
from framework import CommandRouter, UnknownCommand

__all__ = ["NotifyDepositorOverHttp", "build_router"]


class NotifyDepositorOverHttp(NotifyDepositor, internal=False):
    """``NotifyDepositor`` with a route: ``POST /commands/NotifyDepositorOverHttp``."""


def build_router() -> CommandRouter:
    try:
        example_router.command_type(NotifyDepositorOverHttp.command_name)
    except UnknownCommand:
        example_router.route(NotifyDepositorOverHttp, notify_depositor)
    return example_router
