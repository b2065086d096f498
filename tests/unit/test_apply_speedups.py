"""A worker that starts a projection from scratch lets a view store with a row cache start that
cache from the empty tables (so "no such row" needs no query, as in a rebuild); a worker that
resumes, or a view store without a row cache, is left as it was. What is projected is the same."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from example_app.accounts import AccountOpened, SecuritiesCredited, SecuritiesDebited
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.events import Event, EventEnvelope, EventMetadata
from framework.mapper import to_stored
from framework.readmodel import ReadModel
from framework.store import Notification
from framework.views import RowCaching
from framework.worker import ProjectionWorker
from projections.holdings import AccountRow, Holding, HoldingMovement, HoldingsProjector

ACCOUNT = UUID("4a4c5f0c-5b1b-4c0d-9d55-7f6c0b1e2a33")


class CachingViews(MemoryViewStore):
    """A memory view store that records what a view store with a row cache (``RowCaching``) is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.cached_empty: list[tuple[str, int, tuple[type[ReadModel], ...]]] = []
        self.forgotten: list[tuple[str, int]] = []

    def cache_empty_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        self.cached_empty.append((name, version, tuple(models)))

    def forget_cached(self, name: str, version: int) -> None:
        self.forgotten.append((name, version))


def test_the_row_cache_is_an_optional_port_the_memory_store_does_not_have() -> None:
    assert isinstance(CachingViews(), RowCaching)
    assert not isinstance(MemoryViewStore(), RowCaching)


def _notifications(events: Sequence[Event], first: int = 1) -> list[Notification]:
    out = []
    for i, event in enumerate(events):
        stored = to_stored(EventEnvelope("Account", ACCOUNT, first + i, event, EventMetadata()))
        out.append(Notification(stored.originator_id, stored.originator_version, stored.topic, stored.state,
                                first + i))
    return out


EVENTS: list[Event] = [
    AccountOpened(account_number="A-1", holder_name="Ada"),
    SecuritiesCredited(isin="XS0000000001", quantity=10),
    SecuritiesCredited(isin="XS0000000002", quantity=4),
    SecuritiesDebited(isin="XS0000000001", quantity=10),
    SecuritiesCredited(isin="XS0000000001", quantity=3),
]


def _rows(views: MemoryViewStore) -> dict[type[ReadModel], list[ReadModel]]:
    return {model: views.query("holdings", model) for model in (AccountRow, Holding, HoldingMovement)}


def test_a_worker_starting_from_scratch_starts_the_row_cache_from_the_empty_tables() -> None:
    views = CachingViews()
    ProjectionWorker(HoldingsProjector(), views, MemoryEventStore())
    assert views.cached_empty == [("holdings", 1, HoldingsProjector.read_models)]


def test_a_worker_that_resumes_leaves_the_row_cache_alone() -> None:
    views = CachingViews()
    worker = ProjectionWorker(HoldingsProjector(), views, MemoryEventStore())
    worker.apply(_notifications(EVENTS[:2]))
    views.cached_empty.clear()
    resumed = ProjectionWorker(HoldingsProjector(), views, MemoryEventStore())
    assert resumed.position == 2
    assert views.cached_empty == []


def test_what_is_projected_does_not_depend_on_the_row_cache() -> None:
    plain, caching = MemoryViewStore(), CachingViews()  # MemoryViewStore has no row cache
    notifications = _notifications(EVENTS)
    for views in (plain, caching):
        worker = ProjectionWorker(HoldingsProjector(), views, MemoryEventStore())
        worker.apply(notifications[:3])
        worker.apply(notifications)  # a redelivery with more: the first three are not applied twice
        assert worker.position == len(EVENTS)
    assert _rows(plain) == _rows(caching)
    assert [(h.isin, h.quantity) for h in _rows(plain)[Holding]] == [  # type: ignore[attr-defined]
        ("XS0000000001", 3), ("XS0000000002", 4)]
    assert len(_rows(plain)[HoldingMovement]) == len(EVENTS) - 1
