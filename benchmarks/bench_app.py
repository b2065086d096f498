"""The example application plus a public twin of its internal ``NotifyDepositor``.

``NotifyDepositor`` is internal: only the corporate-action process sends it, and the write API has no
route for it. ``process_manager.py`` measures the write API sending that very command (same fields,
handler and aggregate, with and without an ``Idempotency-Key``) beside the process, so its write API
serves this application (``EVENTFOLD_APP=benchmarks.bench_app:app``), whose router also routes the twin.
"""

from __future__ import annotations

from example_app.app import app as example
from example_app.commands import NotifyDepositor
from example_app.handlers import notify_depositor
from framework import UnknownCommand

__all__ = ["NotifyDepositorOverHttp", "app"]


class NotifyDepositorOverHttp(NotifyDepositor, internal=False):
    """``NotifyDepositor`` with a route: ``POST /commands/NotifyDepositorOverHttp``."""


try:
    example.commands.command_type(NotifyDepositorOverHttp.command_name)
except UnknownCommand:  # only in the process that serves this application
    example.commands.route(NotifyDepositorOverHttp, notify_depositor)

app = example
