"""Finding, or starting, a PostgreSQL server for the tests, and throwaway databases and schemas on it.

Where the server comes from, in order:

1. ``EVENTFOLD_TEST_DATABASE_URL`` (any ``postgresql://`` URL; its database is used
   only as the maintenance database to create and drop test databases in);
2. the local default ``postgresql://postgres@127.0.0.1:5432/postgres`` (trust auth),
   unless ``EVENTFOLD_TEST_NO_LOCAL=1``;
3. a throwaway cluster made with the local PostgreSQL binaries
   (``/usr/lib/postgresql/*/bin/initdb`` and ``pg_ctl``, or the ones on ``PATH``):
   a temporary directory, a free port on 127.0.0.1, its unix socket in the temporary
   directory, trust auth. When running as root the binaries run as the ``postgres``
   user through ``runuser``. It is stopped with ``pg_ctl stop`` (falling back to
   signalling its own postmaster pid) and deleted at the end of the session.

``EVENTFOLD_TEST_NO_LOCAL=1`` together with an unset or unreachable
``EVENTFOLD_TEST_DATABASE_URL`` forces the throwaway-cluster path.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from framework.settings import PostgresSettings

__all__ = [
    "LOCAL_DEFAULT_URL",
    "NoPostgres",
    "PgDatabase",
    "PostgresServer",
    "ThrowawayCluster",
    "create_database",
    "create_schema",
    "drop_database",
    "drop_schema",
    "find_or_start_server",
    "free_port",
    "unique_name",
]

LOCAL_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
URL_VARIABLE = "EVENTFOLD_TEST_DATABASE_URL"
NO_LOCAL_VARIABLE = "EVENTFOLD_TEST_NO_LOCAL"
_TRUTHY = {"1", "true", "yes", "on"}


class NoPostgres(Exception):
    """No server could be found or started; the message says what was tried."""


@dataclass
class PostgresServer:
    """A reachable server and how the tests connect to it as a superuser."""

    host: str
    port: int
    user: str
    password: str
    maintenance_db: str
    origin: str
    cluster: ThrowawayCluster | None = field(default=None, repr=False)

    def url(self, dbname: str | None = None) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname or self.maintenance_db)}"

    def settings(
        self, dbname: str, *, schema: str = "public", pool_size: int = 2, connect_timeout: float = 5.0
    ) -> PostgresSettings:
        return PostgresSettings(
            host=self.host,
            port=self.port,
            dbname=dbname,
            user=self.user,
            password=self.password,
            schema=schema,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
        )

    def connect(self, dbname: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def find_or_start_server() -> PostgresServer:
    """The first server that answers, else a throwaway cluster; NoPostgres if all fail."""
    tried: list[str] = []
    env_url = os.environ.get(URL_VARIABLE, "").strip()
    if env_url:
        server = _try_url(env_url, f"{URL_VARIABLE}", tried)
        if server is not None:
            return server
    if os.environ.get(NO_LOCAL_VARIABLE, "").strip().lower() in _TRUTHY:
        tried.append(f"local default skipped ({NO_LOCAL_VARIABLE} is set)")
    else:
        server = _try_url(LOCAL_DEFAULT_URL, "local default", tried)
        if server is not None:
            return server
    try:
        cluster = ThrowawayCluster.start()
    except NoPostgres as e:
        tried.append(f"throwaway cluster: {e}")
        raise NoPostgres("no PostgreSQL server found or started; " + "; ".join(tried)) from None
    return cluster.server()


def _try_url(url: str, label: str, tried: list[str]) -> PostgresServer | None:
    try:
        params = conninfo_to_dict(url)
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:  # any failure means "not usable", the reason is reported
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        tried.append(f"{label} ({_redact(url)}): {reason}")
        return None
    return PostgresServer(
        host=str(params.get("host") or "127.0.0.1"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        password=str(params.get("password") or ""),
        maintenance_db=str(params.get("dbname") or "postgres"),
        origin=f"{label} {_redact(url)}",
    )


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# --- throwaway cluster -------------------------------------------------------------------------


@dataclass
class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, owned by this test session."""

    bindir: Path
    root: Path
    port: int
    as_postgres_user: bool
    stopped: bool = False

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    @classmethod
    def start(cls, attempts: int = 3) -> ThrowawayCluster:
        bindir = _find_bindir()
        as_postgres = os.geteuid() == 0
        root = Path(tempfile.mkdtemp(prefix="eventfold-pg-"))
        cluster = cls(bindir, root, free_port(), as_postgres)
        atexit.register(cluster.stop)  # a safety net; the session fixture stops it first
        try:
            cluster._prepare_dirs()
            cluster._initdb()
            for attempt in range(1, attempts + 1):
                try:
                    cluster._pg_ctl_start()
                    return cluster
                except NoPostgres:
                    if attempt == attempts:
                        raise
                    cluster.port = free_port()  # the port was probably taken meanwhile
        except BaseException:
            cluster.stop()
            raise
        raise AssertionError("unreachable")

    def _prepare_dirs(self) -> None:
        self.socket_dir.mkdir()
        if self.as_postgres_user:
            for path in (self.root, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.as_postgres_user:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )

    def _initdb(self) -> None:
        done = self._run(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        if done.returncode != 0:
            raise NoPostgres(f"initdb failed ({done.returncode}): {_tail(done.stderr or done.stdout)}")

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        done = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
            "-o", options, "-w", "-t", "60", "start",
        )
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise NoPostgres(f"pg_ctl start failed ({done.returncode}): {_tail(log or done.stderr)}")

    def pause(self) -> None:
        """Stop the server like an outage would (fast shutdown), keeping its data to ``resume`` later."""
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30",
                         "stop", timeout=60)
        if done.returncode != 0:
            raise NoPostgres(f"pg_ctl stop failed ({done.returncode}): {_tail(done.stderr or done.stdout)}")

    def resume(self) -> None:
        self._pg_ctl_start()

    def server(self) -> PostgresServer:
        return PostgresServer(host="127.0.0.1", port=self.port, user="postgres", password="",
                              maintenance_db="postgres", origin=f"throwaway cluster in {self.root} on port {self.port}",
                              cluster=self)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the server this cluster started (pg_ctl, else its postmaster pid) and delete it."""
        if self.stopped:
            return
        self.stopped = True
        if self.postmaster_pid() is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                          "-t", "30", "stop", timeout=60)
            pid = self.postmaster_pid()
            if pid is not None:  # pg_ctl could not stop it: signal our own postmaster only
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGQUIT)
                    time.sleep(1)
        shutil.rmtree(self.root, ignore_errors=True)


def _find_bindir() -> Path:
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: _version_key(d.parent.name),
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise NoPostgres("no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- databases and schemas ---------------------------------------------------------------------


def unique_name(prefix: str) -> str:
    """A lower-case identifier unique to this process and call, e.g. ``eventfold_test_123_ab12cd``."""
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


def create_database(server: PostgresServer, name: str) -> None:
    with server.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server: PostgresServer, name: str) -> None:
    with server.connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_schema(server: PostgresServer, dbname: str, schema: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(server: PostgresServer, dbname: str, schema: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@dataclass(frozen=True)
class PgDatabase:
    """The test run's own database on ``server``."""

    server: PostgresServer
    name: str

    def url(self) -> str:
        return self.server.url(self.name)

    def settings(self, schema: str = "public", *, pool_size: int = 2) -> PostgresSettings:
        return self.server.settings(self.name, schema=schema, pool_size=pool_size)

    def connect(self) -> psycopg.Connection:
        return self.server.connect(self.name)

    @contextlib.contextmanager
    def fresh_schema(self, prefix: str = "ef") -> Iterator[str]:
        """A new empty schema, dropped (with everything in it) afterwards."""
        schema = unique_name(prefix)
        create_schema(self.server, self.name, schema)
        try:
            yield schema
        finally:
            drop_schema(self.server, self.name, schema)
