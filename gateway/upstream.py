"""Pooled HTTP/1.1 client for the one upstream: asyncio Protocols plus llhttp (httptools) for responses.

It sends request-targets byte for byte (aiohttp's client re-normalises paths) and streams bodies both ways.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

__all__ = ["UpstreamBusy", "UpstreamError", "UpstreamPool", "UpstreamResponse", "UpstreamTimeout"]


class UpstreamError(Exception):
    """The upstream refused, reset, closed early or sent an invalid response: the gateway answers 502."""


class UpstreamTimeout(UpstreamError):
    """Connecting took longer than connect_timeout, or the upstream went silent for read_timeout: 504."""


class UpstreamBusy(UpstreamError):
    """No pooled connection became free within pool_timeout: 503."""


# Reading pauses above HIGH and resumes once the consumer has drained below LOW, so a slow client
# holds at most about HIGH plus one socket read (256 KiB) of a response in memory.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Smaller bytes bodies go out in the same write as the head: one syscall, one segment.
_SMALL_BODY = 64 * 1024
# Larger ones are written in slices so drain() sees progress and read_timeout can catch a stalled upstream.
_BODY_SLICE = 256 * 1024
# Timers may fire this early; treating it as "on time" saves a pointless re-arm.
_TIMER_SLACK = 0.001

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_EMPTY_NEEDS_LENGTH = frozenset({"POST", "PUT", "PATCH"})
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Lower-cased header names joined by "\n": every name must be a non-empty token.
_NAMES = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+(?:\n[!#$%&'*+\-.^_`|~0-9a-z]+)*")
_BAD_TARGET = re.compile(r"[^\x21-\x7e]")
_BAD_FIELD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UpstreamResponse:
    """One upstream response; its body streams from the connection, which release() hands back."""

    __slots__ = ("_conn", "_has_body", "content_length", "headers", "reason", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self._has_body = False
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r}>"

    def has_body(self) -> bool:
        return self._has_body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise UpstreamError("response already released")
        while True:
            buf = conn._buf
            if buf:
                # Everything buffered goes out as one chunk: fewer, larger writes downstream.
                chunk = buf[0] if len(buf) == 1 else b"".join(buf)
                buf.clear()
                conn._buffered = 0
                if conn._reading_paused:
                    conn._resume_reading()
                return chunk
            if conn._complete:
                raise StopAsyncIteration
            exc = conn._exc
            if exc is not None:
                raise exc.with_traceback(None)
            await conn._wait()

    def body_if_complete(self) -> bytes | None:
        """The whole body when all of it has already arrived (the usual small response), else None.

        Lets the caller send headers and body in one write; afterwards iterating yields nothing more.
        """
        conn = self._conn
        if conn is None or not conn._complete:
            return None
        buf = conn._buf
        body = (buf[0] if len(buf) == 1 else b"".join(buf)) if buf else b""
        buf.clear()
        conn._buffered = 0
        if conn._reading_paused:
            conn._resume_reading()
        return body

    async def read(self) -> bytes:
        chunks = [chunk async for chunk in self]
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def release(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn._pool._release(conn)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; its parser callbacks fill the response currently in flight."""

    __slots__ = (
        "_buf",
        "_buffered",
        "_chunked",
        "_closed",
        "_complete",
        "_conn_tokens",
        "_content_length",
        "_deadline",
        "_exc",
        "_got_data",
        "_hdr_bytes",
        "_hdr_size",
        "_hdrs",
        "_head_tail",
        "_headers_done",
        "_idle_since",
        "_is_head",
        "_keep_alive",
        "_loop",
        "_lost",
        "_lost_waiter",
        "_max_header",
        "_parser",
        "_pending",
        "_pool",
        "_read_timeout",
        "_reading_paused",
        "_reason",
        "_request_done",
        "_resp",
        "_stale",
        "_timer",
        "_transport",
        "_waiter",
        "_writing_paused",
    )

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._read_timeout = pool._read_timeout
        self._max_header = pool._max_header_size
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._parser = HttpResponseParser(self)
        self._resp: UpstreamResponse | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._buf: list[bytes] = []
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._closed = False
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None
        self._exc: UpstreamError | None = None
        self._pending: UpstreamError | None = None
        self._stale = False
        self._got_data = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._request_done = False
        self._is_head = False
        self._head_tail = b""
        self._hdr_bytes = 0
        self._hdr_size = 0
        self._hdrs: list[tuple[str, str]] = []
        self._reason = b""
        self._content_length: int | None = None
        self._chunked = False
        self._conn_tokens = b""
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    # -- transport callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        if self._resp is None or self._closed:
            # Bytes nobody asked for: whatever follows can no longer be framed.
            self._close()
            return
        self._got_data = True
        if self._deadline is not None:
            self._deadline = self._loop.time() + self._read_timeout
        in_headers = not self._headers_done
        try:
            if self._is_head:
                self._feed_head(data)
            else:
                self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(UpstreamError("upstream switched protocols, which the gateway does not forward"))
            return
        except HttpParserError as exc:
            if self._complete:
                # Trailing garbage after a whole response: the response stands, the connection goes.
                self._keep_alive = False
                self._close()
            else:
                self._fail(self._pending or UpstreamError(f"invalid response from upstream: {exc}"))
            return
        if in_headers and not self._headers_done and not self._closed:
            # llhttp buffers a partial header line itself, so cap what we let it swallow.
            self._hdr_bytes += len(data)
            if self._hdr_bytes > self._max_header:
                self._fail(UpstreamError("upstream response header block too large"))

    def eof_received(self) -> bool:
        if self._resp is None:
            self._closed = True
            self._pool._forget_idle(self)
        elif not self._complete:
            if self._headers_done and not self._chunked and self._content_length is None:
                self._complete = True  # close-delimited body: EOF is its end
                self._keep_alive = False
                self._deadline = None
                self._wake()
            else:
                self._fail(self._lost_error())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._lost_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._resp is None:
            self._pool._forget_idle(self)
            return
        if not self._complete and self._exc is None:
            self._exc = self._lost_error()
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._deadline is not None:
            self._deadline = self._loop.time() + self._read_timeout
        self._wake()

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise UpstreamError("upstream sent more than one response")
        self._hdrs = []
        self._reason = b""
        self._content_length = None
        self._chunked = False
        self._conn_tokens = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        self._hdr_size += n + len(value) + 4
        if self._hdr_size > self._max_header:
            self._pending = UpstreamError("upstream response header block too large")
            raise self._pending
        # Length filter first: lower() on every header name would cost more than the rest of this.
        if n == 14 or n == 10 or n == 17:
            lname = name.lower()
            if lname == b"content-length":
                self._content_length = int(value)
            elif lname == b"transfer-encoding":
                self._chunked = self._chunked or b"chunked" in value.lower()
            elif lname == b"connection":
                self._conn_tokens += value.lower() + b","
        self._hdrs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            return  # interim (100 Continue, 103 Early Hints); 101 ends in HttpParserUpgrade
        resp = self._resp
        assert resp is not None  # set by _exchange before any byte of the answer is parsed
        resp.status = status
        resp.reason = self._reason.decode("latin-1")
        resp.headers = self._hdrs
        resp.content_length = None if self._chunked else self._content_length
        if self._is_head:
            # llhttp would judge keep-alive as if a body followed; decide from version and Connection.
            tokens = {t.strip() for t in self._conn_tokens.split(b",")}
            version = parser.get_http_version()
            if version == "1.1":
                self._keep_alive = b"close" not in tokens
            else:
                self._keep_alive = version == "1.0" and b"keep-alive" in tokens and b"close" not in tokens
        else:
            self._keep_alive = parser.should_keep_alive()
            resp._has_body = status != 204 and status != 304
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._buf.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and not self._closed:
            self._reading_paused = True
            self._deadline = None  # the consumer is slow now, not the upstream
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._headers_done:
            self._complete = True
            self._deadline = None
            self._wake()

    def _feed_head(self, data: bytes) -> None:
        # llhttp cannot be told a response answers HEAD and would wait for the announced body, so it
        # gets exactly each header block and is replaced after the final one.
        while data:
            tail = self._head_tail
            probe = tail + data
            end = probe.find(b"\r\n\r\n")
            if end < 0:
                self._parser.feed_data(data)
                self._head_tail = probe[-3:]
                return
            cut = end + 4 - len(tail)
            self._head_tail = b""
            self._parser.feed_data(data[:cut])
            data = data[cut:]
            if self._headers_done:
                self._complete = True
                self._deadline = None
                self._parser = HttpResponseParser(self)
                if data:
                    self._keep_alive = False  # a body after a HEAD response: framing is lost
                    self._close()
                self._wake()
                return

    # -- helpers ------------------------------------------------------------------------------------

    def _lost_error(self) -> UpstreamError:
        if not self._headers_done:
            # Nothing came back: on a reused connection that is a keep-alive race, safe to retry.
            self._stale = not self._got_data
            return UpstreamError("upstream closed the connection before responding")
        return UpstreamError("upstream closed the connection mid-body")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wait(self) -> asyncio.Future[None]:
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def _arm(self) -> None:
        # One lazily re-armed timer per connection instead of a timer per read: data only moves the
        # deadline, and the timer re-schedules itself when it fires early.
        if self._closed:
            return
        deadline = self._deadline = self._loop.time() + self._read_timeout
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closed:
            return
        if self._loop.time() + _TIMER_SLACK >= deadline:
            what = "response headers" if not self._headers_done else "response body data"
            self._fail(UpstreamTimeout(f"no {what} from upstream within {self._read_timeout}s"))
        else:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _resume_reading(self) -> None:
        if self._buffered <= _LOW_WATER and not self._closed:
            self._reading_paused = False
            self._transport.resume_reading()
            if not self._complete:
                self._arm()

    def _fail(self, exc: UpstreamError) -> None:
        if self._exc is None and not self._complete:
            self._exc = exc
        self._keep_alive = False
        self._close()
        self._wake()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _alive(self) -> bool:
        return not (self._closed or self._exc is not None or self._transport.is_closing())

    def _writable(self) -> bool:
        # Once the answer is in, the rest of the request body is moot.
        return not self._headers_done and self._alive()

    def _reusable(self) -> bool:
        return (
            self._complete
            and self._keep_alive
            and self._request_done
            and self._exc is None
            and not self._closed
            and not self._transport.is_closing()
        )

    # -- one request --------------------------------------------------------------------------------

    async def _exchange(
        self,
        head: bytes,
        payload: bytes | None,
        stream: AsyncIterable[bytes] | None,
        body_length: int | None,
        chunked: bool,
        is_head: bool,
    ) -> UpstreamResponse:
        resp = self._resp = UpstreamResponse(self)
        self._is_head = is_head
        self._headers_done = self._complete = self._request_done = False
        self._got_data = self._stale = False
        self._hdr_bytes = self._hdr_size = 0
        self._head_tail = b""
        self._pending = None
        self._buf.clear()
        self._buffered = 0

        if stream is not None:
            self._request_done = await self._send_stream(head, stream, body_length, chunked)
        elif payload is None:
            self._transport.write(head)
            self._request_done = True
        elif len(payload) <= _SMALL_BODY:
            self._transport.write(head + payload)
            self._request_done = True
        else:
            self._request_done = await self._send_large(head, payload)

        if not self._complete and not self._reading_paused:
            self._arm()
        while not self._headers_done:
            exc = self._exc
            if exc is not None:
                raise exc.with_traceback(None)
            await self._wait()
        return resp

    async def _drain(self) -> None:
        self._arm()
        try:
            while self._writing_paused and self._writable():
                await self._wait()
        finally:
            self._deadline = None

    async def _send_large(self, head: bytes, payload: bytes) -> bool:
        write = self._transport.write
        write(head)
        view = memoryview(payload)
        for offset in range(0, len(view), _BODY_SLICE):
            if not self._writable():
                return False
            write(view[offset : offset + _BODY_SLICE])
            if self._writing_paused:
                await self._drain()
        return self._alive()

    async def _send_stream(
        self, head: bytes, stream: AsyncIterable[bytes], body_length: int | None, chunked: bool
    ) -> bool:
        transport = self._transport
        transport.write(head)
        sent = 0
        async for chunk in stream:
            # An answer (say 413) or a failure before the body is done: stop sending, keep the answer.
            if not self._writable():
                return False
            size = len(chunk)
            if not size:
                continue
            sent += size
            if body_length is not None and sent > body_length:
                raise UpstreamError(f"request body longer than the announced {body_length} bytes")
            if chunked:
                transport.writelines((b"%x\r\n" % size, chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if self._writing_paused:
                await self._drain()
        if not self._alive():
            return False
        if body_length is not None and sent != body_length:
            raise UpstreamError(f"request body shorter ({sent}) than the announced {body_length} bytes")
        if chunked:
            transport.write(b"0\r\n\r\n")
        return True


def _expire_waiter(fut: asyncio.Future[None], pool_timeout: float) -> None:
    if not fut.done():
        fut.set_exception(UpstreamBusy(f"no upstream connection free within {pool_timeout}s"))


class UpstreamPool:
    """Keep-alive connections to one upstream base URL, reused last-in first-out."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_connections: int = 256,
        pool_timeout: float = 5.0,
        max_idle: int = 64,
        idle_timeout: float = 60.0,
        max_header_size: int = 65536,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"upstream URL must be http://host[:port], got {url!r}")
        host = parts.hostname
        port = parts.port or 80  # raises ValueError for a malformed port
        if not host or parts.username is not None or parts.password is not None:
            raise ValueError(f"upstream URL needs a host and no credentials: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            # Targets go out untouched, so a base path would have to be glued on: refuse instead.
            raise ValueError(f"upstream URL must not carry a path, query or fragment: {url!r}")
        if connect_timeout <= 0 or read_timeout <= 0 or pool_timeout < 0 or idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_connections < 1 or max_idle < 0 or max_header_size < 1:
            raise ValueError("max_connections must be >= 1, max_idle >= 0, max_header_size >= 1")
        self._host = host
        self._port = port
        self.host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._host_line = f"Host: {self.host_header}\r\n"
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._max_header_size = max_header_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Conn] = []  # oldest first; reuse pops the newest
        self._busy: set[_Conn] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def in_use_count(self) -> int:
        return len(self._busy)

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool http://{self.host_header} in_use={len(self._busy)} idle={len(self._idle)} "
            f"connecting={self._connecting}>"
        )

    @property
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Taken on first use: the pool may be built before the loop runs.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # -- requests -----------------------------------------------------------------------------------

    def _encode(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        body_length: int | None,
    ) -> tuple[bytes, bytes | None, AsyncIterable[bytes] | None, bool]:
        if method not in _KNOWN_METHODS and not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not target or _BAD_TARGET.search(target):
            raise ValueError(f"request-target must be non-empty printable ASCII without spaces: {target!r}")
        host_line = self._host_line
        block = ""
        count = len(headers)
        if count:
            block = "".join([f"{name}: {value}\r\n" for name, value in headers])
            # Each header line contributes exactly one CR and one LF; any other CR or LF was smuggled
            # in through a name or value. Other controls (bar HTAB) are refused as llhttp would.
            if block.count("\n") != count or block.count("\r") != count or _BAD_FIELD.search(block):
                raise ValueError("header names and values must not contain CR, LF, NUL or other controls")
            names = "\n".join([name for name, _ in headers]).lower()
            if not _NAMES.fullmatch(names):
                raise ValueError("header names must be non-empty HTTP tokens")
            names = f"\n{names}\n"
            if "\ncontent-length\n" in names or "\ntransfer-encoding\n" in names or "\nconnection\n" in names:
                raise ValueError("Content-Length, Transfer-Encoding and Connection are set by the pool")
            if "\nhost\n" in names:
                host_line = ""
        chunked = False
        payload: bytes | None = None
        stream: AsyncIterable[bytes] | None = None
        if body is None:
            if body_length:
                raise ValueError("body_length given without a body")
            framing = "Content-Length: 0\r\n" if method in _EMPTY_NEEDS_LENGTH else ""
        elif isinstance(body, (bytes, bytearray, memoryview)):
            payload = body if isinstance(body, bytes) else bytes(body)
            if body_length is not None and body_length != len(payload):
                raise ValueError(f"body_length {body_length} does not match the {len(payload)}-byte body")
            framing = f"Content-Length: {len(payload)}\r\n"
        elif isinstance(body, AsyncIterable):
            stream = body
            if body_length is None:
                chunked = True
                framing = "Transfer-Encoding: chunked\r\n"
            elif body_length < 0:
                raise ValueError("body_length must not be negative")
            else:
                framing = f"Content-Length: {body_length}\r\n"
        else:
            raise TypeError(f"body must be bytes, an async iterable of bytes or None, not {type(body)!r}")
        head = f"{method} {target} HTTP/1.1\r\n{host_line}{block}{framing}\r\n".encode("latin-1")
        return head, payload, stream, chunked

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None = None,
        body_length: int | None = None,
    ) -> UpstreamResponse:
        head, payload, stream, chunked = self._encode(method, target, headers, body, body_length)
        is_head = method == "HEAD"
        retry = stream is None and method in _IDEMPOTENT
        fresh = False
        while True:
            conn = None if fresh else self._idle_conn()
            if conn is not None:
                reused = True
            else:
                conn, reused = await self._acquire(fresh)
            try:
                return await conn._exchange(head, payload, stream, body_length, chunked, is_head)
            except UpstreamError:
                self._discard(conn)
                # The peer closed a pooled connection just as we reused it; a fresh one is no such race.
                if retry and reused and conn._stale:
                    retry = False
                    fresh = True
                    continue
                raise
            except BaseException:
                self._discard(conn)
                raise

    # -- pool bookkeeping ---------------------------------------------------------------------------

    def _idle_conn(self) -> _Conn | None:
        """A pooled connection taken without waiting (the usual case under load), else None."""
        if self._closed:
            return None  # _acquire raises
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn._closed and not conn._transport.is_closing():
                self._busy.add(conn)
                return conn
            conn._close()
        return None

    async def _acquire(self, fresh: bool) -> tuple[_Conn, bool]:
        loop = self._running_loop
        deadline: float | None = None
        while True:
            if self._closed:
                raise UpstreamError("upstream pool is closed")
            idle = self._idle
            if fresh:
                if idle and len(idle) + len(self._busy) + self._connecting >= self._max_connections:
                    idle.pop(0)._close()
            else:
                conn = self._idle_conn()
                if conn is not None:
                    return conn, True
            if len(idle) + len(self._busy) + self._connecting < self._max_connections:
                return await self._connect(), False
            if deadline is None:
                deadline = loop.time() + self._pool_timeout
            await self._wait_for_slot(deadline)

    async def _wait_for_slot(self, deadline: float) -> None:
        loop = self._running_loop
        if loop.time() >= deadline:
            raise UpstreamBusy(f"no upstream connection free within {self._pool_timeout}s")
        fut = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_at(deadline, _expire_waiter, fut, self._pool_timeout)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._wake_one()  # we were handed a slot but will not use it: pass it on
            raise
        finally:
            timer.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _connect(self) -> _Conn:
        loop = self._running_loop
        self._connecting += 1
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, conn = await loop.create_connection(lambda: _Conn(self, loop), self._host, self._port)
            except TimeoutError:  # before OSError: TimeoutError is one
                raise UpstreamTimeout(
                    f"connecting to upstream {self.host_header} took over {self._connect_timeout}s"
                ) from None
            except OSError as exc:
                raise UpstreamError(f"cannot connect to upstream {self.host_header}: {exc}") from exc
        except BaseException:
            self._connecting -= 1
            self._wake_one()
            raise
        self._connecting -= 1
        if self._closed:
            conn._close()
            raise UpstreamError("upstream pool is closed")
        self._busy.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        conn._resp = None
        if conn._reusable() and not self._closed and self._max_idle:
            conn._deadline = None
            conn._buf.clear()
            conn._buffered = 0
            if conn._reading_paused:
                # Released without reading a response that had fully arrived: the socket is clean.
                conn._reading_paused = False
                conn._transport.resume_reading()
            conn._idle_since = self._running_loop.time()
            idle = self._idle
            if len(idle) >= self._max_idle:
                idle.pop(0)._close()
            idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self._running_loop.call_at(conn._idle_since + self._idle_timeout, self._sweep)
        else:
            conn._close()
        self._wake_one()

    def _discard(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        conn._resp = None
        conn._close()
        self._wake_one()

    def _forget_idle(self, conn: _Conn) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        self._wake_one()

    def _sweep(self) -> None:
        self._sweeper = None
        idle = self._idle
        expired = self._running_loop.time() - self._idle_timeout + _TIMER_SLACK
        closed = False
        while idle and idle[0]._idle_since <= expired:
            idle.pop(0)._close()
            closed = True
        if idle:
            self._sweeper = self._running_loop.call_at(idle[0]._idle_since + self._idle_timeout, self._sweep)
        if closed:
            self._wake_one()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        conns = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        for conn in conns:
            conn._fail(UpstreamError("upstream pool is closed"))
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(UpstreamError("upstream pool is closed"))
        pending = []
        for conn in conns:
            if not conn._lost:
                conn._lost_waiter = conn._lost_waiter or conn._loop.create_future()
                pending.append(conn._lost_waiter)
        if pending:
            # connection_lost runs on a later loop pass; waiting for it lets callers shut down cleanly.
            await asyncio.wait(pending, timeout=1.0)
