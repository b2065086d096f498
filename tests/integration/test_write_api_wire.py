"""The write API on the wire: ``eventfold write-api`` (commands on the event loop, answers sent head and
body in one send) against clients that pipeline, wait for 100 Continue, vanish or get killed with the
server.

Raw sockets where httpx would not misbehave; every stored effect is checked in PostgreSQL: a command
is stored once or not at all, and an Idempotency-Key sent again gets the first outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from http_helpers import accepted, account_id, events_after, new_code, new_isin, stream
from support.http import CliServer, clean_env, eventfold_executable
from support.postgres import PgDatabase

from framework.adapters.postgres import PostgresEventStore

pytestmark = pytest.mark.postgres

MAX_BODY_BYTES = 16_384
LEASE_SECONDS = 1  # an idempotency key a killed server held is free again this soon
LINGER_SECONDS = 2.0  # ServerLimits.linger_seconds
WAIT = 15.0  # seconds a raw client waits for an answer before calling the connection held


@pytest.fixture(scope="module")
def schema(pg_database: PgDatabase) -> Iterator[str]:
    with pg_database.fresh_schema("wire") as name:
        yield name


@pytest.fixture(scope="module")
def env(pg_database: PgDatabase, schema: str) -> dict[str, str]:
    variables = clean_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=schema,
                          EVENTFOLD_DB_POOL_SIZE="4", EVENTFOLD_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                          EVENTFOLD_IDEMPOTENCY_LEASE_SECONDS=str(LEASE_SECONDS))
    import subprocess

    init = subprocess.run([eventfold_executable(), "init-db"], env=variables, capture_output=True, text=True,
                          timeout=120, check=False)
    assert init.returncode == 0, init.stderr
    return variables


@pytest.fixture(scope="module")
def server(env: dict[str, str]) -> Iterator[CliServer]:
    with CliServer("write-api", env) as running:
        yield running


@pytest.fixture(scope="module")
def checker(pg_database: PgDatabase, schema: str) -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(pg_database.settings(schema))
    try:
        yield store
    finally:
        store.close()


# --- a client that reads answers off the wire -----------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(method: str, path: str, body: bytes | None = None, **headers: str) -> bytes:
    fields = {"Host": "127.0.0.1", **({"Content-Type": "application/json", "Content-Length": str(len(body))}
                                       if body is not None else {})}
    fields.update({name.replace("_", "-"): value for name, value in headers.items()})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + (body or b"")


def _command(name: str, fields: dict[str, Any], **headers: str) -> bytes:
    return _request("POST", f"/commands/{name}", json.dumps(fields).encode(), **headers)


class Wire:
    """A raw connection that reads whole answers, one after the other, as a pipelining client does."""

    def __init__(self, server: CliServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        self._buffer = bytearray()
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_in_background(self, data: bytes) -> None:
        """For more than the server reads before answering: the server may stop reading."""
        def send() -> None:
            with contextlib.suppress(OSError):
                self.sock.sendall(data)
        threading.Thread(target=send, daemon=True).start()

    def answer(self, method: str = "POST") -> Answer:
        head = self._until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if method == "HEAD" or 100 <= status < 200 else int(headers.get("content-length", "0"))
        return Answer(status, headers, self._exactly(length))

    def at_end(self) -> bool:
        """Whether the server closed the connection after the last answer (with nothing more on it)."""
        self._fill()
        return self.closed and not self._buffer

    def close(self) -> None:
        self.sock.close()

    def _until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            self._fill(required=True)
        data = bytes(self._buffer[:end])
        del self._buffer[:end + len(marker)]
        return data

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill(required=True)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _fill(self, *, required: bool = False) -> None:
        if self.closed:
            if required:
                raise AssertionError(f"the connection closed early; left: {bytes(self._buffer[:300])!r}")
            return
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no answer within {WAIT}s; got {bytes(self._buffer[:300])!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            if required:
                raise AssertionError(f"the connection closed early; left: {bytes(self._buffer[:300])!r}")
        self._buffer.extend(chunk)


@contextlib.contextmanager
def wire(server: CliServer) -> Iterator[Wire]:
    connection = Wire(server)
    try:
        yield connection
    finally:
        connection.close()


def _open_account(number: str) -> bytes:
    return _command("OpenAccount", {"account_number": number, "holder_name": "Wire Test"})


def _opened(answer: Answer, number: str) -> None:
    assert answer.status == 200, (answer.status, answer.body)
    assert answer.json()["aggregate_id"] == str(account_id(number)), answer.body


# --- pipelining ---------------------------------------------------------------------------------


def test_requests_sent_together_are_answered_in_their_order_each_with_its_own_answer(
    server: CliServer, checker: PostgresEventStore
) -> None:
    first, second = new_code("W"), new_code("W")
    with wire(server) as connection:
        connection.send(_open_account(first) + _request("GET", "/healthz") + _request("HEAD", "/openapi.json")
                        + _open_account(second) + _request("GET", "/openapi.json") + _open_account(first))
        _opened(connection.answer(), first)
        assert connection.answer("GET").json() == {"status": "ok"}
        head = connection.answer("HEAD")
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 10_000
        _opened(connection.answer(), second)
        document = connection.answer("GET")
        assert len(document.body) == int(head.headers["content-length"])
        assert "/commands/OpenAccount" in document.json()["paths"]
        again = connection.answer()
        assert again.status == 409 and again.json()["code"] == "already_exists", again.body
        connection.send(_request("GET", "/healthz"))  # the connection is still in service
        assert connection.answer("GET").status == 200
    assert len(stream(checker, account_id(first))) == len(stream(checker, account_id(second))) == 1


@pytest.mark.parametrize("refused", ["malformed", "oversized_head"])
def test_a_refused_request_is_answered_after_the_requests_sent_before_it(
    server: CliServer, checker: PostgresEventStore, refused: str
) -> None:
    """The refusal of a request cannot overtake the answers to those before it: a client reading answers in
    order would take it for its command's answer, while the command was stored."""
    number = new_code("W")
    bad = (b"NOT HTTP AT ALL\r\n\r\n" if refused == "malformed"
           else _request("GET", "/healthz", X_Big="a" * 40_000))
    with wire(server) as connection:
        connection.send_in_background(_open_account(number) + _request("GET", "/healthz") + bad)
        _opened(connection.answer(), number)
        assert connection.answer("GET").json() == {"status": "ok"}
        refusal = connection.answer()
        assert refusal.status == (400 if refused == "malformed" else 431), refusal.body
        assert refusal.headers["content-type"] == "application/problem+json"
        assert refusal.headers["connection"] == "close"
        assert connection.at_end()
    assert len(stream(checker, account_id(number))) == 1


