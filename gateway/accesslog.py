"""The access log: one record per request, off the hot path, to a JSON-lines file and the store's request_log.

Requests hand records to a bounded queue; one writer task per worker appends whole lines with a single O_APPEND
write per batch (so workers never interleave) and inserts the batch in one transaction. When a sink fails the
writer keeps the records, counts the failure, warns, and retries; when the queue is full, requests wait for room.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.config import AccessLogConfig
from gateway.store import Store

log = logging.getLogger("gateway.accesslog")

BATCH = 512
RETRY_DELAY = 0.5
SHUTDOWN_RETRY = 10.0
PRUNE_EVERY = 60.0
PRUNE_BATCH = 1000


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LogFile:
    """An O_APPEND file that follows renames: reopened on SIGUSR1, when its path moves, or rotated at a size."""

    def __init__(self, path: Path, rotate: int | None, keep: int) -> None:
        self.path = path
        self.rotate = rotate
        self.keep = keep
        self.fd = -1
        self._ino = -1
        self.reopen_requested = False

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self.fd = self.fd, fd
        self._ino = os.fstat(fd).st_ino
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _moved(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def write(self, data: bytes) -> None:
        if self.fd < 0 or self.reopen_requested or self._moved():
            self.reopen_requested = False
            self.open()
        if self.rotate is not None and os.fstat(self.fd).st_size + len(data) > self.rotate:
            self._rotate()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def _rotate(self) -> None:
        # Several workers share the file: the first to take the lock rotates, the others see the new inode.
        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self._moved() and os.fstat(self.fd).st_size > 0:
                for n in range(self.keep - 1, 0, -1):
                    src = self.path.with_name(f"{self.path.name}.{n}")
                    if src.exists():
                        os.replace(src, self.path.with_name(f"{self.path.name}.{n + 1}"))
                if self.keep > 0:
                    os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
                else:
                    os.truncate(self.path, 0)
            self.open()


class StdoutFile(LogFile):
    def __init__(self) -> None:
        super().__init__(Path("-"), None, 0)

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


class AccessLog:
    def __init__(self, config: AccessLogConfig, store: Store | None) -> None:
        self.config = config
        self.store = store
        self.file: LogFile = (
            StdoutFile() if config.path == "-" else LogFile(Path(config.path), config.rotate, config.keep)
        )
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(config.queue)
        self._pending_file: list[bytes] = []
        self._pending_store: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Metrics: a record that could not be written shows here, never silently.
        self.records = 0
        self.written_file = 0
        self.written_store = 0
        self.write_failures = 0
        self.waits = 0
        self.lost = 0

    async def start(self) -> None:
        self.file.open()
        self._task = asyncio.create_task(self._run(), name="access-log")
        if self.store is not None and self.config.retain is not None:
            self._prune_task = asyncio.create_task(self._prune_forever(), name="access-log-prune")

    def put(self, record: dict[str, Any]) -> asyncio.Future[None] | None:
        """Queue a record. Returns an awaitable when the queue is full: the caller waits for room (backpressure)."""
        self.records += 1
        try:
            self.queue.put_nowait(record)
            return None
        except asyncio.QueueFull:
            self.waits += 1
            return asyncio.ensure_future(self.queue.put(record))

    def reopen(self) -> None:
        self.file.reopen_requested = True

    async def close(self) -> None:
        """Drain everything queued to file and store, then stop."""
        self._stopping = True
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
        if self._task is not None:
            await self.queue.put({"__stop__": True})
            await self._task
        self.file.close()

    async def _run(self) -> None:
        stop = False
        give_up_at = None
        while not (stop and not self._pending_file and not self._pending_store):
            if not stop and not self._backlogged():
                batch = [await self.queue.get()] if not (self._pending_file or self._pending_store) else []
                while len(batch) < BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                for record in batch:
                    if "__stop__" in record:
                        stop = True
                        continue
                    ts = record["ts"]
                    if isinstance(ts, float):
                        record["ts"] = iso(ts)
                    self._pending_file.append(orjson.dumps(record) + b"\n")
                    if self.store is not None:
                        self._pending_store.append(record)
            ok = self._flush_file()
            ok = await self._flush_store() and ok
            if not ok:
                if stop:
                    # Shutting down with a sink still failing: retry for a while, then say exactly what is lost.
                    give_up_at = give_up_at or time.monotonic() + SHUTDOWN_RETRY
                    if time.monotonic() > give_up_at:
                        self.lost = len(self._pending_file) + len(self._pending_store)
                        log.error(
                            "access log: giving up at shutdown: %d file lines and %d store records not written",
                            len(self._pending_file),
                            len(self._pending_store),
                        )
                        return
                await asyncio.sleep(RETRY_DELAY)

    def _backlogged(self) -> bool:
        # While a sink is failing, stop taking from the queue, so the queue fills and requests wait for room.
        return len(self._pending_file) >= BATCH * 8 or len(self._pending_store) >= BATCH * 8

    def _flush_file(self) -> bool:
        if not self._pending_file:
            return True
        data = b"".join(self._pending_file)
        try:
            self.file.write(data)
        except OSError as e:
            self.write_failures += len(self._pending_file)
            log.warning(
                "access log: cannot write %d records to %s (%s); retrying",
                len(self._pending_file),
                self.file.path,
                e,
            )
            return False
        self.written_file += len(self._pending_file)
        self._pending_file.clear()
        return True

    async def _flush_store(self) -> bool:
        if not self._pending_store or self.store is None:
            return True
        batch = self._pending_store[: BATCH * 4]
        try:
            await self.store.insert_log(batch)
        except Exception as e:
            self.write_failures += len(batch)
            log.warning("access log: cannot insert %d records into the store (%s); retrying", len(batch), e)
            return False
        self.written_store += len(batch)
        del self._pending_store[: len(batch)]
        return True

    async def _prune_forever(self) -> None:
        assert self.store is not None and self.config.retain is not None
        while True:
            try:
                await self.store.prune_log(iso(time.time() - self.config.retain), PRUNE_BATCH)
            except Exception as e:
                log.warning("access log: pruning old records failed: %s", e)
            await asyncio.sleep(PRUNE_EVERY)
