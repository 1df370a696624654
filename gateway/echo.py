"""The demo upstream: answers every request with what it received, as JSON (so the README's curls show it)."""

from __future__ import annotations

import argparse
import base64

from aiohttp import web


async def echo(request: web.BaseRequest) -> web.Response:
    body = await request.read()
    try:
        text: str | None = body.decode()
    except UnicodeDecodeError:
        text = None
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path.partition("?")[0],
            "query": request.query_string,
            "headers": dict(request.headers),
            "body": text if text is not None else base64.b64encode(body).decode(),
            "body_encoding": "utf-8" if text is not None else "base64",
        }
    )


def run(host: str, port: int) -> None:
    web.run_app(_app(), host=host, port=port, print=None, access_log=None)


def _app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    run(args.host, args.port)


if __name__ == "__main__":
    main()
