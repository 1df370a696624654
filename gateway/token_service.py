"""The token service: every rule about tokens, written once, for every surface (CLI today; admin API and console next).

A surface parses its input into the values below, calls the service, and renders its answer or its typed error. The
errors name the field at fault (`name`, `permissions`, `company`, `expires`, ...), never a CLI option or a JSON path:
each surface says that field in its own words.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, ConfigError, check_token_permissions
from gateway.store import Store, StoreConflict, TokenView
from gateway.vocabulary import Quota, Rate, TokenRecord, digest_of, new_secret

# Names are typed in shells and opened in spreadsheets: no leading formula characters, no control characters, and
# nothing that looks like a token id (which `NAME|ID` arguments would find first).
_NAME = re.compile(r"[^\W_][^\x00-\x1f\x7f]{0,99}")


class TokenError(Exception):
    """A token operation refused; `field` is the input at fault, when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Invalid(TokenError):
    """The input breaks a rule whatever the store holds (a CLI usage error, an API 422)."""


class NotFound(TokenError):
    """No token has that name or id."""


class Refused(TokenError):
    """The store's state forbids it: a name taken, a seeded token, a revoked one, a permission not held."""


@dataclass(frozen=True, slots=True)
class NewToken:
    name: str
    permissions: Sequence[str]  # ["*"] for every section
    type: str = "developer"
    company: str | None = None
    not_before: float | None = None
    expires: float | None = None
    limits: dict[str, Any] = field(default_factory=dict)  # rate_limit, quota, concurrency: only those given


