"""Resource limits: slow clients, idle connections, too many connections, and bodies built to exhaust a parser."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import pytest

from tests.conftest import READER, wait_until
from tests.security.wire import exchange, request, responses_count

FAST = {"server": {"header_timeout": "0.5s", "keepalive_timeout": "5s", "body_timeout": "0.5s"}}
AUTH = [("Authorization", f"Bearer {READER}")]


async def test_a_client_trickling_its_headers_is_cut_off_after_header_timeout(start_gateway, upstream):
    gateway = await start_gateway(FAST)
    head = request("GET", "/v1/leads/search", AUTH)
    pieces = [head[:20], *(head[i : i + 1] for i in range(20, len(head) - 2))]
    result = await exchange(gateway.port, pieces, pause=0.05, timeout=10)
    assert result.closed and result.data == b""
    assert 0.4 < result.seconds < 2.5
    assert upstream.received == []
    assert gateway.worker.http_server.header_timeouts == 1


async def test_a_silent_connection_is_closed_after_header_timeout(start_gateway):
    gateway = await start_gateway(FAST)
    result = await exchange(gateway.port, b"", timeout=5)
    assert result.closed and result.data == b""
    assert 0.4 < result.seconds < 2


async def test_a_slow_client_within_the_deadline_is_served(start_gateway, upstream):
    gateway = await start_gateway(FAST)
    data = request("GET", "/v1/leads/search", AUTH, close=True)
    result = await exchange(gateway.port, [data[:10], data[10:30], data[30:]], pause=0.1)
    assert [r.status for r in result.responses] == [200]


async def test_each_request_on_a_connection_gets_its_own_header_deadline(start_gateway, upstream):
    gateway = await start_gateway(FAST)
    # Three requests 0.3 s apart: more than header_timeout in all, but each head arrives in one piece.
    data = request("GET", "/v1/leads/search", AUTH)
    result = await exchange(
        gateway.port, [data, data, request("GET", "/v1/leads/search", AUTH, close=True)], pause=0.3
    )
    assert [r.status for r in result.responses] == [200, 200, 200]


async def test_a_slow_upstream_does_not_count_against_the_next_pipelined_head(start_gateway, upstream):
    gateway = await start_gateway(FAST)
    slow = request("GET", "/v1/leads/slow?delay=1", AUTH)
    nxt = request("GET", "/v1/leads/search", AUTH, close=True)
    # The next head starts arriving while the first request waits 1 s on the upstream.
    result = await exchange(gateway.port, [slow + nxt[:15], nxt[15:]], pause=0.2, timeout=5)
    assert [r.status for r in result.responses] == [200, 200]


async def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(start_gateway, upstream):
    gateway = await start_gateway({"server": {"keepalive_timeout": "0.5s", "header_timeout": "5s"}})
    result = await exchange(gateway.port, request("GET", "/v1/leads/search", AUTH), timeout=5)
    assert [r.status for r in result.responses] == [200]
    assert result.closed
    assert 0.4 < result.seconds < 2


async def test_a_stalled_form_body_is_400_after_body_timeout(start_gateway, upstream):
    gateway = await start_gateway(FAST)
    data = request(
        "POST",
        "/v1/leads/search",
        [("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "100")],
    )
    result = await exchange(gateway.port, data + f"auth_token={READER}".encode(), timeout=5)
    assert [r.status for r in result.responses] == [400]
    assert result.seconds < 2.5
    assert upstream.received == []
    (record,) = await wait_until(gateway.log_lines)
    assert record["outcome"] == "malformed"


async def test_a_stalled_streamed_body_is_400_and_the_upstream_never_gets_a_whole_request(
    start_gateway, upstream
):
    gateway = await start_gateway(FAST)
    data = request(
        "POST",
        "/v1/leads/sha256",
        [*AUTH, ("Content-Type", "application/octet-stream"), ("Content-Length", "1000")],
    )
    result = await exchange(gateway.port, data + b"x" * 100, timeout=5)
    assert [r.status for r in result.responses] == [400]
    assert result.seconds < 2.5
    await asyncio.sleep(0.1)
    assert upstream.received == []
    assert gateway.worker.upstream.idle_count == 0


async def test_connections_over_max_connections_are_closed_at_once(start_gateway, upstream):
    gateway = await start_gateway({"server": {"max_connections": 5, "header_timeout": "10s"}})
    server = gateway.worker.http_server
    held = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(5)]
    await wait_until(lambda: server.open_connections == 5)
    refused = await exchange(gateway.port, request("GET", "/v1/leads/search", AUTH), timeout=3)
    assert refused.closed and refused.data == b""
    assert server.refused_connections >= 1
    assert upstream.received == []
    _, writer = held.pop()
    writer.close()
    await wait_until(lambda: server.open_connections == 4)
    served = await exchange(gateway.port, request("GET", "/v1/leads/search", AUTH, close=True))
    assert [r.status for r in served.responses] == [200]
    for _, w in held:
        w.close()
    await wait_until(lambda: server.open_connections == 0)


async def test_a_chunked_body_over_max_body_is_413(start_gateway, upstream):
    gateway = await start_gateway({"server": {"max_body": "1KB"}})
    for content_type in ("application/x-www-form-urlencoded", "application/octet-stream"):
        head = request(
            "POST",
            "/v1/leads/sha256",
            [*AUTH, ("Content-Type", content_type), ("Transfer-Encoding", "chunked")],
        )
        body = b"".join(b"400\r\n" + b"a" * 0x400 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
        result = await exchange(gateway.port, head + body, timeout=5, until=responses_count(1))
        assert [r.status for r in result.responses] == [413], content_type
    await asyncio.sleep(0.1)
    assert upstream.received == []


async def test_a_gzip_bomb_is_413(gateway, upstream):
    bomb = gzip.compress(b"auth_token=" + READER.encode() + b"&a=" + b"0" * (20 * 1024 * 1024))
    r = await gateway.post(
        "/v1/leads/search",
        data=bomb,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
    )
    assert r.status == 413
    assert upstream.received == []


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("where", ["beside the token", "without a token member"])
async def test_deeply_nested_json_is_400_or_forwarded_never_500(gateway, upstream, where):
    if where == "beside the token":
        body = '{"auth_token": "' + READER + '", "deep": ' + _deep(200_000) + "}"
        headers = {"Content-Type": "application/json"}
    else:
        body = '{"deep": ' + _deep(200_000) + "}"
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {READER}"}
    r = await gateway.post("/v1/leads/sha256", data=body, headers=headers)
    assert r.status in (200, 400)
    if r.status == 200:
        assert json.loads(await r.read())["size"] == len(body.replace(f'"auth_token": "{READER}", ', ""))
    r = await gateway.get("/v1/leads/search", headers={"Authorization": f"Bearer {READER}"})
    assert r.status == 200  # the worker is still serving


@pytest.mark.parametrize("kind", ["form", "json", "multipart"])
async def test_bodies_with_too_many_entries_are_400(gateway, upstream, kind):
    n = 20_000
    if kind == "form":
        body = ("&".join(f"k{i}=v" for i in range(n)) + f"&auth_token={READER}").encode()
        content_type = "application/x-www-form-urlencoded"
    elif kind == "json":
        body = json.dumps({**{f"k{i}": 1 for i in range(n)}, "auth_token": READER}).encode()
        content_type = "application/json"
    else:
        part = b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\nv\r\n'
        body = (
            part * n
            + f'--b\r\nContent-Disposition: form-data; name="auth_token"\r\n\r\n{READER}\r\n--b--\r\n'.encode()
        )
        content_type = "multipart/form-data; boundary=b"
    started = time.monotonic()
    r = await gateway.post("/v1/leads/search", data=body, headers={"Content-Type": content_type})
    assert r.status == 400
    assert time.monotonic() - started < 2
    assert upstream.received == []
