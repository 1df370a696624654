"""Rate limits, quotas and concurrency caps through real sockets, on the local backend and on Redis.

The gateway's clock is injected and stepped by the tests: windows and UTC days pass without sleeping. Tests that need
the shared Redis read GATEWAY_TEST_REDIS (skipped when it is unset, failed when it is set but unreachable); each uses
its own key prefix and deletes only its own keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import aiohttp
import pytest
import redis

from gateway.limits_redis import lease_ttl_for
from tests.conftest import ADMIN, BASE_CONFIG, READER, free_port, spawn_gateway, wait_until

REDIS_ENV = "GATEWAY_TEST_REDIS"
HOW_TO_RUN = "Redis tests need GATEWAY_TEST_REDIS; run them with: GATEWAY_TEST_REDIS=redis://127.0.0.1:6379/15 make test"

RATE_LIMITED = {"success": False, "error": "Rate limit exceeded"}
UNAVAILABLE = {"success": False, "error": "Authentication service unavailable"}

LIMITED = "limited-secret-0101"  # 5/minute
TEN = "ten-secret-0102"  # 10/minute
DAILY = "daily-secret-0103"  # 3/day
MONTHLY = "monthly-secret-0104"  # 2/month
PARALLEL = "parallel-secret-0105"  # 2 in flight
ROUTED = "routed-secret-0106"  # 5/minute overall; the reports route adds 2/minute
SINGLE = "single-secret-0107"  # 1 in flight

TOKENS = """
[[tokens]]
name = "limited"
secret = "limited-secret-0101"
permissions = ["leads"]
rate_limit = "5/minute"

[[tokens]]
name = "ten"
secret = "ten-secret-0102"
permissions = ["leads"]
rate_limit = "10/minute"

[[tokens]]
name = "daily"
secret = "daily-secret-0103"
permissions = ["leads"]
quota = "3/day"

[[tokens]]
name = "monthly"
secret = "monthly-secret-0104"
permissions = ["leads"]
quota = "2/month"

[[tokens]]
name = "parallel"
secret = "parallel-secret-0105"
permissions = ["leads"]
concurrency = 2

[[tokens]]
name = "routed"
secret = "routed-secret-0106"
permissions = ["leads", "reports"]
rate_limit = "5/minute"

[[tokens]]
name = "single"
secret = "single-secret-0107"
permissions = ["leads"]
concurrency = 1
"""
REPORTS_ROUTE = 'path = "/v1/reports/*"\npermission = "reports"\n'
CONFIG = BASE_CONFIG.replace(REPORTS_ROUTE, REPORTS_ROUTE + 'rate_limit = "2/minute"\n') + TOKENS
assert CONFIG.count('rate_limit = "2/minute"') == 1


def utc(text: str) -> float:
    return datetime.fromisoformat(text + "+00:00").timestamp()


class Clock:
    """The gateway's clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Shifted:
    """Real time, plus an offset the test can change: another gateway's view of the future."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def call(gw, secret: str, path: str = "/v1/leads/search") -> tuple[int, dict[str, str], bytes]:
    r = await gw.get(f"{path}?auth_token={secret}")
    body = await r.read()
    return r.status, dict(r.headers), body


def is_rate_limited(status: int, headers: dict[str, str], body: bytes) -> bool:
    assert status == 429, (status, body)
    assert json.loads(body) == RATE_LIMITED
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    return True


def shows(headers: dict[str, str], limit: int, remaining: int, reset: int) -> bool:
    got = tuple(headers.get(h) for h in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"))
    assert got == (str(limit), str(remaining), str(reset)), got
    return True


# --- Redis: the shared one (GATEWAY_TEST_REDIS) and private ones ---------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(HOW_TO_RUN)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"{REDIS_ENV}={url} is set but Redis cannot be reached: {e}")
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; only its keys are deleted afterwards (the db is shared with CI runs)."""
    prefix = f"gateway-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["local", "redis"])
def limits(request: pytest.FixtureRequest) -> dict[str, str]:
    """The [limits] table of each backend: every story below holds on both."""
    if request.param == "local":
        return {"backend": "local"}
    return {
        "backend": request.getfixturevalue("redis_url"),
        "key_prefix": request.getfixturevalue("redis_prefix"),
    }


