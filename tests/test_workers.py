"""The gateway as operators run it: a real process, N workers on one port, signals."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.conftest import ADMIN, READER, spawn_gateway, wait_until


async def test_two_workers_both_serve(tmp_path, upstream, processes):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)
    prefixes: set[str] = set()

    async def one() -> None:
        # A new connection each time, so SO_REUSEPORT spreads them over the workers.
        async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/v1/leads/search?auth_token={READER}") as r:
            assert r.status == 200
            prefixes.add(r.headers["X-Request-Id"][:12])

    async def both_seen() -> bool:
        await asyncio.gather(*(one() for _ in range(10)))
        return len(prefixes) >= 2

    await wait_until(both_seen, timeout=20)


async def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path, upstream, processes):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(s.get(f"{gw.url}/v1/leads/slow?delay=1&auth_token={ADMIN}"))
        await wait_until(lambda: any(r.path == "/v1/leads/slow" for r in upstream.received))
        gw.signal(signal.SIGTERM)
        response = await slow
        assert response.status == 200
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
