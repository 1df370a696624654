"""Shared fixtures: a recording upstream and the gateway in front of it, on real sockets, with a temp SQLite store.

Tests read as stories of a request: given this token and this route, this request gets that answer and the upstream
sees (or never sees) this.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway import config as config_mod
from gateway.server import Worker

ROOT = Path(__file__).resolve().parent.parent

# Secrets of the tokens every test config seeds.
READER = "reader-secret-0001"  # leads:read
CREATOR = "creator-secret-0002"  # leads:create
LEADS = "leads-secret-0003"  # leads (every action)
ADMIN = "admin-secret-0004"  # *
FUTURE = "future-secret-0005"  # not yet active
EXPIRED = "expired-secret-0006"  # expired
PARTNER = "partner-secret-0007"  # external, company Acme

BASE_CONFIG = """
[server]
listen = "127.0.0.1:0"
max_body = "10MB"

[admin]
listen = "127.0.0.1:0"

[cache]
ttl = "30s"

[token_types.external]
permissions = ["cases:history"]

[[routes]]
path = "/v1/leads/insert"
methods = ["POST"]
permission = "leads:create"

[[routes]]
path = "/v1/leads/search"
permission = "leads:read"

[[routes]]
path = "/v1/leads/*"
permission = "leads:read"

[[routes]]
path = "/v1/reports/*"
permission = "reports"

[[routes]]
path = "/v1/admin/*"
permission = "admin"

[[routes]]
path = "/v1/cases/history"
permission = "cases:history"

[[tokens]]
name = "reader"
secret = "reader-secret-0001"
permissions = ["leads:read"]

[[tokens]]
name = "creator"
secret = "creator-secret-0002"
permissions = ["leads:create"]

[[tokens]]
name = "leads-all"
secret = "leads-secret-0003"
permissions = ["leads"]

[[tokens]]
name = "admin"
secret = "admin-secret-0004"
type = "internal"
permissions = ["*"]

[[tokens]]
name = "future"
secret = "future-secret-0005"
permissions = ["*"]
not_before = 2999-01-01T00:00:00Z

[[tokens]]
name = "expired"
secret = "expired-secret-0006"
permissions = ["*"]
expires = 2001-01-01T00:00:00Z

