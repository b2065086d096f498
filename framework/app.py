"""The application object: everything an application is made of, declared once.

Every role finds it by one reference (``--app package.module:app``, ``EVENTFOLD_APP``, or
``[tool.eventfold] app`` in the project's ``pyproject.toml``), the way uvicorn finds an ASGI app::

    app = App(
        commands=router,
        projections=[ProductsProjector, ReservationSaga],
        graphql=build_graphql,  # called only by the roles that answer queries
        seed=seed,              # what `eventfold dev --seed` runs
    )
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from framework.bus import CommandBus, CommandContext, Executed
from framework.commands import Command, CommandRouter
from framework.errors import ConfigurationError
from framework.projector import Projector

__all__ = ["App", "Seeding"]


@dataclass(frozen=True)
class Seeding:
    """What an application's seed function gets from ``eventfold dev --seed``."""

    bus: CommandBus
    base_url: str  # where the embedded server answers, for the examples a seed may print

    def execute(self, command: Command, *, key: str) -> Executed:
        """Run ``command`` under the idempotency ``key``: seeding twice changes nothing."""
        context = CommandContext(idempotency_key=key, correlation_id="seed", actor="seed")
        return self.bus.execute(command, context)


@dataclass(frozen=True)
class App:
    """An application: its command router, read side, GraphQL schema and demo data.

    ``projections`` holds factories (a ``Projector`` subclass is one): each process builds its own
    instances, because projectors keep caches. ``graphql`` returns the application's
    ``GraphQLSpec``; it is called only by ``query-api`` and ``dev``, so a write-side process need not
    import Strawberry. ``seed`` takes a ``Seeding`` and returns nothing.
    """

    commands: CommandRouter
    projections: Sequence[Callable[[], Projector]] = ()
    graphql: Callable[[], Any] | None = None  # returns a framework.graphql.GraphQLSpec (an adapter type)
    seed: Callable[[Seeding], Any] | None = None
    name: str = field(default="app")

    def __post_init__(self) -> None:
        if not isinstance(self.commands, CommandRouter):
            raise ConfigurationError(f"App(commands=...) must be a CommandRouter, not {type(self.commands).__name__}")
        if isinstance(self.projections, (str, bytes)) or not all(callable(p) for p in self.projections):
            raise ConfigurationError("App(projections=...) must list projector classes or functions returning one")

    def build_projectors(self) -> list[Projector]:
        """Fresh projector instances, checked and with unique names."""
        projectors = [factory() for factory in self.projections]
        for built in projectors:
            if not isinstance(built, Projector):
                raise ConfigurationError(f"App(projections=...) gave {type(built).__name__}, not a Projector")
        names = [p.name for p in projectors]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigurationError(f"two projections are named {repeated[0]!r}; names must be unique")
        return projectors

    def build_graphql(self) -> Any:
        """The application's GraphQL schema (the serving role checks its type); one line when it has none."""
        if self.graphql is None:
            raise ConfigurationError(f"application {self.name!r} declares no GraphQL schema (App(graphql=...))")
        return self.graphql()
