"""The HTTP server's coalescing transport (framework.http.server): an answer's head goes out with its body
in one send, and nothing it holds waits past the end of the event loop's turn."""

from __future__ import annotations

import asyncio

from framework.http.server import _CoalescingTransport


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def _coalescing() -> tuple[_CoalescingTransport, _Transport, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    raw = _Transport()
    return _CoalescingTransport(raw, loop), raw, loop  # type: ignore[arg-type]


def _turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_a_head_and_the_body_written_after_it_leave_in_one_send() -> None:
    transport, raw, loop = _coalescing()
    transport.hold_next = True
    transport.write(HEAD)
    assert raw.sent == []
    transport.write(b"{}")
    assert raw.sent == [HEAD + b"{}"]
    _turn(loop)
    assert raw.sent == [HEAD + b"{}"]  # nothing left to send at the end of the turn
    loop.close()


def test_a_head_alone_goes_out_at_the_end_of_the_turn() -> None:
    transport, raw, loop = _coalescing()
    transport.hold_next = True
    transport.write(HEAD)
    _turn(loop)
    assert raw.sent == [HEAD]
    transport.write(b"{}")  # a streamed body's part, later: at once
    assert raw.sent == [HEAD, b"{}"]
    loop.close()


def test_an_interim_answer_is_not_held_and_closing_sends_what_is_held_first() -> None:
    transport, raw, loop = _coalescing()
    transport.hold_next = True
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert raw.sent == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    transport.hold_next = True
    transport.write(HEAD)
    transport.close()
    assert raw.sent[-1] == HEAD and raw.closed
    _turn(loop)  # the scheduled flush finds nothing more to send, and does not write after the close
    assert raw.sent.count(HEAD) == 1
    assert transport.get_extra_info("peername") == "info peername"  # the rest of the interface, as it is
    loop.close()


def test_without_hold_every_write_goes_at_once() -> None:
    transport, raw, loop = _coalescing()
    transport.write(b"a")
    transport.write(b"b")
    assert raw.sent == [b"a", b"b"]
    loop.close()


def test_a_second_held_head_keeps_the_first_in_front_of_it() -> None:
    transport, raw, loop = _coalescing()
    transport.hold_next = True
    transport.write(HEAD)  # a HEAD request's answer: a head and no body
    transport.hold_next = True
    transport.write(HEAD)  # the next answer's head, in the same turn
    transport.write(b"{}")
    assert raw.sent == [HEAD + HEAD + b"{}"]
    _turn(loop)
    assert raw.sent == [HEAD + HEAD + b"{}"]
    loop.close()
