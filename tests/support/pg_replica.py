"""A private PostgreSQL primary with a hot standby streaming from it, for tests that read from a replica.

The primary is a ``ThrowawayCluster`` (``support.postgres``: initdb as the ``postgres`` user when running
as root, a free port on 127.0.0.1, trust authentication, which initdb grants replication connections from
loopback too). The standby is made with ``pg_basebackup -R`` from it over loopback (streaming the WAL,
``standby.signal`` and ``primary_conninfo`` written) into a directory of its own, and started on another
free port with ``hot_standby=on``. Never the shared server: both are stopped and deleted afterwards.

``pause_replay()`` / ``resume_replay()`` stop and restart the standby applying WAL (``pg_wal_replay_pause``),
so a test can hold a write back from the replica as long as it likes; ``wait_caught_up()`` waits until the
standby has replayed everything the primary has written so far.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support.postgres import NoPostgres, PostgresServer, ThrowawayCluster, _tail, free_port

__all__ = ["PrimaryAndStandby", "primary_and_standby"]


def start_standby(primary: ThrowawayCluster, *, attempts: int = 3) -> ThrowawayCluster:
    """A hot standby of ``primary``, streaming from it (its own directory and port)."""
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="eventfold-pg-standby-"))
    standby = ThrowawayCluster(primary.bindir, root, free_port(), primary.as_postgres_user)
    try:
        standby._prepare_dirs()
        done = standby._run(
            str(primary.bindir / "pg_basebackup"), "-D", str(standby.datadir), "-h", "127.0.0.1",
            "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )
        if done.returncode != 0:
            raise NoPostgres(f"pg_basebackup failed ({done.returncode}): {_tail(done.stderr or done.stdout)}")
        with (standby.datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write("hot_standby = on\n")
        for attempt in range(1, attempts + 1):
            try:
                standby._pg_ctl_start()
                return standby
            except NoPostgres:
                if attempt == attempts:
                    raise
                standby.port = free_port()
    except BaseException:
        standby.stop()
        raise
    raise AssertionError("unreachable")


@dataclass
class PrimaryAndStandby:
    primary: PostgresServer
    standby: PostgresServer

    def pause_replay(self) -> None:
        with self.standby.connect() as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 30
            while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
                assert time.monotonic() < deadline, "the standby did not pause its replay"
                time.sleep(0.02)

    def resume_replay(self) -> None:
        with self.standby.connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def wait_caught_up(self, timeout: float = 60.0) -> None:
        """Until the standby replayed the primary's WAL up to where it is now."""
        with self.primary.connect() as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        deadline = time.monotonic() + timeout
        with self.standby.connect() as conn:
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
                assert time.monotonic() < deadline, f"the standby did not replay up to {target}"
                time.sleep(0.05)

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                server.stop()


@pytest.fixture
def primary_and_standby() -> Iterator[PrimaryAndStandby]:
    """A private primary and its hot standby (streaming replication on loopback); removed afterwards."""
    import os

    primary: ThrowawayCluster | None = None
    try:
        primary = ThrowawayCluster.start()
        standby = start_standby(primary)
    except NoPostgres as e:
        if primary is not None:
            primary.stop()
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true and a private primary and standby are required: {e}", pytrace=False)
        pytest.skip(f"no private PostgreSQL primary and standby: {e}")
    pair = PrimaryAndStandby(primary.server(), standby.server())
    try:
        yield pair
    finally:
        pair.stop()
