"""`make soak`: a long run of mixed traffic against a real gateway process, then the numbers that show a leak.

Traffic: valid reads and form posts, a flood of random invalid tokens, missing tokens, forbidden calls, malformed
paths and framing errors, plus slowloris sockets reopened as the gateway cuts them off. Reported: RSS growth after
the first minute, open file descriptors against the idle baseline, unexpected statuses, and access-log records
against requests answered. Exits 1 when a criterion fails. Not part of `make test`.

    python -m bench.soak [--minutes 10] [--concurrency 16] [--slow-clients 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

TOKEN = "soak-reader-secret-0001"
CREATOR = "soak-creator-secret-0002"

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
header_timeout = "5s"
keepalive_timeout = "15s"

[admin]
listen = "127.0.0.1:{admin_port}"

[store]
database = "{tmp}/gateway.db"

[access_log]
path = "{tmp}/access.jsonl"
rotate = "off"

[upstream]
url = "http://127.0.0.1:{upstream_port}"

[[routes]]
path = "/v1/leads/insert"
methods = ["POST"]
permission = "leads:create"

[[routes]]
path = "/v1/leads/*"
permission = "leads:read"

[[tokens]]
name = "soak-reader"
secret = "{token}"
permissions = ["leads:read"]

[[tokens]]
name = "soak-creator"
secret = "{creator}"
permissions = ["leads:create"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# (weight, method, target, headers, body, expected status)
def _mix() -> list[tuple[int, str, str, dict[str, str], bytes | None, int]]:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    return [
        (50, "GET", f"/v1/leads/search?auth_token={TOKEN}&list_id=5", {}, None, 200),
        (10, "POST", "/v1/leads/insert", form, f"auth_token={CREATOR}&first_name=Ann".encode(), 200),
        (20, "GET", "/v1/leads/search?auth_token=RANDOM", {}, None, 401),  # a fresh random token every time
        (5, "GET", "/v1/leads/search", {}, None, 401),
        (5, "POST", "/v1/leads/insert", form, f"auth_token={TOKEN}&x=1".encode(), 403),
        (5, "GET", "/v1/leads/%2e%2e%2fadmin?auth_token=" + TOKEN, {}, None, 400),
        (5, "GET", f"/v1/leads/search?auth_token={TOKEN}&auth_token=other", {}, None, 400),
    ]


class Tally:
    def __init__(self) -> None:
        self.answered = 0
        self.statuses: Counter[int] = Counter()
        self.unexpected: Counter[tuple[str, int, int]] = Counter()
        self.errors: Counter[str] = Counter()


async def client(url: str, stop: asyncio.Event, tally: Tally) -> None:
    mix = _mix()
    weights = [m[0] for m in mix]
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            _, method, target, headers, body, expected = random.choices(mix, weights)[0]
            if "RANDOM" in target:
                target = target.replace("RANDOM", secrets.token_urlsafe(24))
            try:
                async with session.request(
                    method, url + target, headers=headers, data=body, allow_redirects=False
                ) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError as e:
                tally.errors[type(e).__name__] += 1
                continue
            tally.answered += 1
            tally.statuses[status] += 1
            if status != expected:
                tally.unexpected[(target.split("?")[0], expected, status)] += 1


async def framing_errors(port: int, stop: asyncio.Event, tally: Tally) -> None:
    """Requests aiohttp's parser refuses: each is one 400 and one access-log record."""
    bad = b"POST /v1/leads/search HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(bad)
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        except (OSError, TimeoutError) as e:
            tally.errors[type(e).__name__] += 1
            continue
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        tally.answered += 1
        tally.statuses[status] += 1
        if status != 400:
            tally.unexpected[("framing", 400, status)] += 1
        await asyncio.sleep(0.2)


