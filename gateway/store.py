"""The token store: SQLite through aiosqlite, WAL mode, versioned schema with migrations.

Secrets never reach it: tokens are found by the SHA-256 digest of their secret. Every change to a token appends
rows to `token_changes`, which running workers poll to evict exactly the cache entries that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import operator
import os
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from gateway.config import parse_quota, parse_rate
from gateway.vocabulary import (
    Quota,
    Rate,
    TokenRecord,
    TokenSeed,
    new_token_id,
)

T = TypeVar("T")


async def _scalar(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The one value of a query that always returns one row (COUNT, MAX, PRAGMA)."""
    async with db.execute(sql, params) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


class StoreUnavailable(Exception):
    """The store cannot answer; the gateway fails closed (503)."""


class StoreConflict(Exception):
    """A write would break a rule of the store (a duplicate name or secret, a missing token)."""


MIGRATIONS: tuple[str, ...] = (
    # 1: tokens, their change feed, and the access log
    """
    CREATE TABLE tokens (
        id              TEXT PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        type            TEXT NOT NULL,
        company         TEXT,
        digest          BLOB NOT NULL UNIQUE,
        previous_digest BLOB UNIQUE,
        previous_until  REAL,
        permissions     TEXT NOT NULL,
        not_before      REAL,
        expires         REAL,
        revoked_at      REAL,
        revoked_by      TEXT,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        rate_limit      TEXT,
        quota           TEXT,
        concurrency     INTEGER,
        source          TEXT NOT NULL,
        last_used_at    REAL
    );
    CREATE INDEX tokens_created ON tokens(created_at, id);
    CREATE TABLE token_changes (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        token_id   TEXT NOT NULL,
        digest     BLOB,
        changed_at REAL NOT NULL
    );
    CREATE TABLE request_log (
        id          INTEGER PRIMARY KEY,
        ts          TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        client_ip   TEXT,
        method      TEXT,
        path        TEXT,
        query       TEXT,
        route       TEXT,
        permission  TEXT,
        token_id    TEXT,
        token_name  TEXT,
        outcome     TEXT NOT NULL,
        status      INTEGER NOT NULL,
        duration_ms REAL,
        upstream_ms REAL,
        bytes_in    INTEGER,
        bytes_out   INTEGER
    );
    CREATE INDEX request_log_ts ON request_log(ts);
    CREATE INDEX request_log_token ON request_log(token_name, ts);
    """,
)

_TOKEN_COLUMNS = (
    "id, name, type, company, permissions, not_before, expires, revoked_at, created_at, rate_limit, quota, "
    "concurrency, source, last_used_at, updated_at"
)