@dataclass(frozen=True, slots=True)
class Changes:
    """An edit. Absent keys in `validity` and `limits` stay as they are; a None value clears one."""

    rename: str | None = None
    grant: Sequence[str] = ()
    remove: Sequence[str] = ()
    all: bool = False  # replace the permissions with "*"
    validity: dict[str, float | None] = field(default_factory=dict)  # not_before, expires
    limits: dict[str, Rate | Quota | int | None] = field(default_factory=dict)

    def empty(self) -> bool:
        return self.rename is None and not (
            self.grant or self.remove or self.all or self.validity or self.limits
        )


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def printable(text: str) -> str:
    """Names and companies come from config files too: never let one send escape sequences to a terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def describe(view: TokenView, now: float) -> dict[str, Any]:
    """Everything an administrator may see of a token: never its secret, never a digest."""
    r = view.record
    return {
        "id": r.id,
        "name": r.name,
        "type": r.type,
        "company": r.company,
        "permissions": sorted(r.permissions),
        "status": r.status(now),
        "source": r.source,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
        "not_before": iso(r.not_before),
        "expires": iso(r.expires),
        "revoked_at": iso(r.revoked_at),
        "revoked_by": view.revoked_by,
        "previous_secret_until": iso(view.previous_secret_until),
        "rate_limit": r.rate_limit.text if r.rate_limit else None,
        "quota": r.quota.text if r.quota else None,
        "concurrency": r.concurrency,
        "last_used_at": iso(r.last_used_at),
    }


class TokenService:
    """The rules, over one store and the running config (its sections, type ceilings and seeded names)."""

    def __init__(self, store: Store, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    # --- reading ----------------------------------------------------------------------------------------------

    async def find(self, name_or_id: str) -> TokenView:
        view = await self.store.view(name_or_id)
        if view is None:
            what = "with id" if name_or_id.startswith("tok_") else "named"
            raise NotFound(f"no token {what} {name_or_id!r}")
        return view

    async def page(
        self, *, page: int, page_size: int, status: str | None = None
    ) -> tuple[int, list[TokenView]]:
        total, views = await self.store.list_views(
            status=status, now=self.clock(), offset=(page - 1) * page_size, limit=page_size
        )
        return total, list(views)

    async def everything(self) -> list[TokenView]:
        _, views = await self.store.list_views(now=self.clock())
        return list(views)

    # --- changes ----------------------------------------------------------------------------------------------

    async def create(self, new: NewToken) -> tuple[TokenView, str]:
        """A new token and its secret, which nothing can show again."""
        now = self.clock()
        self.check_name(new.name, "name")
        if not new.permissions:
            raise Invalid('give the permissions (e.g. leads:read), or "*" for every section', "permissions")
        if new.type == "external" and not new.company:
            raise Invalid("external tokens need a company", "company")
        if new.type != "external" and new.company:
            raise Invalid(f"only external tokens carry a company, this one is {new.type}", "company")
        if new.company is not None and (not new.company.strip() or not new.company.isprintable()):
            raise Invalid(f"expected a printable company name, got {printable(new.company)!r}", "company")
        self.check_permissions(new.permissions, "permissions", new.type, new.company)
        if new.expires is not None and new.expires <= now:
            raise Invalid(
                f"{iso(new.expires)} is already past; a token must be usable for a while", "expires"
            )
        check_window(new.not_before, new.expires)
        secret = new_secret()
        try:
            record = await self.store.create_token(
                name=new.name,
                digest=digest_of(secret),
                type_=new.type,
                company=new.company,
                permissions=list(new.permissions),
                not_before=new.not_before,
                expires=new.expires,
                source="cli",
                **new.limits,
            )
        except StoreConflict as e:
            raise Refused(str(e), "name") from None
        return await self.find(record.id), secret

    async def edit(self, name_or_id: str, changes: Changes) -> TokenView:
        """Rename, grant, remove, replace with "*", or change validity and limits. Type and company never change."""
        if changes.rename is not None:
            self.check_name(changes.rename, "rename")
        if changes.all and (changes.grant or changes.remove):
            raise Invalid('"*" replaces every permission: grant or remove nothing with it', "all")
        if both := set(changes.grant) & set(changes.remove):
            raise Invalid(f"{sorted(both)[0]!r} is both granted and removed", "remove")
        if changes.empty():
            raise Invalid(
                "nothing to change: give a new name, permissions to grant or remove, validity dates or limits"
            )
        record = (await self.find(name_or_id)).record
        not_seeded(record, "change")
        update: dict[str, Any] = {**changes.limits, **changes.validity}
        if changes.all or changes.grant:
            granted = ["*"] if changes.all else list(changes.grant)
            self.check_permissions(granted, "all" if changes.all else "grant", record.type, record.company)
        for p in changes.remove:
            if p not in record.permissions:
                held = ", ".join(sorted(record.permissions)) or "nothing"
                raise Refused(f"token {record.name!r} does not hold {p!r} (it holds {held})", "remove")
        if changes.all or changes.grant or changes.remove:
            if changes.all:
                permissions = {"*"}
            else:
                permissions = (set(record.permissions) | set(changes.grant)) - set(changes.remove)
            if not permissions:
                raise Refused(f"token {record.name!r} would hold no permission; revoke it instead", "remove")
            if permissions != record.permissions:
                update["permissions"] = permissions
        if changes.rename is not None and changes.rename != record.name:
            update["name"] = changes.rename
        check_window(update.get("not_before", record.not_before), update.get("expires", record.expires))
        if update:
            try:
                await self.store.update_token(record.id, **update)
            except StoreConflict as e:
                raise Refused(str(e), "rename") from None
        return await self.find(record.id)

    async def revoke(self, name_or_id: str, by: str = "admin") -> tuple[TokenView, bool]:
        """Revoke at once; False when it already was (the record keeps the first revocation)."""
        view = await self.find(name_or_id)
        if view.record.revoked_at is not None:
            return view, False
        await self.store.update_token(view.record.id, revoked_at=self.clock(), revoked_by=by)
        return await self.find(view.record.id), True

    async def rotate(self, name_or_id: str, grace: float = 0.0) -> tuple[TokenView, str]:
        """A new secret; the old one works `grace` seconds more (none: it stops at once)."""
        record = (await self.find(name_or_id)).record
        not_seeded(record, "rotate")
        if record.revoked_at is not None:
            raise Refused(f"token {record.name!r} is revoked; create a new token instead")
        secret = new_secret()
        now = self.clock()
        try:
            await self.store.rotate_token(record.id, digest_of(secret), now + grace if grace else None)
        except StoreConflict as e:
            raise Refused(str(e)) from None
        return await self.find(record.id), secret

    async def delete(self, name_or_id: str) -> TokenRecord:
        record = (await self.find(name_or_id)).record
        if record.source == "seed" and (record.revoked_at is None or record.name in self._seeded_names()):
            # Deleting a token the file still declares would let the next seeding create it afresh, active.
            not_seeded(record, "remove")
        try:
            await self.store.delete_token(record.id)
        except StoreConflict as e:
            raise Refused(str(e)) from None
        return record

    async def seed(self) -> dict[str, int]:
        """Apply the config's [[tokens]] (one transaction: a failure leaves the store as it was).

        A clash with the store (a name or secret a CLI-made token already has) is the config file's mistake.
        """
        try:
            return await self.store.seed(self.config.tokens)
        except StoreConflict as e:
            raise ConfigError(f"tokens: {e}") from None

    # --- the rules --------------------------------------------------------------------------------------------

    def check_name(self, name: str, field: str) -> None:
        if (
            not _NAME.fullmatch(name)
            or not name.isprintable()
            or name != name.strip()
            or name.startswith("tok_")
        ):
            raise Invalid(
                f"{printable(name)!r} is not a usable token name: 1 to 100 characters, starting with a letter or "
                "digit, no control characters, not starting with 'tok_'",
                field,
            )
        if name in self._seeded_names():
            raise Invalid(
                f"{name!r} is declared in the config file's [[tokens]]; choose another name "
                "(seeded tokens are managed in the config file)",
                field,
            )

    def check_permissions(
        self, permissions: Sequence[str], field: str, type_: str, company: str | None
    ) -> None:
        """Known sections only, within the type's ceiling (config's rule, shared with seeding)."""
        try:
            check_token_permissions(
                key=field,
                type_=type_,
                company=company,
                permissions=permissions,
                sections=self.config.sections,
                token_types=self.config.token_types,
            )
        except ConfigError as e:
            # config names the key first ("permissions: ..."); the surface names the field its own way.
            raise Invalid(str(e).removeprefix(f"{field}: "), field) from None

    def _seeded_names(self) -> set[str]:
        return {seed.name for seed in self.config.tokens}


def not_seeded(record: TokenRecord, action: str) -> None:
    # Seeding is declarative: a change made here would be undone at the next start or reload.
    if record.source == "seed":
        raise Refused(
            f"token {record.name!r} is seeded from the config file; {action} it there and reload (SIGHUP)"
        )


def check_window(not_before: float | None, expires: float | None) -> None:
    if not_before is not None and expires is not None and expires <= not_before:
        raise Invalid(f"{iso(expires)} is not after not_before {iso(not_before)}", "expires")
