"""Entry point the CLI loads (``EVENTFOLD_APP=example_app.app:build_router``)."""

from __future__ import annotations

from example_app.handlers import router
from framework import CommandRouter


def build_router() -> CommandRouter:
    return router
