"""The 1,000,000-token store, built once with one executemany transaction and cached in bench/.cache.

Secrets are deterministic (`bt-0000000` ... `bt-0999999`) so wrk's Lua scripts can present any of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
import time
from pathlib import Path

from gateway.store import Store

TOKENS = 1_000_000
CACHE = Path(__file__).resolve().parent / ".cache"
VERSION = 1  # bump when the rows or the schema change


def secret(i: int) -> str:
    return f"bt-{i:07d}"


def cached_store() -> Path:
    path = CACHE / f"store-1m-v{VERSION}.db"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    started = time.perf_counter()

    async def schema() -> None:
        store = await Store.open(building)  # the gateway's own migrations make the schema
        await store.close()

    asyncio.run(schema())
    db = sqlite3.connect(building, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    now = time.time()
    rows = (
        (
            f"tok_bench{i:011d}",
            secret(i),
            "developer",
            hashlib.sha256(secret(i).encode()).digest(),
            '["leads:read"]',
            now,
            now,
        )
        for i in range(TOKENS)
    )
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO tokens (id, name, type, digest, permissions, created_at, updated_at, source) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'cli')",
        rows,
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    building.rename(path)
    print(f"built the 1,000,000-token store in {time.perf_counter() - started:.1f} s: {path}", flush=True)
    return path


def fresh_copy(into: Path) -> Path:
    """A copy the gateway may write to (its access log and change feed), so the cache stays pristine."""
    target = into / "gateway.db"
    shutil.copyfile(cached_store(), target)
    return target
