"""Hostile input over real HTTP (issue 10, rows 4, 5, 8, 10, 11 and 13): the servers refuse cleanly.

Every test talks to real servers in subprocesses (``eventfold write-api``, ``query-api`` and ``dev``) on a
real PostgreSQL, with httpx or raw sockets where a client must misbehave in ways httpx will not (slow,
oversized, cut short). A refusal changes nothing: the event store's head is checked where a command
could have been written.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from http_helpers import accepted, assert_no_traceback, new_code, new_isin, problem
from support.http import CliServer, clean_env, eventfold_executable
from support.postgres import PgDatabase, PostgresServer
from support.tokens import AUDIENCE, ISSUER, Issuer, make_issuer

from framework.adapters.postgres import PostgresEventStore

pytestmark = pytest.mark.postgres

HEADER_TIMEOUT = 2  # seconds: the limits server's EVENTFOLD_HEADER_TIMEOUT_SECONDS and BODY_TIMEOUT_SECONDS
MAX_CONNECTIONS = 6
SOCKET_WAIT = 15.0  # how long a raw client waits for the server to act before calling the connection "held"


# --- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def schema(pg_database: PgDatabase) -> Iterator[str]:
    with pg_database.fresh_schema("hostile") as name:
        yield name


def server_env(pg_database: PgDatabase, schema: str, issuer: Issuer, **extra: str) -> dict[str, str]:
    return clean_env(
        EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=schema, EVENTFOLD_DB_POOL_SIZE="2",
        EVENTFOLD_ALLOW_ANONYMOUS="false", EVENTFOLD_JWKS_FILE=str(issuer.jwks_file),
        EVENTFOLD_JWT_ALGORITHMS="RS256", EVENTFOLD_JWT_ISSUER=ISSUER, EVENTFOLD_JWT_AUDIENCE=AUDIENCE,
        EVENTFOLD_MAX_BODY_BYTES="16384", **{"EVENTFOLD_RATE_LIMIT_PER_SECOND": "100000", **extra})


@pytest.fixture(scope="module")
def write_api(pg_database: PgDatabase, schema: str, issuer: Issuer) -> Iterator[CliServer]:
    env = server_env(pg_database, schema, issuer)
    init = _run_cli("init-db", env)
    assert init.returncode == 0, init.stderr
    with CliServer("write-api", env) as server:
        yield server


@pytest.fixture(scope="module")
def checker(pg_database: PgDatabase, schema: str, write_api: CliServer) -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(pg_database.settings(schema))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def limited(pg_database: PgDatabase, schema: str, issuer: Issuer, write_api: CliServer) -> Iterator[CliServer]:
    """A write API with small limits: header and body timeouts, connections, header bytes, request rate.

    The main server's rate limit is out of reach: many tests share one token subject, and a slow moment
    of the machine must not turn their requests into 429s."""
    env = server_env(pg_database, schema, issuer, EVENTFOLD_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
                     EVENTFOLD_RATE_LIMIT_PER_SECOND="20",
                     EVENTFOLD_BODY_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
                     EVENTFOLD_MAX_CONNECTIONS=str(MAX_CONNECTIONS), EVENTFOLD_MAX_HEADER_BYTES="16384")
    with CliServer("write-api", env) as server:
        yield server


@pytest.fixture(scope="module")
def query_api(pg_database: PgDatabase, schema: str, issuer: Issuer, write_api: CliServer) -> Iterator[CliServer]:
    with CliServer("query-api", server_env(pg_database, schema, issuer)) as server:
        yield server


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    store = tmp_path_factory.mktemp("dev") / "events.sqlite3"
    with CliServer("dev", clean_env(EVENTFOLD_SQLITE_PATH=str(store))) as server:
        yield server


@pytest.fixture
def custody(write_api: CliServer, issuer: Issuer) -> Iterator[httpx.Client]:
    """A client with a `custody` token; every response is checked for leaked tracebacks."""
    token = issuer.bearer("custodian", roles=["custody", "registrar", "corporate-actions"])
    with _client(write_api.base_url, token) as client:
        yield client


def _client(base_url: str, headers: dict[str, str]) -> httpx.Client:
    def check(response: httpx.Response) -> None:
        response.read()
        assert_no_traceback(response)

    return httpx.Client(base_url=base_url, headers=headers, timeout=30, event_hooks={"response": [check]})


def _run_cli(role: str, env: dict[str, str]) -> Any:
    import subprocess

    return subprocess.run([eventfold_executable(), role], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def _security(client: httpx.Client) -> str:
    isin = new_isin()
    accepted(client.post("/commands/RegisterSecurity", json={"isin": isin, "name": "Hostile Plc", "currency": "EUR"}))
    return isin


def _account(client: httpx.Client) -> str:
    number = new_code("H")
    accepted(client.post("/commands/OpenAccount", json={"account_number": number, "holder_name": "Ann"}))
    return number


# --- row 4: commands are strict ------------------------------------------------------------------


def test_a_nul_character_and_a_4001_digit_number_are_422_at_their_paths(
    custody: httpx.Client, issuer: Issuer, write_api: CliServer, checker: PostgresEventStore
) -> None:
    head = checker.head()
    opening = {"account_number": new_code("H"), "holder_name": "Ann\u0000"}
    body = problem(custody.post("/commands/OpenAccount", json=opening), 422, "invalid_command")
    assert [e["path"] for e in body["errors"]] == ["/holder_name"], body
    split = {"action_id": new_code("CA"), "isin": new_isin(), "record_date": "2026-06-30",
             "terms": {"kind": "stock_split", "new_units": int("9" * 4001), "old_units": 1}}
    with _client(write_api.base_url, issuer.bearer("actions", roles=["corporate-actions"])) as actions:
        body = problem(actions.post("/commands/AnnounceCorporateAction", json=split), 422, "invalid_command")
    assert [e["path"] for e in body["errors"]] == ["/terms/new_units"], body
    assert checker.head() == head


@pytest.mark.parametrize("quantity", [True, "7", 7.5, 7.0, "0x7", [7], {"n": 7}])
def test_a_quantity_must_be_a_json_integer(
    custody: httpx.Client, checker: PostgresEventStore, quantity: Any
) -> None:
    number, isin = _account(custody), _security(custody)
    head = checker.head()
    body = problem(custody.post("/commands/CreditHoldings",
                                json={"account_number": number, "isin": isin, "quantity": quantity}),
                   422, "invalid_command")
    assert [e["path"] for e in body["errors"]] == ["/quantity"], body
    assert checker.head() == head


@pytest.mark.parametrize("name", [5, 5.5, True, ["Ann"]])
def test_a_string_field_takes_only_a_json_string(custody: httpx.Client, checker: PostgresEventStore, name: Any) -> None:
    head = checker.head()
    body = problem(custody.post("/commands/OpenAccount", json={"account_number": new_code("H"), "holder_name": name}),
                   422, "invalid_command")
    assert [e["path"] for e in body["errors"]] == ["/holder_name"], body
    assert checker.head() == head


def test_json_s_natural_forms_are_accepted(write_api: CliServer, issuer: Issuer, custody: httpx.Client) -> None:
    """Dates as ISO strings, decimals as strings or numbers, enums as their values."""
    isin, number = _security(custody), _account(custody)
    accepted(custody.post("/commands/CreditHoldings", json={"account_number": number, "isin": isin, "quantity": 10}))
    with _client(write_api.base_url, issuer.bearer("actions", roles=["corporate-actions"])) as client:
        for amount in ("0.25", 0.25, 1):
            accepted(client.post("/commands/AnnounceCorporateAction", json={
                "action_id": new_code("CA"), "isin": isin, "record_date": "2026-06-30", "payment_date": "2026-07-15",
                "terms": {"kind": "cash_dividend", "amount_per_unit": amount, "currency": "EUR"}}))


# --- row 5: JSON and nothing else ----------------------------------------------------------------


def test_duplicate_keys_are_refused(custody: httpx.Client, checker: PostgresEventStore) -> None:
    number, isin = _account(custody), _security(custody)
    head = checker.head()
    raw = f'{{"account_number": "{number}", "isin": "{isin}", "quantity": 1, "quantity": 1000000}}'
    body = problem(custody.post("/commands/CreditHoldings", content=raw, headers={"content-type": "application/json"}),
                   400, "malformed_json")
    assert "quantity" in body["detail"], body
    nested = ('{"action_id": "CA-dup", "isin": "' + isin + '", "record_date": "2026-06-30", '
              '"terms": {"kind": "coupon", "kind": "stock_split", "new_units": 2, "old_units": 1}}')
    problem(custody.post("/commands/AnnounceCorporateAction", content=nested,
                         headers={"content-type": "application/json"}), 400, "malformed_json")
    assert checker.head() == head


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data",
    "application/evil+json", "application/problem+json", "application/json; charset=utf-16",
    "application/json; charset=latin-1", "application/jsonp", "json", "",
])
def test_only_application_json_is_accepted(
    custody: httpx.Client, checker: PostgresEventStore, content_type: str | None
) -> None:
    head = checker.head()
    body = json.dumps({"account_number": new_code("H"), "holder_name": "Cross Site"}).encode()
    headers = {} if content_type is None else {"content-type": content_type}
    request = custody.build_request("POST", "/commands/OpenAccount", content=body, headers=headers)
    assert ("content-type" in request.headers) == (content_type is not None)
    problem(custody.send(request), 415, "unsupported_media_type")
    assert checker.head() == head


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON", "application/json; charset=utf-8", "application/json;charset=UTF-8",
    'application/json; charset="utf-8"',
])
def test_application_json_with_an_optional_utf8_charset_is_accepted(custody: httpx.Client, content_type: str) -> None:
    body = json.dumps({"account_number": new_code("H"), "holder_name": "Ann"})
    accepted(custody.post("/commands/OpenAccount", content=body, headers={"content-type": content_type}))


@pytest.mark.parametrize("encode", [
    lambda text: b"\xef\xbb\xbf" + text.encode(), lambda text: text.encode("utf-16"),
    lambda text: text.encode("utf-16-le"), lambda text: text.encode("utf-32"), lambda text: text.encode("latin-1"),
], ids=["bom", "utf-16", "utf-16-le", "utf-32", "latin-1"])
def test_a_body_that_is_not_plain_utf8_is_malformed(
    custody: httpx.Client, checker: PostgresEventStore, encode: Any
) -> None:
    head = checker.head()
    text = json.dumps({"account_number": new_code("H"), "holder_name": "Zoë"}, ensure_ascii=False)
    problem(custody.post("/commands/OpenAccount", content=encode(text), headers={"content-type": "application/json"}),
            400, "malformed_json")
    assert checker.head() == head


# --- row 10: no redirect that echoes Host ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/commands/OpenAccount/", "/healthz/", "/openapi.json/", "/commands/"])
def test_a_trailing_slash_is_a_404_problem_not_a_redirect(write_api: CliServer, dev: CliServer, path: str) -> None:
    for base in (write_api.base_url, dev.base_url):
        response = httpx.post(base + path, json={}, headers={"Host": "evil.example"}, timeout=30)
        assert "location" not in response.headers, response.headers
        problem(response, 404, "not_found")


def test_dev_does_not_redirect_graphql_with_a_slash_to_another_host(dev: CliServer) -> None:
    response = httpx.post(dev.base_url + "/graphql/", json={"query": "{ __typename }"},
                          headers={"Host": "evil.example"}, timeout=30)
    assert response.status_code == 404 and "location" not in response.headers, (response.status_code, response.headers)


# --- row 13: the correlation id comes back on every response ---------------------------------------


def test_the_write_api_echoes_the_correlation_id_on_every_response(
    write_api: CliServer, limited: CliServer, issuer: Issuer, custody: httpx.Client
) -> None:
    anonymous = httpx.Client(base_url=write_api.base_url, timeout=30)
    hasty = _client(limited.base_url, issuer.bearer("hasty", roles=["custody"]))
    ops = _client(write_api.base_url, issuer.bearer("ops", roles=["ops"]))
    opening = {"account_number": new_code("H"), "holder_name": "Ann"}
    sent = {
        200: lambda h: custody.post("/commands/OpenAccount", json={**opening, "account_number": new_code("H")},
                                    headers=h),
        400: lambda h: custody.post("/commands/OpenAccount", content=b"{",
                                    headers={**h, "content-type": "application/json"}),
        401: lambda h: anonymous.post("/commands/OpenAccount", json=opening, headers=h),
        403: lambda h: ops.post("/commands/OpenAccount", json=opening, headers=h),
        404: lambda h: custody.post("/commands/LaunchRocket", json={}, headers=h),
        405: lambda h: custody.get("/commands/OpenAccount", headers=h),
        413: lambda h: custody.post("/commands/OpenAccount", json={"holder_name": "x" * 20_000}, headers=h),
        415: lambda h: custody.post("/commands/OpenAccount", content=b"{}",
                                    headers={**h, "content-type": "text/plain"}),
        422: lambda h: custody.post("/commands/OpenAccount", json={"quantity": True}, headers=h),
    }
    with anonymous, hasty, ops:
        for status, send in sent.items():
            response = send({"X-Correlation-ID": f"corr-{status}"})
            assert response.status_code == status, (status, response.text)
            assert response.headers.get("x-correlation-id") == f"corr-{status}", (status, response.headers)
        no_route = httpx.get(f"{write_api.base_url}/nowhere", headers={"X-Correlation-ID": "corr-route"}, timeout=30)
        assert (no_route.status_code, no_route.headers.get("x-correlation-id")) == (404, "corr-route")
        for _ in range(200):  # bounded: 20 a second is the limit
            refused = hasty.post("/commands/OpenAccount", json=opening, headers={"X-Correlation-ID": "corr-429"})
            if refused.status_code == 429:
                break
        assert (refused.status_code, refused.headers.get("x-correlation-id")) == (429, "corr-429")


@pytest.mark.parametrize("bad", ["a b", "x" * 256, "é", "", "<script>", 'a"b', "a\\b"])
def test_a_bad_correlation_id_is_replaced_not_refused(custody: httpx.Client, bad: str) -> None:
    request = custody.build_request("POST", "/commands/OpenAccount", headers={"X-Correlation-ID": bad.encode()},
                                    json={"account_number": new_code("H"), "holder_name": "Ann"})
    response = custody.send(request)
    accepted(response)
    echoed = response.headers["x-correlation-id"]
    assert echoed and echoed != bad and len(echoed) <= 255 and echoed.isascii(), echoed


def test_a_missing_correlation_id_gets_a_new_one_on_errors_too(custody: httpx.Client) -> None:
    first = custody.post("/commands/LaunchRocket", json={})
    second = custody.post("/commands/LaunchRocket", json={})
    assert first.headers["x-correlation-id"] != second.headers["x-correlation-id"]


def test_the_query_api_and_dev_echo_the_correlation_id(query_api: CliServer, dev: CliServer, issuer: Issuer) -> None:
    token = issuer.bearer("reader", roles=["ops"])
    cases = [
        (query_api.base_url, "/graphql", {"json": {"query": "{ __typename }"}, "headers": token}, 200),
        (query_api.base_url, "/graphql", {"json": {"query": "{ __typename }"}}, 401),
        (query_api.base_url, "/graphql", {"content": b"x" * 70_000, "headers": token}, 413),
        (query_api.base_url, "/graphql", {"content": b"{", "headers": {**token, "content-type": "application/json"}},
         400),
        (query_api.base_url, "/readyz", {}, 200),
        (dev.base_url, "/graphql", {"json": {"query": "{ __typename }"}}, 200),
        (dev.base_url, "/commands/LaunchRocket", {"json": {}}, 404),
        (dev.base_url, "/openapi.json", {}, 200),
    ]
    for base, path, kwargs, status in cases:
        headers = {**kwargs.pop("headers", {}), "X-Correlation-ID": f"corr-{status}"}
        method = "GET" if path in ("/readyz", "/openapi.json") else "POST"
        response = httpx.request(method, base + path, headers=headers, timeout=30, **kwargs)
        assert response.status_code == status, (base, path, response.status_code, response.text)
        assert response.headers.get("x-correlation-id") == f"corr-{status}", (base, path, response.headers)


# --- row 8: limits on headers, slow clients, connections ------------------------------------------


def _connect(server: CliServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_WAIT)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a server that holds the connection fails the test."""
    received = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server held the connection; got {bytes(received[:200])!r}") from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        received.extend(chunk)
    return bytes(received)


