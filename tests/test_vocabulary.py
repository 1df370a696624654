"""The decision is pure: loading it (and routing, and the token vocabulary) loads no I/O library."""

from __future__ import annotations

import subprocess
import sys

IO_MODULES = ("aiohttp", "aiosqlite", "sqlite3", "redis", "asyncio", "uvloop", "httptools", "socket")


def test_the_decision_routes_and_vocabulary_load_no_io_library() -> None:
    probe = (
        "import sys\n"
        "import gateway.policy, gateway.routes, gateway.vocabulary, gateway.errors, gateway.headers\n"
        f"loaded = sorted(m for m in {IO_MODULES!r} if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
