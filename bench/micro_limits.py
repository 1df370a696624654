"""Micro-benchmark of the local limits check: microseconds per admit, for the limits a token can carry.

Run from the repository root: .venv/bin/python -m bench.micro_limits   (no network, no gateway: just LocalLimiter.check, timed with timeit)
"""

from __future__ import annotations

import timeit

from gateway.config import Route, parse_quota, parse_rate
from gateway.limits_local import LocalLimiter
from gateway.vocabulary import TokenRecord

NUMBER = 200_000
START = 1_773_144_000.0  # 2026-03-10T12:00:00Z


def token(name: str, **limits) -> TokenRecord:
    return TokenRecord(
        f"tok_{name}", name, "developer", None, frozenset({"leads"}), None, None, None, 0.0, **limits
    )


def per_admit(label: str, record: TokenRecord, route: Route | None, step: float) -> float:
    """Steady state: the clock moves `step` per request, so the sliding log is full and every request admitted."""
    limiter = LocalLimiter()
    clock = [START]

    def one() -> None:
        clock[0] += step
        limiter.check(record, route, clock[0]).release()

    for _ in range(20_000):  # fill the logs first: the ring-overwrite path is the one that lasts
        one()
    best = min(timeit.repeat(one, number=NUMBER, repeat=5)) / NUMBER * 1e6
    print(f"{label:<52} {best:6.2f} µs per admit")
    return best


def main() -> None:
    route = Route("/v1/leads", True, None, "leads:read", parse_rate("100/second"), 0)
    rate = parse_rate("600/minute")
    per_admit("rate_limit 600/minute", token("a", rate_limit=rate), None, 0.1001)
    per_admit(
        "rate_limit + quota/day + concurrency",
        token("b", rate_limit=rate, quota=parse_quota("100000000/day"), concurrency=10),
        None,
        0.1001,
    )
    per_admit("rate_limit + route rate_limit", token("c", rate_limit=rate), route, 0.1001)

    limiter = LocalLimiter()
    refused = token("d", rate_limit=parse_rate("1/hour"))
    limiter.check(refused, None, START)
    took = min(timeit.repeat(lambda: limiter.check(refused, None, START + 1), number=NUMBER, repeat=5))
    print(f"{'refused (429, rate_limit 1/hour)':<52} {took / NUMBER * 1e6:6.2f} µs per admit")


if __name__ == "__main__":
    main()
