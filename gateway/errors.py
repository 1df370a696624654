"""Refusals are values: one table maps each denial reason to its status and JSON body.

Nothing else in the gateway builds an error response; bodies are rendered once, at import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum


class MalformedRequest(ValueError):
    """The request cannot be read safely (bad encoding, bad path, unreadable body): 400."""


class CredentialConflict(ValueError):
    """Two different credential values in one request: 400."""


class Reason(StrEnum):
    """Why the gateway answered a request itself: the key of REFUSALS (a typo is an AttributeError at import,
    not a KeyError at request time)."""

    MISSING = "missing"
    INVALID = "invalid"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_ACTIVE = "not_yet_active"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_BUSY = "upstream_busy"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    outcome: str  # what the access log records (the contract's vocabulary)
    status: int
    body: bytes
    www_authenticate: bool = False


def _refusal(
    reason: Reason, status: int, message: str, *, outcome: str | None = None, www_authenticate: bool = False
) -> Refusal:
    # Spaced exactly as the contract prints it, for clients that compare bytes.
    body = json.dumps({"success": False, "error": message}).encode()
    return Refusal(reason, outcome or reason.value, status, body, www_authenticate)


_INVALID = "Invalid or expired authentication token"

REFUSALS: dict[Reason, Refusal] = {
    r.reason: r
    for r in (
        _refusal(Reason.MISSING, 401, "Missing authentication token", www_authenticate=True),
        _refusal(Reason.INVALID, 401, _INVALID, www_authenticate=True),
        _refusal(Reason.REVOKED, 401, _INVALID, www_authenticate=True),
        _refusal(Reason.EXPIRED, 401, _INVALID, www_authenticate=True),
        _refusal(Reason.NOT_YET_ACTIVE, 401, _INVALID, www_authenticate=True),
        _refusal(Reason.FORBIDDEN, 403, "Insufficient permissions for this operation"),
        _refusal(Reason.CONFLICT, 400, "Multiple authentication tokens supplied"),
        _refusal(Reason.MALFORMED, 400, "Malformed request"),
        _refusal(Reason.TOO_LARGE, 413, "Request body too large", outcome="malformed"),
        _refusal(Reason.RATE_LIMITED, 429, "Rate limit exceeded"),
        _refusal(Reason.UPSTREAM_ERROR, 502, "Upstream unavailable"),
        _refusal(Reason.UPSTREAM_TIMEOUT, 504, "Upstream timed out", outcome="upstream_error"),
        _refusal(Reason.UPSTREAM_BUSY, 503, "Upstream unavailable", outcome="upstream_error"),
        _refusal(Reason.UNAVAILABLE, 503, "Authentication service unavailable"),
        # A bug of ours, never a client's fault; the contract has no row for it. Logged as "unavailable" (the
        # gateway could not serve the request) with status 500, so a dashboard counting 5xx sees it.
        _refusal(Reason.INTERNAL, 500, "Internal error", outcome="unavailable"),
    )
}
