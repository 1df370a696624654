"""Issue 10 items 9 and 10: requests pipelined behind an upgrade request, and `Expect: 100-continue`.

The gateway never switches protocols. aiohttp's parser dropped the bytes behind an `Upgrade: h2c` request in the same
read, so a pipelined request got neither an answer nor an access-log record; and nobody answered `Expect:
100-continue`, so a client that waits for the interim 100 (curl for bodies over 1 MB, .NET, Java) stalled.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import READER, wait_until
from tests.security.wire import parse_responses

H2C = [
    ("Connection", "Upgrade, HTTP2-Settings"),
    ("Upgrade", "h2c"),
    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
]


def head(method: str, target: str, headers: list[tuple[str, str]] = (), version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: gateway.test", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def talk(port: int, data: bytes, *, answers: int, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `data` in one write; read until `answers` responses arrived or the gateway closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    closed = False
    try:
        async with asyncio.timeout(timeout):
            while len(parse_responses(out)) < answers:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                out += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return out, closed


# --- item 9 ----------------------------------------------------------------------------------------------------


async def test_a_request_pipelined_behind_an_h2c_upgrade_is_answered_and_logged(gateway, upstream):
    data = head("GET", f"/v1/leads/a?auth_token={READER}", H2C) + head(
        "GET", f"/v1/leads/b?auth_token={READER}"
    )

    out, _ = await talk(gateway.port, data, answers=2)

    assert [r.status for r in parse_responses(out)] == [200, 200]
    assert [r.path for r in upstream.received] == ["/v1/leads/a", "/v1/leads/b"]
    assert not {"upgrade", "http2-settings"} & upstream.received[0].header_names()
    records = await wait_until(lambda: len(gateway.log_lines()) == 2 and gateway.log_lines())
    assert [r["path"] for r in records] == ["/v1/leads/a", "/v1/leads/b"]


async def test_an_unauthorised_request_behind_an_upgrade_is_refused_on_its_own(gateway, upstream):
    data = (
        head("GET", f"/v1/leads/a?auth_token={READER}", H2C)
        + head("GET", "/v1/leads/b")
        + head("GET", "/v1/admin/x", [("Authorization", f"Bearer {READER}")])
    )

    out, _ = await talk(gateway.port, data, answers=3)

    assert [r.status for r in parse_responses(out)] == [200, 401, 403]
    assert [r.path for r in upstream.received] == ["/v1/leads/a"]
    await wait_until(lambda: len(gateway.log_lines()) == 3)


@pytest.mark.parametrize(
    "upgrade",
    [
        # A spelling the fast check does not see: the answer ends the connection instead.
        [("Connection", "UpGrAdE"), ("UpGrAdE", "h2c")],
        # A body before the switch: where the parser stops is unknown, so the answer ends the connection.
        [*H2C, ("Content-Length", "5")],
    ],
)
async def test_otherwise_the_upgrade_requests_answer_closes_the_connection(gateway, upstream, upgrade):
    body = b"hello" if ("Content-Length", "5") in upgrade else b""
    data = head("POST", f"/v1/leads/a?auth_token={READER}", upgrade) + body
    data += head("GET", f"/v1/leads/b?auth_token={READER}")

    out, closed = await talk(gateway.port, data, answers=2)

    responses = parse_responses(out)
    assert [r.status for r in responses] in ([200], [200, 200])
    if len(responses) == 1:
        assert closed  # after a whole answer: the client knows the request behind it was not served
    assert "/v1/leads/a" in [r.path for r in upstream.received]
    assert len(upstream.received) == len(responses)
    await wait_until(lambda: len(gateway.log_lines()) == len(responses))


# --- item 10 ---------------------------------------------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def open_with_expect(port: int, method: str, target: str, headers: list[tuple[str, str]], length: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        head(method, target, [*headers, ("Content-Length", str(length)), ("Expect", "100-continue")])
    )
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    out = b""
    async with asyncio.timeout(timeout):
        while not parse_responses(out.removeprefix(CONTINUE)):
            chunk = await reader.read(65536)
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", f"list_id=5&auth_token={READER}".encode()),
        ("application/octet-stream", b"\x00binary upload"),
    ],
)
async def test_a_client_waiting_for_100_continue_gets_it_and_its_body_goes_upstream(
    gateway, upstream, content_type, body
):
    target = "/v1/leads/search" if b"auth_token" in body else f"/v1/leads/search?auth_token={READER}"
    reader, writer = await open_with_expect(
        gateway.port, "POST", target, [("Content-Type", content_type)], len(body)
    )
    try:
        # Nothing is sent before the 100: the client holds its body back, as real clients do.
        async with asyncio.timeout(5):
            interim = await reader.readexactly(len(CONTINUE))
        assert interim == CONTINUE
        writer.write(body)
        answer = await read_answer(reader)
    finally:
        writer.close()

    (response,) = parse_responses(answer)
    assert response.status == 200
    expected = b"list_id=5" if b"auth_token" in body else body
    assert upstream.last().body == expected
    assert "expect" not in upstream.last().header_names()


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/v1/leads/search", 401),
        ("/v1/leads/search?auth_token=unknown-token", 401),
        (f"/v1/admin/x?auth_token={READER}", 403),
    ],
)
async def test_a_refused_request_gets_its_refusal_instead_of_100_continue(gateway, upstream, target, status):
    reader, writer = await open_with_expect(
        gateway.port, "PUT", target, [("Content-Type", "application/octet-stream")], 1_000_000
    )
    try:
        answer = await read_answer(reader)
    finally:
        writer.close()

    assert not answer.startswith(CONTINUE)
    (response,) = parse_responses(answer)
    assert response.status == status
    assert upstream.received == []


async def test_no_100_continue_for_http_1_0(gateway, upstream):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    body = b"\x00data"
    writer.write(
        head(
            "POST",
            f"/v1/leads/search?auth_token={READER}",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", "5"),
                ("Expect", "100-continue"),
            ],
            version="1.0",
        )
        + body
    )
    try:
        answer = await read_answer(reader)
    finally:
        writer.close()

    assert not answer.startswith(b"HTTP/1.1 100")
    assert parse_responses(answer)[0].status == 200
    assert upstream.last().body == body
