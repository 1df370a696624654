"""Issue 10 items 1, 3, 8 and 11: headers that spoof identity or rewrite the request, and values outside ASCII.

Item 1 is shown end to end with a real WSGI upstream (the stdlib's wsgiref, as a PHP-era CGI upstream reads
headers): it files `X_Gateway_Token_Name` under the same `HTTP_X_GATEWAY_TOKEN_NAME` key as the gateway's own header.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from tests.conftest import BASE_CONFIG, PARTNER, READER, wait_until
from tests.security.wire import exchange, request


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class WsgiUpstream:
    """A stdlib WSGI server on a thread that keeps the `environ` of every request it served."""

    def __init__(self) -> None:
        self.environs: list[dict[str, str]] = []
        self.server: WSGIServer = make_server("127.0.0.1", 0, self.app, handler_class=_QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def app(self, environ, start_response):  # type: ignore[no-untyped-def]
        self.environs.append({k: v for k, v in environ.items() if isinstance(v, str)})
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
        return [b"{}"]


@pytest.fixture
def wsgi() -> Iterator[WsgiUpstream]:
    upstream = WsgiUpstream()
    upstream.thread.start()
    yield upstream
    upstream.server.shutdown()
    upstream.server.server_close()


# --- item 1: headers spelled with underscores -----------------------------------------------------------------------

SPOOFS = [
    ("X_Gateway_Token_Name", "admin", "HTTP_X_GATEWAY_TOKEN_NAME"),
    ("X_Gateway_Token_Id", "tok_admin", "HTTP_X_GATEWAY_TOKEN_ID"),
    ("X_Gateway_Company", "Evil", "HTTP_X_GATEWAY_COMPANY"),
    ("X_Forwarded_For", "10.0.0.1", "HTTP_X_FORWARDED_FOR"),
    ("X_Real_IP", "10.0.0.1", "HTTP_X_REAL_IP"),
    ("X_HTTP_Method_Override", "DELETE", "HTTP_X_HTTP_METHOD_OVERRIDE"),
    ("X-Gateway_Token-Name", "admin", "HTTP_X_GATEWAY_TOKEN_NAME"),
]


async def test_underscore_headers_never_reach_a_wsgi_upstream(start_gateway, wsgi):
    gw = await start_gateway(upstream_url=wsgi.url)
    headers = [(name, value) for name, value, _ in SPOOFS]

    result = await exchange(
        gw.port, request("GET", f"/v1/leads/search?auth_token={READER}", headers, close=True), timeout=5
    )

    assert result.responses[0].status == 200
    await wait_until(lambda: wsgi.environs)
    environ = wsgi.environs[-1]
    assert environ["HTTP_X_GATEWAY_TOKEN_NAME"] == "reader"
    assert environ["HTTP_X_GATEWAY_TOKEN_ID"].startswith("tok_")
    assert environ["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert "HTTP_X_GATEWAY_COMPANY" not in environ
    assert "HTTP_X_REAL_IP" not in environ
    assert "HTTP_X_HTTP_METHOD_OVERRIDE" not in environ
    assert environ["REQUEST_METHOD"] == "GET"


async def test_no_header_with_an_underscore_is_forwarded(gateway, upstream):
    response = await gateway.get(
        f"/v1/leads/search?auth_token={READER}",
        headers={"Auth_Token": "x", "My_Header": "y", "My-Header": "z"},
    )

    assert response.status == 200
    names = upstream.last().header_names()
    assert not any("_" in name for name in names)
    assert upstream.last().header("My-Header") == "z"


# --- item 3: headers that make a framework run another path or method -----------------------------------------------

REWRITES = [
    ("X-Original-URL", "/v1/admin/users"),
    ("X-Rewrite-URL", "/v1/admin/users"),
    ("X-Original-Method", "DELETE"),
    ("X-Forwarded-Method", "DELETE"),
    ("X-Forwarded-Uri", "/v1/admin/users"),
    ("X-Forwarded-Prefix", "/v1/admin"),
    ("X-Forwarded-Path", "/v1/admin/users"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-HTTP-Method-Override", "DELETE"),
]


@pytest.mark.parametrize(("name", "value"), REWRITES)
async def test_headers_that_rewrite_the_path_or_method_are_removed(gateway, upstream, name, value):
    response = await gateway.get(f"/v1/leads/search?auth_token={READER}", headers={name: value})

    assert response.status == 200
    assert name.lower() not in upstream.last().header_names()
    assert upstream.last().method == "GET"


# --- item 8: every Connection header counts -------------------------------------------------------------------------


async def test_headers_named_in_any_connection_header_are_hop_by_hop(gateway, upstream):
    headers = [
        ("Connection", "X-First"),
        ("Connection", "keep-alive, X-Second"),
        ("X-First", "1"),
        ("X-Second", "2"),
        ("X-Third", "3"),
    ]

    result = await exchange(
        gateway.port, request("GET", f"/v1/leads/search?auth_token={READER}", headers, close=True), timeout=5
    )

    assert result.responses[0].status == 200
    names = upstream.last().header_names()
    assert "x-first" not in names
    assert "x-second" not in names
    assert upstream.last().header("X-Third") == "3"


# --- item 11: names outside Latin-1, and client header bytes outside ASCII ------------------------------------------

UNICODE_TOKENS = """
[[tokens]]
name = "東京-team"
secret = "tokyo-secret-0010"
type = "external"
company = "株式会社"
permissions = ["cases:history"]

