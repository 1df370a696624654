"""Refusals are values: one table maps each denial reason to its status and JSON body.

Nothing else in the gateway builds an error response; bodies are rendered once, at import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class MalformedRequest(ValueError):
    """The request cannot be read safely (bad encoding, bad path, unreadable body): 400."""


class CredentialConflict(ValueError):
    """Two different credential values in one request: 400."""


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # key of REFUSALS
    outcome: str  # what the access log records (the contract's vocabulary)
    status: int
    body: bytes
    www_authenticate: bool = False


def _refusal(
    reason: str, status: int, message: str, *, outcome: str | None = None, www_authenticate: bool = False
) -> Refusal:
    # Spaced exactly as the contract prints it, for clients that compare bytes.
    body = json.dumps({"success": False, "error": message}).encode()
    return Refusal(reason, outcome or reason, status, body, www_authenticate)


_INVALID = "Invalid or expired authentication token"

REFUSALS: dict[str, Refusal] = {
    r.reason: r
    for r in (
        _refusal("missing", 401, "Missing authentication token", www_authenticate=True),
        _refusal("invalid", 401, _INVALID, www_authenticate=True),
        _refusal("revoked", 401, _INVALID, www_authenticate=True),
        _refusal("expired", 401, _INVALID, www_authenticate=True),
        _refusal("not_yet_active", 401, _INVALID, www_authenticate=True),
        _refusal("forbidden", 403, "Insufficient permissions for this operation"),
        _refusal("conflict", 400, "Multiple authentication tokens supplied"),
        _refusal("malformed", 400, "Malformed request"),
        _refusal("too_large", 413, "Request body too large", outcome="malformed"),
        _refusal("rate_limited", 429, "Rate limit exceeded"),
        _refusal("upstream_error", 502, "Upstream unavailable"),
        _refusal("upstream_timeout", 504, "Upstream timed out", outcome="upstream_error"),
        _refusal("upstream_busy", 503, "Upstream unavailable", outcome="upstream_error"),
        _refusal("unavailable", 503, "Authentication service unavailable"),
        # A bug of ours, never a client's fault; the contract has no row for it. Logged as "unavailable" (the
        # gateway could not serve the request) with status 500, so a dashboard counting 5xx sees it.
        _refusal("internal", 500, "Internal error", outcome="unavailable"),
    )
}
