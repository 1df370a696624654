"""A slowloris in its own process: `python -m tests.security.slowloris PORT COUNT SECONDS`.

Opens COUNT connections that each send the start of a request head and then one more header byte every two
seconds; prints `ready` once all are open, then `open N` twice a second, until all are closed or SECONDS pass.
"""

from __future__ import annotations

import resource
import socket
import sys
import time

TRICKLE = 2.0


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main(port: int, count: int, seconds: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /v1/leads/search HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        socks.append(sock)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    open_socks = list(socks)
    # One byte per socket every TRICKLE seconds, in small batches: a steady drip, as a real slowloris sends.
    batches = max(1, int(TRICKLE / 0.025))
    batch = max(1, count // batches)
    next_report = 0.0
    while open_socks and time.monotonic() < deadline:
        for start in range(0, len(open_socks), batch):
            for sock in open_socks[start : start + batch]:
                try:
                    sock.send(b"X")
                except OSError:
                    pass
            time.sleep(0.025)
            if time.monotonic() >= next_report:
                open_socks = [s for s in open_socks if not _closed(s)]
                print(f"open {len(open_socks)}", flush=True)
                next_report = time.monotonic() + 0.5
                if not open_socks:
                    break
    print(f"open {len(open_socks)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
