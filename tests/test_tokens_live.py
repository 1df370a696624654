"""Tokens managed with the CLI while the gateway serves: changes reach every worker within a second, the cache keeps
what did not change, rotation grace ends by itself, last use is written in batches, and a secret is printed once."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import signal
import sqlite3
import time
import zipfile

import aiohttp
import openpyxl

from gateway.vocabulary import digest_of
from tests.cli_helpers import cli_config, gateway_cli, gateway_process
from tests.conftest import READER, spawn_gateway, wait_until

WITHIN = 1.0  # seconds from the CLI's exit until every worker honours the change


async def fresh_round(url: str, target: str, n: int = 8) -> list[tuple[int, str]]:
    """`n` requests, each on a new connection so SO_REUSEPORT spreads them: (status, worker's request-id prefix)."""

    async def one() -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(url + target) as r:
            await r.read()
            return r.status, r.headers["X-Request-Id"][:12]

    return await asyncio.gather(*(one() for _ in range(n)))


async def every_worker_answers(url: str, target: str, status: int, workers: int = 2) -> bool:
    results = await fresh_round(url, target)
    return all(s == status for s, _ in results) and len({p for _, p in results}) == workers


async def honoured_within(url: str, target: str, status: int, since: float) -> float:
    """Poll until every worker answers `status`; fail unless that happens within WITHIN of `since`."""
    while True:
        if await every_worker_answers(url, target, status):
            return time.monotonic() - since
        if time.monotonic() - since > WITHIN:
            raise AssertionError(f"{target}: not every worker answers {status} within {WITHIN}s")
        await asyncio.sleep(0.02)


async def cli(*args: str):
    """The CLI as a separate process, as an operator runs it next to a serving gateway."""
    return await asyncio.to_thread(gateway_process, *args)


async def test_cli_changes_reach_every_worker_within_a_second(tmp_path, upstream, processes):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)
    config = ("--config", str(gw.config_path))
    created = (await cli("tokens", "create", "live", "-p", "leads:read,reports", "--json", *config)).json()
    secret = created["secret"]
    # Used through several connections, so both workers have it cached before it changes.
    await wait_until(lambda: every_worker_answers(gw.url, f"/v1/reports/x?auth_token={secret}", 200))
    await wait_until(lambda: every_worker_answers(gw.url, f"/v1/leads/search?auth_token={secret}", 200))
    took = {}

    edited = await cli("tokens", "edit", "live", "--remove", "reports", *config)
    assert edited.code == 0, edited.err
    took["edit"] = await honoured_within(gw.url, f"/v1/reports/x?auth_token={secret}", 403, edited.exited_at)
    assert {status for status, _ in await fresh_round(gw.url, f"/v1/leads/search?auth_token={secret}")} == {
        200
    }

    rotated = await cli("tokens", "rotate", "live", "--json", *config)
    new_secret = rotated.json()["secret"]
    took["rotate"] = await honoured_within(
        gw.url, f"/v1/leads/search?auth_token={secret}", 401, rotated.exited_at
    )
    assert {
        status for status, _ in await fresh_round(gw.url, f"/v1/leads/search?auth_token={new_secret}")
    } == {200}

    revoked = await cli("tokens", "revoke", "live", *config)
    assert revoked.code == 0, revoked.err
    took["revoke"] = await honoured_within(
        gw.url, f"/v1/leads/search?auth_token={new_secret}", 401, revoked.exited_at
    )

    doomed = (await cli("tokens", "create", "doomed", "-p", "leads:read", "--json", *config)).json()
    target = f"/v1/leads/search?auth_token={doomed['secret']}"
    await wait_until(lambda: every_worker_answers(gw.url, target, 200))
    deleted = await cli("tokens", "delete", "doomed", "--yes", *config)
    assert deleted.code == 0, deleted.err
    took["delete"] = await honoured_within(gw.url, target, 401, deleted.exited_at)
    # Stays refused, and the seeded tokens the CLI did not touch still work everywhere.
    assert {status for status, _ in await fresh_round(gw.url, target)} == {401}
    assert {status for status, _ in await fresh_round(gw.url, f"/v1/leads/search?auth_token={READER}")} == {
        200
    }
    print("change honoured by every worker after (s):", {k: round(v, 3) for k, v in took.items()})

    # Last use is flushed in batches (at the latest when a worker stops); show reports it.
    gw.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    shown = (await cli("tokens", "show", "live", "--json", *config)).json()
    assert shown["status"] == "revoked" and shown["last_used_at"] is not None


