"""The token cache: an LRU with TTL in front of the store, keyed by secret digest.

Unknown digests are cached negatively (bounded, short TTL) so a flood of invalid tokens does not reach SQLite, and
concurrent misses for one digest share a single store query. A background task follows the store's change feed and
evicts exactly the digests that changed, so revocations reach every worker within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from gateway.store import Store, StoreUnavailable
from gateway.vocabulary import TokenRecord

log = logging.getLogger("gateway.cache")

_MISSING: object = object()

K = TypeVar("K")
V = TypeVar("V")


class LruTtl(Generic[K, V]):
    """An LRU whose entries also expire `ttl` seconds after they were stored.

    One OrderedDict of key -> (expires, value), least recently used first: about 200 bytes an entry where
    cachetools' TTLCache keeps four structures (some 450 bytes), and a hit is one lookup and one move.
    An expired entry is dropped when it is next looked up or reaches the LRU end.
    """

    __slots__ = ("_data", "_size", "_timer", "_ttl")

    def __init__(self, size: int, ttl: float, timer: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._size = size
        self._ttl = ttl
        self._timer = timer

    def get(self, key: K, default: object = _MISSING) -> V | object:
        item = self._data.get(key)
        if item is None:
            return default
        if item[0] <= self._timer():
            del self._data[key]
            return default
        self._data.move_to_end(key)
        return item[1]

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not _MISSING

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        data[key] = (self._timer() + self._ttl, value)
        data.move_to_end(key)
        while len(data) > self._size:
            data.popitem(last=False)

    def pop(self, key: K, default: object = None) -> V | object:
        item = self._data.pop(key, None)
        return default if item is None else item[1]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def _retrieve(task: asyncio.Future[TokenRecord | None]) -> None:
    """Mark a failed lookup's error as seen: every caller that wanted it may have been cancelled."""
    if not task.cancelled():
        task.exception()


class TokenCache:
    def __init__(
        self,
        store: Store,
        *,
        size: int,
        ttl: float,
        negative_size: int,
        negative_ttl: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._found: LruTtl[bytes, TokenRecord] = LruTtl(size, ttl, timer)
        self._unknown: LruTtl[bytes, bool] = LruTtl(negative_size, negative_ttl, timer)
        self._pending: dict[bytes, asyncio.Future[TokenRecord | None]] = {}
        self._seq = 0
        # Bumped by every eviction: a lookup that raced with a change must not cache what it read before it.
        self._generation = 0
        self.store_queries = 0  # for metrics and the tests that count SQLite round trips

    def cached(self, digest: bytes) -> TokenRecord | None:
        """The cached token for this digest, or None when `get` has to answer (unknown, or not cached): lets the
        hot path skip a coroutine on a hit."""
        return self._found.get(digest, None)  # type: ignore[return-value]

    async def get(self, digest: bytes) -> TokenRecord | None:
        """The token for this digest, or None when the store does not know it. Raises StoreUnavailable."""
        record = self._found.get(digest, _MISSING)
        if record is not _MISSING:
            return record  # type: ignore[return-value]
        if digest in self._unknown:
            return None
        pending = self._pending.get(digest)
        if pending is None:
            # A task of its own, awaited through a shield: a caller cancelled because its client left must not
            # take down the lookup that concurrent callers for the same digest are waiting on.
            pending = self._pending[digest] = asyncio.ensure_future(self._load(digest))
            pending.add_done_callback(_retrieve)
        return await asyncio.shield(pending)

    async def _load(self, digest: bytes) -> TokenRecord | None:
        generation = self._generation
        try:
            self.store_queries += 1
            record = await self.store.lookup(digest)
        except StoreUnavailable:
            raise
        except Exception as e:
            raise StoreUnavailable(repr(e)) from e
        finally:
            del self._pending[digest]
        if generation == self._generation:
            if record is None:
                self._unknown[digest] = True
            else:
                self._found[digest] = record
        return record

    def evict(self, digests: list[bytes]) -> None:
        self._generation += 1
        for d in digests:
            self._found.pop(d, None)
            self._unknown.pop(d, None)

    def clear(self) -> None:
        self._generation += 1
        self._found.clear()
        self._unknown.clear()

    def __len__(self) -> int:
        return len(self._found)

    # --- change feed -------------------------------------------------------------------------------------------

    async def start_following(self, interval: float = 0.25) -> asyncio.Task[None]:
        self._seq = await self.store.change_seq()
        return asyncio.create_task(self._follow(interval), name="cache-follow")

    async def _follow(self, interval: float) -> None:
        # One cheap indexed query every `interval` per worker, off the hot path; a revoke is seen well within 1 s.
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_changes()
            except Exception as e:
                log.warning("cannot read the token change feed: %s", e)

    async def poll_changes(self) -> None:
        seq, digests, gap = await self.store.changes_since(self._seq)
        if gap:
            self.clear()
        elif digests:
            self.evict(digests)
        self._seq = seq
