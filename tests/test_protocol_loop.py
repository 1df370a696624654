"""The connection layer's request loop: a copy of aiohttp's that runs each request in its connection's task."""

from __future__ import annotations

import aiohttp
from aiohttp import web_protocol

from gateway.protocol import START_COPIED_FROM, GatewayProtocol


def test_the_request_loop_is_the_copy_made_from_the_pinned_aiohttp():
    # Another aiohttp release needs a fresh copy of its RequestHandler.start (or none): until then the gateway runs
    # aiohttp's own loop, correct but slower, and this test says so.
    assert aiohttp.__version__ == START_COPIED_FROM
    assert GatewayProtocol.start is GatewayProtocol._start_in_connection_task
    assert GatewayProtocol.start is not web_protocol.RequestHandler.start