def test_a_refusal_waits_for_a_command_still_committing_and_does_not_cut_its_answer_off(
    server: CliServer, checker: PostgresEventStore, pg_database: PgDatabase, schema: str
) -> None:
    """A malformed request behind a command still committing (the events table held by another
    transaction for longer than the server lingers after a refusal): the command's answer comes first,
    whole, then the refusal, then the connection closes."""
    number = new_code("W")
    with pg_database.connect() as lock, pg_database.connect() as watcher, wire(server) as connection:
        lock.execute("BEGIN")
        lock.execute(f'LOCK TABLE "{schema}".stored_events IN EXCLUSIVE MODE')
        connection.send(_open_account(number))
        for _ in range(1000):
            if _waiting_for_the_lock(watcher):
                break
            time.sleep(0.01)
        connection.send(b"NOT HTTP AT ALL\r\n\r\n")
        time.sleep(LINGER_SECONDS + 0.5)  # the server lingers this long after a refusal it has sent
        lock.execute("COMMIT")
        _opened(connection.answer(), number)
        assert connection.answer().status == 400
        assert connection.at_end()
    assert len(stream(checker, account_id(number))) == 1


def test_a_client_waiting_for_100_continue_gets_it_then_its_answer_and_keeps_the_connection(
    server: CliServer, checker: PostgresEventStore
) -> None:
    number = new_code("W")
    body = json.dumps({"account_number": number, "holder_name": "Patient"}).encode()
    with wire(server) as connection:
        connection.send(_request("POST", "/commands/OpenAccount", Content_Type="application/json",
                                 Content_Length=str(len(body)), Expect="100-continue"))
        assert connection.answer().status == 100
        connection.send(body)
        _opened(connection.answer(), number)
        connection.send(_request("POST", "/commands/NoSuchCommand", Content_Type="application/json",
                                 Content_Length=str(len(body)), Expect="100-continue"))
        unknown = connection.answer()  # answered without asking for the body
        assert unknown.status == 404 and unknown.json()["code"] == "unknown_command"
        connection.send(body + _request("GET", "/healthz"))  # the body it did not want, then a request
        assert connection.answer("GET").json() == {"status": "ok"}
    assert len(stream(checker, account_id(number))) == 1


