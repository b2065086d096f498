"""The edge of the APIs (framework.http.edge): correlation ids, clients that go away, errors nobody handled."""

from __future__ import annotations

import logging
import warnings
from uuid import UUID

import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from framework.http.edge import EdgeApp
from framework.observe import correlation_id

with warnings.catch_warnings():  # starlette would rather have httpx2, which is not installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


async def _seen(_: Request) -> Response:
    return JSONResponse({"seen": correlation_id.get()}, headers={"X-Correlation-ID": "the app's own"})


async def _gone(_: Request) -> Response:
    raise ClientDisconnect()


async def _broken(_: Request) -> Response:
    raise RuntimeError("boom")


def _app() -> EdgeApp:
    inner = EdgeApp(routes=[Route("/inner", _seen)])
    return EdgeApp(routes=[Route("/seen", _seen), Route("/gone", _gone), Route("/broken", _broken),
                           Mount("/", app=inner)])


def test_the_correlation_id_is_the_request_s_and_is_echoed_once_even_through_a_mounted_edge() -> None:
    with TestClient(_app()) as client:
        for path in ("/seen", "/inner"):
            response = client.get(path, headers={"X-Correlation-ID": "corr-1"})
            assert response.headers.get_list("x-correlation-id") == ["corr-1"], path
            assert response.json() == {"seen": "corr-1"}  # logs during the request carry it


def test_without_one_a_new_id_is_made_per_request() -> None:
    with TestClient(_app()) as client:
        ids = {client.get("/seen").headers["x-correlation-id"] for _ in range(3)}
    assert len(ids) == 3 and all(UUID(i) for i in ids)


def test_a_client_that_went_away_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="framework.http.edge"), TestClient(_app()) as client:
        client.get("/gone")
    assert [r.levelno for r in caplog.records if r.name == "framework.http.edge"] == [logging.DEBUG]


def test_an_error_nobody_handled_is_a_problem_with_the_correlation_id_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), TestClient(_app(), raise_server_exceptions=False) as client:
        response = client.get("/broken", headers={"X-Correlation-ID": "corr-500"})
    assert response.status_code == 500
    assert response.headers["x-correlation-id"] == "corr-500"
    assert "boom" not in response.text
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
