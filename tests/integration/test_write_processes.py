"""``eventfold write-api --workers 2``: two processes on one port over one database, under concurrent
load on the same accounts and the same idempotency keys.

Idempotency keys and optimistic concurrency live in PostgreSQL, so they hold across processes: every
key executes once whichever process (or how many at once) receives it, and the store holds exactly
what was accepted. Which process a connection lands on is the kernel's choice, so the test does not
steer requests: it checks, from the process list, that more than one process answered.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import account_id, holding_by_replay, new_code, new_isin, stream
from support.http import CliServer, clean_env, eventfold_executable
from support.postgres import PgDatabase, free_port

from framework.adapters.postgres import PostgresEventStore

pytestmark = pytest.mark.postgres

CLIENTS = 16
KEYS = 40  # every client sends every key, in the same order: several send each key at the same moment
OPENING = 10_000  # each account's opening credit: no debit of the load can break the holdings rule
RETRIED = {"idempotency_key_in_flight", "concurrency_conflict", "store_unavailable"}


@pytest.mark.parametrize("write_async", ["off", "on"], ids=["threads", "loop"])
def test_two_write_api_processes_execute_each_key_once_and_agree_with_a_replay(
    pg_database: PgDatabase, pg_schema: str, write_async: str
) -> None:
    check = PostgresEventStore(pg_database.settings(pg_schema))
    check.create_schema()
    env = clean_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=pg_schema,
                    EVENTFOLD_DB_POOL_SIZE="4", EVENTFOLD_LOG_FORMAT="text", EVENTFOLD_WRITE_ASYNC=write_async)
    isin, accounts = new_isin(), [new_code("MPA"), new_code("MPB")]
    commands = {f"{new_code('K')}-{n}": _command(n, accounts, isin) for n in range(KEYS)}
    try:
        with CliServer("write-api", env, args=["--workers", "2"]) as server:
            workers = _workers(server)
            assert len(workers) == 2, workers
            _set_up(server.base_url, accounts, isin)
            answers, served_by = _load(server, workers, commands)
            served_by |= _probe_until_both_serve(server, workers) if len(served_by) < 2 else set()
            assert len(served_by) >= 2, f"only {served_by} answered"  # more than one process served
            _assert_limits_apply(server.base_url)
        assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM), server.stderr
        assert all(not _alive(pid) for pid in workers)  # SIGTERM to the parent stopped every worker
        assert "Traceback" not in server.stderr

        _assert_each_key_once(answers, commands, check, accounts)
        for number in accounts:  # the store's events are what was accepted: balances by replay
            expected = OPENING + sum(_signed(c) for c in commands.values() if c[1]["account_number"] == number)
            assert holding_by_replay(check, number, isin)[0] == expected
    finally:
        check.close()


def test_a_mistake_is_one_line_and_status_2_before_any_worker_starts() -> None:
    for variables in ({"EVENTFOLD_APP": "no_such_module:app", "EVENTFOLD_DATABASE_URL": _UNUSED_URL}, {}):
        done = _run_write_api(clean_env(**variables), Path.cwd())
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("eventfold: "), done.stderr
        assert "Started parent process" not in done.stderr  # refused before uvicorn started anything


def test_a_worker_that_cannot_start_stops_the_server_with_status_2(tmp_path: Path) -> None:
    """Rare (the parent built the same app a moment before), but a worker failing at start-up must not
    be restarted forever: each says why in one line, and the server exits with status 2."""
    (tmp_path / "worker_only_failure.py").write_text(
        "import multiprocessing\n"
        "from example_app.app import app\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise RuntimeError('the database went away')\n"
    )
    env = clean_env(EVENTFOLD_APP="worker_only_failure:app", EVENTFOLD_DATABASE_URL=_UNUSED_URL,
                    PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = _run_write_api(env, tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("eventfold: ")]
    assert 1 <= len(errors) <= 2 and all("the database went away" in line for line in errors), done.stderr
    assert "Traceback" not in done.stderr


_UNUSED_URL = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # write-api connects on first use


def _run_write_api(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [eventfold_executable(), "write-api", "--workers", "2", "--port", str(free_port())]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _command(n: int, accounts: list[str], isin: str) -> tuple[str, dict[str, Any]]:
    name = "DebitHoldings" if n % 3 == 0 else "CreditHoldings"
    return name, {"account_number": accounts[n % 2], "isin": isin, "quantity": n % 7 + 1,
                  "reference": f"REF-{n}"}


def _signed(command: tuple[str, dict[str, Any]]) -> int:
    name, body = command
    return -body["quantity"] if name == "DebitHoldings" else body["quantity"]


def _set_up(base_url: str, accounts: list[str], isin: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        setup = [("RegisterSecurity", {"isin": isin, "name": "Shared", "currency": "EUR"})]
        for number in accounts:
            setup += [("OpenAccount", {"account_number": number, "holder_name": "Two Processes"}),
                      ("CreditHoldings", {"account_number": number, "isin": isin, "quantity": OPENING})]
        for name, body in setup:
            response = client.post(f"/commands/{name}", json=body)
            assert response.status_code == 200, response.text


def _load(server: CliServer, workers: list[int], commands: dict[str, tuple[str, dict[str, Any]]]
          ) -> tuple[list[tuple[str, int, dict[str, Any], bool]], set[int]]:
    """Every client sends every key (retrying what says retry); returns the answers and which
    worker processes held the clients' connections once they all had answers."""
    answers: list[tuple[str, int, dict[str, Any], bool]] = []
    failures: list[BaseException] = []
    answered = threading.Barrier(CLIENTS + 1)
    release = threading.Event()

    def client_run() -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                for key, (name, body) in commands.items():
                    answers.append((key, *_send(client, key, name, body)))
                answered.wait(timeout=120)
                release.wait(timeout=120)  # keep the connection open until it is looked at
        except BaseException as error:
            failures.append(error)
            answered.abort()

    threads = [threading.Thread(target=client_run) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    served_by: set[int] = set()
    try:
        answered.wait(timeout=120)
        served_by = _holding_connections(workers, server.port)
    except threading.BrokenBarrierError:
        pass  # a client failed: its error is asserted below
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == [], failures
    return answers, served_by


def _probe_until_both_serve(server: CliServer, workers: list[int], rounds: int = 20) -> set[int]:
    """Which worker takes a connection is the kernel's choice: 16 clients may all land on one worker.
    Fresh connections, each answered once and held while looked at, round after round (bounded),
    until more than one worker is seen holding them."""
    seen: set[int] = set()
    for _ in range(rounds):
        connections = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(CLIENTS)]
        try:
            for connection in connections:
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")
            for connection in connections:
                assert connection.recv(1024).startswith(b"HTTP/1.1 200")
            seen |= _holding_connections(workers, server.port)
        finally:
            for connection in connections:
                connection.close()
        if len(seen) >= 2:
            break
    return seen