[[tokens]]
name = "partner"
secret = "partner-secret-0007"
type = "external"
company = "Acme"
permissions = ["cases:history"]
"""


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- the recording upstream --------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str  # the raw request-target, byte for byte as the gateway sent it
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class Upstream:
    url: str
    port: int
    received: list[Received] = field(default_factory=list)

    def last(self) -> Received:
        assert self.received, "the upstream received nothing"
        return self.received[-1]


BIG = 5 * 1024 * 1024


def big_body(size: int) -> bytes:
    block = hashlib.sha256(str(size).encode()).digest() * 2048  # 64 KiB, not compressible to nothing
    return (block * (size // len(block) + 1))[:size]


def make_upstream_handler(up: Upstream) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = b"".join([chunk async for chunk in request.content.iter_any()])  # no 1 MB client_max_size
        up.received.append(
            Received(
                request.method,
                request.raw_path,
                list(
                    request.raw_headers
                    and [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
                ),
                body,
            )
        )
        path = request.path
        if path.startswith("/v1/leads/slow"):
            await asyncio.sleep(float(request.query.get("delay", "5")))
        if path.startswith("/v1/leads/big"):
            size = int(request.query.get("size", str(BIG)))
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            data = big_body(size)
            for i in range(0, size, 65536):
                await response.write(data[i : i + 65536])
            await response.write_eof()
            return response
        if path.startswith("/v1/leads/status/"):
            status = int(path.rsplit("/", 1)[1])
            return web.Response(status=status, headers={"X-Upstream": "yes"})
        if path.startswith("/v1/leads/redirect"):
            return web.Response(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        if path.startswith("/v1/leads/gzip"):
            payload = gzip.compress(b'{"compressed": true}')
            return web.Response(
                body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
            )
        if path.startswith("/v1/leads/sha256"):
            return web.json_response({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})
        return web.json_response({"ok": True, "path": request.raw_path}, headers={"X-Upstream": "yes"})

    return handle


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(url="", port=0)
    server = web.Server(make_upstream_handler(up), access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.url, up.port = f"http://127.0.0.1:{port}", port
    yield up
    await runner.cleanup()


# --- the gateway, in process -------------------------------------------------------------------------------------


@dataclass
class Running:
    worker: Worker
    url: str
    port: int
    tmp: Path
    session: aiohttp.ClientSession

    async def request(self, method: str, target: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """Send `target` exactly as written (no client-side path normalisation)."""
        url = URL(self.url + target, encoded=True)
        return await self.session.request(method, url, allow_redirects=False, **kwargs)

    async def get(self, target: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", target, **kwargs)

    async def post(self, target: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", target, **kwargs)

    def log_lines(self) -> list[dict[str, Any]]:
        import orjson

        path = self.tmp / "access.jsonl"
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def gateway_config(
    tmp: Path, upstream_url: str, extra: dict[str, Any] | None = None, text: str = BASE_CONFIG
):
    raw = tomllib.loads(text)
    raw = merge(
        raw,
        {
            "store": {"database": str(tmp / "gateway.db")},
            "access_log": {"path": str(tmp / "access.jsonl")},
            "upstream": {"url": upstream_url, "timeout": "2s", "connect_timeout": "1s"},
        },
    )
    if extra:
        raw = merge(raw, extra)
    return config_mod.parse(raw, base=tmp)


@pytest.fixture
async def start_gateway(
    tmp_path: Path, upstream: Upstream
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def start(
        extra: dict[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        text: str = BASE_CONFIG,
        upstream_url: str | None = None,
    ) -> Running:
        cfg = gateway_config(tmp_path, upstream_url or upstream.url, extra, text)
        worker = Worker(cfg, clock=clock)
        await worker.start()
        session = aiohttp.ClientSession(auto_decompress=False)
        running = Running(worker, f"http://127.0.0.1:{worker.port}", worker.port, tmp_path, session)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.session.close()
        if not running.worker.stopped.is_set():
            await running.worker.stop()


@pytest.fixture
async def gateway(start_gateway: Callable[..., Awaitable[Running]]) -> Running:
    return await start_gateway()


# --- raw HTTP, for bytes an HTTP client would refuse to send -------------------------------------------------------


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the gateway answered until it closed the connection (or timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# --- the gateway as a real process (workers, signals) ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    config_path: Path
    url: str

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def write_config(
    tmp: Path,
    upstream_url: str,
    extra: str = "",
    *,
    workers: int = 1,
    text: str = BASE_CONFIG,
    access_log: str = "",
) -> tuple[Path, int, int]:
    """`extra` is TOML appended at the end; `access_log` more keys of the [access_log] table."""
    port, admin_port = free_port(), free_port()
    body = text.replace('listen = "127.0.0.1:0"', 'listen = "__LISTEN__"', 1)
    body = body.replace('[admin]\nlisten = "127.0.0.1:0"', f'[admin]\nlisten = "127.0.0.1:{admin_port}"')
    body = body.replace("__LISTEN__", f"127.0.0.1:{port}")
    body = body.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    body += (
        f"""
[store]
database = "{tmp / "gateway.db"}"

[access_log]
path = "{tmp / "access.jsonl"}"
{access_log}

[upstream]
url = "{upstream_url}"
timeout = "5s"
"""
        + extra
    )
    path = tmp / "gateway.toml"
    path.write_text(body)
    return path, port, admin_port


async def spawn_gateway(
    tmp: Path,
    upstream_url: str,
    extra: str = "",
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    access_log: str = "",
    text: str = BASE_CONFIG,
) -> Process:
    path, port, admin_port = write_config(
        tmp, upstream_url, extra, workers=workers, access_log=access_log, text=text
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process = Process(proc, port, admin_port, path, f"http://127.0.0.1:{port}")

    async def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited {proc.returncode}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin_port}/health") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_until(ready, timeout=20)
    except BaseException:
        # Not yet in any fixture's list: stop it here, or its master would outlive the test run.
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return process


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    running: list[Process] = []
    yield running
    for p in running:
        if p.proc.poll() is None:
            p.proc.terminate()
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