async def test_a_change_to_one_token_keeps_the_others_cached(start_gateway, tmp_path):
    gw = await start_gateway()
    config = str(cli_config(tmp_path))
    other = (
        await asyncio.to_thread(
            gateway_cli, "tokens", "create", "a", "-p", "leads", "--json", "--config", config
        )
    ).json()
    cache = gw.worker.cache
    for secret in (READER, other["secret"]):
        assert (await gw.get(f"/v1/leads/search?auth_token={secret}")).status == 200
    queries = cache.store_queries
    assert (await gw.get(f"/v1/leads/search?auth_token={READER}")).status == 200
    assert cache.store_queries == queries  # a hit

    revoked = await asyncio.to_thread(gateway_cli, "tokens", "revoke", "a", "--config", config)
    assert revoked.code == 0

    async def refused() -> bool:
        return (await gw.get(f"/v1/leads/search?auth_token={other['secret']}")).status == 401

    await wait_until(refused, timeout=WITHIN)
    queries = cache.store_queries
    assert (await gw.get(f"/v1/leads/search?auth_token={READER}")).status == 200
    assert cache.store_queries == queries, "the reader's cache entry was evicted by a change to another token"


async def test_rotation_grace_follows_the_gateway_clock(start_gateway, tmp_path):
    now = [time.time()]
    gw = await start_gateway(clock=lambda: now[0])
    config = str(cli_config(tmp_path))

    def run(*args):
        return asyncio.to_thread(gateway_cli, "tokens", *args, "--config", config)

    old = (await run("create", "rot", "-p", "leads", "--json")).json()["secret"]
    assert (await gw.get(f"/v1/leads/search?auth_token={old}")).status == 200
    new = (await run("rotate", "rot", "--grace", "1h", "--json")).json()["secret"]
    await gw.worker.cache.poll_changes()  # the worker has seen the rotation (rather than wait for its poll)
    assert (await gw.get(f"/v1/leads/search?auth_token={old}")).status == 200
    assert (await gw.get(f"/v1/leads/search?auth_token={new}")).status == 200
    now[0] += 3599
    assert (await gw.get(f"/v1/leads/search?auth_token={old}")).status == 200
    now[0] += 2  # the grace is over: nobody acted, the old secret stops
    assert (await gw.get(f"/v1/leads/search?auth_token={old}")).status == 401
    assert (await gw.get(f"/v1/leads/search?auth_token={new}")).status == 200
    await wait_until(
        lambda: (
            [r["outcome"] for r in gw.log_lines() if r["token_name"] == "rot"][-2:] == ["expired", "allowed"]
        )
    )

    # Without a grace the newest secret stops working as soon as the change feed is read.
    newest = (await run("rotate", "rot", "--json")).json()["secret"]

    async def stopped() -> bool:
        return (await gw.get(f"/v1/leads/search?auth_token={new}")).status == 401

    await wait_until(stopped, timeout=WITHIN)
    assert (await gw.get(f"/v1/leads/search?auth_token={newest}")).status == 200


async def test_rotation_grace_ends_by_itself_in_real_time(start_gateway, tmp_path):
    gw = await start_gateway()
    config = str(cli_config(tmp_path))
    old = (
        await asyncio.to_thread(
            gateway_cli, "tokens", "create", "rt", "-p", "leads", "--json", "--config", config
        )
    ).json()["secret"]
    assert (await gw.get(f"/v1/leads/search?auth_token={old}")).status == 200
    rotated = (
        await asyncio.to_thread(
            gateway_cli, "tokens", "rotate", "rt", "--grace", "1s", "--json", "--config", config
        )
    ).json()
    grace_ends = (await gw.worker.store.lookup(digest_of(old))).secret_expires
    seen: list[tuple[float, float, int]] = []

    async def old_stopped() -> bool:
        sent = time.time()
        status = (await gw.get(f"/v1/leads/search?auth_token={old}")).status
        seen.append((sent, time.time(), status))
        return status == 401

    await wait_until(old_stopped, timeout=5, interval=0.05)
    assert any(status == 200 for _, _, status in seen), "the old secret must keep working during its grace"
    for sent, done, status in seen:
        if done < grace_ends:
            assert status == 200, "stopped before the grace ended"
        if sent >= grace_ends:
            assert status == 401, "kept working after the grace ended"
    assert seen[-1][1] <= grace_ends + 0.5
    assert (await gw.get(f"/v1/leads/search?auth_token={rotated['secret']}")).status == 200


