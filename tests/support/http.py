"""Real HTTP servers for tests: an ASGI app on uvicorn in a thread, or ``eventfold`` in a subprocess."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import uvicorn

__all__ = ["CliServer", "ServerThread", "clean_env", "eventfold_executable", "wait_until_healthy"]


class ServerThread:
    """Serves ``app`` with uvicorn on a free 127.0.0.1 port, in a background thread.

    The listening socket is bound before the thread starts, so the port cannot
    be taken between choosing it and serving on it.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", lifespan: str = "off") -> None:
        self._socket = socket.create_server((host, 0))
        self.port: int = self._socket.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            app, lifespan=lifespan, log_level="warning", access_log=False, timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="uvicorn", daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited before it started serving")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


def eventfold_executable() -> str:
    """The ``eventfold`` console script of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "eventfold"
    if beside.exists():
        return str(beside)
    found = shutil.which("eventfold")
    if found is None:
        raise RuntimeError("the eventfold console script is not installed (pip install -e .)")
    return found


EXAMPLE_APP = "example_app.app:app"


def clean_env(**variables: str) -> dict[str, str]:
    """The current environment without any EVENTFOLD_* variable, plus ``variables``.

    Every caller may do everything without a token (``EVENTFOLD_ANONYMOUS_ROLES=*``; the servers'
    default is to require one) unless ``variables`` say otherwise: tests not about tokens send none.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_")}
    env["EVENTFOLD_ANONYMOUS_ROLES"] = "*"
    env["EVENTFOLD_APP"] = EXAMPLE_APP  # the framework knows no application: the tests name theirs
    env.update(variables)
    return env


def wait_until_healthy(base_url: str, *, timeout: float = 30, process: subprocess.Popen[Any] | None = None
                       ) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited early with status {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url} did not become healthy within {timeout}s")
        time.sleep(0.1)


class CliServer:
    """``eventfold <role>`` in a subprocess on a free port; stopped by its own pid.

    Its output goes to unnamed temporary files, not pipes: a pipe nobody reads fills up (64 KiB)
    and then blocks the server at its next log line. ``stdout`` and ``stderr`` read them at any time
    (and keep the last text once stopped); a server that fails to start shows the end of its stderr.
    """

    def __init__(self, role: str, env: Mapping[str, str], *, host: str = "127.0.0.1", args: Sequence[str] = ()
                 ) -> None:
        self._role, self._host, self._args = role, host, tuple(args)
        self._pick_port()
        # Anonymous access unless the environment decides (write-api and query-api default to off).
        self._env = {"EVENTFOLD_ANONYMOUS_ROLES": "*", **env}
        self.process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._err: IO[bytes] | None = None
        self._kept = ("", "")

    def __enter__(self) -> CliServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def stdout(self) -> str:
        return _read(self._out) if self._out is not None else self._kept[0]

    @property
    def stderr(self) -> str:
        return _read(self._err) if self._err is not None else self._kept[1]

    def _pick_port(self) -> None:
        with socket.socket() as probe:
            probe.bind((self._host, 0))
            self.port: int = probe.getsockname()[1]
        self.base_url = f"http://{self._host}:{self.port}"
        self._command = [eventfold_executable(), self._role, "--host", self._host, "--port", str(self.port),
                         *self._args]

    def start(self, timeout: float = 30, attempts: int = 3) -> None:
        """Start it and wait until it answers; on another free port if another process took this one first.

        The port is free when picked but only bound when the server has started: meanwhile another process
        (a test in another pytest-xdist worker, another suite on the machine) may take it, and then it is
        that server which would answer here. So the listening socket must be our own process's.
        """
        for attempt in range(1, attempts + 1):
            error = self._start_once(timeout)
            if error is None:
                return
            taken = error.startswith("port taken") or "address already in use" in self.stderr.lower()
            self.stop()
            if not taken or attempt == attempts:
                raise RuntimeError(f"{' '.join(self._command)} failed to start ({error}): {self.stderr[-3000:]}")
            self._pick_port()

    def _start_once(self, timeout: float) -> str | None:
        """None once the server answers on its own listening socket, else why not."""
        # closed by stop(), which every failed start is followed by (here, or the context manager)
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(self._command, env=self._env, stdout=self._out, stderr=self._err,
                                        stdin=subprocess.DEVNULL)
        try:
            wait_until_healthy(self.base_url, timeout=timeout, process=self.process)
        except RuntimeError as error:
            return str(error)
        if not listens_on(self.process.pid, self.port):
            return f"port taken: another process answers on port {self.port}"
        return None

    def stop(self) -> int | None:
        """Terminate our own process (SIGTERM, then SIGKILL) and keep its output."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self._keep_output()
        return self.process.returncode

    def _keep_output(self) -> None:
        if self._out is None or self._err is None:
            return
        self._kept = (_read(self._out), _read(self._err))
        self._out.close()
        self._err.close()
        self._out = self._err = None


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its children (a server's workers) holds the socket listening on ``port``.

    Read from /proc: where there is none (not Linux) the answer is yes, as before this check.
    """
    if not Path("/proc/net/tcp").exists():
        return True
    listening = _listening_inodes(port)
    pids = [pid, *_children(pid)]
    for one in pids:
        try:
            fds = list(Path(f"/proc/{one}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listening:
                return True
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _read(file: IO[bytes]) -> str:
    """All a child wrote so far; pread leaves the offset the child writes at alone (the two share it)."""
    fd = file.fileno()
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0).decode(errors="replace")
