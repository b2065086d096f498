"""The read side in one module: projections, process managers, read models and their queries.

    from framework.read import Condition, HandlerContext, ProcessManager, Projector, ReadModel, on

The write side is ``framework``; GraphQL helpers are ``framework.graphql``; test helpers
``framework.testing``.
"""

from framework.dispatcher import Dispatcher
from framework.projector import Deadline, HandlerContext, IssuedCommand, ProcessManager, Projector, Refusal, on
from framework.query import Condition, InvalidQuery, Page, PageRequest, Sort, paginate
from framework.readmodel import ReadModel
from framework.replay import rebuild, rebuild_aggregate
from framework.worker import ProjectionWorker

__all__ = [
    "Condition",
    "Deadline",
    "Dispatcher",
    "HandlerContext",
    "InvalidQuery",
    "IssuedCommand",
    "Page",
    "PageRequest",
    "ProcessManager",
    "ProjectionWorker",
    "Projector",
    "ReadModel",
    "Refusal",
    "Sort",
    "on",
    "paginate",
    "rebuild",
    "rebuild_aggregate",
]
