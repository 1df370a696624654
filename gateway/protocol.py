"""The HTTP/1.1 connection layer in front of the pipeline: aiohttp's strict C parser plus the limits it lacks.

Requests the parser refuses get the contract's JSON 400 and one access-log record; a request head must arrive
within `header_timeout`; a worker holds at most `max_connections` client connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web, web_protocol
from aiohttp.helpers import ceil_timeout
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

if TYPE_CHECKING:
    from gateway.config import ServerConfig
    from gateway.proxy import Gateway

log = logging.getLogger("gateway.protocol")

# What a parser error is answered as: HTTP/1.1 (aiohttp's placeholder says 1.0) and no keep-alive.
_ErrInfo = web_protocol._ErrInfo
_UNPARSED = web_protocol.ERROR._replace(version=HttpVersion11, should_close=True)
# Enough of a connection's first bytes to name the request line of a request the parser refused.
_SAMPLE = 2048
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,20}) ([^ \r\n]{1,2048}) HTTP/")
_TIMER_SLACK = 0.001
# llhttp also reads HTTP/0.9-style request lines and any 1.x or 2.x version; the gateway speaks 1.0 and 1.1 only.
_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
# The aiohttp release whose request loop GatewayProtocol._start_in_connection_task copies.
START_COPIED_FROM = "3.14.5"


class StartupRefused(Exception):
    """The gateway will not serve in this environment."""


def require_c_parser() -> None:
    """Refuse to start on aiohttp's lenient pure-Python parser (AIOHTTP_NO_EXTENSIONS=1, or no compiled wheel).

    Framing is the one place where two parsers disagreeing lets a request past the gateway unseen; the security
    tests prove the C parser (llhttp), so that is the only one the gateway runs.
    """
    parser = web_protocol.HttpRequestParser  # type: ignore[attr-defined]  # not re-exported, but what it uses
    if parser.__module__ != "aiohttp._http_parser":
        raise StartupRefused(
            "aiohttp's C HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS is set, or aiohttp was installed "
            "without its compiled extensions); refusing to parse requests with the pure-Python parser"
        )


class GatewayServer(web.Server):
    """aiohttp's low-level server with our connection protocol and per-worker connection accounting."""

    def __init__(
        self, gateway: Gateway, server: ServerConfig, *, handler_cancellation: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(
            gateway.handle,
            handler_cancellation=handler_cancellation,
            access_log=None,
            keepalive_timeout=server.keepalive_timeout,
            max_line_size=server.max_url,
            max_field_size=server.max_header_size,
            max_headers=server.max_headers,
            # How long a body still in transit after a refusal is read and discarded before closing: a client
            # pausing longer than body_timeout is not sending it anyway.
            lingering_time=min(10.0, server.body_timeout),
            **kwargs,
        )
        self.gateway = gateway
        self.header_timeout = server.header_timeout
        self.max_connections = server.max_connections
        self.open_connections = 0
        # For /metrics: connections closed for being too slow with a request head, or refused at the limit.
        self.header_timeouts = 0
        self.refused_connections = 0
        self.unparsed_requests = 0

    def apply(self, server: ServerConfig) -> None:
        """A reload's limits, for connections accepted from now on (and head deadlines armed from now on)."""
        self.header_timeout = server.header_timeout
        self.max_connections = server.max_connections
        self._kwargs.update(
            keepalive_timeout=server.keepalive_timeout,
            max_line_size=server.max_url,
            max_field_size=server.max_header_size,
            max_headers=server.max_headers,
            lingering_time=min(10.0, server.body_timeout),
        )

    def __call__(self) -> GatewayProtocol:
        return GatewayProtocol(self, loop=self._loop, **self._kwargs)

    def _make_request(
        self,
        message: Any,
        payload: StreamReader,
        protocol: web_protocol.RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if message is web_protocol.ERROR:
            message = _UNPARSED
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop)


class GatewayProtocol(web_protocol.RequestHandler):
    """One client connection: a deadline on each request head, a cap on connections, JSON for parser errors."""

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gateway_server = manager
        self._counted = False
        # Loop time by which the request head being received must be complete; None while none is expected
        # (a body is arriving, or the connection is idle between requests under the keep-alive timeout).
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the newest request's body while it is still arriving
        self._first_bytes: bytes | None = None
        self._splitting = False  # data_received is feeding one request head at a time
        # Ordinals (1 = the connection's first request) of upgrade requests whose answer must close the
        # connection, because bytes behind them may be lost; and how many requests were answered so far.
        self._upgrade_close: set[int] = set()
        self._answered = 0

    # --- connection accounting ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._gateway_server
        if server.open_connections >= server.max_connections:
            # Over the limit: close before a request is read, so the worker's memory and fds stay bounded.
            server.refused_connections += 1
            transport.close()
            return
        server.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        # A new connection owes its first request head within header_timeout, like nginx's client_header_timeout.
        self._expect_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._gateway_server.open_connections -= 1
        self._head_deadline = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    # --- the header-read deadline ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if b"pgrade" not in data and b"PGRADE" not in data:
            self._receive(data)
            return
        # aiohttp's C parser drops whatever follows, in the same chunk, a request asking for an upgrade it does not
        # support (anything but websocket, e.g. `Upgrade: h2c`): a request pipelined behind it would get no answer
        # and no record. Such chunks are fed one request head at a time, so the parser stops at a piece's end and
        # the next piece is parsed as the next request. (Spellings this check misses, and upgrade requests with a
        # body, end the connection after their answer instead: see _upgrade_close.)
        self._splitting = True
        try:
            start = 0
            end = data.find(b"\r\n\r\n")
            while end >= 0 and not (self._force_close or self._close):
                self._receive(data[start : end + 4])
                start = end + 4
                end = data.find(b"\r\n\r\n", start)
            if start < len(data) and not (self._force_close or self._close):
                self._receive(data[start:])
        finally:
            self._splitting = False

    def _receive(self, data: bytes) -> None:
        if self._first_bytes is None:
            self._first_bytes = data[:_SAMPLE]
        if self._head_deadline is None and data:
            body = self._body
            if body is None or body.is_eof():
                # Between requests: these bytes begin the next request head.
                self._body = None
                self._expect_head()
        body = self._body
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._refuse_versions(self._request_count - count)
            self._watch_upgrades(self._request_count - count)
            if body is not None and not body.is_eof() and isinstance(self._messages[-1][0], _ErrInfo):
                # The parser gave up inside a body (a bad chunk) and queued an error behind the request that owns
                # it; that request's handler would otherwise wait out body_timeout for bytes that never come.
                body.set_exception(BadHttpMessage("the request body's framing is broken"))
            if count == 0 and self._messages and not isinstance(self._messages[0][0], _ErrInfo):
                self._first_bytes = (
                    b""  # only ever needed to log a refused first request: not held any longer
                )
            # A head (or several pipelined ones) completed. If all of the newest one's body is in too, bytes of a
            # further head that came in this same chunk start its deadline with the next chunk.
            self._head_deadline = None
            payload = self._messages[-1][1] if self._messages else None
            self._body = payload if payload is not None and not payload.is_eof() else None

    def _watch_upgrades(self, new: int) -> None:
        """Mark upgrade requests whose chunk may have lost bytes behind them: their answer ends the connection."""
        messages = self._messages
        first = len(messages) - new
        for index in range(max(0, first), len(messages)):
            message, payload = messages[index]
            if isinstance(message, _ErrInfo) or not message.upgrade:
                continue
            if not self._splitting or payload is not EMPTY_PAYLOAD:
                # The connection's ordinal of this request: finish_response counts answers the same way.
                self._upgrade_close.add(self._request_count - (len(messages) - 1 - index))

    def _refuse_versions(self, new: int) -> None:
        messages = self._messages
        for index in range(max(0, len(messages) - new), len(messages)):
            message = messages[index][0]
            if not isinstance(message, _ErrInfo) and message.version not in _VERSIONS:
                error = BadHttpMessage(f"unsupported HTTP version {message.version}")
                messages[index] = (_ErrInfo(400, error, error.message), EMPTY_PAYLOAD)

    def _expect_head(self) -> None:
        timeout = self._gateway_server.header_timeout
        if timeout <= 0 or self.transport is None:
            return
        deadline = self._head_deadline = self._loop.time() + timeout
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(deadline, self._on_head_timer)

    def _on_head_timer(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None or self.transport is None or self._force_close:
            return
        now = self._loop.time()
        if now + _TIMER_SLACK < deadline:
            self._head_timer = self._loop.call_at(deadline, self._on_head_timer)
            return
        if self._request_in_progress or self._reading_paused or self._buffer_paused:
            # We are the slow one (a request still being answered, or reading paused for pipelined requests
            # queued behind it): the client's clock starts again when we are ready for it.
            self._head_deadline = now + self._gateway_server.header_timeout
            self._head_timer = self._loop.call_at(self._head_deadline, self._on_head_timer)
            return
        # No 408: a client this slow is either gone or attacking, and the contract has no body for it.
        self._gateway_server.header_timeouts += 1
        self.force_close()

    # --- requests the parser refused ---------------------------------------------------------------------------

    def _make_error_handler(
        self, err_info: Any
    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        async def refuse(request: web.BaseRequest) -> web.StreamResponse:
            server = self._gateway_server
            server.unparsed_requests += 1
            # Only the exception's class: its message quotes raw request bytes, which may carry a token.
            log.debug("refused a request the HTTP parser could not read: %s", type(err_info.exc).__name__)
            method, target = self._refused_request_line()
            peer = self.peername
            client_ip = peer[0] if isinstance(peer, tuple) else None
            return await server.gateway.refuse_unparsed(client_ip, method, target)

        return refuse

    def _refused_request_line(self) -> tuple[str | None, str | None]:
        """Method and target of the refused request when it is the connection's first (never a guess)."""
        if self._request_count != 1 or not self._first_bytes:
            return None, None
        line = _REQUEST_LINE.match(self._first_bytes)
        if line is None:
            return None, None
        return line[1].decode("ascii"), line[2].decode("ascii", "backslashreplace")

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        payload = request.content
        # The body broke the framing (a bad chunk, a short body): whatever follows cannot be trusted to be a new
        # request, so the connection ends with this answer.
        broken = payload.exception() is not None and not payload.is_eof()
        self._answered += 1
        if self._upgrade_close and self._answered in self._upgrade_close:
            self._upgrade_close.discard(self._answered)
            resp.force_close()
        if not resp.prepared and (broken or (resp.status >= 400 and not payload.is_eof())):
            # A refusal before the whole body came in (too large, too slow, unauthorised upload): aiohttp
            # discards what is still in transit (for at most the lingering time), then the connection ends.
            resp.force_close()
        result = await super().finish_response(request, resp, start_time)
        if broken:
            self.force_close()
        return result

    # --- the request loop ---------------------------------------------------------------------------------------

    async def _start_in_connection_task(self) -> None:
        """aiohttp 3.14.5's RequestHandler.start (the version pyproject pins) with one change: each request's
        handler runs in this connection's task instead of a task of its own.

        On Python 3.11 aiohttp creates that task lazily, which costs two extra event-loop steps per request (about
        2 us of CPU, 4 % of an allowed GET); on 3.12+ it starts it eagerly, which is what awaiting the handler here
        amounts to. Cancellation is unchanged: aiohttp cancels this connection task on a lost client
        (handler_cancellation) and at shutdown, and it used to pass that on to the request's task; the handler now
        receives it directly. The gateway keeps no context variables, which the per-request task existed to copy.
        Any other aiohttp version keeps its own loop (see below): this copy is only right for the one it came from.
        """
        loop = self._loop
        manager = self._manager
        assert manager is not None
        keepalive_timeout = self._keepalive_timeout
        resp = None
        assert self._request_factory is not None
        assert self._request_handler is not None

        while not self._force_close:
            if not self._messages:
                try:
                    self._waiter = loop.create_future()
                    await self._waiter
                finally:
                    self._waiter = None

            message, payload = self._messages.popleft()
            if self._parser is not None:
                self._parser.message_consumed()
            if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()

            start = loop.time() if self._logging_enabled else None

            manager.requests_count += 1
            writer = web_protocol.StreamWriter(self, loop)  # type: ignore[attr-defined]  # see the docstring
            if isinstance(message, _ErrInfo):
                request_handler = self._make_error_handler(message)
                message = web_protocol.ERROR
            else:
                request_handler = self._request_handler

            task = self._task_handler or asyncio.current_task(loop)
            assert task is not None  # this coroutine runs as the connection's task
            request = self._request_factory(message, payload, self, writer, task)
            try:
                try:
                    resp, reset = await self._handle_request(request, start, request_handler)
                except ConnectionError:
                    self.log_debug("Ignored premature client disconnection")
                    break

                if reset:
                    self.log_debug("Ignored premature client disconnection 2")
                    break

                self._keepalive = bool(resp.keep_alive)

                if not payload.is_eof():
                    lingering_time = self._lingering_time
                    if not self._force_close and lingering_time:
                        self.log_debug("Start lingering close timer for %s sec.", lingering_time)
                        now = loop.time()
                        end_t = now + lingering_time
                        try:
                            while not payload.is_eof() and now < end_t:
                                async with ceil_timeout(end_t - now):
                                    await payload.readany()
                                now = loop.time()
                        except (TimeoutError, asyncio.CancelledError):
                            if (t := asyncio.current_task()) and t.cancelling():
                                raise

                    if not payload.is_eof() and not self._force_close:
                        self.log_debug("Uncompleted request.")
                        self.close()

                payload.set_exception(web_protocol._PAYLOAD_ACCESS_ERROR)

            except asyncio.CancelledError:
                self.log_debug("Ignored premature client disconnection")
                self.force_close()
                raise
            except Exception as exc:
                self.log_exception("Unhandled exception", exc_info=exc)
                self.force_close()
            except BaseException:
                self.force_close()
                raise
            finally:
                request._task = None  # type: ignore[assignment]
                if self.transport is None and resp is not None:
                    self.log_debug("Ignored premature client disconnection.")

            if self._keepalive and not self._close and not self._force_close:
                close_time = loop.time() + keepalive_timeout
                self._next_keepalive_close_time = close_time
                if self._keepalive_handle is None:
                    self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
            else:
                break

        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self.transport.close()

    if aiohttp.__version__ == START_COPIED_FROM:
        start = _start_in_connection_task
