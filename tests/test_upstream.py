"""UpstreamPool against real sockets: aiohttp servers for well-behaved upstreams, raw ones for the rest."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from httptools import HttpRequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.upstream import UpstreamBusy, UpstreamError, UpstreamPool, UpstreamTimeout

MB = 1024 * 1024


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def aiohttp_upstream(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


Handler = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawUpstream:
    """A scripted upstream on a raw socket: `handler(server, reader, writer, nth_connection)`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []  # each request head (and body) as received
        self.eofs = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        try:
            await self.handler(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # torn down by __aexit__; a cancelled handler task would be logged by asyncio
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        body = b""
        lower = head.lower()
        if b"\r\ncontent-length:" in lower:
            length = int(lower.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        elif b"\r\ntransfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                body += (await reader.readexactly(size + 2))[:size]
                if not size:
                    break
        self.requests.append(head + body)
        return head + body

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass
        self.eofs += 1


def scripted(*responses: bytes, then: str = "keep") -> Handler:
    """Each connection answers its requests with `responses` in turn, then keeps open or closes."""

    async def handler(srv: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int):
        for response in responses:
            await srv.read_request(reader)
            writer.write(response)
            await writer.drain()
        if then == "keep":
            await srv.wait_eof(reader)

    return handler


def rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GZIPPED = gzip.compress(b"hello " * 100, mtime=0)


@contextlib.asynccontextmanager
async def pool_for(url: str, **kwargs: float) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(url, **kwargs)
    try:
        yield pool
    finally:
        await pool.close()


async def fetch(pool: UpstreamPool, method: str = "GET", target: str = "/", **kwargs) -> tuple[int, bytes]:
    resp = await pool.request(method, target, kwargs.pop("headers", []), **kwargs)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


# -- round trips against aiohttp --------------------------------------------------------------------


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername")[1]
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
                "body": body.decode("latin-1"),
                "peer": peer,
            }
        )

    async def gz(request: web.Request) -> web.Response:
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/gzip", gz)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_get_and_post_round_trip_keeps_target_bytes_and_reuses_the_connection() -> None:
    async with aiohttp_upstream(echo_app()) as url, pool_for(url) as pool:
        resp = await pool.request("GET", "/v1/a%2Fb/../c?x=1&y=%20", [("X-Trace", "t1"), ("X-Dup", "a")])
        assert resp.status == 200 and resp.reason == "OK" and resp.has_body()
        first = json.loads(await resp.read())
        resp.release()
        assert first["method"] == "GET"
        assert first["raw_path"] == "/v1/a%2Fb/../c?x=1&y=%20"
        assert ["X-Trace", "t1"] in first["headers"]
        assert ["Host", pool.host_header] in first["headers"]
        assert not any(k.lower() == "content-length" for k, _ in first["headers"])

        resp = await pool.request("POST", "/submit/./x", [("Content-Type", "text/plain")], b"payload")
        second = json.loads(await resp.read())
        resp.release()
        assert second["method"] == "POST" and second["body"] == "payload"
        assert second["raw_path"] == "/submit/./x"
        assert ["Content-Length", "7"] in second["headers"]
        assert second["peer"] == first["peer"]  # same keep-alive connection
        assert pool.idle_count == 1 and pool.in_use_count == 0


async def test_request_bytes_on_the_wire_are_exact() -> None:
    async with RawUpstream(scripted(OK, OK, OK, OK)) as srv, pool_for(srv.url) as pool:
        await fetch(pool, "GET", "/v1/a%2Fb/../%2e%2e/c?q=%zz&x=1", headers=[("X-A", "1"), ("x-a", "2")])
        await fetch(pool, "POST", "/p")
        await fetch(pool, "GET", "/h", headers=[("Host", "api.example")])
        await fetch(pool, "DELETE", "/d", body=b"")
    host = srv.url.removeprefix("http://")
    assert srv.requests == [
        f"GET /v1/a%2Fb/../%2e%2e/c?q=%zz&x=1 HTTP/1.1\r\nHost: {host}\r\nX-A: 1\r\nx-a: 2\r\n\r\n".encode(),
        f"POST /p HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode(),
        b"GET /h HTTP/1.1\r\nHost: api.example\r\n\r\n",
        f"DELETE /d HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode(),
    ]
    assert srv.connections == 1


