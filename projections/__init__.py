"""The example domain's read side: read models, projectors and the corporate-action process.

``build_projectors`` is what the CLI loads (``EVENTFOLD_PROJECTIONS=projections:build_projectors``).
"""

from __future__ import annotations

from framework.projector import Projector
from projections.cards import CardsProjector
from projections.entitlements import EntitlementsProjector
from projections.holdings import HoldingsProjector
from projections.notifications import NotificationsProjector
from projections.process import CorporateActionProcess

__all__ = [
    "CardsProjector",
    "CorporateActionProcess",
    "EntitlementsProjector",
    "HoldingsProjector",
    "NotificationsProjector",
    "build_projectors",
]


def build_projectors() -> list[Projector]:
    return [
        HoldingsProjector(),
        CardsProjector(),
        EntitlementsProjector(),
        NotificationsProjector(),
        CorporateActionProcess(),
    ]
