"""The GraphQL explorer: a page of our own (query, variables, headers, a schema browser from
introspection) served beside ``/graphql`` at ``/graphql/explorer``. It loads nothing from the
internet: its script and style are package data served by the same app, and its
Content-Security-Policy lets the page reach its own origin only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["explorer_routes"]

_FILES = {"index.html": "text/html; charset=utf-8", "explorer.js": "text/javascript; charset=utf-8",
          "explorer.css": "text/css; charset=utf-8"}
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
           " base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _read(name: str) -> bytes:
    return resources.files("framework.graphql").joinpath("static", name).read_bytes()


def _serving(name: str) -> Callable[[Request], Awaitable[Response]]:
    body, media = _read(name), _FILES[name]

    async def serve(_: Request) -> Response:
        return Response(body, media_type=media, headers={
            "Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    return serve


def explorer_routes(graphql_path: str = "/graphql") -> list[Route]:
    """``GET <graphql_path>/explorer`` and its two assets."""
    page = f"{graphql_path}/explorer"
    return [Route(page, _serving("index.html"), methods=["GET"]),
            Route(f"{page}/explorer.js", _serving("explorer.js"), methods=["GET"]),
            Route(f"{page}/explorer.css", _serving("explorer.css"), methods=["GET"])]