async def test_gzip_body_passes_through_untouched() -> None:
    async with aiohttp_upstream(echo_app()) as url, pool_for(url) as pool:
        resp = await pool.request("GET", "/gzip", [("Accept-Encoding", "gzip")])
        body = await resp.read()
        resp.release()
    assert dict(resp.headers)["Content-Encoding"] == "gzip"
    assert body == GZIPPED  # the compressed bytes, not inflated


# -- response framing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "body", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"hello world",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", b"", True),
        (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nContent-Length: 50\r\n\r\n", b"", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK, b"ok", True),
    ],
    ids=["length", "chunked", "conn-close", "http10", "http10-keepalive", "204", "304", "100", "103"],
)
async def test_response_framing(response: bytes, body: bytes, reused: bool) -> None:
    async with RawUpstream(scripted(response, OK)) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        assert await resp.read() == body
        assert resp.has_body() == (resp.status not in (204, 304))
        assert not any(k in ("Link",) for k, _ in resp.headers)  # interim headers are not the response's
        resp.release()
        assert pool.idle_count == int(reused)
        assert await fetch(pool) == (200, b"ok")
    assert srv.connections == (1 if reused else 2)


async def test_interim_response_in_its_own_segment_is_skipped() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)  # a separate segment, as a real upstream would send it
        writer.write(b"HTTP/1.1 201 Created\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok")
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("POST", "/", [("Expect", "100-continue")], b"x")
        assert (resp.status, resp.reason, resp.headers) == (
            201,
            "Created",
            [("X-Final", "1"), ("Content-Length", "2")],
        )
        assert await resp.read() == b"ok"
        resp.release()


async def test_headers_kept_in_order_with_duplicates_and_content_length_reported() -> None:
    response = (
        b"HTTP/1.1 200 Fine Thanks\r\nSet-Cookie: a=1\r\nX-Note: \xe9t\xe9\r\n"
        b"set-cookie: b=2\r\nContent-Length: 2\r\n\r\nok"
    )
    async with RawUpstream(scripted(response)) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        await resp.read()
        resp.release()
    assert resp.reason == "Fine Thanks"
    assert resp.headers == [
        ("Set-Cookie", "a=1"),
        ("X-Note", "\xe9t\xe9"),
        ("set-cookie", "b=2"),
        ("Content-Length", "2"),
    ]
    assert resp.content_length == 2


async def test_close_delimited_body_is_read_to_eof_and_not_reused() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")
        await writer.drain()
        writer.close()

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        assert resp.content_length is None and resp.has_body()
        assert await resp.read() == b"until the end"
        resp.release()
        assert pool.idle_count == 0 and pool.in_use_count == 0


async def test_head_with_content_length_has_no_body_and_connection_is_reused() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n"
    async with RawUpstream(scripted(head, OK)) as srv, pool_for(srv.url, read_timeout=2) as pool:
        resp = await pool.request("HEAD", "/", [])
        assert not resp.has_body() and resp.content_length == 1234
        assert await resp.read() == b""
        resp.release()
        assert pool.idle_count == 1
        assert await fetch(pool) == (200, b"ok")
    assert srv.connections == 1


