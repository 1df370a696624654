"""Rate limits, quotas and concurrency caps: the interface the pipeline calls.

The pipeline asks `admit` only for requests whose token or route carries a limit, so unlimited traffic pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import Route
from gateway.errors import Refusal
from gateway.store import TokenRecord


def _nothing() -> None:
    return None


@dataclass(slots=True)
class Admission:
    refusal: Refusal | None = (
        None  # REFUSALS["rate_limited"] (429) or REFUSALS["unavailable"] (503, backend down)
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