def test_an_oversized_body_is_413_and_the_next_request_on_the_connection_is_answered(
    server: CliServer, checker: PostgresEventStore
) -> None:
    head = checker.head()
    number = new_code("W")
    ten_mb = json.dumps({"account_number": number, "holder_name": "x" * 10_000_000}).encode()
    with wire(server) as connection:
        connection.send_in_background(_request("POST", "/commands/OpenAccount", ten_mb) + _request("GET", "/healthz"))
        too_large = connection.answer()
        assert too_large.status == 413 and too_large.json()["code"] == "body_too_large", too_large.body
        assert connection.answer("GET").json() == {"status": "ok"}
    assert checker.head() == head


# --- clients that vanish, a server that is killed -----------------------------------------------------


def _credit(number: str, isin: str, quantity: int) -> dict[str, Any]:
    return {"account_number": number, "isin": isin, "quantity": quantity}


def _holder(client: httpx.Client) -> tuple[str, str]:
    isin, number = new_isin(), new_code("W")
    accepted(client.post("/commands/RegisterSecurity", json={"isin": isin, "name": "Wire Plc", "currency": "EUR"}))
    accepted(client.post("/commands/OpenAccount", json={"account_number": number, "holder_name": "Ann"}))
    return isin, number


def _until_not_in_flight(client: httpx.Client, body: dict[str, Any], key: str) -> httpx.Response:
    """Send a command again with its key until the first attempt with that key is no longer running."""
    for _ in range(200):
        response = client.post("/commands/CreditHoldings", json=body, headers={"Idempotency-Key": key})
        if response.status_code != 409 or response.json()["code"] != "idempotency_key_in_flight":
            return response
        time.sleep(0.05)
    raise AssertionError(f"the key {key} stayed in flight")


def _credits(store: PostgresEventStore, number: str) -> list[int]:
    return [e.event.model_dump()["quantity"] for e in stream(store, account_id(number))
            if e.event_name == "SecuritiesCredited"]


@pytest.mark.parametrize("leaving", ["reset", "half_close"])
def test_a_client_gone_right_after_its_command_gets_the_first_outcome_when_it_sends_the_key_again(
    server: CliServer, checker: PostgresEventStore, leaving: str
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        isin, number = _holder(client)
        keys = [new_code("key") for _ in range(20)]
        for quantity, key in enumerate(keys, start=1):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
            sock.sendall(_command("CreditHoldings", _credit(number, isin, quantity), Idempotency_Key=key))
            if leaving == "reset":  # closed with RST: the server's answer has nowhere to go
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_WR)
            sock.close()
        for quantity, key in enumerate(keys, start=1):
            response = _until_not_in_flight(client, _credit(number, isin, quantity), key)
            assert response.status_code == 200, response.text
    assert sorted(_credits(checker, number)) == list(range(1, len(keys) + 1))  # each once, none lost


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill_9", "sigterm"])
def test_a_write_api_stopped_mid_burst_doubles_nothing_when_every_key_is_sent_again(
    env: dict[str, str], checker: PostgresEventStore, stop: signal.Signals
) -> None:
    burst = 150
    with CliServer("write-api", env) as doomed:
        with httpx.Client(base_url=doomed.base_url, timeout=30) as client:
            isin, number = _holder(client)
        commands = [(new_code("k9"), _credit(number, isin, n)) for n in range(1, burst + 1)]
        answered: dict[str, int] = {}

        def send(command: tuple[str, dict[str, Any]]) -> None:
            key, body = command
            with contextlib.suppress(httpx.TransportError), httpx.Client(base_url=doomed.base_url, timeout=30) as c:
                answered[key] = c.post("/commands/CreditHoldings", json=body, headers={"Idempotency-Key": key}
                                       ).status_code

        def stop_once_a_third_is_answered() -> None:
            while sum(1 for status in list(answered.values()) if status == 200) < burst // 3:
                time.sleep(0.002)
            assert doomed.process is not None
            os.kill(doomed.process.pid, stop)

        killer = threading.Thread(target=stop_once_a_third_is_answered, daemon=True)
        killer.start()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, commands))
        killer.join(timeout=60)
        assert doomed.process is not None
        assert doomed.process.wait(timeout=60) == -stop  # uvicorn raises SIGTERM again once it has shut down
    if stop == signal.SIGTERM:  # a graceful stop: what was running finished, and the app shut down cleanly
        assert "Application shutdown complete" in doomed.stderr, doomed.stderr[-3000:]
        assert "Traceback" not in doomed.stderr and '"level": "ERROR"' not in doomed.stderr, doomed.stderr[-3000:]
    else:
        assert len([s for s in answered.values() if s == 200]) < burst, "the kill fell outside the burst"
    assert set(answered.values()) <= {200}, answered  # every answer that arrived is a success
    time.sleep(LEASE_SECONDS)  # keys the killed server claimed but never completed are free again
    with CliServer("write-api", env) as restarted, httpx.Client(base_url=restarted.base_url, timeout=30) as client:
        def send_again(command: tuple[str, dict[str, Any]]) -> tuple[str, httpx.Response]:
            return command[0], _until_not_in_flight(client, command[1], command[0])

        with ThreadPoolExecutor(8) as pool:
            for key, response in pool.map(send_again, commands):
                assert response.status_code == 200, response.text
                if answered.get(key) == 200:  # answered before the kill: the answer again, nothing new
                    assert response.headers.get("idempotent-replayed") == "true"
    assert sorted(_credits(checker, number)) == list(range(1, burst + 1))
    positions = [e.position or 0 for e in events_after(checker, 0) if e.aggregate_id == account_id(number)]
    assert positions == sorted(positions)


