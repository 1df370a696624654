"""Seeding is declarative: the config file's [[tokens]] are created or updated in place at start and on SIGHUP, a token
the file no longer declares is revoked, CLI-made tokens are never touched, and a failed seeding changes nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from gateway import config as config_mod
from gateway.server import Worker
from gateway.store import Store, StoreConflict
from gateway.vocabulary import digest_of
from tests.cli_helpers import cli_config, gateway_cli
from tests.conftest import ADMIN, BASE_CONFIG, CREATOR, READER, spawn_gateway, wait_until, write_config

READER_BLOCK = 'name = "reader"\nsecret = "reader-secret-0001"\npermissions = ["leads:read"]\n'
CREATOR_BLOCK = (
    '[[tokens]]\nname = "creator"\nsecret = "creator-secret-0002"\npermissions = ["leads:create"]\n'
)
NEWBIE = "newbie-secret-0008"
NEWBIE_BLOCK = f'\n[[tokens]]\nname = "newbie"\nsecret = "{NEWBIE}"\npermissions = ["leads:read"]\n'
NEW_ROUTE = '[[routes]]\npath = "/v1/new/*"\npermission = "leads:read"\n\n'


def changed(text: str) -> str:
    """The reader gains reports and a rate limit, the creator is gone, a newbie arrives, and a route is added."""
    text = text.replace(
        READER_BLOCK,
        'name = "reader"\nsecret = "reader-secret-0001"\npermissions = ["leads:read", "reports"]\n'
        'rate_limit = "600/minute"\n',
    )
    text = text.replace(CREATOR_BLOCK, "")
    text = text.replace("[[tokens]]", NEW_ROUTE + "[[tokens]]", 1)
    return text + NEWBIE_BLOCK


def configured(tmp_path, text: str) -> config_mod.Config:
    path, _, _ = write_config(tmp_path, "http://127.0.0.1:9", text=text)
    return config_mod.load(path)


def with_store(cfg: config_mod.Config, fn):
    async def run():
        store = await Store.open(cfg.store.database)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def snapshot(cfg) -> tuple:
    """Everything the store says about every token, plus the change feed's position."""

    async def take(store: Store):
        _, views = await store.list_views(now=time.time())
        return await store.change_seq(), views

    return with_store(cfg, take)


def test_seeding_creates_updates_in_place_and_revokes(tmp_path):
    v1 = configured(tmp_path, BASE_CONFIG)
    assert with_store(v1, lambda s: s.seed(v1.tokens))["created"] == 7
    first = snapshot(v1)
    # Idempotent: the same file again writes nothing, so no worker evicts anything.
    assert with_store(v1, lambda s: s.seed(v1.tokens)) == {
        "created": 0,
        "updated": 0,
        "revoked": 0,
        "unchanged": 7,
    }
    assert snapshot(v1) == first
    ids = {v.record.name: v.record.id for v in first[1]}

    v2 = configured(tmp_path, changed(BASE_CONFIG))
    assert with_store(v2, lambda s: s.seed(v2.tokens)) == {
        "created": 1,
        "updated": 1,
        "revoked": 1,
        "unchanged": 5,
    }
    reader = with_store(v2, lambda s: s.view("reader"))
    assert reader.record.id == ids["reader"]  # in place
    assert (
        reader.record.permissions == {"leads:read", "reports"}
        and reader.record.rate_limit.text == "600/minute"
    )
    creator = with_store(v2, lambda s: s.view("creator"))
    assert creator.record.id == ids["creator"] and creator.record.revoked_at is not None
    assert creator.revoked_by == "seed"
    assert with_store(v2, lambda s: s.view("newbie")).record.source == "seed"

    # Declared again: the creator comes back (a revocation by seeding is undone), the newbie goes.
    assert with_store(v1, lambda s: s.seed(v1.tokens)) == {
        "created": 0,
        "updated": 2,
        "revoked": 1,
        "unchanged": 5,
    }
    creator = with_store(v1, lambda s: s.view("creator"))
    assert creator.record.id == ids["creator"] and creator.record.revoked_at is None
    assert with_store(v1, lambda s: s.view("newbie")).revoked_by == "seed"

    # A new secret in the file: same token, the old secret stops.
    v3 = configured(tmp_path, BASE_CONFIG.replace('"reader-secret-0001"', '"reader-secret-new"'))
    with_store(v3, lambda s: s.seed(v3.tokens))
    assert with_store(v3, lambda s: s.lookup(digest_of(READER))) is None
    assert with_store(v3, lambda s: s.lookup(digest_of("reader-secret-new"))).id == ids["reader"]


