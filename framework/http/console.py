"""``/console/``: the operator console, three static files shipped in the package (``framework/console/``).

The page loads nothing else: its script calls the operations API (``/ops/...``, ``framework.http.operator``)
with ``fetch``, as any program would, and the Content-Security-Policy sent with every file forbids
fetching from anywhere but this server.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["CONSOLE_FILES", "console_routes"]

CONSOLE_FILES = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
                 "console.css": "text/css; charset=utf-8"}
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
           "frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer"}


def console_routes() -> list[BaseRoute]:
    """``GET /console/`` (the page), ``/console/console.js`` and ``/console/console.css``; ``/console`` redirects."""
    contents = {name: (files("framework") / "console" / name).read_bytes() for name in CONSOLE_FILES}

    async def page(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        if name not in contents:
            return Response("no such file in the console\n", status_code=404, media_type="text/plain")
        return Response(contents[name], media_type=CONSOLE_FILES[name], headers=_HEADERS)

    async def bare(_: Request) -> Response:
        return RedirectResponse("console/", status_code=308)  # relative: never built from the Host header

    return [Route("/console", bare, methods=["GET"]), Route("/console/", page, methods=["GET"]),
            Route("/console/{name}", page, methods=["GET"])]
