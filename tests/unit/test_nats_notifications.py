"""A fetch's messages become the notifications ``notification_from`` makes of them (the adapter inlines
it for the usual, untraced message); a message without Eventfold headers is skipped with a warning."""

from __future__ import annotations

import logging
from uuid import uuid4

import pytest
from nats.aio.msg import Msg

from framework.adapters.nats import _notifications, notification_from
from framework.tracing import TracedNotification, trace_context_of


def _message(headers: dict[str, str] | None, data: bytes = b'{"a": 1}') -> Msg:
    return Msg(None, subject="eventfold.events.Thing.x", reply="$JS.ACK.s.c.1.7.7.1.0",  # type: ignore[arg-type]
               data=data, headers=headers)


def _headers(position: int, **extra: str) -> dict[str, str]:
    return {"Nats-Msg-Id": str(position), "Eventfold-Position": str(position), "Eventfold-Event": "Credited",
            "Eventfold-Aggregate-Id": str(uuid4()), "Eventfold-Aggregate-Version": "3", **extra}


def test_messages_become_the_notifications_notification_from_makes() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    messages = [_message(_headers(1)), _message(_headers(2, traceparent=parent, tracestate="k=v")),
                _message(_headers(3, traceparent=""))]
    made = _notifications(messages, "c")
    assert made == [notification_from(m.headers or {}, m.data) for m in messages]
    assert [n.id for n in made] == [1, 2, 3]
    assert not isinstance(made[0], TracedNotification) and not isinstance(made[2], TracedNotification)
    assert trace_context_of(made[1]) == {"traceparent": parent, "tracestate": "k=v"}
    assert made[0].state == b'{"a": 1}' and made[0].originator_version == 3 and made[0].topic == "Credited"


@pytest.mark.parametrize("headers", [None, {}, {**_headers(4), "Eventfold-Position": "four"},
                                     {k: v for k, v in _headers(5).items() if k != "Eventfold-Event"},
                                     {**_headers(6), "Eventfold-Aggregate-Id": "not-a-uuid"}])
def test_a_message_without_eventfold_headers_is_skipped_with_a_warning(
    headers: dict[str, str] | None, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="framework.adapters.nats"):
        assert [n.id for n in _notifications([_message(headers), _message(_headers(7))], "c")] == [7]
    assert "lacks Eventfold headers" in caplog.text
