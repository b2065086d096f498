"""``HeaderClient`` parses a message's header block into the dict nats-py's own parser makes of it,
whatever the block holds; ``connect`` gives the bus adapter such a client."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from framework.adapters import nats as adapter
from framework.adapters.nats_headers import HeaderClient, parse_header_lines

_EVENT = (b"Nats-Msg-Id: 42\r\nEventfold-Position: 42\r\nEventfold-Event: SecuritiesCredited\r\n"
          b"Eventfold-Aggregate-Id: 0b8f5c52-4a0e-5a8e-9d7c-2a3b4c5d6e7f\r\nEventfold-Aggregate-Version: 7\r\n"
          b"Eventfold-Correlation-Id: c-1\r\nEventfold-Causation-Id: c-1\r\n\r\n")

_ODD = [
    b"", b"\r\n", b"\r\n\r\n", b"no colon\r\n", b":\r\n", b": value\r\n", b"Name:\r\n", b"Name:value\r\n",
    b"Name:  spaced value  \r\n", b"  Name  : v\r\n", b"Na me: v\r\n", b"Name\t: v\r\n", b"Name:\tv\t\r\n",
    b"Na\x1cme: v\r\n", b"\x1cName: v\r\n", b"Name: v\x1c\r\n", b"Name: a\rb\r\n", b"Name: a\nb\r\n",
    b"A: 1\nB: 2\r\n", b"A: 1\r\nA: 2\r\n", b"Name: caf\xc3\xa9\r\n", b"Caf\xc3\xa9: v\r\n", b"Name: \xff\r\n",
    b"Name: a:b:c\r\n", b"Name: v\x0b\r\n", b"\x0cName: v\r\n", b"Name: v\x7f\r\n", b"Name: v\x00\r\n",
    b"Name: v", b"A: 1\r\n\r\nB: 2\r\n", _EVENT,
]


@pytest.mark.parametrize("raw", [_EVENT, *_ODD])
def test_a_block_parses_as_nats_py_parses_it(raw: bytes) -> None:
    assert parse_header_lines(raw) == NATS._parse_header_lines(raw)


_LINE_BYTES = st.sampled_from([b"A", b"b", b"-", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x1c", b"\x0b",
                               b"\x7f", b"\xc3\xa9", b"\xff", b"z9"])


@given(st.lists(st.lists(_LINE_BYTES, max_size=8).map(b"".join), max_size=6).map(b"\r\n".join))
def test_any_block_parses_as_nats_py_parses_it(raw: bytes) -> None:
    assert parse_header_lines(raw) == NATS._parse_header_lines(raw)


def test_the_client_parses_a_message_s_headers_as_nats_py_does() -> None:
    async def parsed(client: NATS) -> dict[str, str] | None:
        return await client._process_headers(b"NATS/1.0\r\n" + _EVENT)

    fast, plain = asyncio.run(parsed(HeaderClient())), asyncio.run(parsed(NATS()))
    assert fast == plain and fast is not None and fast["Eventfold-Position"] == "42"
    status = b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 3\r\n\r\n"
    assert asyncio.run(HeaderClient()._process_headers(status)) == asyncio.run(NATS()._process_headers(status))


def test_connect_makes_a_header_client(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[NATS] = []

    async def connected(self: NATS, **options: object) -> None:
        made.append(self)

    monkeypatch.setattr(NATS, "connect", connected)
    connection = asyncio.run(adapter.connect(adapter.JetStreamSettings()))
    assert made == [connection.client] and isinstance(connection.client, HeaderClient)