[[tokens]]
name = "Müller"
secret = "muller-secret-0011"
permissions = ["leads:read"]
"""


async def test_a_token_name_outside_latin1_reaches_the_upstream_percent_encoded(start_gateway, upstream):
    gw = await start_gateway(text=BASE_CONFIG + UNICODE_TOKENS)

    response = await gw.get("/v1/cases/history?auth_token=tokyo-secret-0010")
    assert response.status == 200
    assert upstream.last().header("X-Gateway-Token-Name") == "%E6%9D%B1%E4%BA%AC-team"
    assert upstream.last().header("X-Gateway-Company") == "%E6%A0%AA%E5%BC%8F%E4%BC%9A%E7%A4%BE"

    response = await gw.get("/v1/leads/search?auth_token=muller-secret-0011")
    assert response.status == 200
    assert upstream.last().header("X-Gateway-Token-Name") == "M%C3%BCller"

    records = await wait_until(lambda: [r for r in gw.log_lines() if r["status"] == 200] or None)
    assert {r["token_name"] for r in records} >= {"東京-team"}


async def test_an_ascii_company_is_unchanged(gateway, upstream):
    response = await gateway.get(f"/v1/cases/history?auth_token={PARTNER}")

    assert response.status == 200
    assert upstream.last().header("X-Gateway-Company") == "Acme"


@pytest.mark.parametrize("value", ["café".encode(), "東京".encode(), b"\xff\xfe bytes that are not UTF-8"])
async def test_client_header_bytes_outside_ascii_pass_through_byte_for_byte(gateway, upstream, value):
    data = (
        f"GET /v1/leads/search?auth_token={READER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + b"X-Note: "
        + value
        + b"\r\n\r\n"
    )

    result = await exchange(gateway.port, data, timeout=5)

    (response,) = result.responses
    assert response.status == 200, result.data
    assert upstream.last().header("X-Note").encode("latin-1") == value


async def test_an_upstream_header_outside_ascii_reaches_the_client_unchanged(start_gateway):
    # A raw socket upstream, so that the header bytes are exactly these.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Label: caf\xc3\xa9 \xe9\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await start_gateway(upstream_url=f"http://127.0.0.1:{port}")
        result = await exchange(
            gw.port, request("GET", f"/v1/leads/search?auth_token={READER}", close=True), timeout=5
        )
        assert b"\r\nX-Label: caf\xc3\xa9 \xe9\r\n" in result.data
    finally:
        server.close()
        await server.wait_closed()