# --- one group commit, many outcomes --------------------------------------------------------------


def _waiting_for_the_lock(watcher: Any) -> int:
    row = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                          " AND wait_event_type = 'Lock' AND application_name LIKE 'eventfold%'").fetchone()
    return int(row[0]) if row else 0


def test_conflicts_a_broken_rule_an_unknown_account_and_an_expectation_in_one_group_each_get_their_answer(
    server: CliServer, checker: PostgresEventStore, pg_database: PgDatabase, schema: str
) -> None:
    """Commands decided on the loop from one cached version pile up behind a held table lock and commit in
    one group: those that conflict are decided again and stored once each, the others get their own answers."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        isin, number = _holder(client)
        version = accepted(client.post("/commands/CreditHoldings", json=_credit(number, isin, 100)))["version"]
        credits = [_credit(number, isin, quantity) for quantity in range(1, 7)]
        others: list[tuple[dict[str, Any], dict[str, str]]] = [
            ({"account_number": number, "isin": isin, "quantity": 1_000}, {}),  # more than it holds
            (_credit(new_code("nobody"), isin, 5), {}),  # an account that does not exist
            ({"account_number": number, "isin": isin, "quantity": 50}, {"If-Match": f'"{version}"'}),
        ]
        names = ["CreditHoldings"] * len(credits) + ["DebitHoldings", "CreditHoldings", "DebitHoldings"]
        requests: list[tuple[dict[str, Any], dict[str, str]]] = [(body, {}) for body in credits] + others

        def send(item: tuple[str, tuple[dict[str, Any], dict[str, str]]]) -> httpx.Response:
            name, (body, headers) = item
            with httpx.Client(base_url=server.base_url, timeout=60) as own:
                return own.post(f"/commands/{name}", json=body, headers=headers)

        with pg_database.connect() as lock, pg_database.connect() as watcher:
            lock.execute("BEGIN")
            lock.execute(f'LOCK TABLE "{schema}".stored_events IN EXCLUSIVE MODE')
            with ThreadPoolExecutor(len(requests)) as pool:
                answers = pool.map(send, zip(names, requests, strict=True))
                for _ in range(400):  # the first append waits for the lock; the rest queue behind it
                    if _waiting_for_the_lock(watcher):
                        break
                    time.sleep(0.01)
                time.sleep(0.3)  # let the others arrive and queue for the next group
                lock.execute("COMMIT")
                results = list(answers)
    statuses = [r.status_code for r in results]
    assert statuses[:len(credits)] == [200] * len(credits), [r.text for r in results]
    assert results[len(credits)].status_code == 422, results[len(credits)].text
    assert results[len(credits) + 1].status_code == 404, results[len(credits) + 1].text
    debit = results[len(credits) + 2]
    assert debit.status_code in (200, 409), debit.text
    if debit.status_code == 409:
        assert debit.json()["code"] == "version_mismatch"
    stored = _credits(checker, number)
    assert sorted(stored) == [*range(1, 7), 100]  # each credit once
    debits = [e.event.model_dump()["quantity"] for e in stream(checker, account_id(number))
              if e.event_name == "SecuritiesDebited"]
    assert debits == ([50] if debit.status_code == 200 else [])
    versions = [e.version for e in stream(checker, account_id(number))]
    assert versions == list(range(1, len(versions) + 1))