def test_seeding_never_touches_cli_tokens_and_a_clash_changes_nothing(tmp_path):
    v1 = configured(tmp_path, BASE_CONFIG)
    with_store(v1, lambda s: s.seed(v1.tokens))
    cfg_file = str(v1.source)
    ops = gateway_cli("tokens", "create", "ops", "-p", "leads", "--json", "--config", cfg_file).json()
    made = with_store(v1, lambda s: s.view("ops"))
    v2 = configured(tmp_path, changed(BASE_CONFIG))
    with_store(v2, lambda s: s.seed(v2.tokens))  # does not declare ops
    assert with_store(v2, lambda s: s.view("ops")) == made
    before = snapshot(v2)

    # The file now claims the CLI's name, or its secret, while changing the reader too: all or nothing.
    clash_name = changed(BASE_CONFIG).replace(READER_BLOCK, READER_BLOCK.replace('"leads:read"', '"admin"'))
    clash_name += '\n[[tokens]]\nname = "ops"\nsecret = "ops-from-file"\npermissions = ["leads"]\n'
    clash_secret = (
        changed(BASE_CONFIG)
        + f'\n[[tokens]]\nname = "sneaky"\nsecret = "{ops["secret"]}"\npermissions = ["leads"]\n'
    )
    for text, message in ((clash_name, "made with the CLI"), (clash_secret, "already used")):
        bad = configured(tmp_path, text)
        with pytest.raises(StoreConflict, match=message):
            with_store(bad, lambda s, bad=bad: s.seed(bad.tokens))
        assert snapshot(bad) == before


async def test_an_admin_revocation_of_a_seeded_token_sticks_across_restarts(start_gateway, tmp_path):
    config = str(cli_config(tmp_path))
    first = await start_gateway()
    assert (await first.get(f"/v1/leads/search?auth_token={READER}")).status == 200
    revoked = await asyncio.to_thread(gateway_cli, "tokens", "revoke", "reader", "--config", config)
    assert revoked.code == 0
    await first.worker.stop()

    # Restarted with the same file, then with one that changes the reader: revoked all along.
    for text in (BASE_CONFIG, changed(BASE_CONFIG)):
        again = await start_gateway(text=text)
        assert (await again.get(f"/v1/leads/search?auth_token={READER}")).status == 401
        assert (await again.get(f"/v1/leads/search?auth_token={CREATOR}")).status in (401, 403)
        await again.worker.stop()
    shown = (
        await asyncio.to_thread(gateway_cli, "tokens", "show", "reader", "--json", "--config", config)
    ).json()
    assert shown["status"] == "revoked" and shown["revoked_by"] == "admin"
    assert shown["permissions"] == ["leads:read", "reports"]  # seeding still keeps it up to date


@pytest.mark.parametrize("workers", [1, 2])
def test_a_seeding_clash_at_start_is_a_config_error_and_changes_nothing(tmp_path, workers):
    v1 = configured(tmp_path, BASE_CONFIG)
    with_store(v1, lambda s: s.seed(v1.tokens))
    assert gateway_cli("tokens", "create", "ops", "-p", "leads", "--config", str(v1.source)).code == 0
    before = snapshot(v1)
    text = changed(BASE_CONFIG) + '\n[[tokens]]\nname = "ops"\nsecret = "x"\npermissions = ["leads"]\n'
    path, _, _ = write_config(tmp_path, "http://127.0.0.1:9", workers=workers, text=text)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: error: tokens:") and "'ops'" in last
    assert snapshot(v1) == before


