"""The access decision: a pure function of (route, token record, now). No I/O; tested without a server."""

from __future__ import annotations

from gateway.errors import REFUSALS, Reason, Refusal
from gateway.vocabulary import Route, TokenRecord, grants

MISSING = REFUSALS[Reason.MISSING]
INVALID = REFUSALS[Reason.INVALID]
REVOKED = REFUSALS[Reason.REVOKED]
EXPIRED = REFUSALS[Reason.EXPIRED]
NOT_YET_ACTIVE = REFUSALS[Reason.NOT_YET_ACTIVE]
FORBIDDEN = REFUSALS[Reason.FORBIDDEN]


def decide(
    *,
    credential: str | None,
    token: TokenRecord | None,
    route: Route | None,
    allow_unmatched: bool,
    now: float,
) -> Refusal | None:
    """None when the request may pass; otherwise the refusal to answer with.

    Authentication comes before authorisation, so an anonymous caller learns nothing about which routes exist.
    """
    if not credential:
        return MISSING
    if token is None:
        return INVALID
    if token.revoked_at is not None and token.revoked_at <= now:
        return REVOKED
    if token.not_before is not None and now < token.not_before:
        return NOT_YET_ACTIVE
    if token.expires is not None and now >= token.expires:
        return EXPIRED
    if token.secret_expires is not None and now >= token.secret_expires:
        return EXPIRED  # a rotated-out secret whose grace has ended
    if route is None:
        return None if allow_unmatched else FORBIDDEN
    needed = route.permission
    for held in token.permissions:
        if grants(held, needed):
            return None
    return FORBIDDEN