async def test_head_response_followed_by_a_stray_body_is_not_reused() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
    first, then = scripted(head, OK), scripted(OK)

    async def handler(srv, reader, writer, n):
        await (first if n == 1 else then)(srv, reader, writer, n)

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("HEAD", "/", [])
        assert await resp.read() == b""
        resp.release()
        assert pool.idle_count == 0
        assert await fetch(pool) == (200, b"ok")
    assert srv.connections == 2


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_responses_split_at_every_byte_boundary(method: str) -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    if method == "HEAD":
        response = response.split(b"3\r\nabc")[0]
    cuts = range(1, len(response))

    async def handler(srv, reader, writer, n):
        for cut in cuts:
            await srv.read_request(reader)
            writer.write(response[:cut])
            await writer.drain()
            await asyncio.sleep(0.001)  # two segments, two reads
            writer.write(response[cut:])
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        for _ in cuts:
            resp = await pool.request(method, "/", [])
            assert resp.headers == [("X-A", "1"), ("Transfer-Encoding", "chunked")]
            assert await resp.read() == (b"abcde" if method == "GET" else b"")
            resp.release()
    assert srv.connections == 1


# -- streaming and flow control ---------------------------------------------------------------------


def stream_app(payload: bytes) -> web.Application:
    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {"sha": digest.hexdigest(), "size": size, "te": request.headers.get("TE", "")}
        )

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if request.query.get("length"):
            resp.content_length = len(payload)
        await resp.prepare(request)
        for i in range(0, len(payload), 64 * 1024):
            await resp.write(payload[i : i + 64 * 1024])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    return app


async def test_streamed_10mb_request_body_arrives_intact_with_bounded_write_buffer() -> None:
    payload = random.Random(1).randbytes(10 * MB)
    async with aiohttp_upstream(stream_app(b"")) as url, pool_for(url) as pool:
        for body_length in (len(payload), None):  # Content-Length, then chunked
            peak = 0

            async def body() -> AsyncIterator[bytes]:
                nonlocal peak
                for i in range(0, len(payload), 100_000):
                    for conn in pool._busy:
                        peak = max(peak, conn._transport.get_write_buffer_size())
                    yield payload[i : i + 100_000]

            resp = await pool.request("POST", "/upload", [], body(), body_length)
            result = json.loads(await resp.read())
            resp.release()
            assert result["size"] == len(payload)
            assert result["sha"] == hashlib.sha256(payload).hexdigest()
            assert peak < 512 * 1024
        # A bytes body big enough to go out in slices.
        resp = await pool.request("POST", "/upload", [], payload)
        result = json.loads(await resp.read())
        resp.release()
        assert result["sha"] == hashlib.sha256(payload).hexdigest()
        assert pool.idle_count == 1


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_10mb_response_to_a_slow_consumer_stays_bounded_in_memory(framing: str) -> None:
    payload = random.Random(2).randbytes(10 * MB)
    async with aiohttp_upstream(stream_app(payload)) as url, pool_for(url) as pool:
        target = "/download?length=1" if framing == "length" else "/download"
        resp = await pool.request("GET", target, [])
        conn = resp._conn
        digest, size, peak, paused = hashlib.sha256(), 0, 0, False
        async for chunk in resp:
            digest.update(chunk)
            size += len(chunk)
            await asyncio.sleep(0.003)  # the slow client
            peak = max(peak, conn._buffered)
            paused = paused or conn._reading_paused
        resp.release()
        assert size == len(payload)
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
        assert paused, "reading never paused for the slow consumer"
        assert peak <= 768 * 1024
        assert pool.idle_count == 1


async def test_early_response_stops_the_upload_and_drops_the_connection() -> None:
    sent = 0

    async def handler(srv, reader, writer, n):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        await srv.wait_eof(reader)

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(2000):
            sent += 1
            yield b"x" * 65536

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("PUT", "/", [], body(), 2000 * 65536)
        assert resp.status == 413 and await resp.read() == b"big!"
        resp.release()
        assert sent < 2000
        assert pool.idle_count == 0 and pool.in_use_count == 0
        await eventually(lambda: srv.eofs == 1)


@pytest.mark.parametrize(("chunks", "length"), [([b"abc", b"def"], 5), ([b"abc"], 5)], ids=["more", "fewer"])
async def test_body_length_mismatch_raises_and_closes(chunks: list[bytes], length: int) -> None:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async with RawUpstream(scripted(OK)) as srv, pool_for(srv.url) as pool:
        with pytest.raises(UpstreamError, match="body"):
            await pool.request("POST", "/", [], body(), length)
        assert pool.idle_count == 0 and pool.in_use_count == 0
        await eventually(lambda: all(t.done() for t in srv._tasks))  # the upstream saw the connection end


