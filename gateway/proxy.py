"""The request pipeline, one request at a time:

    normalise path -> match route -> extract credential -> look up token (cache, then store)
                   -> decide (pure) -> forward (or refuse) -> log

Each step lives in its own module; this one wires them together and owns the I/O at the edges.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
import traceback
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

from gateway import paths, policy
from gateway.cache import TokenCache
from gateway.config import Config
from gateway.credentials import (
    Found,
    check_charset,
    find,
    media_kind,
    redact_query,
    redact_target,
    refuse_credential_cookies,
    without_method_override,
)
from gateway.errors import REFUSALS, CredentialConflict, MalformedRequest, Reason, Refusal
from gateway.headers import RESPONSE_DROP, is_trusted, upstream_headers
from gateway.limits import Limiter, needs_limits
from gateway.routes import Router
from gateway.store import StoreUnavailable
from gateway.upstream import UpstreamBusy, UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout
from gateway.vocabulary import Route, TokenRecord, digest_of

Extra = Sequence[tuple[str, str]]  # headers a limiter adds to an answer (RateLimit-*)
log = logging.getLogger("gateway.proxy")
CLIENT_CLOSED = 499  # access-log status of a request whose client went away before the answer started
DECODABLE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyTooLarge(Exception):
    pass


class ClientBodyError(Exception):
    """The client stopped sending its body (timeout) or went away while the gateway streamed it."""


def _refusal_headers(refusal: Refusal, request_id: str) -> CIMultiDict[str]:
    headers = _fixed_refusal_headers(refusal).copy()
    headers["X-Request-Id"] = request_id
    return headers


@functools.lru_cache(maxsize=64)
def _fixed_refusal_headers(refusal: Refusal) -> CIMultiDict[str]:
    # Built once per refusal and copied per request: a 401 flood renders the same headers over and over.
    headers = CIMultiDict({"Content-Type": "application/json", "Cache-Control": "no-store"})
    if refusal.www_authenticate:
        error = ' error="invalid_token"' if refusal.reason is not Reason.MISSING else ""
        headers["WWW-Authenticate"] = f'Bearer realm="gateway"{error}'
    return headers


class Gateway:
    """Holds one worker's steps and answers every request that reaches it."""

    def __init__(
        self,
        config: Config,
        *,
        cache: TokenCache,
        upstream: UpstreamPool,
        access_log: Any,
        limiter: Limiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.limiter = limiter or Limiter()
        # token id -> last time it was allowed; the worker flushes this to the store in batches.
        self.last_used: dict[str, float] = {}
        self.upstream = upstream
        self.access_log = access_log
        self.clock = clock
        self._rid_prefix = os.urandom(6).hex()
        self._rid_counter = 0
        self.in_flight = 0
        self.outcomes: dict[tuple[str, int], int] = {}  # (outcome, status) -> requests, for /metrics
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Take a (re)loaded config; requests already running keep the one they started with."""
        self.config = config
        self.router = Router(config.routes)
        self.spec = config.credentials
        self.allow_unmatched = config.server.unmatched == "allow-authenticated"
        self.max_body = config.server.max_body
        self.body_timeout = config.server.body_timeout
        self.trusted = config.server.trusted_proxies

    def _request_id(self) -> str:
        self._rid_counter += 1
        return f"{self._rid_prefix}{self._rid_counter:010x}"

    # --- the pipeline ------------------------------------------------------------------------------------------

    def new_entry(self, client_ip: str | None, method: str | None) -> dict[str, Any]:
        """A fresh access-log record for one request; `log` hands it to the writer once the answer is known."""
        return {
            "ts": self.clock(),
            "request_id": self._request_id(),
            "client_ip": client_ip,
            "method": method,
            "path": None,
            "query": None,
            "route": None,
            "permission": None,
            "token_id": None,
            "token_name": None,
            "outcome": "allowed",
            "status": 0,
            "duration_ms": 0.0,
            "upstream_ms": None,
            "bytes_in": 0,
            "bytes_out": 0,
        }

    async def log(self, entry: dict[str, Any], started: float) -> None:
        wait = self._record(entry, started)
        if wait is not None:
            # Shielded: a request cancelled while the log queue is full still leaves its one record.
            await asyncio.shield(wait)

    def _record(self, entry: dict[str, Any], started: float) -> Any:
        """Count and queue the record; an awaitable when the log queue is full (see `log`), else None."""
        entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        key = (entry["outcome"], entry["status"])
        outcomes = self.outcomes
        outcomes[key] = outcomes.get(key, 0) + 1
        return self.access_log.put(entry)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        self.in_flight += 1
        entry = self.new_entry(_peer_ip(request), request.method)
        try:
            return await self._handle(request, entry)
        except asyncio.CancelledError:
            # The client left before its answer was under way (handler_cancellation): 499, as nginx logs it.
            if not entry["status"]:
                entry["status"] = CLIENT_CLOSED
            raise
        except Exception as exc:
            # A bug of ours. Never a traceback or aiohttp's text/plain 500 to the client: the contract's JSON when
            # nothing was sent yet, else the connection is cut so the client sees a truncated answer. The log gets
            # the exception's class and where it happened, not its message, which may quote a request's bytes.
            log.error(
                "request %s failed inside the gateway: %s\n%s",
                entry["request_id"],
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            if request.writer.output_size:
                entry["outcome"] = "unavailable"
                _abort(request)
                raise
            return self._refuse(REFUSALS[Reason.INTERNAL], entry)
        finally:
            self.in_flight -= 1
            if request.body_exists:
                # Body bytes received from the client (a refused request's as far as they were read).
                entry["bytes_in"] = request.content.total_bytes
            # Not `await self.log(...)`: a coroutine per request only for the rare full queue.
            wait = self._record(entry, started)
            if wait is not None:
                await asyncio.shield(wait)

    async def refuse_unparsed(
        self, client_ip: str | None, method: str | None, target: str | None
    ) -> web.Response:
        """Answer and log a request that aiohttp's parser refused before `handle` could see it.

        `target` is the raw request-target when it could be read; it is logged like any malformed target.
        """
        started = time.perf_counter()
        entry = self.new_entry(client_ip, method)
        if target is not None:
            entry["path"], entry["query"] = redact_target(self.spec, target)
        response = self._refuse(REFUSALS[Reason.MALFORMED], entry)
        response.force_close()
        await self.log(entry, started)
        return response

    async def _handle(self, request: web.BaseRequest, entry: dict[str, Any]) -> web.StreamResponse:
        try:
            target = request.raw_path
            path, query = paths.normalise(target)
        except MalformedRequest:
            # Logged as received, but without anything a credential could hide in.
            entry["path"], entry["query"] = redact_target(self.spec, target)
            return self._refuse(REFUSALS[Reason.MALFORMED], entry)
        entry["path"] = path
        route = self.router.route(path, request.method, allow_unmatched=self.allow_unmatched)
        if route is not None:
            entry["route"] = route.pattern
            entry["permission"] = route.permission

        spec = self.spec
        headers = request.headers
        content_type = headers.get("Content-Type")
        kind = media_kind(content_type) if request.body_exists else None
        try:
            if content_type is not None and len(headers.getall("Content-Type")) > 1:
                raise MalformedRequest(
                    "several Content-Type headers: the upstream might read another body kind"
                )
            length = _content_length(request)
            if length is not None and length > self.max_body:
                raise BodyTooLarge
            if kind is not None and kind != "multipart":
                check_charset(content_type)
            if "Cookie" in headers:
                refuse_credential_cookies(spec, headers.getall("Cookie"))
            if kind is not None:
                # The credential may be in the body: ask for it (a client sending `Expect: 100-continue` waits).
                await _continue(request)
                body = await self._read_body(request)
            else:
                body = None
            found = find(spec, query, headers.getall("Authorization", []), content_type, body)
            found = without_method_override(found, content_type)
        except BodyTooLarge:
            entry["query"] = self._redacted(query)
            return self._refuse(REFUSALS[Reason.TOO_LARGE], entry)
        except CredentialConflict:
            entry["query"] = self._redacted(query)
            return self._refuse(REFUSALS[Reason.CONFLICT], entry)
        except (
            MalformedRequest,
            HttpProcessingError,
            UnicodeError,
            zlib.error,
            TimeoutError,
            ConnectionError,
        ):
            entry["query"] = self._redacted(query)
            return self._refuse(REFUSALS[Reason.MALFORMED], entry)
        entry["query"] = self._redacted(found.query if not spec.forward else query)

        token: TokenRecord | None = None
        if found.token:
            try:
                digest = digest_of(found.token)
                token = self.cache.cached(digest)
                if token is None:
                    token = await self.cache.get(digest)
            except StoreUnavailable:
                return self._refuse(REFUSALS[Reason.UNAVAILABLE], entry)
            if token is not None:
                entry["token_id"] = token.id
                entry["token_name"] = token.name
        refusal = policy.decide(
            credential=found.token,
            token=token,
            route=route,
            allow_unmatched=self.allow_unmatched,
            now=self.clock(),
        )
        if refusal is not None:
            return self._refuse(refusal, entry)
        assert token is not None
        self.last_used[token.id] = entry["ts"]
        if not needs_limits(token, route):
            return await self._forward(request, entry, path, found, body, length, token, route, ())
        admission = await self.limiter.admit(token, route, self.clock())
        try:
            if admission.refusal is not None:
                return self._refuse(admission.refusal, entry, admission.headers)
            return await self._forward(
                request, entry, path, found, body, length, token, route, admission.headers
            )
        finally:
            admission.release()

    def _refuse(self, refusal: Refusal, entry: dict[str, Any], extra: Extra = ()) -> web.Response:
        entry["outcome"] = refusal.outcome
        entry["status"] = refusal.status
        entry["bytes_out"] = len(refusal.body)
        headers = _refusal_headers(refusal, entry["request_id"])
        for name, value in extra:
            headers[name] = value
        return web.Response(status=refusal.status, body=refusal.body, headers=headers)

    def _redacted(self, query: str) -> str:
        return redact_query(self.spec, query)

    # --- body ----------------------------------------------------------------------------------------------------

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """Buffer a body the gateway must read for a credential, bounded by max_body and body_timeout."""
        limit = self.max_body
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.body_timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
        body = b"".join(chunks)
        encodings = request.headers.getall("Content-Encoding", ())
        if len(encodings) > 1 or "," in (encodings[0] if encodings else ""):
            # Layered or repeated codings: decoding only some of them would forward bytes its headers misdescribe.
            raise MalformedRequest("more than one Content-Encoding")
        encoding = encodings[0].strip().lower() if encodings else ""
        if encoding not in ("", "identity"):
            # The credential may sit inside a compressed body: decode it ourselves (bounded) and forward the
            # decoded body, so the headers always describe the bytes the upstream receives.
            wbits = DECODABLE.get(encoding)
            if wbits is None:
                raise MalformedRequest(f"cannot read a body with Content-Encoding {encoding}")
            decoder = zlib.decompressobj(wbits)
            body = decoder.decompress(body, limit + 1)
            if len(body) > limit or decoder.unconsumed_tail:
                raise BodyTooLarge
            if not decoder.eof:
                raise MalformedRequest("truncated compressed body")
        return body

    async def _stream_body(self, request: web.BaseRequest) -> AsyncIterator[bytes]:
        limit = self.max_body
        size = 0
        timeout = self.body_timeout
        content = request.content
        while True:
            try:
                async with asyncio.timeout(timeout):
                    chunk = await content.readany()
            except (TimeoutError, ConnectionError, HttpProcessingError) as e:
                raise ClientBodyError(repr(e)) from e
            if not chunk:
                return
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            yield chunk

    # --- forward -------------------------------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.BaseRequest,
        entry: dict[str, Any],
        path: str,
        found: Found,
        body: bytes | None,
        length: int | None,
        token: TokenRecord,
        route: Route | None,
        extra: Extra,
    ) -> web.StreamResponse:
        peer = entry["client_ip"]
        headers = upstream_headers(
            request.headers,
            token,
            request_id=entry["request_id"],
            peer=peer,
            secure=request.secure,
            peer_trusted=bool(self.trusted) and peer is not None and is_trusted(peer, self.trusted),
            strip_authorization=found.strip_authorization,
            decoded=body is not None,
        )
        if body is not None:
            payload: bytes | AsyncIterator[bytes] | None = found.body
            body_length = len(found.body) if found.body is not None else None
        elif request.body_exists:
            # Authorised: only now is the client asked for a body it has held back (`Expect: 100-continue`); a
            # refused request got its refusal instead, and the connection closed.
            await _continue(request)
            payload = self._stream_body(request)
            body_length = length
        else:
            payload, body_length = None, None
        target = path + "?" + found.query if found.query else path
        upstream_started = time.perf_counter()
        try:
            upstream = await self.upstream.request(request.method, target, headers, payload, body_length)
        except BodyTooLarge:
            return self._refuse(REFUSALS[Reason.TOO_LARGE], entry)
        except ClientBodyError:
            return self._refuse(REFUSALS[Reason.MALFORMED], entry)
        except UpstreamTimeout:
            return self._upstream_failed(REFUSALS[Reason.UPSTREAM_TIMEOUT], entry, upstream_started)
        except UpstreamBusy:
            return self._upstream_failed(REFUSALS[Reason.UPSTREAM_BUSY], entry, upstream_started)
        except UpstreamError:
            return self._upstream_failed(REFUSALS[Reason.UPSTREAM_ERROR], entry, upstream_started)
        try:
            return await self._relay(request, upstream, entry, upstream_started, extra)
        finally:
            upstream.release()

    def _upstream_failed(self, refusal: Refusal, entry: dict[str, Any], started: float) -> web.Response:
        entry["upstream_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return self._refuse(refusal, entry)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        entry: dict[str, Any],
        started: float,
        extra: Extra,
    ) -> web.StreamResponse:
        entry["upstream_ms"] = round((time.perf_counter() - started) * 1000, 3)
        status = entry["status"] = upstream.status
        method = request.method
        if upstream.content_length is not None and status not in _EMPTY_BODY_STATUS and method != "CONNECT":
            # The usual small answer: framed by Content-Length, all of it here already. Sent as one buffer,
            # headers and body, without a trip through aiohttp's header machinery.
            if method == "HEAD":
                whole: bytes | None = b""
            else:
                whole = upstream.body_if_complete()
            if whole is not None:
                whole_response = _WholeResponse(status=status, reason=upstream.reason)
                try:
                    sent = await whole_response.send(
                        request, upstream.headers, extra, entry["request_id"], whole
                    )
                except ConnectionError:
                    sent = 0  # the client went away; the record keeps the status
                entry["bytes_out"] = sent
                return whole_response
        if not upstream.has_body() or request.method == "HEAD":
            whole = b""
        else:
            whole = upstream.body_if_complete()
        response = (web.StreamResponse if whole is None else _BufferedResponse)(
            status=upstream.status, reason=upstream.reason
        )
        out = response.headers
        for name, value in upstream.headers:
            if name.lower() not in RESPONSE_DROP:
                out.add(name, value)
        for name, value in extra:
            out[name] = value
        out["X-Request-Id"] = entry["request_id"]
        sent = 0
        try:
            if whole is not None:
                await response.prepare(request)
                await response.write_eof(whole)
                sent = len(whole)
            else:
                await response.prepare(request)
                async for chunk in upstream:
                    sent += len(chunk)
                    await response.write(chunk)
                await response.write_eof()
        except (UpstreamError, TimeoutError):
            # Headers are gone already: all we can do is cut the client off so it sees a truncated response.
            entry["outcome"] = "upstream_error"
            _abort(request)
        except (ConnectionError, RuntimeError):
            pass  # the client went away mid-response; the record keeps the status and the bytes it got
        finally:
            entry["bytes_out"] = sent
        return response


# Statuses whose response never has a body (aiohttp drops their Content-Length; the general path handles them).
_EMPTY_BODY_STATUS = frozenset({204, 304, *range(100, 200)})
# Set by the gateway itself on a relayed response, so an upstream's own copy is dropped.
_RELAY_DROP = RESPONSE_DROP | {"x-request-id"}
# Control characters that must not reach a header block (HTAB is allowed); CR and LF are counted separately.
_BAD_FIELD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _BufferedResponse(web.StreamResponse):
    """A relayed response whose body has fully arrived: its headers wait for the body, so both leave in one
    write (one syscall, one segment) instead of two."""

    _send_headers_immediately = False


class _WholeResponse(web.StreamResponse):
    """A relayed response framed by Content-Length whose body is all here: serialised in one go and written with
    a single transport write. The header block is what aiohttp's own path would write (Date, Server and the
    Content-Type default when the upstream left them out, Connection as keep-alive requires); that path stays for
    everything else (streamed, chunked, close-delimited, 1xx/204/304)."""

    async def send(
        self,
        request: web.BaseRequest,
        headers: list[tuple[str, str]],
        extra: Extra,
        request_id: str,
        body: bytes,
    ) -> int:
        drop = _RELAY_DROP
        if extra:
            drop = drop | {name.lower() for name, _ in extra}
        lines = []
        seen_type = seen_date = seen_server = False
        for name, value in headers:
            low = name.lower()
            if low in drop:
                continue
            if low == "content-type":
                seen_type = True
            elif low == "date":
                seen_date = True
            elif low == "server":
                seen_server = True
            lines.append(f"{name}: {value}\r\n")
        for name, value in extra:
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"X-Request-Id: {request_id}\r\n")
        if not seen_type and body:
            lines.append("Content-Type: application/octet-stream\r\n")
        if not seen_date:
            lines.append(f"Date: {rfc822_formatted_time()}\r\n")
        if not seen_server:
            lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
        version = request.version
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        if not keep_alive:
            if version == HttpVersion11:
                lines.append("Connection: close\r\n")
        elif version == HttpVersion10:
            lines.append("Connection: keep-alive\r\n")
        head = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}\r\n{''.join(lines)}\r\n"
        count = len(lines) + 2
        if head.count("\n") != count or head.count("\r") != count or _BAD_FIELD.search(head):
            # aiohttp refuses these too (header injection), failing the request the same way.
            raise ValueError("forbidden control character in a response header")
        writer = cast(StreamWriter, request._payload_writer)
        self._eof_sent = True  # prepare() and write_eof() from aiohttp's finish_response are no-ops now
        # latin-1: the upstream's header bytes were read as latin-1, so they leave exactly as they came.
        data = head.encode("latin-1") + body if body else head.encode("latin-1")
        writer._write(data)
        writer._eof = True
        self._body_length = writer.output_size
        if writer._protocol._paused:
            await writer.drain()
        return len(body)


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def _continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` with the interim 100, once, before the gateway reads the body.

    aiohttp's low-level server leaves this to the application (its router does it); the upstream never sees the
    Expect header, so the 100 is always the gateway's own.
    """
    if request.version != HttpVersion11 or request.content.is_eof():
        return
    expect = request.headers.get("Expect")
    if expect is None or expect.strip().lower() != "100-continue" or request.get(_CONTINUED):
        return
    request[_CONTINUED] = True
    await request.writer.write(_CONTINUE)


_CONTINUED = web.RequestKey("gateway.continued", bool)


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _content_length(request: web.BaseRequest) -> int | None:
    value = request.headers.get("Content-Length")
    if value is None:
        return None
    if not value.isdigit():
        raise MalformedRequest("bad Content-Length")
    return int(value)


def _peer_ip(request: web.BaseRequest) -> str | None:
    transport = request.transport
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    return peer[0] if peer else None