async def test_a_refused_reload_keeps_routes_and_tokens(tmp_path, upstream):
    path, _, _ = write_config(tmp_path, upstream.url)
    worker = Worker(config_mod.load(path), admin=False)
    await worker.start()
    try:
        created = await asyncio.to_thread(
            gateway_cli, "tokens", "create", "ops", "-p", "leads", "--config", str(path)
        )
        assert created.code == 0
        router = worker.gateway.router
        reader_before = await worker.store.view("reader")
        seq = await worker.store.change_seq()
        for text in (
            changed(BASE_CONFIG) + '\n[[tokens]]\nname = "ops"\nsecret = "x"\npermissions = ["leads"]\n',
            changed(BASE_CONFIG) + "\n[[routes]]\npath = 'no-slash'\npermission = 'x'\n",
            None,
        ):
            if text is None:
                path.write_text("this is not TOML")
            else:
                write_config(tmp_path, upstream.url, text=text)
            await worker.reload()
            assert worker.gateway.router is router
            assert await worker.store.view("reader") == reader_before
            assert await worker.store.change_seq() == seq
        assert (await worker.store.view("ops")).record.revoked_at is None
    finally:
        await worker.stop()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> int:
    """One request on an open keep-alive connection; returns the status after reading the whole response."""
    writer.write(f"GET {target} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    assert headers.get("connection", "").lower() != "close"
    return int(lines[0].split(" ", 2)[1])


async def test_sighup_reseeds_and_reloads_routes_without_dropping_connections(tmp_path, upstream, processes):
    gw = await spawn_gateway(tmp_path, upstream.url, workers=2)
    processes.append(gw)
    config = str(gw.config_path)
    ops = await asyncio.to_thread(
        gateway_cli, "tokens", "create", "ops", "-p", "leads", "--json", "--config", config
    )
    reader_before = (
        await asyncio.to_thread(gateway_cli, "tokens", "show", "reader", "--json", "--config", config)
    ).json()

    async def statuses(target: str) -> set[int]:
        async def one() -> int:
            async with aiohttp.ClientSession() as s, s.get(gw.url + target) as r:
                return r.status

        return set(await asyncio.gather(*(one() for _ in range(8))))

    kept_reader, kept_writer = await asyncio.open_connection("127.0.0.1", gw.port)
    assert await _exchange(kept_reader, kept_writer, f"/v1/leads/search?auth_token={READER}") == 200
    assert await _exchange(kept_reader, kept_writer, f"/v1/new/thing?auth_token={READER}") == 403
    async with aiohttp.ClientSession() as s:
        in_flight = asyncio.ensure_future(s.get(f"{gw.url}/v1/leads/slow?delay=1.5&auth_token={ADMIN}"))
        await wait_until(lambda: any(r.path == "/v1/leads/slow" for r in upstream.received))

        gw.config_path.write_text(changed(gw.config_path.read_text()))
        gw.signal(signal.SIGHUP)

        async def reloaded_everywhere() -> bool:
            return await statuses(f"/v1/new/thing?auth_token={READER}") == {200}

        await wait_until(reloaded_everywhere, timeout=10)

        # The connection opened before the reload is still served, by a worker that has the new routes.
        async def kept_connection_reloaded() -> bool:
            return await _exchange(kept_reader, kept_writer, f"/v1/new/thing?auth_token={READER}") == 200

        await wait_until(kept_connection_reloaded, timeout=10)
        response = await in_flight
        assert response.status == 200 and (await response.json())["ok"] is True
    kept_writer.close()

    assert await statuses(f"/v1/reports/daily?auth_token={READER}") == {200}

    async def creator_refused() -> bool:
        return await statuses(f"/v1/leads/search?auth_token={CREATOR}") == {401}

    await wait_until(creator_refused, timeout=2)
    assert await statuses(f"/v1/leads/search?auth_token={NEWBIE}") == {200}
    assert await statuses(f"/v1/leads/search?auth_token={ops.json()['secret']}") == {200}

    def show(name: str) -> dict:
        return gateway_cli("tokens", "show", name, "--json", "--config", config).json()

    reader = await asyncio.to_thread(show, "reader")
    assert reader["id"] == reader_before["id"] and reader["permissions"] == ["leads:read", "reports"]
    creator = await asyncio.to_thread(show, "creator")
    assert creator["status"] == "revoked" and creator["revoked_by"] == "seed"
    assert (await asyncio.to_thread(show, "ops"))["status"] == "active"
