"""Position signals from PostgreSQL: ``LISTEN`` on the schema's channel, which every projection
commit ``NOTIFY``s in its own transaction (``framework.adapters.postgres_views``).

One connection per process, outside the pool; after the connection is lost (PostgreSQL restarted) it
connects again, with a growing pause, and tells the watch to read positions again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg import sql

from framework.adapters.postgres_views import parse_notice, position_channel
from framework.positions import Deliver
from framework.settings import PostgresSettings

__all__ = ["PostgresPositionSignals"]

log = logging.getLogger(__name__)


class PostgresPositionSignals:
    """``PositionSignals`` for ``PostgresViewStore`` on the same database and schema."""

    def __init__(self, settings: PostgresSettings, *, check_seconds: float = 1.0, max_pause: float = 2.0) -> None:
        self._settings, self.channel = settings, position_channel(settings.schema)
        self._check_seconds, self._max_pause = check_seconds, max_pause

    async def listen(self, deliver: Deliver, stop: asyncio.Event) -> None:
        pause = 0.05
        while not stop.is_set():
            try:
                await self._session(deliver, stop)
                pause = 0.05
            except psycopg.Error as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                log.warning("listening for projection positions failed (%s); reconnecting", first)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                pause = min(self._max_pause, pause * 2)

    async def _session(self, deliver: Deliver, stop: asyncio.Event) -> None:
        s = self._settings
        conn = await psycopg.AsyncConnection.connect(
            host=s.host, port=s.port, dbname=s.dbname, user=s.user, password=s.password, autocommit=True,
            connect_timeout=max(1, round(s.connect_timeout)), application_name="eventfold-positions")
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            deliver(None)  # what committed before LISTEN was not heard
            while not stop.is_set():
                async for notice in conn.notifies(timeout=self._check_seconds):
                    change = parse_notice(notice.payload)
                    if change is not None:
                        deliver(change)
                    if stop.is_set():
                        break
                await conn.execute("SELECT 1")  # a dead connection shows here, not in a quiet notifies()