def start_redis(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def redis_answers(port: int) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# --- rate limits -------------------------------------------------------------------------------------------------


async def test_a_burst_at_exactly_the_limit_passes_and_the_next_is_429(start_gateway, upstream, limits):
    clock = Clock(utc("2026-03-10T12:00:00"))
    gw = await start_gateway({"limits": limits}, clock=clock, text=CONFIG)
    for i in range(5):
        status, headers, _ = await call(gw, LIMITED)
        assert status == 200
        assert shows(headers, 5, 4 - i, 60)
    status, headers, body = await call(gw, LIMITED)
    assert is_rate_limited(status, headers, body)
    assert headers["Retry-After"] == "60"
    assert len(upstream.received) == 5  # the upstream never saw the refused request

    record = await wait_until(lambda: [r for r in gw.log_lines() if r["status"] == 429])
    assert record[0]["outcome"] == "rate_limited"
    assert record[0]["token_name"] == "limited"

    clock.now += 59.5
    status, headers, body = await call(gw, LIMITED)
    assert is_rate_limited(status, headers, body)
    assert headers["Retry-After"] == "1"  # whole seconds, rounded up, never 0
    clock.now += 0.5
    status, headers, _ = await call(gw, LIMITED)
    assert status == 200
    assert len(upstream.received) == 6


async def test_no_second_burst_just_after_a_minute_boundary(start_gateway, upstream, limits):
    # A fixed window would let 10 through at 12:00:50 and 10 more at 12:01:01.
    clock = Clock(utc("2026-03-10T12:00:50"))
    gw = await start_gateway({"limits": limits}, clock=clock, text=CONFIG)
    assert [(await call(gw, TEN))[0] for _ in range(10)] == [200] * 10
    clock.now = utc("2026-03-10T12:01:01")
    status, headers, body = await call(gw, TEN)
    assert is_rate_limited(status, headers, body)
    assert headers["Retry-After"] == "49"
    assert len(upstream.received) == 10


async def test_over_a_long_run_no_window_holds_more_than_the_rate(start_gateway, upstream, limits):
    start = utc("2026-03-10T12:00:00")
    clock = Clock(start)
    gw = await start_gateway({"limits": limits}, clock=clock, text=CONFIG)
    allowed: list[float] = []
    step = 0.7  # about 86 requests a minute against a limit of 10
    for i in range(int(180 / step)):
        clock.now = start + i * step
        status, headers, body = await call(gw, TEN)
        if status == 200:
            allowed.append(clock.now)
        else:
            assert is_rate_limited(status, headers, body)
            assert 1 <= int(headers["Retry-After"]) <= 60
    # Wherever a window of one minute is placed, it holds at most 10; two windows at most 20.
    for t in allowed:
        assert sum(t <= u < t + 60 for u in allowed) <= 10
        assert sum(t <= u < t + 120 for u in allowed) <= 20
    assert sum(start <= u < start + 120 for u in allowed) == 20  # and the whole rate is usable
    assert len(allowed) == 30
    assert len(upstream.received) == len(allowed)


async def test_a_route_limit_applies_per_token_on_top_of_the_token_limit(start_gateway, upstream, limits):
    gw = await start_gateway({"limits": limits}, clock=Clock(utc("2026-03-10T12:00:00")), text=CONFIG)
    status, headers, _ = await call(gw, ROUTED, "/v1/reports/daily")
    assert status == 200
    assert shows(headers, 2, 1, 60)  # the most restrictive of 5/minute (4 left) and 2/minute (1 left)
    status, headers, _ = await call(gw, ROUTED, "/v1/reports/daily")
    assert status == 200
    assert shows(headers, 2, 0, 60)
    status, headers, body = await call(gw, ROUTED, "/v1/reports/daily")
    assert is_rate_limited(status, headers, body)
    assert headers["RateLimit-Limit"] == "2"

    # The refused request did not count against the token: three more requests elsewhere make its five.
    for left in (2, 1, 0):
        status, headers, _ = await call(gw, ROUTED, "/v1/leads/search")
        assert status == 200
        assert shows(headers, 5, left, 60)
    status, headers, body = await call(gw, ROUTED, "/v1/leads/search")
    assert is_rate_limited(status, headers, body)
    assert headers["RateLimit-Limit"] == "5"

    # Per token on that route: a token without limits of its own has its own two.
    assert [(await call(gw, ADMIN, "/v1/reports/daily"))[0] for _ in range(3)] == [200, 200, 429]
    assert len(upstream.received) == 7


async def test_tokens_without_limits_get_no_ratelimit_headers(start_gateway, limits):
    gw = await start_gateway({"limits": limits}, text=CONFIG)
    statuses = []
    for _ in range(20):
        status, headers, _ = await call(gw, READER)
        statuses.append(status)
        assert "RateLimit-Limit" not in headers
    assert statuses == [200] * 20


# --- quotas ------------------------------------------------------------------------------------------------------


async def test_a_daily_quota_runs_out_and_comes_back_at_utc_midnight(start_gateway, upstream, limits):
    clock = Clock(utc("2026-03-10T23:59:50"))
    gw = await start_gateway({"limits": limits}, clock=clock, text=CONFIG)
    for left in (2, 1, 0):
        status, headers, _ = await call(gw, DAILY)
        assert status == 200
        assert shows(headers, 3, left, 10)
    status, headers, body = await call(gw, DAILY)
    assert is_rate_limited(status, headers, body)
    assert headers["Retry-After"] == "10"

    clock.now = utc("2026-03-10T23:59:59") + 0.5
    status, headers, body = await call(gw, DAILY)
    assert is_rate_limited(status, headers, body)
    assert headers["Retry-After"] == "1"

    clock.now = utc("2026-03-11T00:00:00")
    status, headers, _ = await call(gw, DAILY)
    assert status == 200
    assert shows(headers, 3, 2, 86400)
    assert len(upstream.received) == 4


async def test_a_monthly_quota_comes_back_on_the_first_of_the_month(start_gateway, limits):
    clock = Clock(utc("2026-02-10T08:00:00"))
    gw = await start_gateway({"limits": limits}, clock=clock, text=CONFIG)
    assert [(await call(gw, MONTHLY))[0] for _ in range(2)] == [200, 200]
    status, headers, body = await call(gw, MONTHLY)
    assert is_rate_limited(status, headers, body)
    assert headers["Retry-After"] == str(int(utc("2026-03-01T00:00:00") - clock.now))
    clock.now = utc("2026-02-28T23:59:59")
    assert (await call(gw, MONTHLY))[0] == 429
    clock.now = utc("2026-03-01T00:00:00")
    assert [(await call(gw, MONTHLY))[0] for _ in range(3)] == [200, 200, 429]


# --- concurrency -------------------------------------------------------------------------------------------------


async def slow_request(port: int, secret: str, delay: float) -> asyncio.StreamWriter:
    """Starts a slow request on its own connection; closing the writer is the client going away."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/leads/slow?delay={delay}&auth_token={secret} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await writer.drain()
    return writer


async def test_concurrency_cap_and_the_slot_comes_back_when_the_client_leaves(
    start_gateway, upstream, limits
):
    gw = await start_gateway({"limits": limits, "upstream": {"timeout": "30s"}}, text=CONFIG)
    first = await slow_request(gw.port, PARALLEL, 2)
    second = await slow_request(gw.port, PARALLEL, 2)
    started = time.monotonic()
    await wait_until(lambda: sum(r.path == "/v1/leads/slow" for r in upstream.received) == 2)

    status, headers, body = await call(gw, PARALLEL)
    assert is_rate_limited(status, headers, body)
    assert headers["Retry-After"] == "1"
    assert not any(r.path == "/v1/leads/search" for r in upstream.received)

    first.close()  # the client goes away while the upstream is still working on its request

    async def admitted() -> bool:
        return (await call(gw, PARALLEL))[0] == 200

    await wait_until(admitted, timeout=5)
    assert time.monotonic() - started < 1.5, "the slot waited for the slow upstream instead of the client"
    # ... and the gateway closed the abandoned upstream connection rather than waiting for its answer.
    assert gw.worker.upstream.in_use_count == 1

    abandoned = await wait_until(lambda: [r for r in gw.log_lines() if r["path"] == "/v1/leads/slow"])
    assert [(r["status"], r["outcome"]) for r in abandoned] == [(499, "allowed")]
    second.close()
    await wait_until(lambda: len([r for r in gw.log_lines() if r["path"] == "/v1/leads/slow"]) == 2)
    await wait_until(lambda: gw.worker.upstream.in_use_count == 0)
    assert [(await call(gw, PARALLEL))[0] for _ in range(3)] == [200] * 3
    assert len([r for r in gw.log_lines() if r["path"] == "/v1/leads/slow"]) == 2  # one record each


async def test_a_failing_upstream_gives_the_slot_back(start_gateway, limits):
    gw = await start_gateway({"limits": limits}, text=CONFIG, upstream_url=f"http://127.0.0.1:{free_port()}")
    assert [(await call(gw, SINGLE))[0] for _ in range(3)] == [502] * 3


async def test_an_upstream_error_status_gives_the_slot_back(start_gateway, limits):
    gw = await start_gateway({"limits": limits}, text=CONFIG)
    assert [(await call(gw, SINGLE, "/v1/leads/status/500"))[0] for _ in range(3)] == [500] * 3


# --- Redis: across processes, crashes and outages ----------------------------------------------------------------


async def test_two_gateway_processes_share_one_limit_exactly(
    tmp_path, upstream, processes, redis_url, redis_prefix
):
    extra = f"""
[limits]
backend = "{redis_url}"
key_prefix = "{redis_prefix}"

[[tokens]]
name = "hourly"
secret = "hourly-secret-0201"
permissions = ["leads"]
rate_limit = "10/hour"
"""
    one = await spawn_gateway(tmp_path, upstream.url, extra)
    processes.append(one)
    two = await spawn_gateway(tmp_path, upstream.url, extra)  # the same store, so the same token id
    processes.append(two)

    async def send(gw) -> tuple[int, str | None]:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{gw.url}/v1/leads/search?auth_token=hourly-secret-0201") as r:
                await r.read()
                return r.status, r.headers.get("RateLimit-Remaining")

    results = await asyncio.gather(*(send(one if i % 2 else two) for i in range(30)))
    assert sorted(status for status, _ in results) == [200] * 10 + [429] * 20
    # One counter, not two: the ten admissions saw ten different remainders.
    assert sorted(int(left) for status, left in results if status == 200) == list(range(10))
    assert len(upstream.received) == 10


async def test_a_crashed_gateway_does_not_keep_its_concurrency_slots(
    tmp_path, upstream, processes, start_gateway, redis_url, redis_prefix
):
    limits = {"backend": redis_url, "key_prefix": redis_prefix}
    extra = f'\n[limits]\nbackend = "{redis_url}"\nkey_prefix = "{redis_prefix}"\n' + TOKENS
    crashing = await spawn_gateway(tmp_path, upstream.url, extra)  # upstream timeout 5s
    processes.append(crashing)
    holder = await slow_request(crashing.port, SINGLE, 1)
    await wait_until(lambda: any(r.path == "/v1/leads/slow" for r in upstream.received))
    crashing.signal(signal.SIGKILL)
    await asyncio.to_thread(crashing.proc.wait, 10)
    holder.close()

    clock = Shifted()
    survivor = await start_gateway(
        {"limits": limits, "upstream": {"timeout": "5s"}}, clock=clock, text=CONFIG
    )
    status, headers, body = await call(survivor, SINGLE)
    assert is_rate_limited(status, headers, body)  # the dead gateway's lease still holds the one slot...
    clock.offset = lease_ttl_for(5.0) + 1
    assert (await call(survivor, SINGLE))[0] == 200  # ... until it expires: no slot is lost for good


@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs the redis-server binary (apt install redis)"
)
async def test_redis_stopped_mid_run_denies_or_allows_as_configured_then_recovers(
    start_gateway, upstream, caplog
):
    port = free_port()
    server = start_redis(port)
    try:
        await wait_until(lambda: redis_answers(port), timeout=10)
        backend = f"redis://127.0.0.1:{port}/0"
        deny = await start_gateway({"limits": {"backend": backend}}, text=CONFIG)
        allow = await start_gateway(
            {"limits": {"backend": backend, "on_backend_error": "allow"}}, text=CONFIG
        )
        status, headers, _ = await call(deny, LIMITED)
        assert status == 200
        assert headers["RateLimit-Limit"] == "5"

        server.kill()
        server.wait()
        seen = len(upstream.received)
        started = time.monotonic()
        for _ in range(10):
            status, headers, body = await call(deny, SINGLE)
            assert status == 503
            assert json.loads(body) == UNAVAILABLE
            assert headers["Retry-After"] == "1"
        assert time.monotonic() - started < 2, "a dead Redis must cost milliseconds, not timeouts"
        assert len(upstream.received) == seen
        for _ in range(10):
            status, headers, _ = await call(allow, LIMITED)
            assert status == 200
            assert "RateLimit-Limit" not in headers
        assert (await call(deny, READER))[0] == 200  # unlimited tokens never needed Redis
        down = [r for r in caplog.records if r.name == "gateway.limits" and "unreachable" in r.getMessage()]
        assert len(down) == 2, "one warning per gateway, not one per request"
        assert "refusing" in down[0].getMessage() + down[1].getMessage()
        await wait_until(lambda: [r for r in deny.log_lines() if r["status"] == 503])

        server = start_redis(port)

        async def recovered() -> bool:
            return (await call(deny, LIMITED))[0] == 200

        await wait_until(recovered, timeout=10)
        assert any("reachable again" in r.getMessage() for r in caplog.records if r.name == "gateway.limits")
    finally:
        server.kill()
        server.wait()