def _status_and_body(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _assert_problem(raw: bytes, status: int) -> None:
    got, headers, body = _status_and_body(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/problem+json"), headers
    assert json.loads(body)["status"] == status


def _request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_an_8_mb_authorization_header_is_refused_not_held(limited: CliServer) -> None:
    head = _request_head("/commands/OpenAccount", {"Authorization": "Bearer " + "a" * 8_000_000,
                                                   "Content-Type": "application/json", "Content-Length": "2"})
    with _connect(limited) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, head + b"{}"), daemon=True)
        sender.start()
        raw = _read_all(sock)
    assert raw, "the connection was dropped without an answer"
    _assert_problem(raw, 431)
    assert httpx.get(f"{limited.base_url}/healthz", timeout=30).status_code == 200


def test_a_long_request_line_is_refused(limited: CliServer) -> None:
    with _connect(limited) as sock:
        threading.Thread(target=_send_quietly, args=(sock, _request_head("/commands/" + "A" * 100_000, {})),
                         daemon=True).start()
        raw = _read_all(sock)
    _assert_problem(raw, 431)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_headers_that_never_finish_are_answered_408_and_closed(limited: CliServer) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"POST /commands/OpenAccount HTTP/1.1\r\nHost: x\r\n")
        stop = threading.Event()

        def trickle() -> None:  # a slowloris: one header line a second, never the blank line
            for n in range(int(SOCKET_WAIT)):
                if stop.wait(1.0):
                    return
                with contextlib.suppress(OSError):
                    sock.sendall(f"X-Slow-{n}: y\r\n".encode())

        threading.Thread(target=trickle, daemon=True).start()
        try:
            raw = _read_all(sock)
        finally:
            stop.set()
    _assert_problem(raw, 408)


