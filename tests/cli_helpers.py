"""Running `gateway ...` the way operators do: through the real entry point, in this process or as a subprocess."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.cli import main
from tests.conftest import write_config


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    exited_at: float  # time.monotonic() when the command returned

    def json(self) -> Any:
        assert self.code == 0, self.err
        return orjson.loads(self.out)


def gateway_cli(*args: str) -> CliResult:
    """`gateway ARGS` through gateway.cli.main in this process (not inside a running event loop)."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code
    return CliResult(int(code or 0), out.getvalue(), err.getvalue(), time.monotonic())


def gateway_process(*args: str) -> CliResult:
    """`python -m gateway ARGS` as a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )
    return CliResult(done.returncode, done.stdout, done.stderr, time.monotonic())


def cli_config(tmp: Path, upstream_url: str = "http://127.0.0.1:9", extra: str = "") -> Path:
    """A config file naming tmp/gateway.db: the store the in-process gateway fixtures use too."""
    path, _, _ = write_config(tmp, upstream_url, extra)
    return path
