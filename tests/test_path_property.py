"""Property: for any path, the gateway answers 400, or the upstream receives exactly the path the route was decided on.

The gateway and the recording upstream run on a background event loop (hypothesis drives plain functions), and
requests go over raw sockets so that no client library tidies the path first.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.paths import normalise
from gateway.routes import Router
from gateway.server import Worker
from tests.conftest import READER, Upstream, gateway_config, make_upstream_handler

PIECES = [
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2E",
    ".%2e",
    "%2f",
    "%2F",
    "%5c",
    "%252e",
    "%25",
    ";",
    "..;",
    "\\",
    "%00",
    "%0a",
    "a",
    "leads",
    "admin",
    "search",
    "v1",
    "%41",
    "%20",
    "~",
    "%7e",
    "%7E",
    "%c0%ae",
    "%e2%82%ac",
    "?x=1",
    "#frag",
    "%3f",
    "%23",
    "*",
    ":",
    "@",
]


class Background:
    """A gateway in front of a recording upstream, on an event loop in another thread."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstream = Upstream(url="", port=0)
        self.port = self.call(self._start(tmp))

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self, tmp: Path) -> int:
        self.up_runner = web.ServerRunner(web.Server(make_upstream_handler(self.upstream), access_log=None))
        await self.up_runner.setup()
        site = web.TCPSite(self.up_runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.upstream.url = f"http://127.0.0.1:{port}"
        self.config = gateway_config(tmp, self.upstream.url)
        self.worker = Worker(self.config)
        await self.worker.start()
        return self.worker.port

    async def _stop(self) -> None:
        await self.worker.stop()
        await self.up_runner.cleanup()

    def close(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    bg = Background(tmp_path_factory.mktemp("path-property"))
    yield bg
    bg.close()


def send(port: int, target: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(PIECES), min_size=0, max_size=8), st.sampled_from(["/v1/leads/", "/v1/", "/"])
)
def test_upstream_receives_exactly_the_authorised_path(
    background: Background, pieces: list[str], start: str
) -> None:
    target = start + "".join(pieces)
    separator = "&" if "?" in target else "?"
    before = len(background.upstream.received)
    status = send(background.port, f"{target}{separator}auth_token={READER}")
    router = Router(background.config.routes)
    event(f"status {status}")
    if status == 400:
        assert len(background.upstream.received) == before
        return
    if status != 200:
        # 403 (a route the reader may not use, or none): nothing reached the upstream
        assert status in (401, 403), (target, status)
        assert len(background.upstream.received) == before
        return
    received = background.upstream.received[-1].path
    # The upstream's path is canonical: normalising it again changes nothing, so upstream and gateway agree on it.
    assert normalise(received)[0] == received
    # And the route decided for that very path is one the reader holds.
    route = router.route(received, "GET", allow_unmatched=False)
    assert route is not None and route.permission == "leads:read", (target, received)
