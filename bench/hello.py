"""aiohttp's own hello-world on its low-level server (web.Server) with uvloop: the Python reference."""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web

BODY = b'{"ok": true}'


async def hello(request: web.BaseRequest) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def main(port: int) -> None:
    runner = web.ServerRunner(web.Server(hello, access_log=None), handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
