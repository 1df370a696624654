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


async def test_workers_that_keep_dying_at_start_stop_the_master_with_exit_1(tmp_path, upstream):
    import subprocess
    import sys

    from tests.conftest import write_config

    path, _, _ = write_config(tmp_path, upstream.url, workers=2)
    (tmp_path / "not-a-folder").write_text("")
    # The master starts (it only seeds); every worker fails to open its access log, again and again.
    path.write_text(
        path.read_text().replace(str(tmp_path / "access.jsonl"), str(tmp_path / "not-a-folder" / "a.jsonl"))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)], stderr=subprocess.PIPE, text=True
    )
    try:
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1
    assert "workers keep failing at start-up" in proc.stderr.read()
