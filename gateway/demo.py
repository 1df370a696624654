"""`make run`: the gateway with config/gateway.toml in front of the bundled echo upstream, in one command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from urllib.parse import urlsplit

from gateway import config as config_mod
from gateway import echo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"gateway: error: {e}", file=sys.stderr)
        sys.exit(2)
    up = urlsplit(cfg.upstream.url)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the gateway; it stops the echo on exit
        echo.run(up.hostname or "127.0.0.1", up.port or 80)
        os._exit(0)
    print(
        f"demo upstream (echo) on {cfg.upstream.url}, gateway on http://{cfg.server.listen}", file=sys.stderr
    )
    code = 0
    try:
        from gateway.cli import main as gateway_main

        gateway_main(["serve", *(["--config", args.config] if args.config else [])])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    sys.exit(code)


if __name__ == "__main__":
    main()