async def test_last_use_is_written_in_batches_never_per_request(start_gateway, tmp_path):
    now = [2_000_000_000.0]
    gw = await start_gateway(clock=lambda: now[0])

    def sql(statement: str) -> list[tuple]:
        # In a thread: the gateway shares this event loop and may be mid-transaction.
        with contextlib.closing(sqlite3.connect(tmp_path / "gateway.db", timeout=10)) as db:
            rows = (
                db.executescript(statement).fetchall()
                if ";" in statement
                else db.execute(statement).fetchall()
            )
            db.commit()
            return rows

    # Count every write of last_used_at, whoever makes it.
    await asyncio.to_thread(
        sql,
        "CREATE TABLE last_used_writes (token_id TEXT);"
        "CREATE TRIGGER count_last_used AFTER UPDATE OF last_used_at ON tokens "
        "BEGIN INSERT INTO last_used_writes VALUES (new.id); END;",
    )
    for i in range(40):
        now[0] += 1
        assert (await gw.get(f"/v1/leads/search?auth_token={READER}&i={i}")).status == 200
    last_used = "SELECT last_used_at FROM tokens WHERE name = 'reader'"
    writes = "SELECT COUNT(*) FROM last_used_writes"
    assert await asyncio.to_thread(sql, last_used) == [(None,)]
    await gw.worker.flush_last_used()
    assert await asyncio.to_thread(sql, last_used) == [(now[0],)]
    assert await asyncio.to_thread(sql, writes) == [(1,)]
    await gw.worker.flush_last_used()  # nothing new: nothing written
    assert await asyncio.to_thread(sql, writes) == [(1,)]
    shown = await asyncio.to_thread(
        gateway_cli, "tokens", "show", "reader", "--config", str(cli_config(tmp_path))
    )
    used = dt.datetime.fromtimestamp(now[0], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"last used    {used}" in shown.out


async def test_the_secret_appears_only_in_the_one_creation_output(start_gateway, tmp_path):
    gw = await start_gateway()
    config = str(cli_config(tmp_path))

    def run(*args):
        return asyncio.to_thread(gateway_cli, "tokens", *args, "--config", config)

    created = await run("create", "secretive", "-p", "leads", "--json")
    secret = created.json()["secret"]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert (await gw.get(f"/v1/leads/search?auth_token={secret}")).status == 200
    assert (await gw.get("/v1/leads/search", headers={"Authorization": f"Bearer {secret}"})).status == 200
    assert (await gw.post("/v1/leads/search", data={"auth_token": secret, "q": "1"})).status == 200
    assert (await gw.get(f"/v1/admin/x?auth_token={secret}")).status == 403
    outputs = [
        await run("list"),
        await run("list", "--json"),
        await run("show", "secretive"),
        await run("show", "secretive", "--json"),
        await run("edit", "secretive", "--grant", "reports", "--json"),
        await run("export", "-o", str(tmp_path / "t.csv")),
        await run("export", "-o", str(tmp_path / "t.xlsx")),
        await run("export", "-o", "-"),
        await run("revoke", "secretive"),
        await run("rotate", "reader"),  # refused (seeded): its error output too
    ]
    await gw.worker.stop()
    texts = [o.out + o.err for o in outputs]
    files = [p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".xlsx"]
    book = openpyxl.load_workbook(tmp_path / "t.xlsx")
    cells = [str(v) for row in book.active.iter_rows(values_only=True) for v in row]
    with zipfile.ZipFile(tmp_path / "t.xlsx") as z:
        files += [z.read(n) for n in z.namelist()]
    assert any(p.name == "access.jsonl" for p in tmp_path.iterdir())
    assert any(p.name.startswith("gateway.db") for p in tmp_path.iterdir())
    for text in [*texts, *cells]:
        assert secret not in text and digest not in text
    for data in files:
        assert secret.encode() not in data and digest.encode() not in data
    assert (created.out + created.err).count(secret) == 1
    assert gw.log_lines() and all(secret not in str(r) for r in gw.log_lines())
