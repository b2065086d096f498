"""The example's GraphQL schema: cards, holdings, entitlements, notifications and projection status."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import asdict
from datetime import date
from enum import Enum

import strawberry
from strawberry.types import Info

from framework.graphql import (
    Connection,
    GraphQLSpec,
    Long,
    QueryContext,
    connection,
    filter_input,
    graphql_type,
    page_request,
    reads,
    requires,
    selects,
)
from framework.graphql.live import Batch, changed_rows, moved_positions
from framework.read import Condition, Sort, paginate
from framework.status import projection_statuses
from projections.cards import CorporateActionCard, SecurityRow
from projections.entitlements import EntitlementRow
from projections.holdings import Holding as HoldingRow
from projections.holdings import HoldingMovement
from projections.notifications import NotificationRow

__all__ = ["Query", "Subscription", "build_graphql"]

Security = graphql_type(SecurityRow, name="Security", description="A registered security.")
Entitlement = graphql_type(EntitlementRow, name="Entitlement",
                           description="What one account is due from one corporate action.")
Notification = graphql_type(NotificationRow, name="Notification", description="A message sent to a depositor.")
Holding = graphql_type(HoldingRow, name="Holding", description="Units of one security held in one account.")
CardFields = graphql_type(CorporateActionCard, name="CardFields")
CardWhere = filter_input(CorporateActionCard, name="CardWhere",
                         description="Cards whose columns meet every condition given (see the filter types).")


def _context(info: Info) -> QueryContext:
    context = info.context
    assert isinstance(context, QueryContext)
    return context


@strawberry.type(description="A corporate action as published on the public site.")
class Card(CardFields):
    @strawberry.field(description="The security the action is about (batched: one query per page).")
    @reads("cards")
    def security(self, info: Info) -> Security | None:
        # Read already (the page prefetched it): the object itself, no coroutine per card; else awaitable.
        return _context(info).row("cards", SecurityRow, (self.isin,), Security.from_row)

    @strawberry.field(description="Entitlements calculated for this action (batched across cards).")
    @reads("entitlements")
    async def entitlements(self, info: Info) -> list[Entitlement]:
        rows = await _context(info).rows_by("entitlements", EntitlementRow, "action_id").load(self.action_id)
        return [Entitlement.from_row(r) for r in rows]


@strawberry.enum(description="How to order cards; ties are broken by action id.")
class CardOrder(Enum):
    RECORD_DATE = "record_date"
    ANNOUNCED_AT = "announced_at"
    ACTION_ID = "action_id"


@strawberry.input(description="Cards matching every given field.")
class CardFilter:
    isin: str | None = None
    status: str | None = None
    record_date_from: date | None = None
    record_date_to: date | None = None

    def conditions(self) -> list[Condition]:
        conditions = []
        if self.isin is not None:
            conditions.append(Condition("isin", "eq", self.isin))
        if self.status is not None:
            conditions.append(Condition("status", "eq", self.status))
        if self.record_date_from is not None:
            conditions.append(Condition("record_date", "gte", self.record_date_from))
        if self.record_date_to is not None:
            conditions.append(Condition("record_date", "lte", self.record_date_to))
        return conditions


@strawberry.type(description="One partition of a partitioned projection.")
class PartitionStatus:
    index: int
    count: int
    owner: str | None = strawberry.field(description="The worker holding the partition's lease (host:pid:id).")
    position: int = strawberry.field(description="Every event of the partition up to here is applied.")
    lag_events: int = strawberry.field(description="Events stored after the partition's position.")


@strawberry.type(description="Where a projection stands.")
class ProjectionStatus:
    name: str
    version: int
    active: bool
    state: str
    position: Long
    head: Long
    lag_events: Long
    lag_seconds: float
    dead_letters: int
    error: str | None
    owner: str | None = strawberry.field(
        description="The worker holding the projection's lease (host:pid:id); the workers holding any of a"
                    " partitioned projection's partitions, comma-separated.")
    outbox_pending: int = strawberry.field(description="Commands a process manager issued, not yet executed.")
    outbox_oldest_seconds: float = strawberry.field(description="How long the oldest of them has waited.")
    deadlines_pending: int = strawberry.field(description="Deadlines a process manager is waiting for.")
    partitions: list[PartitionStatus] = strawberry.field(
        description="A partitioned projection's partitions; its position is the lowest of theirs.")


@strawberry.type(description="Read models of the depository back office. Commands go to the write API.")
class Query:
    @strawberry.field(description="One corporate action's card.")
    @reads("cards")
    async def card(self, info: Info, action_id: str) -> Card | None:
        row = await _context(info).loader("cards", CorporateActionCard).load((action_id,))
        return Card.from_row(row) if row else None

    @strawberry.field(description="Cards, filtered and ordered, a page at a time (Relay connection). `filter` "
                                  "and `where` may be given together: a card meets both.")
    @reads("cards")
    async def cards(
        self, info: Info, filter: CardFilter | None = None, order_by: CardOrder = CardOrder.RECORD_DATE,
        descending: bool = False, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None, where: CardWhere | None = None,
    ) -> Connection[Card]:
        context = _context(info)
        conditions = [*(filter.conditions() if filter else []), *(where.conditions() if where else [])]
        page = await context.read(paginate, context.views, "cards", CorporateActionCard,
                                  page_request(first, after, last, before), conditions,
                                  Sort(order_by.value, descending))
        if selects(info, "edges.node.security", "nodes.security"):  # the page's securities in one read
            await context.prefetch("cards", SecurityRow, [(row.isin,) for row in page.rows])
        return connection(page, Card.from_row)

    @strawberry.field(description="One security by ISIN.")
    @reads("cards")
    async def security(self, info: Info, isin: str) -> Security | None:
        row = await _context(info).loader("cards", SecurityRow).load((isin,))
        return Security.from_row(row) if row else None

    @strawberry.field(description="What an account holds now, or at the end of the day `asOf`.")
    @reads("holdings")
    async def holdings(self, info: Info, account_number: str, as_of: date | None = None) -> list[Holding]:
        context = _context(info)
        if as_of is None:
            rows = await context.read(context.views.query, "holdings", HoldingRow,
                                      [Condition("account_number", "eq", account_number)])
            return [Holding.from_row(r) for r in rows]
        movements = await context.read(
            context.views.query, "holdings", HoldingMovement,
            [Condition("account_number", "eq", account_number), Condition("value_date", "lte", as_of)],
            Sort("position"),
        )
        balances = {m.isin: m.balance for m in movements}  # the last movement of each wins
        return [Holding(account_number=account_number, isin=isin, quantity=quantity)
                for isin, quantity in sorted(balances.items()) if quantity]

    @strawberry.field(description="A depositor's entitlements, newest record date first.")
    @reads("entitlements")
    async def entitlements(
        self, info: Info, account_number: str, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None,
    ) -> Connection[Entitlement]:
        context = _context(info)
        page = await context.read(paginate, context.views, "entitlements", EntitlementRow,
                                  page_request(first, after, last, before),
                                  [Condition("account_number", "eq", account_number)],
                                  Sort("record_date", descending=True))
        return connection(page, Entitlement.from_row)

    @strawberry.field(description="Notifications sent to a depositor, newest first.")
    @reads("notifications")
    async def notifications(
        self, info: Info, account_number: str, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None,
    ) -> Connection[Notification]:
        context = _context(info)
        page = await context.read(paginate, context.views, "notifications", NotificationRow,
                                  page_request(first, after, last, before),
                                  [Condition("account_number", "eq", account_number)],
                                  Sort("notified_at", descending=True))
        return connection(page, Notification.from_row)

    @strawberry.field(description="Position, lag and state of every projection (for operators; role `ops`).",
                      permission_classes=[requires("ops")])
    async def projections(self, info: Info) -> list[ProjectionStatus]:
        context = _context(info)
        if context.store is None:
            return []
        statuses = await context.read(projection_statuses, context.store, context.views)
        return [ProjectionStatus(**{**s.as_dict(), "partitions": [PartitionStatus(**asdict(p)) for p in s.partitions]})
                for s in statuses]


@strawberry.type(description="A card as of `position`, the position of the event that last changed it.")
class CardUpdate:
    position: int
    card: Card


@strawberry.type(description="A notification, sent by the event at `position`.")
class NotificationUpdate:
    position: int
    notification: Notification


@strawberry.type(description="A projection's position and how far it trails the event store's head.")
class LagUpdate:
    projection: str
    position: int
    head: int
    lag_events: int


@strawberry.type(description="Live queries over WebSocket (graphql-transport-ws). Each update carries the "
                             "position it reflects: resubscribe with `since` set to the last one to miss nothing.")
class Subscription:
    @strawberry.subscription(description="A corporate action's card as it moves through its states: first as it "
                                         "is (if changed after `since`), then at each change.")
    async def card(self, info: Info, action_id: str, since: int = 0) -> AsyncGenerator[CardUpdate, None]:
        views = _context(info).views

        def read(after: int) -> list[CorporateActionCard]:
            return views.query("cards", CorporateActionCard,
                               [Condition("action_id", "eq", action_id), Condition("position", "gt", after)])

        def read_many(action_ids: list[str], after: int) -> list[CorporateActionCard]:
            return views.query("cards", CorporateActionCard,
                               [Condition("action_id", "in", action_ids), Condition("position", "gt", after)])

        rows_of = (CorporateActionCard, "action_id", action_id)  # woken only by changes of this card
        batch = Batch("card", read_many, _action_id_of)  # the cards one commit changed: one read for all
        async for row in changed_rows(info, "cards", since, read, rows_of=rows_of, share=("card", action_id),
                                      batch=batch):
            yield CardUpdate(position=row.position, card=Card.from_row(row))

    @strawberry.subscription(description="A depositor's notifications sent after `since` (none given: from now), "
                                         "then each new one, in order.")
    async def notifications(self, info: Info, account_number: str, since: int | None = None
                            ) -> AsyncGenerator[NotificationUpdate, None]:
        views = _context(info).views

        def read(after: int) -> list[NotificationRow]:
            return views.query("notifications", NotificationRow,
                               [Condition("account_number", "eq", account_number), Condition("position", "gt", after)],
                               Sort("position"), limit=500)

        async for row in changed_rows(info, "notifications", since, read, page_size=500,
                                      rows_of=(NotificationRow, "account_number", account_number),
                                      share=("notifications", account_number)):
            yield NotificationUpdate(position=row.position, notification=Notification.from_row(row))

    @strawberry.subscription(description="A projection's position and lag, each time it moves (role `ops`).",
                             permission_classes=[requires("ops")])
    async def projection_lag(self, info: Info, name: str, since: int | None = None
                             ) -> AsyncGenerator[LagUpdate, None]:
        context = _context(info)
        async for positions in moved_positions(info, [name], since):
            head = await context.watch.current_head(max_age=0.25) if context.watch else None
            position = positions[name]
            head = position if head is None else max(head, position)
            yield LagUpdate(projection=name, position=position, head=head, lag_events=head - position)


def _action_id_of(card: CorporateActionCard) -> str:
    return card.action_id


def build_graphql() -> GraphQLSpec:
    """The example's schema: its ``App`` (``example_app/app.py``) names this function. Its fields declare
    the projections they read (``@reads``): read-your-writes waits for those."""
    return GraphQLSpec(Query, subscription=Subscription)
