"""The example application, declared once: ``eventfold dev --app example_app.app:app``.

The repository's scripts and tests name it explicitly (``EVENTFOLD_APP=example_app.app:app``);
the framework itself knows no application.
"""

from __future__ import annotations

from typing import Any

from example_app.demo import seed_demo
from example_app.handlers import router
from framework import App, CommandRouter
from projections import PROJECTORS

__all__ = ["app", "build_router"]


def build_router() -> CommandRouter:
    return router


def _graphql() -> Any:
    from projections.graphql import build_graphql  # Strawberry is imported by the roles that serve queries only

    return build_graphql()


app = App(
    name="corporate-actions",
    commands=router,
    projections=PROJECTORS,
    graphql=_graphql,
    seed=seed_demo,
)