async def slow_clients(port: int, count: int, stop: asyncio.Event) -> None:
    """Slowloris sockets, reopened whenever the gateway cuts one off; never a request, never a log record."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    try:
        while not stop.is_set():
            alive = []
            for sock in socks:
                try:
                    sock.send(b"X")
                    alive.append(sock)
                except OSError:
                    sock.close()
            socks = alive
            while len(socks) < count:
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, ("127.0.0.1", port))
                    sock.send(b"GET /v1/leads/search HTTP/1.1\r\nHost: x\r\n")
                except OSError:
                    sock.close()
                    break
                socks.append(sock)
            await asyncio.sleep(1.0)
    finally:
        for sock in socks:
            sock.close()


async def soak(minutes: float, concurrency: int, slow: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    port, admin_port, upstream_port = free_port(), free_port(), free_port()
    config = tmp / "gateway.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            admin_port=admin_port,
            upstream_port=upstream_port,
            tmp=tmp,
            token=TOKEN,
            creator=CREATOR,
        )
    )
    echo = subprocess.Popen([sys.executable, "-m", "gateway.echo", "--port", str(upstream_port)])
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)])
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(f"http://127.0.0.1:{admin_port}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        fd_baseline = fd_count(gateway.pid)
        rss_start = rss_kib(gateway.pid)
        tally = Tally()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(client(url, stop, tally)) for _ in range(concurrency)]
        tasks.append(asyncio.create_task(framing_errors(port, stop, tally)))
        tasks.append(asyncio.create_task(slow_clients(port, slow, stop)))
        started = time.monotonic()
        duration = minutes * 60
        rss_after_first_minute = None
        rss_max_after = 0
        samples = []
        while (elapsed := time.monotonic() - started) < duration:
            await asyncio.sleep(min(10.0, duration - elapsed))
            rss = rss_kib(gateway.pid)
            elapsed = time.monotonic() - started
            samples.append((round(elapsed), rss, fd_count(gateway.pid), tally.answered))
            print(
                f"t={elapsed:5.0f}s rss={rss} KiB fds={samples[-1][2]} answered={tally.answered}", flush=True
            )
            if elapsed >= min(60.0, duration / 2) and rss_after_first_minute is None:
                rss_after_first_minute = rss
            elif rss_after_first_minute is not None:
                rss_max_after = max(rss_max_after, rss)
        stop.set()
        await asyncio.gather(*tasks)
        # Idle client connections go at keepalive_timeout, slowloris ones at header_timeout, pooled upstream
        # connections after the pool's 60 s idle timeout: then the fds are back to the idle baseline.
        for _ in range(150):  # up to 75 s
            if fd_count(gateway.pid) <= fd_baseline:
                break
            await asyncio.sleep(0.5)
        fd_end = fd_count(gateway.pid)
        leftover = sorted(
            os.readlink(f"/proc/{gateway.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{gateway.pid}/fd")
        )
        rss_end = rss_kib(gateway.pid)
    finally:
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(60)
        echo.terminate()
        echo.wait(10)
    records = Counter(json.loads(line)["status"] for line in (tmp / "access.jsonl").read_text().splitlines())
    base = rss_after_first_minute or rss_start
    growth = (max(rss_max_after, rss_end) - base) / base
    logged = sum(records.values())
    report = {
        "minutes": minutes,
        "requests_answered": tally.answered,
        "requests_per_second": round(tally.answered / duration),
        "statuses": dict(sorted(tally.statuses.items())),
        "client_errors": dict(tally.errors),
        "unexpected_statuses": {f"{k[0]} expected {k[1]} got {k[2]}": v for k, v in tally.unexpected.items()},
        "rss_kib": {
            "start": rss_start,
            "after_first_minute": base,
            "max_after": rss_max_after,
            "end": rss_end,
        },
        "rss_growth_after_first_minute_percent": round(growth * 100, 2),
        "fds": {
            "baseline": fd_baseline,
            "end": fd_end,
            "open_at_end": Counter(x.split(":")[0] for x in leftover),
        },
        "access_log_records": logged,
        "access_log_statuses": dict(sorted(records.items())),
        "gateway_exit_code": code,
    }
    print(json.dumps(report, indent=2))
    failures = []
    if growth >= 0.10:
        failures.append("RSS grew 10% or more after the first minute")
    if fd_end > fd_baseline:
        failures.append("file descriptors did not return to the baseline")
    if tally.unexpected:
        failures.append("unexpected statuses")
    if logged != tally.answered:
        failures.append(f"access-log records ({logged}) != requests answered ({tally.answered})")
    if code != 0:
        failures.append(f"the gateway exited {code}")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if not failures:
        print("soak: all criteria met")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slow-clients", type=int, default=200)
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.minutes, args.concurrency, args.slow_clients)))


if __name__ == "__main__":
    main()