async def test_failing_body_source_propagates_and_closes() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        raise RuntimeError("client went away")

    async with RawUpstream(scripted(OK)) as srv, pool_for(srv.url) as pool:
        with pytest.raises(RuntimeError, match="client went away"):
            await pool.request("POST", "/", [], body())
        assert pool.idle_count == 0 and pool.in_use_count == 0


# -- failures ---------------------------------------------------------------------------------------


async def test_refused_port_is_an_upstream_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with pool_for(f"http://127.0.0.1:{port}") as pool:
        with pytest.raises(UpstreamError) as info:
            await pool.request("GET", "/", [])
        assert type(info.value) is UpstreamError
        assert pool.in_use_count == 0


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_connection_dropped_before_headers_is_an_upstream_error(how: str) -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        rst(writer) if how == "reset" else writer.close()

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        with pytest.raises(UpstreamError) as info:
            await pool.request("GET", "/", [])
        assert type(info.value) is UpstreamError
        assert pool.idle_count == 0 and pool.in_use_count == 0
    assert srv.connections == 1  # a fresh connection is never retried


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_connection_dropped_mid_body_raises_from_iteration(how: str) -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        await writer.drain()
        await asyncio.sleep(0.02)
        rst(writer) if how == "reset" else writer.close()

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        got = b""
        with pytest.raises(UpstreamError, match="mid-body"):
            async for chunk in resp:
                got += chunk
        assert got == b"a" * 10
        resp.release()
        assert pool.idle_count == 0 and pool.in_use_count == 0


async def test_chunked_body_cut_short_raises() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        await writer.drain()
        writer.close()

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        with pytest.raises(UpstreamError):
            await resp.read()
        resp.release()


async def test_slow_headers_time_out() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url, read_timeout=0.2) as pool:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.request("GET", "/", [])
        assert 0.15 <= time.monotonic() - started < 2
        assert pool.idle_count == 0 and pool.in_use_count == 0
        await eventually(lambda: srv.eofs == 1)  # the connection was closed


async def test_slow_body_gap_times_out_but_a_slow_steady_body_does_not() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await srv.wait_eof(reader)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
            for byte in b"steady":
                await asyncio.sleep(0.06)  # each gap is below read_timeout, the total is above it
                writer.write(bytes([byte]))
            await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url, read_timeout=0.2) as pool:
        resp = await pool.request("GET", "/", [])
        assert await resp.__anext__() == b"abc"
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await resp.__anext__()
        assert 0.15 <= time.monotonic() - started < 2
        resp.release()
        assert pool.idle_count == 0
        assert await fetch(pool) == (200, b"steady")


async def test_connect_timeout() -> None:
    # A listener whose accept queue is full drops further SYNs, so the handshake never completes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        async with pool_for(f"http://127.0.0.1:{port}", connect_timeout=0.2) as pool:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await pool.request("GET", "/", [])
            assert 0.15 <= time.monotonic() - started < 2
            assert pool.in_use_count == 0 and pool._connecting == 0
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(700)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * 100_000,  # and then nothing: llhttp would buffer on
    ],
    ids=["one-huge-header", "many-headers", "unterminated"],
)
async def test_oversized_header_block_is_an_upstream_error(response: bytes) -> None:
    async with RawUpstream(scripted(response)) as srv, pool_for(srv.url, read_timeout=5) as pool:
        with pytest.raises(UpstreamError, match="too large"):
            await pool.request("GET", "/", [])
        assert pool.idle_count == 0 and pool.in_use_count == 0


