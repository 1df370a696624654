"""Store faults fail closed: a token the cache does not hold gets 503 and is never forwarded while the store is
locked, deleted, unreadable or corrupt; the gateway recovers by itself; cached tokens live at most their TTL."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.cache import TokenCache
from gateway.store import Store, StoreUnavailable
from gateway.vocabulary import digest_of
from tests.conftest import ADMIN, LEADS, READER, wait_until

UNAVAILABLE = {"success": False, "error": "Authentication service unavailable"}
FAULTY = {"store": {"busy_timeout": "300ms"}}


def backup(database: Path, to: Path) -> None:
    source = sqlite3.connect(database)
    target = sqlite3.connect(to)
    with target:
        source.backup(target)
    source.close()
    target.close()


async def quiet(gateway) -> None:
    """Wait until the access log has written every record, so no write lands between a fault and its request."""
    log = gateway.worker.access_log
    await wait_until(lambda: log.written_store == log.records)


async def status(gateway, secret: str, path: str = "/v1/leads/search") -> int:
    r = await gateway.get(path, headers={"Authorization": f"Bearer {secret}"})
    if r.status == 503:
        assert await r.json() == UNAVAILABLE
    return r.status


def _delete(db: Path) -> None:
    db.unlink()


def _checkpoint(db: Path) -> None:
    # Pages still in the write-ahead log survive an overwritten main file (SQLite checkpoints them back):
    # move everything into the main file first, so the garbage really destroys the data.
    with sqlite3.connect(db, timeout=5) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _overwrite_in_place(db: Path) -> None:
    _checkpoint(db)
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.write(os.urandom(size))


def _replace_with_garbage(db: Path) -> None:
    _checkpoint(db)
    garbage = db.with_name("garbage")
    garbage.write_bytes(os.urandom(8192))
    os.replace(garbage, db)


def _unreadable(db: Path) -> None:
    if os.geteuid() == 0:
        # Root reads any file whatever its mode: make the path something SQLite cannot open at all.
        db.unlink()
        db.mkdir()
    else:
        db.chmod(0)


def _restore(db: Path, saved: Path) -> None:
    if db.is_dir():
        db.rmdir()
    if db.exists():
        db.chmod(0o644)
    shutil.copy(saved, db)


@pytest.mark.parametrize(
    "fault",
    [_delete, _overwrite_in_place, _replace_with_garbage, _unreadable],
    ids=lambda f: f.__name__.strip("_"),
)
async def test_a_broken_store_fails_closed_and_recovers_by_itself(start_gateway, upstream, fault):
    gateway = await start_gateway(FAULTY)
    db = gateway.tmp / "gateway.db"
    assert await status(gateway, READER) == 200  # now cached
    saved = gateway.tmp / "saved.db"
    await asyncio.to_thread(backup, db, saved)
    forwarded = len(upstream.received)

    await quiet(gateway)
    await asyncio.to_thread(fault, db)
    assert await status(gateway, LEADS) == 503
    assert await status(gateway, ADMIN, "/v1/admin/x") == 503
    assert len(upstream.received) == forwarded, "a token the store could not confirm was forwarded"
    assert await status(gateway, READER) == 200, "a cached token keeps working within its TTL"
    records = await wait_until(
        lambda: [r for r in gateway.log_lines() if r["status"] == 503] or None, timeout=15
    )
    assert {r["outcome"] for r in records} == {"unavailable"}

    _restore(db, saved)
    await wait_until(lambda: _eventually_ok(gateway), timeout=10)


async def _eventually_ok(gateway) -> bool:
    return await status(gateway, LEADS) == 200


async def test_a_lock_held_by_another_connection_means_503_after_the_busy_timeout(start_gateway, upstream):
    gateway = await start_gateway(FAULTY)
    db = gateway.tmp / "gateway.db"
    # A writer holding the lock on the live store: WAL readers keep reading the last committed state.
    # (Blocking SQLite calls run in a thread: the gateway's own writes need the event loop to finish.)
    writer = sqlite3.connect(db, isolation_level=None, timeout=5, check_same_thread=False)
    await asyncio.to_thread(writer.execute, "BEGIN EXCLUSIVE")
    assert await status(gateway, LEADS) == 200
    assert await status(gateway, "not-a-token") == 401
    await asyncio.to_thread(writer.execute, "ROLLBACK")
    writer.close()

    # A store put back (restored from a copy) while a tool holds it exclusively: the gateway cannot even open it.
    locked = gateway.tmp / "locked.db"
    await asyncio.to_thread(backup, db, locked)
    holder = sqlite3.connect(locked, isolation_level=None, timeout=0.1)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE held (x)")  # a write takes the exclusive lock now, not at COMMIT
    await quiet(gateway)
    os.replace(locked, db)
    started = time.monotonic()
    assert await status(gateway, ADMIN) == 503
    assert time.monotonic() - started >= 0.25, "503 came before the busy timeout ran out"
    assert len([r for r in upstream.received if r.header("X-Gateway-Token-Name") == "admin"]) == 0
    holder.execute("ROLLBACK")
    holder.close()
    await wait_until(lambda: _eventually_ok(gateway), timeout=10)


async def test_cached_tokens_live_at_most_their_ttl_when_the_store_is_gone(start_gateway, upstream):
    gateway = await start_gateway({**FAULTY, "cache": {"ttl": "1s"}})
    assert await status(gateway, READER) == 200
    cached_at = time.monotonic()
    saved = gateway.tmp / "saved.db"
    await asyncio.to_thread(backup, gateway.tmp / "gateway.db", saved)
    await quiet(gateway)
    (gateway.tmp / "gateway.db").unlink()
    assert await status(gateway, READER) == 200
    await wait_until(lambda: _is_unavailable(gateway), timeout=5)
    assert time.monotonic() - cached_at < 1.0 + 0.5
    await asyncio.to_thread(backup, saved, gateway.tmp / "gateway.db")  # so the access log can drain at stop


async def _is_unavailable(gateway) -> bool:
    return await status(gateway, READER) == 503


async def test_the_cache_serves_an_entry_until_its_ttl_and_then_asks_the_store(tmp_path):
    db = tmp_path / "gateway.db"
    store = await Store.open(db, busy_timeout=0.2)
    record = await store.create_token(name="t", digest=digest_of("s3cret"), permissions=["*"])
    now = [1000.0]
    cache = TokenCache(store, size=10, ttl=30.0, negative_size=10, negative_ttl=5.0, timer=lambda: now[0])
    try:
        assert (await cache.get(digest_of("s3cret"))).id == record.id
        assert await cache.get(digest_of("unknown")) is None
        db.unlink()
        queries = cache.store_queries
        now[0] += 29.9
        assert (await cache.get(digest_of("s3cret"))).id == record.id
        assert cache.store_queries == queries
        now[0] += 0.2
        with pytest.raises(StoreUnavailable):
            await cache.get(digest_of("s3cret"))
        with pytest.raises(StoreUnavailable):
            await cache.get(digest_of("unknown"))  # the negative entry (5 s) is long gone too
    finally:
        await store.close()
