"""The token cache's LRU with time-to-live: what it keeps, what it forgets, and when the store is asked."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gateway.cache import LruTtl, TokenCache
from gateway.store import Store
from gateway.vocabulary import digest_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_forgotten_when_its_time_to_live_ends() -> None:
    clock = Clock()
    cache: LruTtl[str, int] = LruTtl(10, 30.0, clock)
    cache["a"] = 1
    clock.now += 29.9
    assert cache.get("a") == 1
    assert "a" in cache
    clock.now += 0.1
    assert cache.get("a", None) is None
    assert "a" not in cache
    assert len(cache) == 0


def test_a_hit_does_not_extend_the_time_to_live() -> None:
    clock = Clock()
    cache: LruTtl[str, int] = LruTtl(10, 10.0, clock)
    cache["a"] = 1
    for _ in range(9):
        clock.now += 1
        assert cache.get("a") == 1
    clock.now += 1
    assert "a" not in cache


def test_the_least_recently_used_entry_goes_first_when_full() -> None:
    cache: LruTtl[str, int] = LruTtl(3, 60.0, Clock())
    cache["a"], cache["b"], cache["c"] = 1, 2, 3
    assert cache.get("a") == 1  # a is now the most recently used
    cache["d"] = 4
    assert "b" not in cache
    assert [k for k in ("a", "c", "d") if k in cache] == ["a", "c", "d"]
    assert len(cache) == 3


def test_storing_again_replaces_the_value_and_restarts_the_time_to_live() -> None:
    clock = Clock()
    cache: LruTtl[str, int] = LruTtl(3, 10.0, clock)
    cache["a"] = 1
    clock.now += 8
    cache["a"] = 2
    clock.now += 8
    assert cache.get("a") == 2
    assert cache.pop("a") == 2
    assert cache.pop("a") is None


async def test_a_flood_of_one_unknown_token_asks_the_store_once_per_negative_ttl(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gateway.db")
    clock = Clock()
    cache = TokenCache(store, size=10, ttl=30.0, negative_size=10, negative_ttl=5.0, timer=clock)
    unknown = hashlib.sha256(b"nobody has this token").digest()
    try:
        for _ in range(100):
            assert await cache.get(unknown) is None
        assert cache.store_queries == 1
        clock.now += 5.0
        assert await cache.get(unknown) is None
        assert cache.store_queries == 2
        known = await store.create_token(
            name="known", digest=digest_of("known-secret"), permissions=["leads"]
        )
        for _ in range(100):
            record = await cache.get(digest_of("known-secret"))
            assert record is not None and record.id == known.id
        assert cache.store_queries == 3
        assert len(cache) == 1
    finally:
        await store.close()


async def test_cached_tokens_share_their_permission_sets(tmp_path: Path) -> None:
    # Memory: 100,000 cached tokens with the same permissions hold one frozenset, not 100,000.
    store = await Store.open(tmp_path / "gateway.db")
    try:
        for name in ("one", "two"):
            await store.create_token(name=name, digest=digest_of(name), permissions=["reports", "leads:read"])
        one, two = await store.lookup(digest_of("one")), await store.lookup(digest_of("two"))
        assert one is not None and two is not None
        assert one.permissions == frozenset({"reports", "leads:read"})
        assert one.permissions is two.permissions
    finally:
        await store.close()
