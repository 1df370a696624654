"""The Redis limits backend: one count shared by every worker and gateway instance, one round trip per request.

A server-side Lua script checks every limit of the request and, only if all admit it, counts it against each:
sliding-window logs for rate limits (the same algorithm as limits_local.py, the ring packed 8 bytes an entry into a
Redis string), a counter per UTC day or month for quotas, and a sorted set of expiring leases for concurrency, so a
gateway that crashes mid-request gives its slots back when their leases run out.

Time comes from the gateway's clock, passed to the script: the one clock that also decides token validity and quota
windows (and that tests inject). Gateways sharing a Redis must keep their clocks in sync (NTP); skew between them
is the only inexactness.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from gateway.limits import Admission, Limiter, admitted, backend_down, quota_window, refused, route_key
from gateway.vocabulary import Route, TokenRecord

log = logging.getLogger("gateway.limits")

CONNECT_TIMEOUT = (
    0.25  # a dead Redis costs a request milliseconds, and then nothing while the circuit is open
)
SOCKET_TIMEOUT = 0.5
POOL_SIZE = 64  # connections per worker; requests wait up to SOCKET_TIMEOUT for one, then count as a failure
RETRY_INTERVAL = 0.5  # after a failure, requests skip Redis this long before one tries again
WARN_EVERY = 30.0  # while Redis stays down, one warning this often (never one per request)
LEASE_MARGIN = 5.0  # a lease outlives the upstream timeout by this much; long responses renew theirs

SCRIPT = """
-- KEYS[i] holds limit i. ARGV[1]: now (seconds, the gateway's clock); ARGV[2]: lease id; then per limit three
-- ARGV: kind ("r" rate, "q" quota, "c" concurrency), count, and the period in seconds (r), the seconds left in
-- the quota's window (q, the key names the window) or the lease lifetime (c).
-- Returns {admitted, wait_ms, then remaining and reset_ms per limit}.
local now = tonumber(ARGV[1])
local lease = ARGV[2]
local HEADER = 8          -- a rate log: "<I4I4" (head, filled), then `count` doubles: a ring of admission times
local KEEP = 60000        -- ms a key outlives what it counts, so clocks a little apart never drop live counts

local function stamp(key, count, head, i)  -- the i-th oldest admission time in the ring
  local at = HEADER + ((head + i) % count) * 8
  return (struct.unpack('<d', redis.call('GETRANGE', key, at, at + 7)))
end

local n = #KEYS
local kinds, counts, spans, state = {}, {}, {}, {}
local wait, refused = 0, false
for i = 1, n do
  local key, kind = KEYS[i], ARGV[3 * i]
  local count, span = tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  kinds[i], counts[i], spans[i] = kind, count, span
  local w = 0
  if kind == 'r' then
    local head, filled = 0, 0
    local header = redis.call('GETRANGE', key, 0, HEADER - 1)
    if #header == HEADER then head, filled = struct.unpack('<I4I4', header) end
    if filled >= count then w = stamp(key, count, head, 0) + span - now end
    state[i] = {head, filled}
  elseif kind == 'q' then
    local used = tonumber(redis.call('GET', key) or '0')
    if used >= count then w = span end
    state[i] = used
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    if held >= count then w = 1 end
    state[i] = held
  end
  if w > 0 then
    refused = true
    if w > wait then wait = w end
  end
  state[n + i] = w
end

local out = {0, 0}
if refused then
  out[2] = math.ceil(wait * 1000)
  for i = 1, n do
    local w = state[n + i]
    out[1 + 2 * i] = w > 0 and 0 or -1
    out[2 + 2 * i] = math.ceil(w * 1000)
  end
  return out
end

out[1] = 1
for i = 1, n do
  local key, kind, count, span = KEYS[i], kinds[i], counts[i], spans[i]
  local remaining, reset = 0, 0
  if kind == 'r' then
    local head, filled = state[i][1], state[i][2]
    local at
    if filled < count then
      at, filled = filled, filled + 1
    else
      at, head = head, (head + 1) % count
    end
    redis.call('SETRANGE', key, HEADER + at * 8, struct.pack('<d', now))
    redis.call('SETRANGE', key, 0, struct.pack('<I4I4', head, filled))
    redis.call('PEXPIRE', key, math.ceil(span * 1000) + KEEP)
    -- the first admission still inside (now - span, now]: binary search in admission order
    local cutoff, lo, hi = now - span, 0, filled - 1
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if stamp(key, count, head, mid) <= cutoff then lo = mid + 1 else hi = mid end
    end
    remaining = count - (filled - lo)
    reset = stamp(key, count, head, lo) + span - now
  elseif kind == 'q' then
    redis.call('INCR', key)
    redis.call('PEXPIRE', key, math.ceil(span * 1000) + KEEP)
    remaining = count - state[i] - 1
    reset = span
  else
    redis.call('ZADD', key, now + span, lease)
    redis.call('PEXPIRE', key, math.ceil(span * 1000) + KEEP)
    remaining = count - state[i] - 1
  end
  out[1 + 2 * i] = remaining
  out[2 + 2 * i] = math.ceil(reset * 1000)
end
return out
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def redacted(url: str) -> str:
    """The backend URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{parts.username or ''}:***@{host}", parts.path, parts.query, ""))


class RedisLimiter(Limiter):
    def __init__(
        self,
        url: str,
        *,
        on_backend_error: str = "deny",
        key_prefix: str = "gateway:limits:",
        lease_ttl: float = 35.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.deny_when_down = on_backend_error == "deny"
        self.prefix = key_prefix
        self.lease_ttl = lease_ttl
        self.clock = clock
        # No retry on timeouts (the script may have run); one on a broken connection, which after a Redis restart
        # is every pooled one, so recovery is not paced by the circuit draining dead connections one at a time.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.client = Redis(connection_pool=self._pool)
        self._instance = os.urandom(6).hex()
        self._leases = 0
        self.held: dict[str, str] = {}  # lease id -> concurrency key, renewed while the response lasts
        self._renewing: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Circuit: after a failure, requests skip Redis until _retry_at (monotonic) and follow on_backend_error.
        self._retry_at = 0.0
        self.down = False
        self.answered_without = 0  # requests answered without Redis since it went down (for the warnings)
        self._warned_at = 0.0

    # --- admission -----------------------------------------------------------------------------------------------

    async def admit(self, token: TokenRecord, route: Route | None, now: float) -> Admission:
        if self.down and time.monotonic() < self._retry_at:
            return self._without_backend(None)
        keys, args, lease = self._request(token, route, now)
        # Shielded: if the client leaves mid-call the script still runs to an answer, and a lease it took is
        # given back instead of waiting out its lifetime.
        call = asyncio.ensure_future(self._evaluate(keys, args))
        try:
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._abandon(done, keys[-1], lease))
            raise
        except (RedisError, OSError) as e:
            return self._without_backend(e)
        if self.down:
            self.down = False
            log.warning(
                "limits backend %s is reachable again; %d requests were answered without it",
                redacted(self.url),
                self.answered_without,
            )
            self.answered_without = 0
        return self._answer(reply, token, route, keys, lease)

    def _request(
        self, token: TokenRecord, route: Route | None, now: float
    ) -> tuple[list[str], list[Any], str | None]:
        base = f"{self.prefix}{{{token.id}}}:"  # one hash slot per token, should the Redis be a cluster
        keys: list[str] = []
        args: list[Any] = [repr(now), ""]
        if (rate := token.rate_limit) is not None:
            keys.append(f"{base}rate:{rate.count}/{rate.period:g}")
            args += ["r", rate.count, repr(rate.period)]
        if route is not None and (rate := route.rate_limit) is not None:
            keys.append(f"{base}route:{route_key(route)}:{rate.count}/{rate.period:g}")
            args += ["r", rate.count, repr(rate.period)]
        if (quota := token.quota) is not None:
            start, end = quota_window(quota.window, now)
            keys.append(f"{base}quota:{quota.window}:{int(start)}")
            args += ["q", quota.count, repr(end - now)]
        lease = None
        if token.concurrency is not None:
            self._leases += 1
            lease = args[1] = f"{self._instance}:{self._leases}"
            keys.append(f"{base}concurrency")  # always last: _abandon and _answer rely on it
            args += ["c", token.concurrency, repr(self.lease_ttl)]
        return keys, args, lease

    async def _evaluate(self, keys: list[str], args: list[Any]) -> list[int]:
        try:
            answer = await self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis: EVAL sends the body and caches it again
            answer = await self.client.eval(SCRIPT, len(keys), *keys, *args)
        return list(answer)

    def _answer(
        self, reply: list[int], token: TokenRecord, route: Route | None, keys: list[str], lease: str | None
    ) -> Admission:
        limits = self._shown_limits(token, route)
        if not reply[0]:
            refusing = [
                (reply[3 + 2 * i] / 1000, count) for i, count in enumerate(limits) if count is not None
            ]
            refusing = [(w, count) for w, count in refusing if w > 0]
            shown = max(refusing)[1] if refusing else None
            return refused(reply[1] / 1000, shown)
        best: tuple[int, int, float] | None = None
        for i, count in enumerate(limits):
            if count is None:
                continue
            remaining, reset = reply[2 + 2 * i], reply[3 + 2 * i] / 1000
            if best is None or remaining < best[1] or (remaining == best[1] and reset > best[2]):
                best = (count, remaining, reset)
        admission = Admission(None, admitted(*best) if best is not None else [])
        if lease is not None:
            key = keys[-1]
            self.held[lease] = key
            if self._renewing is None:
                self._renewing = asyncio.create_task(self._renew_forever(), name="limits-lease-renewal")
            admission.release = lambda: self._release(key, lease)
        return admission

    @staticmethod
    def _shown_limits(token: TokenRecord, route: Route | None) -> list[int | None]:
        """The count of each limit in script order; None for concurrency, which RateLimit-* does not describe."""
        limits: list[int | None] = []
        if token.rate_limit is not None:
            limits.append(token.rate_limit.count)
        if route is not None and route.rate_limit is not None:
            limits.append(route.rate_limit.count)
        if token.quota is not None:
            limits.append(token.quota.count)
        if token.concurrency is not None:
            limits.append(None)
        return limits

    def _without_backend(self, error: Exception | None) -> Admission:
        now = time.monotonic()
        if error is not None:
            self._retry_at = now + RETRY_INTERVAL
            if not self.down:
                self.down = True
                self._warned_at = now
                log.warning(
                    "limits backend %s is unreachable (%s); %s until it returns",
                    redacted(self.url),
                    str(error) or type(error).__name__,
                    "refusing limited requests with 503"
                    if self.deny_when_down
                    else "admitting without limits",
                )
            elif now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "limits backend %s is still unreachable (%s); %d requests answered without it so far",
                    redacted(self.url),
                    str(error) or type(error).__name__,
                    self.answered_without,
                )
        self.answered_without += 1
        return backend_down() if self.deny_when_down else Admission()

    # --- concurrency leases --------------------------------------------------------------------------------------

    def _release(self, key: str, lease: str) -> None:
        if self.held.pop(lease, None) is not None:
            self._spawn(self._remove(key, lease))

    def _abandon(self, call: asyncio.Future[list[int]], key: str, lease: str | None) -> None:
        """The request that made this call is gone: give back the lease the script may have granted it."""
        if (
            call.cancelled() or call.exception() is not None
        ):  # exception(): retrieved, so never logged as lost
            return
        if lease is not None and call.result()[0]:
            self._spawn(self._remove(key, lease))

    async def _remove(self, key: str, lease: str) -> None:
        try:
            await self.client.zrem(key, lease)
        except (RedisError, OSError) as e:
            log.debug("cannot give back lease %s (it expires by itself): %s", lease, e)

    async def _renew_forever(self) -> None:
        """Leases of responses still running are pushed forward, so a long download keeps its slot."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            if not self.held:
                continue
            expires = self.clock() + self.lease_ttl
            keep_ms = int(self.lease_ttl * 1000) + 60000
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for lease, key in list(self.held.items()):
                        pipe.zadd(key, {lease: expires}, xx=True)
                        pipe.pexpire(key, keep_ms)
                    await pipe.execute()
            except (RedisError, OSError) as e:
                log.debug("cannot renew %d concurrency leases: %s", len(self.held), e)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            try:
                await self._renewing
            except asyncio.CancelledError:
                pass
        if self._background:
            await asyncio.wait(set(self._background), timeout=1.0)
        await self.client.aclose()
        await self._pool.disconnect()


def lease_ttl_for(upstream_timeout: float) -> float:
    """A lease outlives a request waiting its full upstream timeout; longer responses renew theirs."""
    return upstream_timeout + LEASE_MARGIN
