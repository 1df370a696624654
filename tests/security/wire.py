"""Raw-socket helpers for the security tests: bytes no HTTP client would send, and the responses read back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from httptools import HttpResponseParser

MALFORMED = {"success": False, "error": "Malformed request"}


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names; the last value wins
    body: bytes = b""

    def json(self) -> object:
        return json.loads(self.body)


class _Collector:
    def __init__(self) -> None:
        self.parser = HttpResponseParser(self)
        self.responses: list[Response] = []
        self._current = Response()

    def on_message_begin(self) -> None:
        self._current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self.responses.append(self._current)


def parse_responses(data: bytes) -> list[Response]:
    """Every complete response in `data`, in order (pipelined responses included)."""
    collector = _Collector()
    collector.parser.feed_data(data)
    return collector.responses


@dataclass
class Exchange:
    data: bytes
    closed: bool  # the gateway closed the connection (rather than our timeout ending the read)
    seconds: float

    @property
    def responses(self) -> list[Response]:
        return parse_responses(self.data)


async def exchange(
    port: int,
    data: bytes | list[bytes],
    *,
    timeout: float = 5.0,
    until: Callable[[bytes], bool] | None = None,
    pause: float = 0.0,
) -> Exchange:
    """Send `data` (pieces `pause` seconds apart), then read until the gateway closes, `until(read)`, or timeout."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks: list[bytes] = []
    closed = False
    try:
        for i, piece in enumerate([data] if isinstance(data, bytes) else data):
            if i and pause:
                await asyncio.sleep(pause)
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                break
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except TimeoutError:
                break
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            if until is not None and until(b"".join(chunks)):
                break
    finally:
        writer.close()
    return Exchange(b"".join(chunks), closed, time.monotonic() - started)


def responses_count(n: int) -> Callable[[bytes], bool]:
    return lambda data: len(parse_responses(data)) >= n


def assert_malformed_and_closed(result: Exchange) -> None:
    """Exactly one answer, the contract's JSON 400, and then the connection closed."""
    responses = result.responses
    assert len(responses) == 1, result.data
    response = responses[0]
    assert response.status == 400, result.data
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    assert response.headers["connection"].lower() == "close"
    assert response.json() == MALFORMED
    assert result.closed, "the gateway kept the connection open after a framing error"


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    close: bool = False,
) -> bytes:
    """One well-formed HTTP/1.1 request (Content-Length framing unless a Transfer-Encoding header is given)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway.test"]
    names = set()
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if body and "transfer-encoding" not in names and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