def test_an_idle_connection_is_closed(limited: CliServer) -> None:
    with _connect(limited) as sock:
        assert _read_all(sock) == b""


def test_a_body_that_never_finishes_is_answered_408_and_closed(limited: CliServer, issuer: Issuer) -> None:
    token = issuer.token("slow", roles=["custody"])
    with _connect(limited) as sock:
        sock.sendall(_request_head("/commands/OpenAccount", {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Content-Length": "200",
            "X-Correlation-ID": "corr-slow"}) + b'{"account_number": ')
        raw = _read_all(sock)
    _assert_problem(raw, 408)
    assert _status_and_body(raw)[1].get("x-correlation-id") == "corr-slow"


def test_connections_over_the_limit_get_503_problem(limited: CliServer) -> None:
    idle = [_connect(limited) for _ in range(MAX_CONNECTIONS)]
    try:
        response = httpx.get(f"{limited.base_url}/healthz", timeout=30)
        problem(response, 503, "too_many_connections")
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_goes_away_is_no_error_in_the_log(pg_database: PgDatabase, schema: str, issuer: Issuer) -> None:
    """Bodies cut short and requests abandoned, on both APIs: no ERROR, no traceback, and they still answer."""
    token = issuer.token("leaver", roles=["custody"])
    env = server_env(pg_database, schema, issuer)
    with CliServer("write-api", env) as writes, CliServer("query-api", env) as reads:
        for server, path in ((writes, "/commands/OpenAccount"), (reads, "/graphql")):
            for _ in range(5):
                with _connect(server) as sock:
                    sock.sendall(_request_head(path, {
                        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Content-Length": "500"}) + b'{"account_number": "A')
            assert httpx.get(f"{server.base_url}/healthz", timeout=30).status_code == 200
    for server in (writes, reads):
        assert "ERROR" not in server.stderr and "Traceback" not in server.stderr, server.stderr[-3000:]
        assert "ClientDisconnect" not in server.stderr


# --- row 11: a store outage in our words -----------------------------------------------------------


def test_a_database_outage_is_told_in_our_words(private_postgres: PostgresServer, issuer: Issuer) -> None:
    """PostgreSQL shut down under both APIs: 503 details and /readyz name the dependency, never the driver."""
    cluster = private_postgres.cluster
    assert cluster is not None
    env = clean_env(EVENTFOLD_DATABASE_URL=private_postgres.url("postgres"), EVENTFOLD_DB_POOL_SIZE="2",
                    EVENTFOLD_DB_CONNECT_TIMEOUT="1", EVENTFOLD_ALLOW_ANONYMOUS="false",
                    EVENTFOLD_JWKS_FILE=str(issuer.jwks_file), EVENTFOLD_JWT_ALGORITHMS="RS256",
                    EVENTFOLD_JWT_ISSUER=ISSUER, EVENTFOLD_JWT_AUDIENCE=AUDIENCE)
    assert _run_cli("init-db", env).returncode == 0
    token = issuer.bearer("custodian", roles=["custody"])
    with CliServer("write-api", env) as writes, CliServer("query-api", env) as reads:
        opening = {"account_number": new_code("PG"), "holder_name": "Outage"}
        accepted(httpx.post(f"{writes.base_url}/commands/OpenAccount", json=opening, headers=token, timeout=30))
        cluster.pause()
        try:
            for _ in range(3):
                response = httpx.post(f"{writes.base_url}/commands/OpenAccount", headers=token, timeout=30,
                                      json={"account_number": new_code("PG"), "holder_name": "Outage"})
                body = problem(response, 503, "store_unavailable")
                _in_our_words(body["detail"])
            for server in (writes, reads):
                ready = httpx.get(f"{server.base_url}/readyz", timeout=30)
                assert ready.status_code == 503, ready.text
                report = ready.json()
                assert "event_store" in report["failed"], report
                assert report["checks"]["event_store"] == "unavailable", report
                for check in report["checks"].values():
                    _in_our_words(check)
        finally:
            cluster.resume()
    assert "terminating connection" in writes.stderr or "PostgreSQL" in writes.stderr  # the why is logged


def _in_our_words(text: str) -> None:
    lowered = text.lower()
    for driver_wording in ("terminating", "administrator", "server closed", "connection", "psycopg", "refused",
                           "consuming input", "postgresql", "("):
        assert driver_wording not in lowered, text
