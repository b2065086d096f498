"""A graphql-transport-ws client for tests, on the ``websockets`` package's synchronous client."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

__all__ = ["LiveClient", "Refused"]

PROTOCOL = "graphql-transport-ws"


class Refused(Exception):
    """The server closed the socket: ``code`` and ``reason`` say why."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code, self.reason = code, reason


class LiveClient:
    """One WebSocket to ``/graphql``: ``connection_init`` (with ``authorization`` in its payload when
    given), then ``subscribe`` and ``receive`` the messages of the protocol."""

    def __init__(self, base_url: str, *, authorization: str | None = None, timeout: float = 15,
                 max_queue: int | None = 16) -> None:
        url = base_url.replace("http://", "ws://", 1) + "/graphql"
        self.timeout = timeout
        self.ws: ClientConnection = connect(url, subprotocols=[PROTOCOL], open_timeout=timeout,  # type: ignore[list-item]
                                            max_queue=max_queue).__enter__()
        payload = {} if authorization is None else {"Authorization": authorization}
        self.send({"type": "connection_init", "payload": payload})
        ack = self.receive()
        assert ack["type"] == "connection_ack", ack

    def send(self, message: Mapping[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def subscribe(self, id_: str, query: str, variables: Mapping[str, Any] | None = None) -> None:
        self.send({"id": id_, "type": "subscribe", "payload": {"query": query, "variables": dict(variables or {})}})

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message other than a ping (answered); ``Refused`` when the server closed the socket."""
        while True:
            try:
                raw = self.ws.recv(timeout=timeout or self.timeout)
            except ConnectionClosed as closed:
                received = closed.rcvd
                raise Refused(received.code if received else None, received.reason if received else "") from None
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") == "ping":
                self.send({"type": "pong"})
                continue
            return message

    def next_data(self, id_: str, timeout: float | None = None) -> dict[str, Any]:
        """The data of the next ``next`` message for ``id_`` (failing on anything else)."""
        message = self.receive(timeout)
        assert message.get("id") == id_ and message["type"] == "next", message
        assert "errors" not in message["payload"], message
        data: dict[str, Any] = message["payload"]["data"]
        return data

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> LiveClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.close()
