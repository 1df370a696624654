"""Issue 10's newcomer findings: start-up failures that hung, a store anyone could read, and a CLI that quietly made
a second store when run from another folder."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.cli_helpers import gateway_process
from tests.conftest import READER, free_port, wait_until

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
workers = {workers}

[admin]
listen = "127.0.0.1:{admin_port}"

[store]
database = "{database}"

[access_log]
path = "{access_log}"

[upstream]
url = "{upstream}"

[[routes]]
path = "/v1/leads/*"
permission = "leads:read"

[[tokens]]
name = "reader"
secret = "{reader}"
permissions = ["leads:read"]
"""


def write(
    folder: Path,
    *,
    port: int | None = None,
    admin_port: int | None = None,
    workers: int = 1,
    database: str = "data/gateway.db",
    access_log: str = "logs/access.jsonl",
    upstream: str = "http://127.0.0.1:9",
) -> tuple[Path, int, int]:
    port = port or free_port()
    admin_port = admin_port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(
        CONFIG.format(
            port=port,
            admin_port=admin_port,
            workers=workers,
            database=database,
            access_log=access_log,
            upstream=upstream,
            reader=READER,
        )
    )
    return path, port, admin_port


# The repository, so that a subprocess started in another folder imports this checkout's gateway.
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def serve(config: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the gateway was still running {timeout} s after a failed start-up") from None
    return proc.returncode, err, time.monotonic() - started


async def wait_allowed(proc: subprocess.Popen[str], port: int, secret: str) -> None:
    """Poll until the gateway serving on `port` lets `secret` through (it exits: the test fails with its stderr)."""
    async with aiohttp.ClientSession() as session:

        async def allowed() -> bool:
            if proc.poll() is not None:
                raise AssertionError(proc.communicate()[1])
            try:
                url = f"http://127.0.0.1:{port}/v1/leads/x?auth_token={secret}"
                async with session.get(url) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(allowed, timeout=20)


@pytest.fixture
def taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


# --- item 12: a failed start-up exits 1 at once, naming what failed --------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_admin_port_exits_1_at_once_with_one_line(tmp_path, taken_port, workers):
    config, _, _ = write(tmp_path, admin_port=taken_port, workers=workers)

    code, err, _ = finished(serve(config, tmp_path), timeout=15)

    assert code == 1
    assert f"cannot listen on 127.0.0.1:{taken_port}" in err
    assert "Traceback" not in err


def test_a_taken_admin_port_with_one_worker_does_not_wait_for_anything(tmp_path, taken_port):
    # The original hang: the store's aiosqlite threads were never closed on this path, so the process never ended.
    config, _, _ = write(tmp_path, admin_port=taken_port)
    proc = serve(config, tmp_path)

    code, err, _ = finished(proc, timeout=8)

    assert code == 1, err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_proxy_port_exits_1_at_once(tmp_path, taken_port, workers):
    config, _, _ = write(tmp_path, port=taken_port, workers=workers)

    code, err, _ = finished(serve(config, tmp_path), timeout=15)

    assert code == 1
    assert f"cannot listen on 127.0.0.1:{taken_port}" in err


def test_an_access_log_that_cannot_be_opened_exits_1_at_once(tmp_path):
    (tmp_path / "not-a-folder").write_text("a file")
    config, _, _ = write(tmp_path, access_log="not-a-folder/access.jsonl")

    code, err, _ = finished(serve(config, tmp_path), timeout=8)

    assert code == 1
    assert "cannot open the access log" in err


@pytest.mark.parametrize(
    ("proxy", "admin"),
    [
        ("127.0.0.1:{p}", "127.0.0.1:{p}"),
        ("0.0.0.0:{p}", "127.0.0.1:{p}"),
        ("127.0.0.1:{p}", "0.0.0.0:{p}"),
        ("[::]:{p}", "127.0.0.1:{p}"),
    ],
)
def test_config_check_refuses_an_admin_listener_on_the_proxy_port(tmp_path, proxy, admin):
    port = free_port()
    config, _, _ = write(tmp_path)
    text = config.read_text()
    text = text.replace('[server]\nlisten = "127.0.0.1:', f'[server]\nlisten = "{proxy.format(p=port)}" #', 1)
    text = text.replace('[admin]\nlisten = "127.0.0.1:', f'[admin]\nlisten = "{admin.format(p=port)}" #', 1)
    config.write_text(text)

    result = gateway_process("config", "check", "--config", str(config))

    assert result.code == 2
    assert "admin.listen" in result.err and "server.listen" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_config_check_accepts_separate_ports(tmp_path):
    config, _, _ = write(tmp_path)

    assert gateway_process("config", "check", "--config", str(config)).code == 0


# --- item 13: the store and the log are not world-readable -------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_store_its_wal_and_shm_are_0600_and_the_access_log_0640(tmp_path, upstream):
    old = os.umask(0o022)  # the usual umask: files would be 0644 without the gateway's own modes
    try:
        config, port, _ = write(tmp_path, upstream=upstream.url)
        proc = serve(config, tmp_path)
        try:
            await wait_allowed(proc, port, READER)
            data, logs = tmp_path / "data", tmp_path / "logs"
            await wait_until(
                lambda: (data / "gateway.db-wal").exists() and (data / "gateway.db-shm").exists()
            )
            assert mode(data / "gateway.db") == 0o600
            assert mode(data / "gateway.db-wal") == 0o600
            assert mode(data / "gateway.db-shm") == 0o600
            assert mode(data) == 0o700
            assert mode(logs / "access.jsonl") == 0o640
            assert mode(logs) == 0o750
        finally:
            proc.terminate()
            proc.communicate(timeout=15)
    finally:
        os.umask(old)


# --- item 14: relative paths are relative to the config file -------------------------------------------------------


async def test_the_cli_run_from_another_folder_uses_the_store_the_gateway_serves(tmp_path, upstream):
    conf, elsewhere, other = tmp_path / "conf", tmp_path / "elsewhere", tmp_path / "other"
    elsewhere.mkdir()
    other.mkdir()
    config, port, _ = write(conf, upstream=upstream.url)
    proc = serve(config, other)
    try:
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "tokens",
                "create",
                "late",
                "--all",
                "--json",
                "--config",
                str(config),
            ],
            cwd=elsewhere,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        secret = json.loads(created.stdout)["secret"]

        assert (conf / "data" / "gateway.db").exists()
        assert not (elsewhere / "data").exists()
        assert not (other / "data").exists()

        await wait_allowed(proc, port, secret)
        assert (conf / "logs" / "access.jsonl").exists()
        assert not (other / "logs").exists()
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_an_absolute_store_path_is_kept_as_written(tmp_path):
    database = tmp_path / "somewhere" / "store.db"
    config, _, _ = write(tmp_path / "conf", database=str(database))

    result = gateway_process("tokens", "list", "--json", "--config", str(config))

    assert result.code == 0, result.err
    assert database.exists()
