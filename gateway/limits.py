"""Rate limits, quotas and concurrency caps: the interface the pipeline calls, and what every backend shares.

The pipeline asks `admit` only for requests whose token or route carries a limit, so unlimited traffic pays nothing.
Backends: limits_local.py (in process) and limits_redis.py (shared by every worker and gateway instance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.errors import REFUSALS, Reason, Refusal
from gateway.vocabulary import Route, TokenRecord

DAY = 86400.0


def _nothing() -> None:
    return None


@dataclass(slots=True)
class Admission:
    refusal: Refusal | None = (
        None  # REFUSALS[Reason.RATE_LIMITED] (429) or REFUSALS[Reason.UNAVAILABLE] (503, backend down)
    )
    headers: list[tuple[str, str]] = field(default_factory=list)  # RateLimit-* on success, Retry-After on 429
    release: Callable[[], None] = (
        _nothing  # frees a concurrency slot; called exactly once when the response ends
    )


class Limiter:
    """No limits: every request is admitted. The real backends subclass this."""

    async def admit(self, token: TokenRecord, route: Route | None, now: float) -> Admission:
        return Admission()

    async def close(self) -> None:
        return None


def needs_limits(token: TokenRecord, route: Route | None) -> bool:
    return bool(
        token.rate_limit is not None
        or token.quota is not None
        or token.concurrency is not None
        or (route is not None and route.rate_limit is not None)
    )


# --- shared by the backends ----------------------------------------------------------------------------------------


def quota_window(window: str, now: float) -> tuple[float, float]:
    """The UTC calendar day or month holding `now`, as (start, end) epoch seconds."""
    if window == "day":
        start = now - now % DAY
        return start, start + DAY
    t = datetime.fromtimestamp(now, UTC)
    first = datetime(t.year, t.month, 1, tzinfo=UTC)
    following = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
    return first.timestamp(), following.timestamp()


def route_key(route: Route) -> str:
    """Names a route's own limit: its pattern and methods, so two entries for one path keep separate counts."""
    methods = ",".join(sorted(route.methods)) if route.methods else "*"
    return f"{methods} {route.pattern}"


def whole_seconds(seconds: float) -> int:
    """Delta-seconds for Retry-After and RateLimit-Reset: rounded up, so a client that waits is never early."""
    return max(1, math.ceil(seconds - 1e-9))


def admitted(limit: int, remaining: int, reset: float) -> list[tuple[str, str]]:
    """RateLimit-* (draft-ietf-httpapi-ratelimit-headers) for the most restrictive limit of an allowed request.

    `reset`: seconds until the oldest request still counted stops counting (sliding windows) or the quota window ends.
    """
    return [
        ("RateLimit-Limit", str(limit)),
        ("RateLimit-Remaining", str(max(0, remaining))),
        ("RateLimit-Reset", str(whole_seconds(reset))),
    ]


def refused(wait: float, limit: int | None) -> Admission:
    """A 429: `wait` is how long until every refusing limit would admit this request again."""
    seconds = str(whole_seconds(wait))
    headers = [("Retry-After", seconds)]
    if limit is not None:
        headers += [
            ("RateLimit-Limit", str(limit)),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", seconds),
        ]
    return Admission(REFUSALS[Reason.RATE_LIMITED], headers)


def backend_down() -> Admission:
    """The limits backend cannot answer and on_backend_error = "deny": fail closed, like a store that is down."""
    return Admission(REFUSALS[Reason.UNAVAILABLE], [("Retry-After", "1")])
