"""The example domain's read side: read models, projectors and the corporate-action process.

``PROJECTORS`` is what the example's ``App`` lists (``example_app/app.py``); ``build_projectors``
builds one of each, for tests that run workers in process.
"""

from __future__ import annotations

from framework.read import Projector
from projections.cards import CardsProjector
from projections.entitlements import EntitlementsProjector
from projections.holdings import HoldingsProjector
from projections.notifications import NotificationsProjector
from projections.process import CorporateActionProcess

__all__ = [
    "PROJECTORS",
    "CardsProjector",
    "CorporateActionProcess",
    "EntitlementsProjector",
    "HoldingsProjector",
    "NotificationsProjector",
    "build_projectors",
]


PROJECTORS: tuple[type[Projector], ...] = (
    HoldingsProjector,
    CardsProjector,
    EntitlementsProjector,
    NotificationsProjector,
    CorporateActionProcess,
)


def build_projectors() -> list[Projector]:
    return [projector() for projector in PROJECTORS]
