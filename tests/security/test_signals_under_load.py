"""Reload and shutdown under load, in a real multi-worker process: SIGHUP fails no request; SIGTERM lets every
accepted request finish within the grace period, and AIOHTTP_NO_EXTENSIONS=1 keeps the gateway from starting."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp

from tests.conftest import ADMIN, READER, spawn_gateway, wait_until, write_config

NEW_TOKEN = """
[[tokens]]
name = "added-on-reload"
secret = "added-on-reload-secret-1"
permissions = ["leads:read"]
"""


async def _steady_load(url: str, stop: asyncio.Event, statuses: list[int], errors: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.get(f"{url}/v1/leads/search?auth_token={READER}") as r:
                    await r.read()
                    statuses.append(r.status)
            except aiohttp.ClientError as e:
                errors.append(repr(e))


async def test_sighup_during_steady_load_fails_no_request(tmp_path, upstream, processes):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)
    stop = asyncio.Event()
    statuses: list[int] = []
    errors: list[str] = []
    clients = [asyncio.create_task(_steady_load(gw.url, stop, statuses, errors)) for _ in range(8)]
    await wait_until(lambda: len(statuses) > 200)
    gw.config_path.write_text(gw.config_path.read_text() + NEW_TOKEN)
    for _ in range(3):
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as s:

        async def new_token_works() -> bool:
            async with s.get(f"{gw.url}/v1/leads/search?auth_token=added-on-reload-secret-1") as r:
                return r.status == 200

        await wait_until(new_token_works, timeout=10)
    count = len(statuses)
    await wait_until(lambda: len(statuses) > count + 200)
    stop.set()
    await asyncio.gather(*clients)
    assert errors == []
    assert set(statuses) == {200}
    assert gw.proc.poll() is None


async def test_sigterm_during_load_completes_every_accepted_request_within_the_grace(
    tmp_path, upstream, processes
):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)  # shutdown_grace: the default 30 s
    processes.append(gw)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def slow() -> int:
            async with s.get(f"{gw.url}/v1/leads/slow?delay=1&auth_token={ADMIN}") as r:
                await r.read()
                return r.status

        in_flight = [asyncio.create_task(slow()) for _ in range(30)]
        await wait_until(lambda: sum(r.path == "/v1/leads/slow" for r in upstream.received) == 30)
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        statuses = await asyncio.gather(*in_flight)
    assert statuses == [200] * 30
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    assert time.monotonic() - started < 1 + 5, "stopping took far longer than the requests it waited for"
    records = [
        line for line in (tmp_path / "access.jsonl").read_text().splitlines() if "/v1/leads/slow" in line
    ]
    assert len(records) == 30


def test_the_gateway_refuses_to_start_without_the_c_parser(tmp_path, upstream):
    path, _, _ = write_config(tmp_path, upstream.url)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 1
    stderr = proc.stderr.decode()
    assert "C HTTP parser" in stderr and len(stderr.strip().splitlines()) == 1
