"""Configuration: typed values, and errors that name the key and say how to fix it (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from gateway import config
from gateway.config import ConfigError
from tests.conftest import BASE_CONFIG, ROOT


def parse(text: str, env: dict[str, str] | None = None) -> config.Config:
    return config.parse(tomllib.loads(text), env=env or {})


def test_shipped_config_parses():
    cfg = config.load(ROOT / "config" / "gateway.toml", env={})
    assert cfg.server.listen == config.Listen("0.0.0.0", 8080)
    assert cfg.server.max_body == 10 * 1024 * 1024
    assert cfg.cache.ttl == 30.0
    assert cfg.access_log.retain == 30 * 86400
    assert {t.name for t in cfg.tokens} >= {"demo"}
    assert cfg.routes[0].methods == frozenset({"POST"})


def test_values_are_typed():
    cfg = parse(BASE_CONFIG)
    assert cfg.routes[2].prefix and cfg.routes[2].path == "/v1/leads"
    reader = cfg.tokens[0]
    assert reader.permissions == ("leads:read",) and len(reader.digest) == 32
    assert cfg.tokens[4].not_before == 32472144000.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nlisten = "0.0.0.0:8080"\nwokers = 2', "server.wokers: unknown key"),
        ('[server]\nworkers = "two"', "server.workers: expected a whole number"),
        ('[cache]\nttl = "30 parsecs"', "cache.ttl: expected a duration"),
        ('[server]\nmax_body = "ten"', "server.max_body: expected a size"),
        ('[[routes]]\npath = "/v1/x"', "routes[0].permission: missing"),
        ('[[routes]]\npath = "v1/x"\npermission = "x"', "routes[0].path: must start with"),
        ('[upstream]\nurl = "ftp://x"', "upstream.url"),
        ("[bogus]\nx = 1", "bogus: unknown key"),
        ('[credentials]\nforward = "no"', "credentials.forward: expected true or false"),
        (
            '[[routes]]\npath = "/a"\npermission = "a"\n[[tokens]]\nname = "t"\nsecret_env = "NOPE_UNSET"\npermissions = ["a"]',
            "tokens[0].secret_env: environment variable NOPE_UNSET is not set",
        ),
        (
            '[[routes]]\npath = "/a"\npermission = "a"\n[[tokens]]\nname = "t"\nsecret = "s"\npermissions = ["b"]',
            "tokens[0].permissions: unknown section 'b'",
        ),
        (
            '[[routes]]\npath = "/a"\npermission = "a"\n[[tokens]]\nname = "t"\nsecret = "s"\ntype = "external"\npermissions = ["a"]',
            "external tokens may hold at most",
        ),
        (
            '[[routes]]\npath = "/a"\npermission = "a"\n[[tokens]]\nname = "t"\nsecret = "s"\nexpires = 2027-01-01T00:00:00\npermissions = ["a"]',
            "tokens[0].expires: the datetime 2027-01-01T00:00:00 needs a UTC offset",
        ),
    ],
)
def test_errors_name_the_key(text, message):
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        parse(text)


def test_secret_env_is_read_from_the_environment():
    text = '[[routes]]\npath = "/a"\npermission = "a"\n[[tokens]]\nname = "t"\nsecret_env = "T"\npermissions = ["a"]'
    import hashlib

    assert parse(text, env={"T": "s3cret"}).tokens[0].digest == hashlib.sha256(b"s3cret").digest()


def test_include_reads_tokens_from_another_file(tmp_path):
    (tmp_path / "tokens.toml").write_text('[[tokens]]\nname = "inc"\nsecret = "x"\npermissions = ["a"]\n')
    (tmp_path / "gw.toml").write_text(
        'include = ["tokens.toml"]\n[[routes]]\npath = "/a"\npermission = "a"\n'
    )
    cfg = config.load(tmp_path / "gw.toml", env={})
    assert [t.name for t in cfg.tokens] == ["inc"]


def test_grants():
    assert config.grants("*", "leads:create")
    assert config.grants("leads", "leads:create")
    assert config.grants("leads:create", "leads:create")
    assert not config.grants("leads:read", "leads:create")
    assert not config.grants("leads:read", "leads")
    assert not config.grants("lead", "leads:create")


def run_cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_config_check_ok_and_bad(tmp_path):
    ok = run_cli("config", "check", "--config", str(ROOT / "config" / "gateway.toml"))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "0.0.0.0:8080"\nmax_bodyy = 1\n')
    result = run_cli("config", "check", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "server.max_bodyy: unknown key" in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cache]\nttl = "forever"\n')
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "cache.ttl" in result.stderr


@pytest.mark.parametrize("path", ["/v1/things:batch", "/v1//leads", "/v1/./leads", "/v1/le ads", "/v1/%41"])
def test_route_paths_must_be_plain_and_normalised(path):
    with pytest.raises(ConfigError, match=r"routes\[0\]\.path"):
        parse(f'[[routes]]\npath = "{path}"\npermission = "a"')