async def test_header_block_limit_is_configurable() -> None:
    response = b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 2000 + b"\r\nContent-Length: 2\r\n\r\nok"
    async with (
        RawUpstream(scripted(response, response)) as srv,
        pool_for(srv.url, max_header_size=1000) as pool,
    ):
        with pytest.raises(UpstreamError, match="too large"):
            await pool.request("GET", "/", [])
    async with RawUpstream(scripted(response)) as srv, pool_for(srv.url, max_header_size=4000) as pool:
        assert await fetch(pool) == (200, b"ok")


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["garbage", "status", "cl-and-te", "two-lengths", "space-in-name", "upgrade"],
)
async def test_invalid_response_is_an_upstream_error(response: bytes) -> None:
    async with RawUpstream(scripted(response)) as srv, pool_for(srv.url) as pool:
        with pytest.raises(UpstreamError) as info:
            await pool.request("GET", "/", [])
        assert type(info.value) is UpstreamError
        assert pool.idle_count == 0 and pool.in_use_count == 0


async def test_invalid_chunk_mid_body_raises_from_iteration() -> None:
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    async with RawUpstream(scripted(response)) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        with pytest.raises(UpstreamError, match="invalid response"):
            await resp.read()
        resp.release()
        assert pool.idle_count == 0


# -- pool behaviour ---------------------------------------------------------------------------------


def close_on_second_request(srv_kind: str) -> Handler:
    """Answers the first request on each connection, then drops the connection on the second."""

    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await srv.read_request(reader)
        rst(writer) if srv_kind == "reset" else writer.close()

    return handler


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_stale_keepalive_connection_is_retried_for_get(how: str) -> None:
    async with RawUpstream(close_on_second_request(how)) as srv, pool_for(srv.url) as pool:
        assert await fetch(pool) == (200, b"ok")
        assert await fetch(pool, "GET", "/again") == (200, b"ok")
        assert await fetch(pool, "PUT", "/put", body=b"data") == (200, b"ok")
    assert srv.connections == 3
    assert [r.split(b" ")[1] for r in srv.requests] == [b"/", b"/again", b"/again", b"/put", b"/put"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_stale_keepalive_connection_is_not_retried_for_non_idempotent(method: str) -> None:
    async with RawUpstream(close_on_second_request("close")) as srv, pool_for(srv.url) as pool:
        assert await fetch(pool) == (200, b"ok")
        with pytest.raises(UpstreamError):
            await fetch(pool, method, "/", body=b"data")
        assert srv.connections == 1
        assert pool.idle_count == 0 and pool.in_use_count == 0


async def test_stale_streamed_put_is_not_retried() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"data"

    async with RawUpstream(close_on_second_request("close")) as srv, pool_for(srv.url) as pool:
        assert await fetch(pool) == (200, b"ok")
        with pytest.raises(UpstreamError):
            await fetch(pool, "PUT", "/", body=body(), body_length=4)
        assert srv.connections == 1


async def test_bytes_after_a_complete_response_drop_the_connection() -> None:
    async with RawUpstream(scripted(OK + b"HTTP/1.1 200 OK\r\n", OK)) as srv, pool_for(srv.url) as pool:
        assert await fetch(pool) == (200, b"ok")
        assert pool.idle_count == 0
        assert await fetch(pool) == (200, b"ok")
    assert srv.connections == 2


async def test_unsolicited_bytes_on_an_idle_connection_drop_it() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await eventually(lambda: pool.idle_count == 1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        assert await fetch(pool) == (200, b"ok")
        await eventually(lambda: pool.idle_count == 0)
        await eventually(lambda: srv.eofs == 1)


async def test_idle_connection_closed_by_peer_is_dropped() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        assert await fetch(pool) == (200, b"ok")
        await eventually(lambda: pool.idle_count == 0)
        assert await fetch(pool) == (200, b"ok")
    assert srv.connections == 2


async def test_pool_exhaustion_raises_busy_after_pool_timeout_then_recovers() -> None:
    release = asyncio.Event()

    async def handler(srv, reader, writer, n):
        while True:
            await srv.read_request(reader)
            await release.wait()
            writer.write(OK)
            await writer.drain()

    async with RawUpstream(handler) as srv, pool_for(srv.url, max_connections=2, pool_timeout=0.2) as pool:
        slow = [asyncio.create_task(fetch(pool, "GET", f"/{i}")) for i in range(2)]
        await eventually(lambda: len(srv.requests) == 2)
        started = time.monotonic()
        with pytest.raises(UpstreamBusy):
            await pool.request("GET", "/third", [])
        assert 0.15 <= time.monotonic() - started < 2
        assert pool.in_use_count == 2
        # A waiter gets the first connection released.
        waiting = asyncio.create_task(fetch(pool, "GET", "/fourth"))
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*slow, waiting) == [(200, b"ok")] * 3
        assert srv.connections == 2
        assert pool.in_use_count == 0 and pool.idle_count == 2


async def test_waiter_cancelled_after_being_woken_passes_the_slot_on() -> None:
    async with RawUpstream(scripted(*[OK] * 10)) as srv, pool_for(srv.url, max_connections=1) as pool:
        held = await pool.request("GET", "/", [])
        first = asyncio.create_task(fetch(pool, "GET", "/a"))
        second = asyncio.create_task(fetch(pool, "GET", "/b"))
        await eventually(lambda: len(pool._waiters) == 2)
        await held.read()
        held.release()  # wakes `first` ...
        first.cancel()  # ... which leaves before it runs
        assert await second == (200, b"ok")
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_broken_connections_are_never_reused() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url, read_timeout=0.2) as pool:
        resp = await pool.request("GET", "/", [])  # released before the body is read
        resp.release()
        resp = await pool.request("GET", "/", [])  # times out mid-body
        with pytest.raises(UpstreamTimeout):
            await resp.read()
        resp.release()
        resp.release()  # idempotent
        assert pool.idle_count == 0 and pool.in_use_count == 0
        await eventually(lambda: srv.eofs == 2)
    assert srv.connections == 2


