"""The access decision: a pure function of (route, token record, now). No I/O; tested without a server."""

from __future__ import annotations

from gateway.errors import REFUSALS, Refusal
from gateway.vocabulary import Route, TokenRecord, grants

MISSING = REFUSALS["missing"]
INVALID = REFUSALS["invalid"]
REVOKED = REFUSALS["revoked"]
EXPIRED = REFUSALS["expired"]
NOT_YET_ACTIVE = REFUSALS["not_yet_active"]
FORBIDDEN = REFUSALS["forbidden"]


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