LOG_FIELDS = (
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


_LOOKUP = f"SELECT {_TOKEN_COLUMNS}, digest = ?1, previous_until FROM tokens WHERE digest = ?1 OR previous_digest = ?1"
_log_row = operator.itemgetter(*LOG_FIELDS)
_INSERT_LOG = f"INSERT INTO request_log ({', '.join(LOG_FIELDS)}) VALUES ({', '.join('?' * len(LOG_FIELDS))})"


@functools.lru_cache(maxsize=4096)
def _permissions(text: str) -> frozenset[str]:
    # Most tokens share a handful of permission sets: one frozenset each, not one per cached token.
    return frozenset(map(sys.intern, orjson.loads(text)))


def _record(row: Sequence[Any], secret_expires: float | None = None) -> TokenRecord:
    return TokenRecord(
        id=row[0],
        name=row[1],
        type=sys.intern(row[2]),
        company=row[3],
        permissions=_permissions(row[4]),
        not_before=row[5],
        expires=row[6],
        revoked_at=row[7],
        created_at=row[8],
        rate_limit=parse_rate(row[9]) if row[9] else None,
        quota=parse_quota(row[10]) if row[10] else None,
        concurrency=row[11],
        source=sys.intern(row[12]),
        last_used_at=row[13],
        updated_at=row[14],
        secret_expires=secret_expires,
    )


# Multi-row INSERTs for the access-log writer, largest first: one statement for many rows costs ~20 % less a row
# than executemany, which steps, resets and rebinds per row. Two sizes keep SQLite's statement cache small.
_INSERT_LOG_ROWS = {
    size: f"INSERT INTO request_log ({', '.join(LOG_FIELDS)}) VALUES "
    + ", ".join([f"({', '.join('?' * len(LOG_FIELDS))})"] * size)
    for size in (64, 16)
}


def _insert_log_batch(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Runs in aiosqlite's thread: one IMMEDIATE transaction, rolled back on any error (as Store._write does)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        start, left = 0, len(rows)
        for size, sql in _INSERT_LOG_ROWS.items():
            while left >= size:
                conn.execute(sql, list(itertools.chain.from_iterable(rows[start : start + size])))
                start += size
                left -= size
        if left:
            conn.executemany(_INSERT_LOG, rows[start:])
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


STORE_MODE = 0o600  # secret digests and client addresses: the gateway's user only
STORE_FOLDER_MODE = 0o700


def _create_private(path: Path) -> None:
    """Create the store file (and its folder) readable by the gateway's user only, whatever the umask.

    An empty file is a valid new SQLite database. SQLite creates the -wal and -shm files with the mode of the
    database file, so they are 0600 too. An existing store keeps the mode its operator gave it.
    """
    if path.exists():
        return
    path.parent.mkdir(mode=STORE_FOLDER_MODE, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, STORE_MODE)
    except FileExistsError:
        return  # another worker or the CLI made it first
    os.fchmod(fd, STORE_MODE)  # the umask may have taken bits away, never added: this only states it
    os.close(fd)


class Store:
    """One aiosqlite connection (one thread); every method is a short transaction."""

    def __init__(self, path: Path, busy_timeout: float = 2.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        # (device, inode) of the file the connection has open. SQLite keeps reading a deleted or replaced file
        # through its open descriptor, so every use checks that the path still names that file.
        self._identity: tuple[int, int] | None = None
        self._opened = False

    # --- lifecycle ---------------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, busy_timeout: float = 2.0) -> Store:
        store = cls(path, busy_timeout)
        await store._connect()
        return store

    async def _connect(self) -> aiosqlite.Connection:
        if self._opened:
            # Reconnecting after a failure: a missing file must stay an outage (503), never become an empty store
            # in which every token is unknown. (Checked first also because a failed aiosqlite connect leaves its
            # thread to report back later, possibly to a closed loop.)
            if not self.path.is_file():
                raise sqlite3.OperationalError(f"unable to open the store: {self.path} is not a file")
            uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=rw"
            db = await aiosqlite.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None)
        else:
            _create_private(self.path)
            db = await aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            identity = _file_identity(self.path)
            if identity is None:
                raise sqlite3.OperationalError(f"{self.path} vanished while opening it")
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db
        self._identity = identity
        self._opened = True
        return db

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        version = await _scalar(db, "PRAGMA user_version")
        if version >= len(MIGRATIONS):
            return
        # IMMEDIATE takes the write lock, so workers starting together migrate once, one after the other.
        await db.execute("BEGIN IMMEDIATE")
        try:
            version = await _scalar(db, "PRAGMA user_version")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def _conn(self) -> aiosqlite.Connection:
        if self._db is not None and self._file_problem() is not None:
            await self._broken()  # and reconnect: the path may name a restored store by now
        if self._db is None:
            async with self._connect_lock:
                if self._db is None:
                    await self._connect()
                    problem = self._file_problem()
                    if problem is not None:
                        await self._broken()
                        raise sqlite3.OperationalError(problem)
        db = self._db
        if db is None:  # dropped by a concurrent failure
            raise sqlite3.OperationalError("the store connection was dropped")
        return db

    def _file_problem(self) -> str | None:
        """Why the open connection no longer reads the store at `path` (deleted, replaced, overwritten), if so.

        A stat and a 16-byte read: cheap next to a query, and only paid on cache misses and writes.
        """
        identity = _file_identity(self.path)
        if identity is None:
            return f"{self.path} is gone"
        if identity != self._identity:
            return f"{self.path} was replaced"
        try:
            header = _read_header(self.path, identity)
        except OSError as e:
            return f"cannot read {self.path}: {e.strerror}"
        if header != SQLITE_HEADER:
            return f"{self.path} is not an SQLite database (overwritten?)"
        return None

    async def _broken(self) -> None:
        """Drop a connection that failed, so the next call reconnects (the store may have come back)."""
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except Exception:
                pass

    # --- the hot path's one query ------------------------------------------------------------------------------

    async def lookup(self, digest: bytes) -> TokenRecord | None:
        """The token whose current (or, within its grace, previous) secret has this digest."""
        try:
            db = await self._conn()
            # One round trip to SQLite's thread (execute, fetch and close a cursor would be three): on a cache
            # miss the hops cost more CPU than the indexed query itself.
            rows = await db.execute_fetchall(_LOOKUP, (digest,))
        except Exception as e:  # whatever went wrong, the answer is "unavailable": fail closed
            await self._broken()
            raise StoreUnavailable(str(e)) from e
        if not rows:
            return None
        row = next(iter(rows))
        current, previous_until = row[-2], row[-1]
        return _record(row, None if current else (previous_until or 0.0))

    # --- change feed -------------------------------------------------------------------------------------------

    async def change_seq(self) -> int:
        db = await self._conn()
        seq = await _scalar(db, "SELECT COALESCE(MAX(seq), 0) FROM token_changes")
        return int(seq)

    async def changes_since(self, seq: int) -> tuple[int, list[bytes], bool]:
        """(newest seq, digests to evict, whether the feed was pruned past `seq` so everything must go)."""
        db = await self._conn()
        async with db.execute(
            "SELECT seq, digest FROM token_changes WHERE seq > ? ORDER BY seq", (seq,)
        ) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            return seq, [], False
        gap = rows[0][0] > seq + 1
        return rows[-1][0], [d for _, d in rows if d is not None], gap

    async def _changed(
        self, db: aiosqlite.Connection, token_id: str, digests: Iterable[bytes | None]
    ) -> None:
        now = time.time()
        await db.executemany(
            "INSERT INTO token_changes (token_id, digest, changed_at) VALUES (?, ?, ?)",
            [(token_id, d, now) for d in digests if d is not None] or [(token_id, None, now)],
        )

    async def prune_changes(self, older_than: float) -> None:
        db = await self._conn()
        await db.execute("DELETE FROM token_changes WHERE changed_at < ?", (older_than,))

    # --- administration ----------------------------------------------------------------------------------------

    async def _write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `fn(db)` in one IMMEDIATE transaction, rolled back on any error."""
        async with self._lock:
            db = await self._conn()
            try:
                await db.execute("BEGIN IMMEDIATE")
                result = await fn(db)
                await db.execute("COMMIT")
            except BaseException:
                # Whatever happened (a cancelled BEGIN that still ran in aiosqlite's thread, a failed COMMIT on a
                # full disk), no transaction may stay open: every later BEGIN on this connection would fail.
                # SQLite may have rolled back already, or never begun.
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await db.execute("ROLLBACK")
                raise
            return result

    async def create_token(
        self,
        *,
        name: str,
        digest: bytes,
        type_: str = "developer",
        company: str | None = None,
        permissions: Iterable[str],
        not_before: float | None = None,
        expires: float | None = None,
        rate_limit: Rate | None = None,
        quota: Quota | None = None,
        concurrency: int | None = None,
        source: str = "cli",
        now: float | None = None,
    ) -> TokenRecord:
        now = time.time() if now is None else now
        token_id = new_token_id()

        async def write(db: aiosqlite.Connection) -> None:
            try:
                await db.execute(
                    "INSERT INTO tokens (id, name, type, company, digest, permissions, not_before, expires, "
                    "created_at, updated_at, rate_limit, quota, concurrency, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        token_id,
                        name,
                        type_,
                        company,
                        digest,
                        orjson.dumps(sorted(set(permissions))).decode(),
                        not_before,
                        expires,
                        now,
                        now,
                        rate_limit.text if rate_limit else None,
                        quota.text if quota else None,
                        concurrency,
                        source,
                    ),
                )
            except sqlite3.IntegrityError as e:
                raise StoreConflict(_conflict_message(str(e), name)) from None
            await self._changed(db, token_id, [digest])

        await self._write(write)
        record = await self.get(token_id)
        assert record is not None
        return record

    async def get(self, name_or_id: str) -> TokenRecord | None:
        db = await self._conn()
        async with db.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
            (name_or_id,),
        ) as cur:
            row = await cur.fetchone()
        return _record(row) if row else None

    async def list_tokens(self, *, offset: int = 0, limit: int | None = None) -> list[TokenRecord]:
        db = await self._conn()
        async with db.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id LIMIT ? OFFSET ?",
            (-1 if limit is None else limit, offset),
        ) as cur:
            return [_record(row) for row in await cur.fetchall()]

    async def update_token(self, token_id: str, **fields: Any) -> TokenRecord:
        """Change name, permissions, not_before, expires, rate_limit, quota, concurrency, revoked_at."""
        allowed = {
            "name",
            "permissions",
            "not_before",
            "expires",
            "rate_limit",
            "quota",
            "concurrency",
            "revoked_at",
            "revoked_by",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
        values = dict(fields)
        if "permissions" in values:
            values["permissions"] = orjson.dumps(sorted(set(values["permissions"]))).decode()
        for k in ("rate_limit", "quota"):
            if k in values and values[k] is not None:
                values[k] = values[k].text
        values["updated_at"] = time.time()

        async def write(db: aiosqlite.Connection) -> None:
            digests = await self._digests(db, token_id)
            sets = ", ".join(f"{k} = ?" for k in values)
            try:
                cur = await db.execute(f"UPDATE tokens SET {sets} WHERE id = ?", (*values.values(), token_id))
            except sqlite3.IntegrityError as e:
                raise StoreConflict(_conflict_message(str(e), fields.get("name", ""))) from None
            if cur.rowcount == 0:
                raise StoreConflict(f"no token with id {token_id}")
            await self._changed(db, token_id, digests)

        await self._write(write)
        record = await self.get(token_id)
        assert record is not None
        return record

    async def rotate_token(self, token_id: str, new_digest: bytes, grace_until: float | None) -> TokenRecord:
        """Give the token a new secret; the old one keeps working until `grace_until` (None: not at all)."""

        async def write(db: aiosqlite.Connection) -> None:
            digests = await self._digests(db, token_id)
            if not digests:
                raise StoreConflict(f"no token with id {token_id}")
            try:
                await db.execute(
                    "UPDATE tokens SET previous_digest = CASE WHEN ?2 IS NULL THEN NULL ELSE digest END, "
                    "previous_until = ?2, digest = ?3, updated_at = ?4 WHERE id = ?1",
                    (token_id, grace_until, new_digest, time.time()),
                )
            except sqlite3.IntegrityError:
                raise StoreConflict("that secret is already used by another token") from None
            await self._changed(db, token_id, [*digests, new_digest])

        await self._write(write)
        record = await self.get(token_id)
        assert record is not None
        return record

    async def delete_token(self, token_id: str) -> None:
        async def write(db: aiosqlite.Connection) -> None:
            digests = await self._digests(db, token_id)
            cur = await db.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
            if cur.rowcount == 0:
                raise StoreConflict(f"no token with id {token_id}")
            await self._changed(db, token_id, digests)

        await self._write(write)

    @staticmethod
    async def _digests(db: aiosqlite.Connection, token_id: str) -> list[bytes]:
        async with db.execute("SELECT digest, previous_digest FROM tokens WHERE id = ?", (token_id,)) as cur:
            row = await cur.fetchone()
        return [d for d in (row or ()) if d is not None]

    async def record_last_used(self, used: dict[str, float]) -> None:
        """Batched last-use times (token id -> time); never one write per request."""
        if not used:
            return

        async def write(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "UPDATE tokens SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
                [(t, token_id) for token_id, t in used.items()],
            )

        await self._write(write)

    # --- seeding -----------------------------------------------------------------------------------------------

    async def seed(self, seeds: Sequence[TokenSeed], now: float | None = None) -> dict[str, int]:
        """Make the seeded tokens exactly what the config declares, in one transaction (all or nothing)."""
        now = time.time() if now is None else now
        counts = {"created": 0, "updated": 0, "revoked": 0, "unchanged": 0}

        async def write(db: aiosqlite.Connection) -> None:
            async with db.execute(
                "SELECT id, name, source, type, company, digest, permissions, not_before, expires, rate_limit, "
                "quota, concurrency, revoked_at, revoked_by FROM tokens"
            ) as cur:
                existing = {row[1]: row for row in await cur.fetchall()}
            declared = set()
            for seed in seeds:
                declared.add(seed.name)
                wanted = (
                    seed.type,
                    seed.company,
                    seed.digest,
                    orjson.dumps(sorted(set(seed.permissions))).decode(),
                    seed.not_before,
                    seed.expires,
                    seed.rate_limit.text if seed.rate_limit else None,
                    seed.quota.text if seed.quota else None,
                    seed.concurrency,
                )
                row = existing.get(seed.name)
                if row is None:
                    token_id = new_token_id()
                    try:
                        await db.execute(
                            "INSERT INTO tokens (id, name, type, company, digest, permissions, not_before, "
                            "expires, rate_limit, quota, concurrency, created_at, updated_at, source) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'seed')",
                            (token_id, seed.name, *wanted, now, now),
                        )
                    except sqlite3.IntegrityError as e:
                        raise StoreConflict(_conflict_message(str(e), seed.name)) from None
                    await self._changed(db, token_id, [seed.digest])
                    counts["created"] += 1
                    continue
                if row[2] != "seed":
                    raise StoreConflict(
                        f"token name {seed.name!r} belongs to a token made with the CLI; rename one of them"
                    )
                # A revocation by an admin sticks; one made by seeding is undone when the token is declared again.
                unrevoke = row[12] is not None and row[13] == "seed"
                if tuple(row[3:12]) == wanted and not unrevoke:
                    counts["unchanged"] += 1
                    continue
                try:
                    await db.execute(
                        "UPDATE tokens SET type = ?, company = ?, digest = ?, permissions = ?, not_before = ?, "
                        "expires = ?, rate_limit = ?, quota = ?, concurrency = ?, updated_at = ?, "
                        "revoked_at = CASE WHEN revoked_by = 'seed' THEN NULL ELSE revoked_at END, "
                        "revoked_by = CASE WHEN revoked_by = 'seed' THEN NULL ELSE revoked_by END, "
                        "previous_digest = CASE WHEN digest = ?3 THEN previous_digest ELSE NULL END "
                        "WHERE id = ?",
                        (*wanted, now, row[0]),
                    )
                except sqlite3.IntegrityError as e:
                    raise StoreConflict(_conflict_message(str(e), seed.name)) from None
                await self._changed(db, row[0], [row[5], seed.digest])
                counts["updated"] += 1
            for name, row in existing.items():
                if row[2] == "seed" and name not in declared and row[12] is None:
                    await db.execute(
                        "UPDATE tokens SET revoked_at = ?, revoked_by = 'seed', updated_at = ? WHERE id = ?",
                        (now, now, row[0]),
                    )
                    await self._changed(db, row[0], [row[5]])
                    counts["revoked"] += 1

        await self._write(write)
        return counts

    # --- access log --------------------------------------------------------------------------------------------

    async def insert_log(self, records: Sequence[dict[str, Any]]) -> None:
        """Access-log records in one transaction and one trip to SQLite's thread (BEGIN, insert and COMMIT through
        `_write` would be three): the writer inserts a batch every few milliseconds under load.

        A call cancelled while it waits still completes its transaction in that thread (committed or rolled
        back, never left open)."""
        try:
            rows = list(map(_log_row, records))
        except KeyError:
            rows = [tuple(r.get(f) for f in LOG_FIELDS) for r in records]
        async with self._lock:
            db = await self._conn()
            await db._execute(_insert_log_batch, db._conn, rows)  # type: ignore[no-untyped-call]

    async def last_log_id(self) -> int:
        db = await self._conn()
        last = await _scalar(db, "SELECT COALESCE(MAX(id), 0) FROM request_log")
        return int(last)

    async def search_log(
        self,
        *,
        token: str | None = None,
        status: tuple[int, int] | None = None,
        outcome: str | None = None,
        since: str | None = None,
        after_id: int = 0,
        up_to_id: int | None = None,
        limit: int = 50,
        newest: bool = True,
    ) -> list[dict[str, Any]]:
        """Access-log records matching every filter given, oldest first, each with its `id`.

        newest=True: the newest `limit` records (by time); newest=False: the first `limit` stored after `after_id`,
        which is how `gateway logs --follow` tails the log. `token` is a token name or id; `status` an inclusive
        range; `since` an ISO time as the records carry it.
        """
        where = ["id > ?"]
        args: list[Any] = [after_id]
        if up_to_id is not None:
            where.append("id <= ?")
            args.append(up_to_id)
        if token is not None:
            where.append("(token_name = ? OR token_id = ?)")
            args += [token, token]
        if status is not None:
            where.append("status BETWEEN ? AND ?")
            args += list(status)
        if outcome is not None:
            where.append("outcome = ?")
            args.append(outcome)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        order = "ts DESC, id DESC" if newest else "id"
        db = await self._conn()
        async with db.execute(
            f"SELECT id, {', '.join(LOG_FIELDS)} FROM request_log WHERE {' AND '.join(where)} "
            f"ORDER BY {order} LIMIT ?",
            (*args, limit),
        ) as cur:
            rows = await cur.fetchall()
        records = [dict(zip(("id", *LOG_FIELDS), row, strict=True)) for row in rows]
        if newest:
            records.reverse()
        return records

    async def prune_log(self, before_ts: str, batch: int = 1000) -> int:
        """Delete records older than `before_ts` in small transactions, so writers are never blocked for long."""
        total = 0
        while True:

            async def write(db: aiosqlite.Connection) -> int:
                cur = await db.execute(
                    "DELETE FROM request_log WHERE id IN (SELECT id FROM request_log WHERE ts < ? LIMIT ?)",
                    (before_ts, batch),
                )
                return int(cur.rowcount)

            n = await self._write(write)
            total += n
            if n < batch:
                return total
            await asyncio.sleep(0.05)

    # --- administration views (the CLI) ------------------------------------------------------------------------

    async def view(self, name_or_id: str) -> TokenView | None:
        """A token as administrators see it, by id or name (an id wins); never its digests."""
        db = await self._conn()
        async with db.execute(
            f"SELECT {_VIEW_COLUMNS} FROM tokens WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
            (name_or_id,),
        ) as cur:
            row = await cur.fetchone()
        return _view(row) if row else None

    async def list_views(
        self, *, status: str | None = None, now: float, offset: int = 0, limit: int | None = None
    ) -> tuple[int, list[TokenView]]:
        """(how many tokens have `status` at `now`, one page of them in creation order)."""
        # ?1 is now (unused without a status filter), ?2 the page size, ?3 the offset.
        where = f"WHERE {_STATUS_WHERE[status]}" if status else ""
        db = await self._conn()
        total = await _scalar(db, f"SELECT COUNT(*) FROM tokens {where}", (now,) if "?1" in where else ())
        async with db.execute(
            f"SELECT {_VIEW_COLUMNS} FROM tokens {where} ORDER BY created_at, id LIMIT ?2 OFFSET ?3",
            (now, -1 if limit is None else limit, offset),
        ) as cur:
            rows = await cur.fetchall()
        return total, [_view(row) for row in rows]


@dataclass(frozen=True, slots=True)
class TokenView:
    """What an administrator may see of a token: the record, who revoked it, and until when a rotated-out secret
    still works (None: no such secret). Never a secret or a digest."""

    record: TokenRecord
    revoked_by: str | None
    previous_secret_until: float | None


_VIEW_COLUMNS = f"{_TOKEN_COLUMNS}, revoked_by, CASE WHEN previous_digest IS NOT NULL THEN previous_until END"

# The SQL twin of TokenRecord.status, with ?1 = now.
_STATUS_WHERE = {
    "revoked": "revoked_at IS NOT NULL",
    "expired": "revoked_at IS NULL AND expires IS NOT NULL AND expires <= ?1",
    "not_yet_active": "revoked_at IS NULL AND (expires IS NULL OR expires > ?1) AND not_before > ?1",
    "active": "revoked_at IS NULL AND (expires IS NULL OR expires > ?1) "
    "AND (not_before IS NULL OR not_before <= ?1)",
}


def _view(row: Sequence[Any]) -> TokenView:
    return TokenView(_record(row[:-2]), row[-2], row[-1])


SQLITE_HEADER = b"SQLite format 3\x00"


# Descriptors used only to read database headers, one per file, never closed while the process lives: closing ANY
# descriptor of a file drops every POSIX lock this process holds on it, including SQLite's own, which lets another
# process reset the WAL under a connection and silently lose committed transactions.
_HEADER_FDS: dict[tuple[int, int], int] = {}


def _read_header(path: Path, identity: tuple[int, int]) -> bytes:
    fd = _HEADER_FDS.get(identity)
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            return b""  # replaced between the stat and the open; deliberately leaked rather than closed
        _HEADER_FDS[identity] = fd
    return os.pread(fd, 16, 0)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _conflict_message(error: str, name: str) -> str:
    if "tokens.name" in error:
        return f"a token named {name!r} already exists; choose another name"
    if "digest" in error:
        return "that secret is already used by another token"
    return error
