"""`gateway logs`: an admin searches and follows the access log through the real command line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from gateway.accesslog import iso
from gateway.cli import main
from gateway.store import LOG_FIELDS
from tests.conftest import ADMIN, READER, wait_until, write_config


async def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`gateway ARGS` through the console script's entry point (in a thread: it runs its own event loop)."""

    def call() -> int:
        try:
            main(list(args))
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    code = await asyncio.to_thread(call)
    out, err = capsys.readouterr()
    return code, out, err


async def json_records(capsys, config: Path, *args: str) -> list[dict]:
    code, out, err = await run_cli(capsys, "logs", "--config", str(config), "--json", *args)
    assert (code, err) == (0, "")
    return [orjson.loads(line) for line in out.splitlines()]


async def test_filters_find_the_requests_an_admin_asks_for(start_gateway, upstream, tmp_path, capsys):
    now = [time.time() - 7200]
    gw = await start_gateway(clock=lambda: now[0])
    old = await gw.get(f"/v1/leads/search?auth_token={READER}")  # two hours ago
    now[0] = time.time()
    answers = [
        await gw.get(f"/v1/leads/search?auth_token={READER}&list_id=5"),
        await gw.post(f"/v1/leads/insert?auth_token={READER}"),
        await gw.get("/v1/leads/search"),
        await gw.get("/v1/leads/search?auth_token=nope"),
        await gw.get(f"/v1/reports/daily?auth_token={ADMIN}"),
    ]
    assert [r.status for r in answers] == [200, 403, 401, 401, 200]
    ids = [r.headers["X-Request-Id"] for r in answers]
    await wait_until(lambda: gw.worker.access_log.written_store == 6)
    config, _, _ = write_config(tmp_path, upstream.url)

    everything = await json_records(capsys, config)
    assert [r["request_id"] for r in everything] == [old.headers["X-Request-Id"], *ids]  # newest last
    assert all(tuple(r) == LOG_FIELDS for r in everything)
    file_records = [orjson.loads(line) for line in (tmp_path / "access.jsonl").read_bytes().splitlines()]
    assert everything == file_records  # the same records as the file

    def ids_of(records: list[dict]) -> list[str]:
        return [r["request_id"] for r in records]

    assert ids_of(await json_records(capsys, config, "--token", "reader")) == [
        old.headers["X-Request-Id"],
        *ids[:2],
    ]
    assert ids_of(await json_records(capsys, config, "--status", "403")) == [ids[1]]
    assert ids_of(await json_records(capsys, config, "--status", "4xx")) == ids[1:4]
    assert ids_of(await json_records(capsys, config, "--status", "2XX", "--token", "admin")) == [ids[4]]
    assert ids_of(await json_records(capsys, config, "--outcome", "missing")) == [ids[2]]
    assert ids_of(await json_records(capsys, config, "--since", "1h")) == ids
    assert len(await json_records(capsys, config, "--since", iso(time.time() - 3 * 3600))) == 6
    assert ids_of(await json_records(capsys, config, "--limit", "2")) == ids[3:]

    code, out, err = await run_cli(capsys, "logs", "--config", str(config), "--outcome", "forbidden")
    assert (code, err) == (0, "")
    line = out.strip()
    assert line.startswith(iso(now[0])[:13])  # the time comes first
    assert "  403  POST /v1/leads/insert  reader  forbidden  " in line and line.endswith("ms")
    assert READER not in out


async def test_bad_filters_are_usage_errors_naming_the_option(upstream, tmp_path, capsys):
    config, _, _ = write_config(tmp_path, upstream.url)
    for args, option in (
        (["--status", "4x"], "--status"),
        (["--status", "699"], "--status"),
        (["--since", "yesterday"], "--since"),
        (["--outcome", "bad"], "--outcome"),
        (["--limit", "-1"], "--limit"),
    ):
        code, _, err = await run_cli(capsys, "logs", "--config", str(config), *args)
        assert code == 2, args
        assert err.count("\n") == 1 and option in err, err


async def test_logs_without_a_store_says_so(upstream, tmp_path, capsys):
    config, _, _ = write_config(tmp_path, upstream.url)
    code, _, err = await run_cli(capsys, "logs", "--config", str(config))
    assert code == 1
    assert "no store at" in err and err.count("\n") == 1
    assert not (tmp_path / "gateway.db").exists()


async def test_follow_prints_new_requests_across_a_rotation_and_stops_on_ctrl_c(
    start_gateway, upstream, tmp_path
):
    gw = await start_gateway()
    first = await gw.get(f"/v1/leads/search?auth_token={READER}")
    await wait_until(lambda: gw.worker.access_log.written_store == 1)
    config, _, _ = write_config(tmp_path, upstream.url)
    follow = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "logs",
        "--follow",
        "--json",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def next_request_id(timeout: float) -> str:
            line = await asyncio.wait_for(follow.stdout.readline(), timeout)  # type: ignore[union-attr]
            assert line, "logs --follow ended"
            return orjson.loads(line)["request_id"]

        # It starts with the newest records, so it is surely following once it printed the first one.
        assert await next_request_id(10) == first.headers["X-Request-Id"]
        # The file is rotated away; --follow reads the store and does not notice.
        os.rename(tmp_path / "access.jsonl", tmp_path / "access.jsonl.1")
        gw.worker.access_log.reopen()
        after = await gw.post(f"/v1/leads/insert?auth_token={READER}")
        assert after.status == 403
        assert await next_request_id(5) == after.headers["X-Request-Id"]

        follow.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(follow.wait(), 5) == 0
        stderr = await follow.stderr.read()  # type: ignore[union-attr]
        assert b"Traceback" not in stderr and b"Error" not in stderr, stderr
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()
