"""The store (real SQLite in a temp folder) and the cache in front of it."""

from __future__ import annotations

import asyncio
import sqlite3

from gateway.cache import TokenCache
from gateway.store import MIGRATIONS, Store
from gateway.vocabulary import SECRET_PREFIX, digest_of, new_secret
from tests.conftest import READER


async def test_store_is_created_in_wal_mode_with_a_schema_version(tmp_path):
    store = await Store.open(tmp_path / "sub" / "gw.db")
    await store.close()
    db = sqlite3.connect(tmp_path / "sub" / "gw.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    # Opening again migrates nothing and loses nothing.
    store = await Store.open(tmp_path / "sub" / "gw.db")
    await store.create_token(name="t", digest=digest_of("s"), permissions=["a"])
    await store.close()
    store = await Store.open(tmp_path / "sub" / "gw.db")
    assert (await store.get("t")).name == "t"
    await store.close()


async def test_only_the_digest_of_a_secret_is_stored(tmp_path):
    store = await Store.open(tmp_path / "gw.db")
    secret = new_secret()
    await store.create_token(name="t", digest=digest_of(secret), permissions=["a"])
    await store.close()
    assert secret.startswith(SECRET_PREFIX) and len(secret) == len(SECRET_PREFIX) + 43  # 256 bits, base64url
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the database and any WAL left behind
    assert secret.encode() not in raw
    assert digest_of(secret) in raw


async def test_names_and_secrets_are_unique(tmp_path):
    from gateway.store import StoreConflict

    store = await Store.open(tmp_path / "gw.db")
    await store.create_token(name="t", digest=digest_of("s"), permissions=["a"])
    for name, secret in (("t", "other"), ("u", "s")):
        try:
            await store.create_token(name=name, digest=digest_of(secret), permissions=["a"])
        except StoreConflict:
            pass
        else:
            raise AssertionError("duplicate accepted")
    assert len(await store.list_tokens()) == 1
    await store.close()


def make_cache(store: Store, now: list[float]) -> TokenCache:
    return TokenCache(store, size=100, ttl=30, negative_size=100, negative_ttl=5, timer=lambda: now[0])


async def test_concurrent_misses_for_one_digest_make_one_store_query(tmp_path):
    store = await Store.open(tmp_path / "gw.db")
    await store.create_token(name="t", digest=digest_of(READER), permissions=["a"])
    cache = make_cache(store, [0.0])
    results = await asyncio.gather(*(cache.get(digest_of(READER)) for _ in range(50)))
    assert {r.name for r in results} == {"t"}
    assert cache.store_queries == 1
    await store.close()


async def test_a_cancelled_first_caller_does_not_fail_the_others_waiting_on_its_lookup(tmp_path):
    # A client that disconnects cancels its request (handler_cancellation); others sharing the lookup still get it.
    store = await Store.open(tmp_path / "gw.db")
    await store.create_token(name="t", digest=digest_of(READER), permissions=["a"])
    cache = make_cache(store, [0.0])
    first = asyncio.ensure_future(cache.get(digest_of(READER)))
    others = [asyncio.ensure_future(cache.get(digest_of(READER))) for _ in range(3)]
    await asyncio.sleep(0)  # every caller is now waiting on the one store query
    first.cancel()
    assert [r.name for r in await asyncio.gather(*others)] == ["t"] * 3
    assert first.cancelled()
    assert cache.store_queries == 1
    await store.close()


async def test_unknown_digests_are_cached_negatively_for_a_short_while(tmp_path):
    store = await Store.open(tmp_path / "gw.db")
    now = [0.0]
    cache = make_cache(store, now)
    unknown = digest_of("nope")
    for _ in range(100):
        assert await cache.get(unknown) is None
    assert cache.store_queries == 1
    now[0] = 6.0  # past the negative TTL: asked again
    assert await cache.get(unknown) is None
    assert cache.store_queries == 2
    await store.close()


async def test_cached_entries_live_at_most_their_ttl(tmp_path):
    store = await Store.open(tmp_path / "gw.db")
    now = [0.0]
    cache = make_cache(store, now)
    await store.create_token(name="t", digest=digest_of(READER), permissions=["a"])
    await cache.get(digest_of(READER))
    await cache.get(digest_of(READER))
    assert cache.store_queries == 1
    now[0] = 31.0
    await cache.get(digest_of(READER))
    assert cache.store_queries == 2
    await store.close()


async def test_the_change_feed_evicts_exactly_what_changed(tmp_path):
    store = await Store.open(tmp_path / "gw.db")
    a = await store.create_token(name="a", digest=digest_of("sa"), permissions=["x"])
    await store.create_token(name="b", digest=digest_of("sb"), permissions=["x"])
    cache = make_cache(store, [0.0])
    await cache.start_following(interval=3600)  # followed by hand below
    await cache.get(digest_of("sa"))
    await cache.get(digest_of("sb"))
    assert cache.store_queries == 2
    other = await Store.open(tmp_path / "gw.db")  # as the CLI would, through another connection
    await other.update_token(a.id, revoked_at=1.0, revoked_by="admin")
    await other.close()
    await cache.poll_changes()
    assert (await cache.get(digest_of("sa"))).revoked_at == 1.0
    await cache.get(digest_of("sb"))
    assert cache.store_queries == 3  # only "a" was read again
    await store.close()
