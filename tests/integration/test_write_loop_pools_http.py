"""The write API's loop path (EVENTFOLD_WRITE_ASYNC) with the smallest pools, over real HTTP: an idempotent
command needs a connection for its claim and one for its append, and the pool keeps one connection aside
between checkouts; nothing may wait for a connection nobody gives back."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from http_helpers import (
    accepted,
    assert_no_traceback,
    holding_by_replay,
    new_code,
    new_isin,
    positioned,
    serve_write_api,
)
from support.postgres import PgDatabase

pytestmark = pytest.mark.postgres


async def _send_together(base_url: str, requests: list[tuple[dict[str, Any], dict[str, str]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client.get("/healthz") for _ in requests))
        return list(await asyncio.gather(*(client.post("/commands/CreditHoldings", json=body, headers=headers)
                                           for body, headers in requests)))


@pytest.mark.parametrize("pool_size", [1, 2])
def test_concurrent_idempotent_commands_on_the_smallest_pools_all_answer(
    pg_database: PgDatabase, pool_size: int
) -> None:
    with pg_database.fresh_schema("pools") as schema:
        settings = pg_database.settings(schema, pool_size=pool_size)
        setup_server, store = serve_write_api(settings, write_async=True)
        try:
            store.create_schema()
            with httpx.Client(base_url=setup_server.base_url, timeout=60) as client:
                isin = new_isin()
                accepted(client.post("/commands/RegisterSecurity",
                                     json={"isin": isin, "name": "Test Plc", "currency": "EUR"}))
                numbers = [new_code("ACC") for _ in range(6)]
                for number in numbers:
                    accepted(client.post("/commands/OpenAccount",
                                         json={"account_number": number, "holder_name": "Ada"}))
                requests = [({"account_number": numbers[n % 6], "isin": isin, "quantity": 1},
                             {"Idempotency-Key": f"k-{n % 30}"} if n % 3 else {}) for n in range(60)]
                responses = asyncio.run(_send_together(setup_server.base_url, requests))
                for response in responses:
                    assert_no_traceback(response)
                statuses = Counter(r.status_code for r in responses)
                assert set(statuses) <= {200, 409}, (statuses, [r.text for r in responses if r.status_code != 200][:3])
            credits = sum(len([e for e in positioned(store, n) if e.event_name == "SecuritiesCredited"])
                          for n in numbers)
            executed = [r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers]
            assert credits == len(executed)
        finally:
            setup_server.stop()
            store.close()


def _commands_ok(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('eventfold_commands_total{command="OpenAccount",outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_command_s_metrics_are_in_the_next_request_s_metrics(pg_database: PgDatabase) -> None:
    """The bus counts a command at the loop's turn after it answers: still before any next request,
    even one pipelined behind the command on the same connection."""
    import socket
    from urllib.parse import urlsplit

    with pg_database.fresh_schema("seen") as schema:
        server, store = serve_write_api(pg_database.settings(schema, pool_size=2), write_async=True)
        try:
            store.create_schema()
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                for n in range(1, 41):
                    accepted(client.post("/commands/OpenAccount",
                                         json={"account_number": new_code("ACC"), "holder_name": "Ada"}))
                    assert _commands_ok(client.get("/metrics").text) == n
            where = urlsplit(server.base_url)
            for n in range(41, 61):
                body = f'{{"account_number": "{new_code("ACC")}", "holder_name": "Ada"}}'.encode()
                both = (b"POST /commands/OpenAccount HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                        + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
                    sock.sendall(both)
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
                metrics = answer.split(b"\r\n\r\n", 2)[-1].decode()
                assert _commands_ok(metrics) == n, answer[:300]
        finally:
            server.stop()
            store.close()



async def _clients_sending(base_url: str, body: dict[str, Any], clients: int, each: int) -> Counter[int]:
    """``clients`` connections, each sending ``each`` commands one after the other: a sustained load."""
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        async def send() -> None:
            for _ in range(each):
                response = await client.post("/commands/CreditHoldings", json=body)
                assert_no_traceback(response)
                statuses[response.status_code] += 1
        await asyncio.gather(*(send() for _ in range(clients)))
    return statuses


def test_many_clients_on_one_account_take_turns_with_no_409(pg_database: PgDatabase) -> None:
    """The loop's commands on a hot aggregate wait for its turn on the loop, and their retries on a thread
    hold the same turn: after the first conflicts every command gets a turn, none runs out of attempts."""
    with pg_database.fresh_schema("hot") as schema:
        server, store = serve_write_api(pg_database.settings(schema, pool_size=4), write_async=True)
        try:
            store.create_schema()
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                isin, number = new_isin(), new_code("ACC")
                accepted(client.post("/commands/RegisterSecurity",
                                     json={"isin": isin, "name": "Test Plc", "currency": "EUR"}))
                accepted(client.post("/commands/OpenAccount", json={"account_number": number, "holder_name": "Ada"}))
            body = {"account_number": number, "isin": isin, "quantity": 3}
            statuses = asyncio.run(_clients_sending(server.base_url, body, clients=32, each=25))
            assert statuses == {200: 800}
            events = positioned(store, number)
            assert [e.version for e in events] == list(range(1, 802))
            assert holding_by_replay(store, number, isin)[0] == 800 * 3
        finally:
            server.stop()
            store.close()