def _send(client: httpx.Client, key: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], bool]:
    """Send one command with its key until it is answered for good (a key in flight elsewhere, a
    conflict the bus gave up on, or a busy store is retried with the same key, as a client would)."""
    for _ in range(200):
        response = client.post(f"/commands/{name}", json=body, headers={"Idempotency-Key": key})
        data = response.json()
        if response.status_code in (409, 503) and data.get("code") in RETRIED:
            time.sleep(0.01)
            continue
        return response.status_code, data, response.headers.get("idempotent-replayed") == "true"
    raise AssertionError(f"{key} never got a final answer: {response.status_code} {response.text}")


def _assert_each_key_once(answers: list[tuple[str, int, dict[str, Any], bool]],
                          commands: dict[str, tuple[str, dict[str, Any]]], store: PostgresEventStore,
                          accounts: list[str]) -> None:
    assert len(answers) == CLIENTS * KEYS
    assert {status for _, status, _, _ in answers} == {200}, [a for a in answers if a[1] != 200][:3]
    results: dict[str, set[tuple[Any, ...]]] = {}
    for key, _, body, _ in answers:
        results.setdefault(key, set()).add((body["aggregate_id"], body["version"], body["position"]))
    assert all(len(found) == 1 for found in results.values()), results  # one result per key, for all
    fresh = [key for key, _, _, replayed in answers if not replayed]
    assert sorted(fresh) == sorted(commands), "each key executed (not replayed) exactly once"
    events = [e for number in accounts for e in stream(store, account_id(number))]
    references = [e.event.model_dump().get("reference") for e in events]
    for _, body in commands.values():  # exactly one stored event per key
        assert references.count(body["reference"]) == 1, body


def _assert_limits_apply(base_url: str) -> None:
    """The server's own limits hold in the workers too: an oversized head is refused before any app."""
    response = httpx.get(f"{base_url}/healthz", headers={"X-Padding": "x" * 40_000}, timeout=10)
    assert response.status_code == 431
    assert response.json()["code"] == "headers_too_large"


def _workers(server: CliServer) -> list[int]:
    """The worker processes of the server: its children that serve (not multiprocessing's tracker)."""
    assert server.process is not None
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    return [int(pid) for pid in children if b"resource_tracker" not in _cmdline(int(pid))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _holding_connections(workers: list[int], port: int) -> set[int]:
    """The workers holding an accepted connection on ``port``: each answered the requests sent on it."""
    accepted = _established_inodes(port)
    holding = set()
    for pid in workers:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in accepted:
                holding.add(pid)
                break
    return holding


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of the established TCP connections whose local port is ``port`` (server side)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    return inodes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
