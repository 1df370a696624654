"""The token vocabulary: what a token, a route, a permission and a limit are, and a token's status.

Pure: it imports nothing that does I/O, so the decision (policy), routing, limits, config and every store engine can
build on it, and a test can load the decision without aiohttp, a database driver or Redis.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass

TOKEN_TYPES = ("developer", "connector", "internal", "external")
STATUSES = ("active", "revoked", "expired", "not_yet_active")  # what TokenRecord.status says
SECRET_PREFIX = "gwt_"  # recognisable by secret scanners, like GitHub's "ghp_"


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `period` seconds (a rate limit such as "600/minute")."""

    count: int
    period: float
    text: str


@dataclass(frozen=True, slots=True)
class Quota:
    """`count` requests per calendar `window` ("day" or "month", UTC boundaries)."""

    count: int
    window: str
    text: str


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # without the trailing "/*" of a prefix route
    prefix: bool
    methods: frozenset[str] | None
    permission: str
    rate_limit: Rate | None
    index: int

    @property
    def pattern(self) -> str:
        return self.path.rstrip("/") + "/*" if self.prefix else self.path


@dataclass(frozen=True, slots=True)
class TokenSeed:
    name: str
    digest: bytes
    type: str
    company: str | None
    permissions: tuple[str, ...]
    not_before: float | None
    expires: float | None
    rate_limit: Rate | None
    quota: Quota | None
    concurrency: int | None


# --- permissions -------------------------------------------------------------------------------------------------


def section_of(permission: str) -> str:
    return permission.split(":", 1)[0]


def grants(held: str, needed: str) -> bool:
    """Whether permission `held` covers `needed`: "*" all, "leads" every leads action, "leads:read" only itself."""
    return held == "*" or held == needed or (":" not in held and section_of(needed) == held)


# --- tokens ------------------------------------------------------------------------------------------------------


def new_secret() -> str:
    """256 bits of randomness behind a recognisable prefix."""
    return SECRET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_token_id() -> str:
    return "tok_" + uuid.uuid4().hex[:20]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    type: str
    company: str | None
    permissions: frozenset[str]
    not_before: float | None
    expires: float | None
    revoked_at: float | None
    created_at: float
    rate_limit: Rate | None = None
    quota: Quota | None = None
    concurrency: int | None = None
    source: str = "cli"
    # Set when the record was found through a rotated-out secret: that secret stops working at this time.
    secret_expires: float | None = None
    last_used_at: float | None = None
    updated_at: float | None = None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        if self.not_before is not None and now < self.not_before:
            return "not_yet_active"
        return "active"
