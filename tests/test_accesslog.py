"""The access log as admins rely on it: one record per request, in the file and the store, complete under load and
at shutdown, redacted, rotated without loss, pruned, and never silently short when a sink fails."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from gateway.accesslog import AccessLog, iso
from gateway.config import AccessLogConfig
from gateway.server import StartupError
from gateway.store import LOG_FIELDS, Store
from tests.conftest import ADMIN, READER, raw_exchange, spawn_gateway, status_of, wait_until

CONTRACT_FIELDS = (
    "ts",
    "request_id",
    "client_ip",
    "method",
    "path",
    "query",
    "route",
    "permission",
    "token_id",
    "token_name",
    "outcome",
    "status",
    "duration_ms",
    "upstream_ms",
    "bytes_in",
    "bytes_out",
)


def read_lines(*paths: Path) -> list[dict[str, Any]]:
    """Every record of these files; fails on a line that is not whole, valid JSON."""
    records = []
    for path in paths:
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends inside a line"
        records += [orjson.loads(line) for line in data.splitlines()]
    return records


def store_rows(database: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM request_log ORDER BY id")]


def store_count(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT COUNT(*) FROM request_log").fetchone()[0]


async def hammer(
    base: str, requests: Iterable[tuple[str, str]], *, connections: int = 50
) -> tuple[list[str], int]:
    """Send (method, target) requests over `connections` keep-alive connections; the X-Request-Id of every response
    received, and how many clients stopped because a request got no response (the gateway went away)."""
    ids: list[str] = []
    failed = 0
    pending = iter(requests)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        for method, target in pending:
            try:
                async with session.request(method, URL(base + target, encoded=True)) as r:
                    await r.read()
                    ids.append(r.headers["X-Request-Id"])
            except (aiohttp.ClientError, OSError):
                failed += 1
                return

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(connections)))
    return ids, failed


def mixed_request(i: int) -> tuple[str, str]:
    """Allowed, missing, invalid, forbidden and malformed requests, in turn."""
    kind = i % 5
    if kind == 0:
        return "GET", f"/v1/leads/search?auth_token={READER}&i={i}"
    if kind == 1:
        return "GET", f"/v1/leads/search?i={i}"
    if kind == 2:
        return "GET", f"/v1/leads/search?auth_token=unknown-{i % 7}"
    if kind == 3:
        return "POST", f"/v1/leads/insert?auth_token={READER}&i={i}"
    return "GET", f"/v1/%2e%2e/%2e%2e/%2e%2e/etc?i={i}"


def mixed(n: int) -> Iterable[tuple[str, str]]:
    return map(mixed_request, range(n))


# --- complete: every request, every worker, every field -----------------------------------------------------------


async def test_ten_thousand_requests_through_two_workers_leave_ten_thousand_records(
    tmp_path, upstream, processes
):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)
    started = time.monotonic()
    ids, failed = await hammer(gw.url, mixed(10_000))
    elapsed = time.monotonic() - started
    assert failed == 0
    gw.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0

    records = read_lines(tmp_path / "access.jsonl")
    assert len(records) == 10_000, f"{len(records)} records for 10000 requests ({elapsed:.1f}s of load)"
    assert all(tuple(r) == CONTRACT_FIELDS for r in records)
    file_ids = [r["request_id"] for r in records]
    assert len(set(file_ids)) == 10_000
    assert set(file_ids) == set(ids)
    assert len({i[:12] for i in file_ids}) == 2, "both workers served and logged"
    assert Counter(r["outcome"] for r in records) == {
        "allowed": 2000,
        "missing": 2000,
        "invalid": 2000,
        "forbidden": 2000,
        "malformed": 2000,
    }
    rows = store_rows(tmp_path / "gateway.db")
    assert len(rows) == 10_000
    assert {r["request_id"] for r in rows} == set(file_ids)


async def test_sigterm_under_load_every_answered_request_has_its_record(tmp_path, upstream, processes):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)

    def endless() -> Iterable[tuple[str, str]]:
        i = 0
        while True:
            i += 1
            # Some slow requests, so that SIGTERM finds requests in flight.
            yield mixed_request(i) if i % 10 else ("GET", f"/v1/leads/slow?delay=0.2&auth_token={ADMIN}")

    load = asyncio.ensure_future(hammer(gw.url, endless(), connections=40))
    await wait_until(lambda: len(upstream.received) > 300, timeout=15)
    gw.signal(signal.SIGTERM)
    ids, failed = await asyncio.wait_for(load, 30)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0

    file_ids = {r["request_id"] for r in read_lines(tmp_path / "access.jsonl")}
    store_ids = {r["request_id"] for r in store_rows(tmp_path / "gateway.db")}
    assert len(ids) > 300 and failed > 0  # the load was still running when the gateway stopped
    assert set(ids) <= file_ids
    assert set(ids) <= store_ids
    assert file_ids == store_ids


# --- redacted -----------------------------------------------------------------------------------------------------


UNKNOWN = "unknown-secret-9999"


async def test_no_secret_reaches_the_file_or_the_store(start_gateway, upstream):
    gw = await start_gateway({"server": {"max_body": "1KB"}})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    json = {"Content-Type": "application/json"}

    def bearer(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    sent: list[tuple[str, str, dict[str, str], bytes, int]] = []
    for secret, path, status in (
        (READER, "/v1/leads/search", 200),  # allowed
        (UNKNOWN, "/v1/leads/search", 401),  # invalid
        (READER, "/v1/leads/insert", 403),  # forbidden
    ):
        sent += [
            ("POST", f"{path}?auth_token={secret}&list_id=5", {}, b"", status),
            ("POST", f"{path}?list_id=5", form, f"auth_token={secret}&first_name=Ann".encode(), status),
            (
                "POST",
                f"{path}?list_id=5",
                json,
                orjson.dumps({"auth_token": secret, "first_name": "Ann"}),
                status,
            ),
            ("POST", f"{path}?list_id=5", bearer(secret), b"", status),
        ]
    sent += [
        # two different tokens: 400 conflict
        ("GET", f"/v1/leads/search?auth_token={READER}&list_id=5", bearer(UNKNOWN), b"", 400),
        (
            "POST",
            f"/v1/leads/search?auth_token={UNKNOWN}&list_id=5",
            form,
            f"auth_token={READER}".encode(),
            400,
        ),
        # malformed: a bad path with the token in the query, in path parameters, an unreadable body
        ("GET", f"/v1/%2e%2e/%2e%2e/%2e%2e/etc?auth_token={READER}&list_id=5", {}, b"", 400),
        ("GET", f"/v1/leads/x;auth_token={READER}?list_id=5", {}, b"", 400),
        ("GET", f"/v1/leads/%2fx?AUTH%5fTOKEN={READER}&list_id=5", {}, b"", 400),
        (
            "POST",
            f"/v1/leads/search?list_id=5&auth_token={READER}",
            json,
            b'{"auth_token": "' + READER.encode() + b'", ',
            400,
        ),
        ("POST", "/v1/leads/search?list_id=5", json, b'{"auth_token": "' + UNKNOWN.encode() + b'" "x"}', 400),
        ("POST", f"/v1/leads/search?auth_token={READER}&list_id=5", form, b"x" * 2048, 413),
        # `;` separates parameters for Rack < 3 and Go < 1.17: the token behind it is read (and not logged)
        ("GET", f"/v1/leads/search?list_id=5;auth_token={UNKNOWN}", {}, b"", 401),
    ]
    for method, target, headers, body, status in sent:
        r = await gw.request(method, target, headers=headers, data=body)
        assert r.status == status, target
    raw = [
        f"GET /v1/leads/x#auth_token={READER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        f"GET http://u:{READER}@x/v1/leads/search?auth_token={READER}&list_id=5 HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n",
    ]
    for request in raw:
        assert status_of(await raw_exchange(gw.port, request.encode())) == 400

    alog = gw.worker.access_log
    total = len(sent) + len(raw)
    await wait_until(lambda: alog.written_store == total and alog.written_file == total)
    data = (gw.tmp / "access.jsonl").read_bytes()
    rows = store_rows(gw.tmp / "gateway.db")
    assert len(rows) == total
    for secret in (READER, UNKNOWN):
        assert secret.encode() not in data
        for row in rows:
            for column, value in row.items():
                assert secret not in str(value), (column, row)

    records = read_lines(gw.tmp / "access.jsonl")
    by_outcome = Counter(r["outcome"] for r in records)
    assert by_outcome == {
        "allowed": 4,
        "invalid": 5,
        "forbidden": 4,
        "conflict": 2,
        "malformed": 8,
    }
    # bytes_in counts what the client sent, refused or not, before the credential was taken out.
    bodies = sorted(len(body) for method, target, _, body, status in sent if status == 200)
    assert sorted(r["bytes_in"] for r in records if r["outcome"] == "allowed") == bodies
    assert sorted(r["bytes_in"] for r in records if r["outcome"] == "forbidden") == bodies
    # The other parameters stay, on every kind of request (the one with a fragment had none).
    assert [(r["path"], r["query"]) for r in records if r["query"] != "list_id=5"] == [("/v1/leads/x", "")]
    assert {r["path"] for r in records if r["outcome"] == "malformed"} >= {
        "/v1/%2e%2e/%2e%2e/%2e%2e/etc",
        "/v1/leads/x",
        "/v1/leads/%2fx",
        "http://***@x/v1/leads/search",
    }


# --- rotated ------------------------------------------------------------------------------------------------------


def requests_for(n: int, tag: str) -> list[tuple[str, str]]:
    return [("GET", f"/v1/leads/search?auth_token={READER}&{tag}={i}") for i in range(n)]


async def test_external_rotation_with_sigusr1_loses_nothing(tmp_path, upstream, processes):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)
    log_file = tmp_path / "access.jsonl"
    before, _ = await hammer(gw.url, requests_for(300, "before"), connections=20)
    await wait_until(lambda: log_file.exists() and log_file.read_bytes().count(b"\n") == 300)

    # What logrotate does: rename, then signal. The gateway creates the new file at once, before any request.
    os.rename(log_file, tmp_path / "access.jsonl.1")
    gw.signal(signal.SIGUSR1)
    await wait_until(log_file.exists)
    after, _ = await hammer(gw.url, requests_for(300, "after"), connections=20)
    gw.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0

    assert {r["request_id"] for r in read_lines(tmp_path / "access.jsonl.1")} == set(before)
    assert {r["request_id"] for r in read_lines(log_file)} == set(after)
    assert store_count(tmp_path / "gateway.db") == 600


@pytest.mark.parametrize("keep", [3, 100])
async def test_rotation_by_size_keeps_whole_lines_in_numbered_files(tmp_path, upstream, processes, keep):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2, access_log=f'rotate = "20KB"\nkeep = {keep}')
    processes.append(gw)
    ids, _ = await hammer(gw.url, requests_for(1000, "n"), connections=20)  # about 350 KB of records
    gw.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0

    files = sorted(tmp_path.glob("access.jsonl*"))
    rotated = [p for p in files if p.name != "access.jsonl"]
    numbers = sorted(int(p.suffix[1:]) for p in rotated)
    assert numbers == list(range(1, len(rotated) + 1))
    assert len(rotated) == 3 if keep == 3 else len(rotated) > 3
    for path in files:
        # One worker's write can land just after the other's size check: never more than two batches over.
        assert path.stat().st_size <= 2 * 20 * 1024, path.name
    records = read_lines(*files)
    assert len({r["request_id"] for r in records}) == len(records)
    if keep == 100:
        assert {r["request_id"] for r in records} == set(ids)
    else:
        assert 3 * 10 < len(records) < 1000  # older files were dropped, the newest records kept
    assert store_count(tmp_path / "gateway.db") == 1000


# --- retention ----------------------------------------------------------------------------------------------------


def log_record(ts: float, n: int) -> dict[str, Any]:
    return {
        "ts": iso(ts),
        "request_id": f"old{n:08d}",
        "client_ip": "127.0.0.1",
        "method": "GET",
        "path": "/v1/leads/search",
        "query": "",
        "route": "/v1/leads/search",
        "permission": "leads:read",
        "token_id": None,
        "token_name": None,
        "outcome": "missing",
        "status": 401,
        "duration_ms": 0.1,
        "upstream_ms": None,
        "bytes_in": 0,
        "bytes_out": 60,
    }


async def test_retention_prunes_only_records_older_than_retain(start_gateway, tmp_path):
    now = time.time()
    store = await Store.open(tmp_path / "gateway.db")
    old = [log_record(now - 31 * 86400 - i, i) for i in range(2500)]  # more than one pruning batch
    kept = [log_record(now - 29 * 86400 + i, 10_000 + i) for i in range(10)]
    await store.insert_log(old + kept)
    await store.close()

    gw = await start_gateway({"access_log": {"retain": "30d"}})  # pruning starts with the worker
    r = await gw.get(f"/v1/leads/search?auth_token={READER}")
    assert r.status == 200
    await wait_until(lambda: gw.worker.access_log.pruned == 2500)
    await wait_until(lambda: gw.worker.access_log.written_store == 1)
    rows = store_rows(tmp_path / "gateway.db")
    assert {r["request_id"] for r in rows} == {k["request_id"] for k in kept} | {r.headers["X-Request-Id"]}


async def test_retention_follows_the_gateway_clock(start_gateway, tmp_path):
    now = [time.time()]
    gw = await start_gateway({"access_log": {"retain": "1h"}}, clock=lambda: now[0])
    for _ in range(3):
        assert (await gw.get("/v1/leads/search")).status == 401
    now[0] += 7200
    fresh = await gw.get("/v1/leads/search")
    alog = gw.worker.access_log
    await wait_until(lambda: alog.written_store == 4)
    assert await alog.prune() == 3
    assert [r["request_id"] for r in store_rows(tmp_path / "gateway.db")] == [fresh.headers["X-Request-Id"]]


# --- a failing sink -----------------------------------------------------------------------------------------------


async def metric(gw: Any, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.worker.admin_port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def lock_store(database: Path) -> sqlite3.Connection:
    """Another program's long write transaction: the gateway's inserts find the store locked. (Taken in a thread,
    because the gateway may be in the middle of a write it needs the event loop to finish.)"""

    def lock() -> sqlite3.Connection:
        db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        db.execute("BEGIN EXCLUSIVE")
        return db

    return await asyncio.to_thread(lock)


async def test_locked_store_counts_warns_and_catches_up_without_loss(start_gateway, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "gateway.accesslog")
    gw = await start_gateway({"store": {"busy_timeout": "100ms"}})
    alog = gw.worker.access_log
    blocker = await lock_store(tmp_path / "gateway.db")
    try:
        for _ in range(30):
            assert (await gw.get(f"/v1/leads/search?auth_token={READER}")).status == 200
        await wait_until(lambda: alog.write_failures > 0)
        assert await metric(gw, "gateway_access_log_write_failures_total") > 0
        assert await metric(gw, "gateway_access_log_held_records") > 0
        assert any("cannot write to store" in m and "database is locked" in m for m in caplog.messages)
        assert store_count(tmp_path / "gateway.db") == 0
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await wait_until(lambda: store_count(tmp_path / "gateway.db") == 30)
    assert len(read_lines(tmp_path / "access.jsonl")) == 30
    assert await metric(gw, "gateway_access_log_lost_total") == 0
    assert any("writing to store again" in m for m in caplog.messages)


async def test_shutdown_waits_for_a_locked_store_and_drains_into_it(start_gateway, tmp_path):
    gw = await start_gateway({"store": {"busy_timeout": "100ms"}})
    alog = gw.worker.access_log
    blocker = await lock_store(tmp_path / "gateway.db")
    try:
        for _ in range(10):
            assert (await gw.get("/v1/leads/search")).status == 401
        stopping = asyncio.ensure_future(gw.worker.stop())  # what SIGTERM does
        failures = alog.write_failures
        await wait_until(lambda: alog.write_failures >= failures + 2)
        assert not stopping.done()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.wait_for(stopping, 10)
    assert store_count(tmp_path / "gateway.db") == 10
    assert alog.lost == 0


async def test_unwritable_log_folder_counts_warns_and_catches_up_without_loss(
    start_gateway, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, "gateway.accesslog")
    folder = tmp_path / "logs"
    gw = await start_gateway({"access_log": {"path": str(folder / "access.jsonl")}})
    alog = gw.worker.access_log
    assert (await gw.get(f"/v1/leads/search?auth_token={READER}")).status == 200
    await wait_until(lambda: alog.written_file == 1)

    # Root ignores permissions, so the fault is a file where the log's folder should be.
    os.rename(folder, tmp_path / "logs.away")
    folder.write_text("not a folder")
    for _ in range(20):
        assert (await gw.get("/v1/leads/search")).status == 401
    await wait_until(lambda: alog.write_failures > 0)
    assert await metric(gw, "gateway_access_log_write_failures_total") > 0
    assert any("cannot write to" in m and "access.jsonl" in m for m in caplog.messages)
    await wait_until(lambda: alog.written_store == 21)  # the store does not wait for the file

    folder.unlink()
    os.rename(tmp_path / "logs.away", folder)
    await wait_until(lambda: alog.written_file == 21)
    assert len(read_lines(folder / "access.jsonl")) == 21
    assert alog.lost == 0


async def test_a_file_that_cannot_be_rotated_is_written_on(start_gateway, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "gateway.accesslog")
    (tmp_path / "access.jsonl.1").mkdir()  # in the way of the rotated file
    (tmp_path / "access.jsonl.1" / "keep").write_text("")
    gw = await start_gateway({"access_log": {"rotate": "1KB", "keep": 1}})
    for _ in range(20):
        assert (await gw.get("/v1/leads/search")).status == 401
    await wait_until(lambda: gw.worker.access_log.written_file == 20)
    assert len(read_lines(tmp_path / "access.jsonl")) == 20
    assert sum("cannot rotate" in m for m in caplog.messages) == 1


async def test_a_full_queue_makes_requests_wait_rather_than_lose_records(start_gateway, tmp_path):
    gw = await start_gateway({"access_log": {"queue": 1}, "store": {"busy_timeout": "100ms"}})
    alog = gw.worker.access_log
    blocker = await lock_store(tmp_path / "gateway.db")
    answered = 0

    async def one() -> None:
        nonlocal answered
        async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/v1/leads/search") as r:
            assert r.status == 401
            answered += 1

    try:
        requests = asyncio.gather(*(one() for _ in range(20)))
        # Several retries later, still one record held by the writer and one in the queue: memory stays bounded
        # and the other requests wait for room.
        await wait_until(lambda: alog.waits >= 18 and alog.write_failures >= 3)
        assert answered <= 2
        assert alog.held == 1
        assert store_count(tmp_path / "gateway.db") == 0
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.wait_for(requests, 20)
    assert answered == 20
    await wait_until(lambda: store_count(tmp_path / "gateway.db") == 20)
    assert len(read_lines(tmp_path / "access.jsonl")) == 20
    assert alog.lost == 0


async def test_path_dash_writes_whole_lines_to_stdout(start_gateway, capfd):
    gw = await start_gateway({"access_log": {"path": "-"}})
    for i in range(50):
        assert (await gw.get(f"/v1/leads/search?auth_token={READER}&i={i}")).status == 200
    await wait_until(lambda: gw.worker.access_log.written_file == 50)
    lines = capfd.readouterr().out.splitlines()
    assert [orjson.loads(line)["query"] for line in lines] == [f"i={i}" for i in range(50)]


# --- the writer on its own ----------------------------------------------------------------------------------------


async def test_a_record_that_cannot_be_encoded_is_escaped_not_dropped(tmp_path):
    store = await Store.open(tmp_path / "gateway.db")
    alog = AccessLog(AccessLogConfig(path=str(tmp_path / "access.jsonl")), store)
    await alog.start()
    record = log_record(time.time(), 1) | {"path": "/v1/\udcff"}
    alog.put(record)
    alog.put(log_record(time.time(), 2))
    await alog.close()
    await store.close()
    assert [r["path"] for r in read_lines(tmp_path / "access.jsonl")] == ["/v1/\\udcff", "/v1/leads/search"]
    assert [r["path"] for r in store_rows(tmp_path / "gateway.db")] == ["/v1/\\udcff", "/v1/leads/search"]
    assert tuple(store_rows(tmp_path / "gateway.db")[0])[1:] == LOG_FIELDS


async def test_an_access_log_that_cannot_be_opened_stops_the_start(start_gateway, tmp_path):
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(StartupError, match="cannot open the access log"):
        await start_gateway({"access_log": {"path": str(tmp_path / "blocked" / "access.jsonl")}})


async def test_a_write_cancelled_while_it_begins_leaves_no_transaction_open(tmp_path):
    # Shutdown cancels the pruning task wherever it is; the writer must still be able to insert afterwards.
    store = await Store.open(tmp_path / "gateway.db")
    try:
        write = asyncio.ensure_future(store.record_last_used({"tok_x": time.time()}))
        await asyncio.sleep(0)  # now waiting for BEGIN IMMEDIATE in aiosqlite's thread
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        await store.insert_log([log_record(time.time(), 2)])
    finally:
        await store.close()
    assert [r["request_id"] for r in store_rows(tmp_path / "gateway.db")] == ["old00000002"]


async def test_a_batch_appended_in_one_trip_is_all_or_nothing_and_never_leaves_a_transaction_open(tmp_path):
    # The access-log writer's insert runs BEGIN, the rows and COMMIT in one call in SQLite's thread.
    store = await Store.open(tmp_path / "gateway.db")
    try:
        bad = {
            **log_record(time.time(), 2),
            "status": object(),
        }  # SQLite cannot bind it: the batch is refused
        with pytest.raises(sqlite3.Error):
            await store.insert_log([log_record(time.time(), 1), bad])
        # Cancelled while it waits for the thread: the thread still finishes that transaction, one way or the other.
        write = asyncio.ensure_future(store.insert_log([log_record(time.time(), 3)]))
        await asyncio.sleep(0)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        await store.insert_log([log_record(time.time(), 4), log_record(time.time(), 5)])
    finally:
        await store.close()
    ids = [r["request_id"] for r in store_rows(tmp_path / "gateway.db")]
    assert ids in (["old00000004", "old00000005"], ["old00000003", "old00000004", "old00000005"])


async def test_a_batch_of_any_size_reaches_the_store_whole_and_in_order(tmp_path):
    # insert_log inserts 64 and 16 rows per statement and the rest one by one: every size boundary is crossed here.
    store = await Store.open(tmp_path / "gateway.db")
    records: list[dict[str, Any]] = []
    try:
        for size in [1, 15, 16, 17, 64, 65, 103, 200]:
            batch = [
                {**log_record(time.time(), len(records) + i), "bytes_out": len(records) + i}
                for i in range(size)
            ]
            await store.insert_log(batch)
            records += batch
    finally:
        await store.close()
    rows = store_rows(tmp_path / "gateway.db")
    assert [{k: v for k, v in row.items() if k != "id"} for row in rows] == records
