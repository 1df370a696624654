"""2,000 slowloris connections trickling their headers (from another process) leave legitimate latency within 2x,
and are all cut off once header_timeout has passed."""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp

from tests.conftest import BASE_CONFIG, READER, spawn_gateway, wait_until

SLOW_CLIENTS = 2000
HEADER_TIMEOUT = 6.0
# Below this, p99 is scheduler noise on a shared two-core machine (other test workers, other processes) rather
# than the gateway's doing. Noise only ever adds latency, so each figure is also the better of two samples.
NOISE_FLOOR = 0.003


async def _p99(session: aiohttp.ClientSession, url: str, n: int = 300, samples: int = 2) -> float:
    return min([await _one_p99(session, url, n) for _ in range(samples)])


async def _one_p99(session: aiohttp.ClientSession, url: str, n: int) -> float:
    timings = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url) as r:
            await r.read()
            assert r.status == 200
        timings.append(time.perf_counter() - started)
    timings.sort()
    return timings[int(n * 0.99) - 1]


async def test_two_thousand_slowloris_sockets_leave_p99_within_2x(tmp_path, upstream, processes):
    text = BASE_CONFIG.replace("[server]\n", f'[server]\nheader_timeout = "{HEADER_TIMEOUT}s"\n', 1)
    gw = await spawn_gateway(tmp_path, upstream.url, text=text)
    processes.append(gw)
    url = f"{gw.url}/v1/leads/search?auth_token={READER}"
    async with aiohttp.ClientSession() as session:
        await _one_p99(session, url, 100)  # warm up: connections, cache, pools
        before = await _p99(session, url)
        loris = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.security.slowloris",
            str(gw.port),
            str(SLOW_CLIENTS),
            "20",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert await asyncio.wait_for(loris.stdout.readline(), 20) == b"ready\n"
            opened = time.monotonic()
            # Measure the steady state: once the worker has taken in the flood of new connections.
            await wait_until(lambda: _open_connections(session, gw.admin_port, SLOW_CLIENTS), timeout=5)
            after = await _p99(session, url)
            measured_within = time.monotonic() - opened
            still_open = [int(line.split()[1]) async for line in _lines(loris.stdout)]
        finally:
            if loris.returncode is None:
                loris.kill()
            await loris.wait()
    print(f"p99 before {before * 1000:.2f} ms, with {SLOW_CLIENTS} slowloris sockets {after * 1000:.2f} ms")
    assert measured_within < HEADER_TIMEOUT, "the slow clients were cut off before latency was measured"
    assert after <= 2 * max(before, NOISE_FLOOR)
    assert still_open[0] > SLOW_CLIENTS * 0.95, "slow clients were dropped before header_timeout"
    assert still_open[-1] == 0, "slow clients outlived header_timeout"
    assert time.monotonic() - opened < HEADER_TIMEOUT + 5


async def _open_connections(session: aiohttp.ClientSession, admin_port: int, at_least: int) -> bool:
    async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    line = next(x for x in text.splitlines() if x.startswith("gateway_client_connections_open "))
    return int(line.split()[1]) >= at_least


async def _lines(stream: asyncio.StreamReader):
    while line := await stream.readline():
        yield line