async def test_released_response_cannot_be_read() -> None:
    async with RawUpstream(scripted(OK)) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        resp.release()
        with pytest.raises(UpstreamError, match="released"):
            await resp.read()


async def test_unread_but_complete_response_returns_connection_to_pool() -> None:
    async with RawUpstream(scripted(OK, OK)) as srv, pool_for(srv.url) as pool:
        resp = await pool.request("GET", "/", [])
        await eventually(lambda: resp._conn._complete)
        resp.release()
        assert pool.idle_count == 1
        assert await fetch(pool) == (200, b"ok")
    assert srv.connections == 1


async def test_cancelling_the_request_closes_the_connection() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:
        task = asyncio.create_task(pool.request("GET", "/", []))
        await eventually(lambda: len(srv.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.in_use_count == 0 and pool.idle_count == 0
        await eventually(lambda: srv.eofs == 1)


async def test_cancelling_mid_body_and_releasing_closes_the_connection() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv, pool_for(srv.url) as pool:

        async def consume() -> None:
            resp = await pool.request("GET", "/", [])
            try:
                await resp.read()
            finally:
                resp.release()

        task = asyncio.create_task(consume())
        await eventually(lambda: pool.in_use_count == 1 and pool._busy and next(iter(pool._busy))._got_data)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.in_use_count == 0 and pool.idle_count == 0
        await eventually(lambda: srv.eofs == 1)


async def test_idle_timeout_and_max_idle() -> None:
    async with RawUpstream(scripted(*[OK] * 5)) as srv:
        async with pool_for(srv.url, max_idle=1) as pool:
            responses = await asyncio.gather(*(pool.request("GET", "/", []) for _ in range(3)))
            for resp in responses:
                await resp.read()
                resp.release()
            assert pool.idle_count == 1 and pool.in_use_count == 0
        async with pool_for(srv.url, idle_timeout=0.1) as pool:
            assert await fetch(pool) == (200, b"ok")
            assert pool.idle_count == 1
            await eventually(lambda: pool.idle_count == 0)


async def test_lifo_reuse() -> None:
    async with aiohttp_upstream(echo_app()) as url, pool_for(url) as pool:
        responses = await asyncio.gather(*(pool.request("GET", "/", []) for _ in range(3)))
        peers = [json.loads(await r.read())["peer"] for r in responses]
        for resp in responses:
            resp.release()
        resp = await pool.request("GET", "/", [])
        assert json.loads(await resp.read())["peer"] == peers[-1]
        resp.release()


async def test_close_fails_in_flight_and_later_requests() -> None:
    async def handler(srv, reader, writer, n):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await srv.wait_eof(reader)

    async with RawUpstream(handler) as srv:
        pool = UpstreamPool(srv.url)
        resp = await pool.request("GET", "/", [])
        await pool.close()
        with pytest.raises(UpstreamError):
            await resp.read()
        resp.release()
        with pytest.raises(UpstreamError, match="closed"):
            await pool.request("GET", "/", [])
        await eventually(lambda: srv.eofs == 1)


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1:1", "ftp://h", "http://", "http://h/base", "http://h/?q=1", "http://u:p@h", "h:80"],
)
def test_bad_upstream_url(url: str) -> None:
    with pytest.raises(ValueError):
        UpstreamPool(url)


def test_host_header() -> None:
    assert UpstreamPool("http://127.0.0.1:9000").host_header == "127.0.0.1:9000"
    assert UpstreamPool("http://Upstream.Local/").host_header == "upstream.local:80"
    assert UpstreamPool("http://[::1]:8080").host_header == "[::1]:8080"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/a b", []),
        ("GET", "/a\r\nX: y", []),
        ("GET", "/caf\xe9", []),
        ("GET", "/\x7f", []),
        ("GET", "", []),
        ("GE T", "/", []),
        ("GET", "/", [("X-A", "1\r\nX-Injected: 1")]),
        ("GET", "/", [("X-A", "1\nX-Injected: 1")]),
        ("GET", "/", [("X-A", "1\r")]),
        ("GET", "/", [("X-A", "nul\x00")]),
        ("GET", "/", [("X-A\r\nX-B", "1")]),
        ("GET", "/", [("X-A:", "1")]),
        ("GET", "/", [("", "1")]),
        ("GET", "/", [("X A", "1")]),
        ("GET", "/", [("X-A", "\u20ac")]),
        ("GET", "/", [("Content-Length", "1")]),
        ("GET", "/", [("transfer-encoding", "chunked")]),
        ("GET", "/", [("CONNECTION", "close")]),
    ],
)
async def test_invalid_requests_raise_value_error_before_any_io(method: str, target: str, headers) -> None:
    async with pool_for("http://127.0.0.1:9") as pool:
        with pytest.raises(ValueError):
            await pool.request(method, target, headers)
        assert pool.in_use_count == 0 and pool._connecting == 0


