"""The access log: one record per request, off the hot path, to a JSON-lines file and the store's request_log.

Requests hand records to a bounded queue; one writer task per worker appends whole lines with one O_APPEND write
per batch (so workers never interleave) and inserts the batch in one transaction. When a sink fails the writer
holds the records, counts the failure, warns, and retries; when it holds a queue's worth, requests wait for room.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import select
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.config import AccessLogConfig
from gateway.store import Store

log = logging.getLogger("gateway.accesslog")

BATCH = 512  # records taken from the queue per pass
STORE_BATCH = 2048  # records per store transaction
# Under load a pass gathers GATHER's worth of records (one write(2) for all of them) and hands them to the store
# in one transaction (one trip to SQLite's thread, ~20 us plus ~3 us a row). Short on purpose: SQLite's thread
# shares the worker's core, and every request in flight waits out a batch's insert. At 15,000 requests/s a 25 ms
# batch (~1 ms of inserts) put the allowed GET's p99 at 4.9-6.0 ms; 5 ms batches (~0.25 ms) at 3.8-4.2 ms, for the
# same CPU per request.
GATHER = 0.005
STORE_EVERY = 0.005
RETRY_DELAY = 0.5
WARN_EVERY = 30.0  # while a sink keeps failing, one warning this often rather than one per retry
SHUTDOWN_RETRY = 10.0
PRUNE_EVERY = 60.0
PRUNE_BATCH = 1000
# Errors that say "this record can never go in" rather than "not now": retrying them would stall the log forever.
REFUSED_BY_STORE = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    UnicodeError,
)

_STOP: dict[str, Any] = {}  # queued by close(), after the last request


class _IsoClock:
    """A record's time: UTC, milliseconds, fixed width, so that text order is time order (the store relies on it).

    Exactly what datetime writes, rounding included, at a fraction of the cost: records come in time order, so
    the date and time of day are formatted once per second and reused.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        if ts < 0:
            return _iso_slowly(ts)
        second = int(ts)
        # Rounded to microseconds first, as datetime.fromtimestamp does, then cut to milliseconds.
        micro = round((ts - second) * 1e6)
        if micro >= 1_000_000:
            second += 1
            micro -= 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{micro // 1000:03d}Z"


def _iso_slowly(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


iso = _IsoClock()


def encode(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # A lone surrogate cannot be written to the file nor the store: escape it once, here, for both.
        for key, value in record.items():
            if isinstance(value, str):
                record[key] = value.encode("utf-8", "backslashreplace").decode()
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _write_all(fd: int, data: bytes) -> int:
    """Bytes written; raises only when none were (a short write then an error, as on a full disk, returns short)."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        try:
            written += os.write(fd, view[written:])
        except OSError:
            if written:
                return written
            raise
    return written


class LogFile:
    """An O_APPEND file that follows renames: reopened on SIGUSR1 or when its path moves, rotated at a size."""

    def __init__(self, path: Path, rotate: int | None, keep: int) -> None:
        self.path = path
        self.rotate = rotate
        self.keep = keep
        self.fd = -1
        self._id = (-1, -1)
        self._rotate_after = 0.0  # after a failed rotation, when to try again

    @property
    def most_per_write(self) -> int | None:
        """The largest write (in whole lines) that keeps a file within its rotation size."""
        return self.rotate

    def open(self) -> None:
        # Records carry client addresses and token names: the gateway's user writes, its group (log shippers) reads.
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self.fd = self.fd, fd
        st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._id

    def write(self, data: bytes) -> int:
        """Append whole lines with one write() call; returns the bytes written (short only on a failing disk)."""
        if self.fd < 0 or self._moved():
            self.open()
        if self.rotate is not None and time.monotonic() >= self._rotate_after:
            size = os.fstat(self.fd).st_size
            if size and size + len(data) > self.rotate:
                try:
                    self._rotate()
                except OSError as e:
                    # A file that cannot be rotated is still a file that can be written: never hold records for it.
                    self._rotate_after = time.monotonic() + WARN_EVERY
                    log.warning(
                        "access log: cannot rotate %s (%s); writing on to it, trying again in %gs",
                        self.path,
                        e,
                        WARN_EVERY,
                    )
        return _write_all(self.fd, data)

    def _rotate(self) -> None:
        # Workers share the file: the first to take the lock rotates, the others find the new file and use it.
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            if not self._moved():
                name = self.path.name
                for n in range(self.keep - 1, 0, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(self.path.with_name(f"{name}.{n}"), self.path.with_name(f"{name}.{n + 1}"))
                if self.keep > 0:
                    os.replace(self.path, self.path.with_name(f"{name}.1"))
                else:
                    os.truncate(self.path, 0)
            self.open()
        finally:
            os.close(folder)  # releases the lock


class StdoutFile(LogFile):
    """`path = "-"`: workers share one stdout, often a pipe, where only writes up to PIPE_BUF stay whole."""

    def __init__(self) -> None:
        super().__init__(Path("-"), None, 0)

    @property
    def most_per_write(self) -> int | None:
        return select.PIPE_BUF

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, data: bytes) -> int:
        return _write_all(1, data)


class _Lines:
    """Encoded lines waiting for the file. After a short write only the unwritten tail of a line is kept, so a
    retry never writes a line twice."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.sizes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self.sizes)

    def add(self, line: bytes) -> None:
        self.data += line
        self.sizes.append(len(line))

    def next_write(self, most: int | None) -> bytes:
        """Whole lines from the front, at most `most` bytes unless one line alone is longer."""
        if most is None or len(self.data) <= most:
            return bytes(self.data)
        total = 0
        for size in self.sizes:
            if total and total + size > most:
                break
            total += size
        return bytes(self.data[:total])

    def written(self, n: int) -> int:
        """Drop `n` written bytes; returns how many lines are now complete in the file."""
        del self.data[:n]
        done = 0
        while n and self.sizes:
            if self.sizes[0] <= n:
                n -= self.sizes.popleft()
                done += 1
            else:
                self.sizes[0] -= n
                n = 0
        return done


class AccessLog:
    def __init__(
        self, config: AccessLogConfig, store: Store | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.file: LogFile = (
            StdoutFile() if config.path == "-" else LogFile(Path(config.path), config.rotate, config.keep)
        )
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(config.queue)
        # Records taken from the queue but not yet in a sink. Bounded like the queue, so while a sink fails the
        # queue fills and requests wait, instead of memory growing or records being dropped.
        self.hold_limit = max(1, config.queue)
        self._file_lines = _Lines()
        self._store_records: list[dict[str, Any]] = []
        self._store_due = 0.0  # when the records waiting for the store must be written at the latest
        self._task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing: dict[str, float] = {}  # sink -> when to warn again while it keeps failing
        # Metrics: a record that could not be written shows here, never silently.
        self.records = 0
        self.written_file = 0
        self.written_store = 0
        self.write_failures = 0  # failed write attempts, each retried
        self.waits = 0  # requests that waited for room in the queue
        self.lost = 0  # records given up on (shutdown with a sink still down, or refused by the store)
        self.pruned = 0

    @property
    def held(self) -> int:
        """Records waiting for a sink (for a retry, when one is failing)."""
        return max(len(self._file_lines), len(self._store_records))

    async def start(self) -> None:
        self.file.open()
        self._task = asyncio.create_task(self._run(), name="access-log")
        if self.store is not None and self.config.retain is not None:
            self._prune_task = asyncio.create_task(self._prune_forever(), name="access-log-prune")

    def put(self, record: dict[str, Any]) -> Any:
        """Queue a record. Returns an awaitable when the queue is full: the caller waits for room (backpressure)."""
        self.records += 1
        try:
            self.queue.put_nowait(record)
            return None
        except asyncio.QueueFull:
            self.waits += 1
            # A task of its own, so that the caller can shield it: a request cancelled while it waits (client
            # gone, shutdown grace over) still gets its record queued.
            return asyncio.ensure_future(self.queue.put(record))

    def reopen(self) -> None:
        """SIGUSR1: an external tool renamed the file; write to a new one from now on."""
        try:
            self.file.open()
        except OSError as e:
            # The next write retries the open (the moved file is noticed there too) and reports if it fails.
            log.warning("access log: cannot reopen %s: %s", self.file.path, e)
        else:
            log.info("access log: reopened %s", self.file.path)

    async def close(self) -> None:
        """Drain everything queued to file and store, then stop."""
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
        self._closing = True
        if self._task is not None and not self._task.done():
            # The queue may be full and stay so while a sink is down: the writer gives up on its own then.
            stop = asyncio.ensure_future(self.queue.put(_STOP))
            await asyncio.wait({stop, self._task}, return_when=asyncio.FIRST_COMPLETED)
            await self._task
            stop.cancel()
        left = self.held
        while not self.queue.empty():
            left += self.queue.get_nowait() is not _STOP
        if left:
            self.lost += left
            log.error("access log: %d records not written at shutdown", left)
        self.file.close()

    # --- the writer ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        give_up_at: float | None = None
        while True:
            try:
                if not stopping and self.held < self.hold_limit:
                    stopping = await self._take(stopping)
                ok = self._flush_file()
                records = self._store_records
                if stopping or self._closing or len(records) >= STORE_BATCH or loop.time() >= self._store_due:
                    ok = await self._flush_store() and ok
            except Exception:
                log.exception("access log: writer error; retrying")
                ok = False
            if stopping and not self.held:
                return
            if not ok:
                if stopping or self._closing:
                    # Shutting down with a sink still failing: retry for a while, then say exactly what is lost.
                    give_up_at = give_up_at or time.monotonic() + SHUTDOWN_RETRY
                    if time.monotonic() > give_up_at:
                        log.error(
                            "access log: giving up at shutdown: %d file lines and %d store records not written",
                            len(self._file_lines),
                            len(self._store_records),
                        )
                        return
                await asyncio.sleep(RETRY_DELAY)
            elif not stopping and self.queue.qsize() < BATCH:
                await asyncio.sleep(GATHER)  # let records gather; when idle this only delays a line by GATHER

    async def _take(self, stopping: bool) -> bool:
        """Move a batch from the queue into the sinks' buffers; waits for one record when nothing is held."""
        room = min(BATCH, self.hold_limit - self.held)
        batch = [] if self.held else [await self.queue.get()]
        while len(batch) < room:
            try:
                batch.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        for record in batch:
            if record is _STOP:
                stopping = True
                continue
            if isinstance(record["ts"], float):
                record["ts"] = iso(record["ts"])
            try:
                line = encode(record)
            except Exception as e:
                self.lost += 1
                log.error("access log: cannot encode request %s: %s", record.get("request_id"), e)
                continue
            self._file_lines.add(line)
            if self.store is not None:
                if not self._store_records:
                    self._store_due = asyncio.get_running_loop().time() + STORE_EVERY
                self._store_records.append(record)
        return stopping

    def _flush_file(self) -> bool:
        lines = self._file_lines
        while lines:
            data = lines.next_write(self.file.most_per_write)
            try:
                n = self.file.write(data)
            except OSError as e:
                self._failed("file", e)
                return False
            self.written_file += lines.written(n)
            if n < len(data):
                self._failed("file", OSError(f"short write: {n} of {len(data)} bytes"))
                return False
        self._recovered("file")
        return True

    async def _flush_store(self) -> bool:
        if self.store is None:
            return True
        while self._store_records:
            batch = self._store_records[:STORE_BATCH]
            try:
                await self.store.insert_log(batch)
            except REFUSED_BY_STORE:
                await self._insert_each()
                continue
            except Exception as e:
                self._failed("store", e)
                return False
            self.written_store += len(batch)
            del self._store_records[: len(batch)]
        self._recovered("store")
        return True

    async def _insert_each(self) -> None:
        """A batch was refused for its content: insert its records one by one, dropping only those refused."""
        assert self.store is not None
        for _ in range(min(STORE_BATCH, len(self._store_records))):
            record = self._store_records[0]
            try:
                await self.store.insert_log([record])
                self.written_store += 1
            except REFUSED_BY_STORE as e:
                self.lost += 1
                log.error(
                    "access log: the store refused request %s (%s); it is in the file only",
                    record["request_id"],
                    e,
                )
            del self._store_records[0]

    def _failed(self, sink: str, error: BaseException) -> None:
        self.write_failures += 1
        now = time.monotonic()
        if now >= self._failing.get(sink, 0.0):
            self._failing[sink] = now + WARN_EVERY
            where = self.file.path if sink == "file" else "store"
            log.warning(
                "access log: cannot write to %s (%s); holding %d records, retrying every %gs",
                where,
                error,
                self.held,
                RETRY_DELAY,
            )

    def _recovered(self, sink: str) -> None:
        if self._failing.pop(sink, None) is not None:
            where = self.file.path if sink == "file" else "store"
            log.warning("access log: writing to %s again; nothing was lost", where)

    # --- retention -----------------------------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete store records older than `retain`, in small transactions; returns how many went."""
        assert self.store is not None and self.config.retain is not None
        removed = await self.store.prune_log(iso(self.clock() - self.config.retain), PRUNE_BATCH)
        self.pruned += removed
        return removed

    async def _prune_forever(self) -> None:
        while True:
            try:
                removed = await self.prune()
                if removed:
                    log.info(
                        "access log: pruned %d records older than %gs from the store",
                        removed,
                        self.config.retain,
                    )
            except Exception as e:
                log.warning("access log: pruning old records failed: %s", e)
            await asyncio.sleep(PRUNE_EVERY)
