"""The admin listener (never the proxy port): health for orchestrators and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from gateway.server import Worker


def admin_handler(worker: Worker) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/health":
            return await health()
        if request.path == "/metrics":
            return web.Response(text=metrics(worker), content_type="text/plain")
        return web.Response(
            status=404, body=b'{"success": false, "error": "Not found"}', content_type="application/json"
        )

    async def health() -> web.Response:
        try:
            await worker.store.change_seq()
        except Exception as e:
            body = orjson.dumps({"status": "unavailable", "store": str(e)})
            return web.Response(status=503, body=body, content_type="application/json")
        return web.Response(body=b'{"status": "ok"}', content_type="application/json")

    return handle


def metrics(worker: Worker) -> str:
    gw = worker.gateway
    alog = worker.access_log
    lines = [
        "# HELP gateway_requests_total Requests answered, by outcome and status.",
        "# TYPE gateway_requests_total counter",
    ]
    for (outcome, status), n in sorted(gw.outcomes.items()):
        lines.append(f'gateway_requests_total{{outcome="{outcome}",status="{status}"}} {n}')
    gauges = {
        "gateway_in_flight_requests": gw.in_flight,
        "gateway_token_cache_entries": len(worker.cache),
        "gateway_upstream_connections_idle": worker.upstream.idle_count,
        "gateway_upstream_connections_in_use": worker.upstream.in_use_count,
        "gateway_access_log_queue": alog.queue.qsize(),
        "gateway_access_log_held_records": alog.held,
        "gateway_client_connections_open": worker.http_server.open_connections,
    }
    counters = {
        "gateway_token_store_queries_total": worker.cache.store_queries,
        "gateway_access_log_records_total": alog.records,
        "gateway_access_log_file_written_total": alog.written_file,
        "gateway_access_log_store_written_total": alog.written_store,
        "gateway_access_log_write_failures_total": alog.write_failures,
        "gateway_access_log_lost_total": alog.lost,
        "gateway_access_log_backpressure_waits_total": alog.waits,
        "gateway_access_log_pruned_total": alog.pruned,
        # Connections closed for a request head slower than header_timeout, or refused over max_connections.
        "gateway_client_header_timeouts_total": worker.http_server.header_timeouts,
        "gateway_client_connections_refused_total": worker.http_server.refused_connections,
        "gateway_unparsed_requests_total": worker.http_server.unparsed_requests,
    }
    for name, value in gauges.items():
        lines += [f"# TYPE {name} gauge", f"{name} {value}"]
    for name, value in counters.items():
        lines += [f"# TYPE {name} counter", f"{name} {value}"]
    return "\n".join(lines) + "\n"