async def test_inconsistent_body_arguments_raise() -> None:
    async with pool_for("http://127.0.0.1:9") as pool:
        with pytest.raises(ValueError):
            await pool.request("POST", "/", [], b"abc", body_length=4)
        with pytest.raises(ValueError):
            await pool.request("POST", "/", [], None, body_length=4)
        with pytest.raises(TypeError):
            await pool.request("POST", "/", [], "text")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.lists(
        st.tuples(
            st.text(st.sampled_from("aZ0-_!~:\r\n\x00 \t\xe9"), max_size=6),
            st.text(st.characters(max_codepoint=0x17F), max_size=12),
        ),
        max_size=5,
    )
)
def test_encoded_head_either_refuses_or_round_trips(headers: list[tuple[str, str]]) -> None:
    pool = UpstreamPool("http://127.0.0.1:9")
    try:
        head, *_ = pool._encode("GET", "/x", headers, None, None)
    except ValueError:
        return
    seen: list[tuple[str, str]] = []

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            seen.append((name.decode("latin-1"), value.decode("latin-1")))

    HttpRequestParser(Sink()).feed_data(head)
    # llhttp trims surrounding whitespace from values, nothing else may change.
    expected = [("Host", pool.host_header)] + [(n, v.strip(" \t")) for n, v in headers]
    assert seen == expected
