"""Upstream faults: 502/504 while no response headers were sent, an aborted client connection once they were, an
`upstream_error` record either way, and a broken upstream connection never goes back to the pool."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from tests.conftest import READER, free_port, wait_until
from tests.security.wire import exchange, parse_responses, request

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FAST = {"upstream": {"timeout": "500ms", "connect_timeout": "500ms"}}
GET = request("GET", "/v1/leads/search", [("Authorization", f"Bearer {READER}")], close=True)


@asynccontextmanager
async def raw_upstream(behaviour: Behaviour) -> AsyncIterator[dict]:
    """An upstream on a real socket that reads one request head, then does whatever `behaviour` says."""
    stats = {"connections": 0, "requests": 0, "url": ""}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                stats["requests"] += 1
                await behaviour(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    stats["url"] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield stats
    finally:
        server.close()
        await server.wait_closed()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _reset_before_headers(reader, writer):
    reset(writer)


async def _reset_mid_body(reader, writer):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    reset(writer)


async def _slow_headers(reader, writer):
    await asyncio.sleep(5)


async def _slow_body(reader, writer):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(5)


async def _oversized_headers(reader, writer):
    writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def _not_http(reader, writer):
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()


async def _bad_status_line(reader, writer):
    writer.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def _two_content_lengths(reader, writer):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
    await writer.drain()


async def _closed_without_answer(reader, writer):
    writer.close()


BEFORE_HEADERS = {
    "reset before headers": (_reset_before_headers, 502),
    "closed without an answer": (_closed_without_answer, 502),
    "slow headers": (_slow_headers, 504),
    "oversized headers": (_oversized_headers, 502),
    "not HTTP": (_not_http, 502),
    "bad status line": (_bad_status_line, 502),
    "two content-lengths": (_two_content_lengths, 502),
}


async def _outcome(gateway) -> dict:
    records = await wait_until(gateway.log_lines)
    return records[-1]


@pytest.mark.parametrize("fault", list(BEFORE_HEADERS))
async def test_a_fault_before_response_headers_is_502_or_504(start_gateway, fault):
    behaviour, status = BEFORE_HEADERS[fault]
    async with raw_upstream(behaviour) as up:
        gateway = await start_gateway(FAST, upstream_url=up["url"])
        result = await exchange(gateway.port, GET, timeout=5)
        (response,) = result.responses
        assert response.status == status
        expected = "Upstream timed out" if status == 504 else "Upstream unavailable"
        assert response.json() == {"success": False, "error": expected}
        assert response.headers["content-type"] == "application/json"
        record = await _outcome(gateway)
        assert (record["outcome"], record["status"]) == ("upstream_error", status)
        pool = gateway.worker.upstream
        assert pool.idle_count == 0 and pool.in_use_count == 0


async def test_a_refused_upstream_is_502(start_gateway):
    gateway = await start_gateway(FAST, upstream_url=f"http://127.0.0.1:{free_port()}")
    (response,) = (await exchange(gateway.port, GET)).responses
    assert response.status == 502
    assert (await _outcome(gateway))["outcome"] == "upstream_error"


@pytest.mark.parametrize("fault", [_reset_mid_body, _slow_body], ids=["reset mid-body", "slow body"])
async def test_a_fault_after_response_headers_aborts_the_client_connection(start_gateway, fault):
    async with raw_upstream(fault) as up:
        gateway = await start_gateway(FAST, upstream_url=up["url"])
        result = await exchange(gateway.port, GET, timeout=5)
        assert result.closed
        assert result.data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert parse_responses(result.data) == [], "the client must see a truncated response, not a whole one"
        head, _, body = result.data.partition(b"\r\n\r\n")
        assert b"Content-Length: 100000" in head and len(body) < 100_000
        record = await _outcome(gateway)
        assert (record["outcome"], record["status"]) == ("upstream_error", 200)
        pool = gateway.worker.upstream
        assert pool.idle_count == 0 and pool.in_use_count == 0


async def test_a_broken_connection_is_never_reused(start_gateway):
    answers = iter(
        [
            # Says 2 bytes, sends 5: the response stands, but what follows can no longer be framed.
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokXYZ",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]
    )

    async def behaviour(reader, writer):
        writer.write(next(answers))
        await writer.drain()

    async with raw_upstream(behaviour) as up:
        gateway = await start_gateway(FAST, upstream_url=up["url"])
        keepalive = request("GET", "/v1/leads/search", [("Authorization", f"Bearer {READER}")])
        for _ in range(3):
            (response,) = (
                await exchange(gateway.port, keepalive, until=lambda d: d.endswith(b"ok"))
            ).responses
            assert response.status == 200 and response.body == b"ok"
        # The first connection was dropped; the second was pooled and reused for the third request.
        assert up["requests"] == 3 and up["connections"] == 2


async def test_a_redirect_to_an_internal_address_is_relayed_not_followed(gateway, upstream):
    r = await gateway.get("/v1/leads/redirect", headers={"Authorization": f"Bearer {READER}"})
    assert r.status == 302
    assert r.headers["Location"] == "http://169.254.169.254/latest/meta-data/"
    assert len(upstream.received) == 1


async def test_a_gzip_response_keeps_headers_and_body_consistent(gateway):
    r = await gateway.get("/v1/leads/gzip", headers={"Authorization": f"Bearer {READER}"})
    body = await r.read()
    assert r.headers["Content-Encoding"] == "gzip"
    assert int(r.headers["Content-Length"]) == len(body)
    assert gzip.decompress(body) == b'{"compressed": true}'


async def test_two_hundred_slow_calls_over_a_small_pool_wait_a_bounded_time_then_503(start_gateway, upstream):
    gateway = await start_gateway(
        {"upstream": {"max_connections": 4, "pool_timeout": "300ms", "timeout": "3s"}}
    )
    slow = request("GET", "/v1/leads/slow?delay=1", [("Authorization", f"Bearer {READER}")], close=True)
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(*(exchange(gateway.port, slow, timeout=10) for _ in range(200)))
    elapsed = asyncio.get_running_loop().time() - started
    statuses = [r.status for result in results for r in result.responses]
    assert len(statuses) == 200
    assert statuses.count(200) >= 4 and set(statuses) <= {200, 503}
    assert statuses.count(503) >= 150
    assert elapsed < 5
    refused = [r for result in results for r in result.responses if r.status == 503]
    assert refused[0].json() == {"success": False, "error": "Upstream unavailable"}
    records = await wait_until(lambda: len(gateway.log_lines()) == 200 and gateway.log_lines())
    assert {r["outcome"] for r in records if r["status"] == 503} == {"upstream_error"}
    pool = gateway.worker.upstream
    assert pool.in_use_count == 0 and pool.idle_count <= 4
