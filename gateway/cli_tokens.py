"""`gateway tokens ...`: create, list, show, edit, revoke, rotate, delete and export the tokens in the store.

A secret is printed once, by create or rotate, and never kept: the store holds its SHA-256 digest. Every write lands
in the store's change feed, which running gateways follow, so a change reaches every worker within a second.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from gateway import config as config_mod
from gateway.cli import Failure, config_option, load_config
from gateway.config import Config, ConfigError
from gateway.store import Store, StoreConflict, TokenView
from gateway.vocabulary import STATUSES, TOKEN_TYPES, TokenRecord, digest_of, new_secret

T = TypeVar("T")

PAGE_SIZES = (10, 100)
EXPORT_COLUMNS = (
    "id",
    "name",
    "type",
    "company",
    "permissions",
    "status",
    "created",
    "not_before",
    "expires",
    "last_used",
)
WHEN_HELP = "an ISO-8601 date or time (no offset = UTC), or a duration from now such as 30d or 12h"
# Names are typed in shells and opened in spreadsheets: no leading formula characters, no control characters, and
# nothing that looks like a token id (which `NAME|ID` arguments would find first).
_NAME = re.compile(r"[^\W_][^\x00-\x1f\x7f]{0,99}")


# --- plumbing ----------------------------------------------------------------------------------------------------


def _run(cfg: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` against the configured store; store trouble is a runtime failure (exit 1)."""

    async def run() -> T:
        try:
            # The CLI can afford to wait for a busy gateway longer than a request can.
            store = await Store.open(cfg.store.database, max(cfg.store.busy_timeout, 5.0))
        except (sqlite3.Error, OSError) as e:
            raise Failure(f"cannot open the store {cfg.store.database}: {e}") from None
        try:
            return await work(store)
        except sqlite3.Error as e:
            raise Failure(f"the store {cfg.store.database} failed: {e}") from None
        finally:
            await store.close()

    return asyncio.run(run())


def _usage(option: str, problem: str) -> click.UsageError:
    return click.UsageError(f"{option}: {problem}")


def _config_value(parse: Callable[[Any, str], T], value: Any, option: str) -> T:
    try:
        return parse(value, option)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


async def _find(store: Store, name_or_id: str) -> TokenView:
    view = await store.view(name_or_id)
    if view is None:
        what = "with id" if name_or_id.startswith("tok_") else "named"
        raise Failure(f"no token {what} {name_or_id!r}; 'gateway tokens list' shows them all")
    return view


def _not_seeded(record: TokenRecord, action: str) -> None:
    # Seeding is declarative: a change made here would be undone at the next start or reload.
    if record.source == "seed":
        raise Failure(
            f"token {record.name!r} is seeded from the config file; {action} it there and reload (SIGHUP)"
        )


def _check_name(name: str, option: str, cfg: Config) -> None:
    if not _NAME.fullmatch(name) or not name.isprintable() or name != name.strip() or name.startswith("tok_"):
        raise _usage(
            option,
            f"{_printable(name)!r} is not a usable token name: 1 to 100 characters, starting with a letter or "
            "digit, no control characters, not starting with 'tok_'",
        )
    if name in {seed.name for seed in cfg.tokens}:
        raise _usage(
            option,
            f"{name!r} is declared in the config file's [[tokens]]; choose another name "
            "(seeded tokens are managed in the config file)",
        )


def _permissions(values: Iterable[str], option: str) -> list[str]:
    """`--grant a,b --grant c` -> ["a", "b", "c"], each checked for its form."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                out.append(_config_value(config_mod.parse_permission, part.strip(), option))
    return list(dict.fromkeys(out))


def _check_permissions(
    permissions: Sequence[str], option: str, cfg: Config, type_: str, company: str | None
) -> None:
    try:
        config_mod.check_token_permissions(
            key=option,
            type_=type_,
            company=company,
            permissions=permissions,
            sections=cfg.sections,
            token_types=cfg.token_types,
        )
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def parse_when(value: str, option: str, now: float) -> float | None:
    """WHEN: an ISO-8601 date or datetime (naive = UTC), a duration from now ("30d"), "now", or "never" (None)."""
    text = value.strip()
    if text.lower() in ("never", "none"):
        return None
    if text.lower() == "now":
        return now
    try:
        return now + config_mod.parse_duration(text, option)
    except ConfigError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _usage(option, f"expected {WHEN_HELP}, got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _limits(rate_limit: str | None, quota: str | None, concurrency: str | None) -> dict[str, Any]:
    """The limit options given, parsed; "none" clears one."""
    out: dict[str, Any] = {}
    if rate_limit is not None:
        out["rate_limit"] = (
            None if _none(rate_limit) else _config_value(config_mod.parse_rate, rate_limit, "--rate-limit")
        )
    if quota is not None:
        out["quota"] = None if _none(quota) else _config_value(config_mod.parse_quota, quota, "--quota")
    if concurrency is not None:
        if _none(concurrency):
            out["concurrency"] = None
        elif concurrency.strip().isdigit() and int(concurrency) >= 1:
            out["concurrency"] = int(concurrency)
        else:
            raise _usage(
                "--concurrency", f"expected a whole number of at least 1, or none, got {concurrency!r}"
            )
    return out


def _none(value: str) -> bool:
    return value.strip().lower() in ("none", "off")


def _check_window(not_before: float | None, expires: float | None) -> None:
    if not_before is not None and expires is not None and expires <= not_before:
        raise _usage("--expires", f"{_iso(expires)} is not after --not-before {_iso(not_before)}")


# --- output ------------------------------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _printable(text: str) -> str:
    """Names and companies come from config files too: never let one send escape sequences to a terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _describe(view: TokenView, now: float) -> dict[str, Any]:
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
        "created_at": _iso(r.created_at),
        "updated_at": _iso(r.updated_at),
        "not_before": _iso(r.not_before),
        "expires": _iso(r.expires),
        "revoked_at": _iso(r.revoked_at),
        "revoked_by": view.revoked_by,
        "previous_secret_until": _iso(view.previous_secret_until),
        "rate_limit": r.rate_limit.text if r.rate_limit else None,
        "quota": r.quota.text if r.quota else None,
        "concurrency": r.concurrency,
        "last_used_at": _iso(r.last_used_at),
    }


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _details(described: dict[str, Any]) -> str:
    d = described
    previous = d["previous_secret_until"]
    rows = [
        ("id", d["id"]),
        ("name", _printable(d["name"])),
        ("type", d["type"]),
        ("company", _printable(d["company"] or "-")),
        ("permissions", ", ".join(d["permissions"]) or "(none)"),
        ("status", d["status"]),
        ("source", "config file" if d["source"] == "seed" else d["source"]),
        ("created", d["created_at"]),
        ("updated", d["updated_at"] or "-"),
        ("not before", d["not_before"] or "-"),
        ("expires", d["expires"] or "never"),
        ("revoked", f"{d['revoked_at']} by {d['revoked_by'] or '?'}" if d["revoked_at"] else "-"),
        ("old secret", f"works until {previous}" if previous else "-"),
        ("rate limit", d["rate_limit"] or "-"),
        ("quota", d["quota"] or "-"),
        ("concurrency", str(d["concurrency"]) if d["concurrency"] is not None else "-"),
        ("last used", d["last_used_at"] or "never"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# --- the commands ------------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def tokens() -> None:
    """Create, list, show, edit, revoke, rotate, delete and export tokens.

    Changes reach a running gateway, in every worker, within a second. Secrets are shown once, when a token is
    created or rotated; afterwards no command can show them.

    \b
    Example:
      gateway tokens create reporting --permissions reports,leads:read --expires 90d
    """


@tokens.command(short_help="Create a token; its secret is printed once.")
@click.argument("name")
@click.option(
    "--permissions",
    "-p",
    "permission_args",
    multiple=True,
    metavar="P[,P...]",
    help='Sections ("leads") or section:action ("leads:read"); comma-separated or repeated.',
)
@click.option("--all", "all_", is_flag=True, help='Every section ("Check All"); stores "*".')
@click.option(
    "--type",
    "type_",
    type=click.Choice(TOKEN_TYPES),
    default="developer",
    show_default=True,
    help="connector and external tokens are limited by [token_types.T] permissions.",
)
@click.option(
    "--company", metavar="C", help="The company an external token belongs to (required for external)."
)
@click.option("--not-before", metavar="WHEN", help=f"Activation time: {WHEN_HELP}.")
@click.option("--expires", metavar="WHEN", help=f"Expiry: {WHEN_HELP}.")
@click.option("--rate-limit", metavar="N/UNIT", help="e.g. 60/minute (per second, minute or hour).")
@click.option("--quota", metavar="N/UNIT", help="e.g. 10000/day (per day or month, UTC).")
@click.option("--concurrency", metavar="N", help="Requests in flight at once.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the secret is in its 'secret' field).")
@config_option
def create(
    name: str,
    permission_args: tuple[str, ...],
    all_: bool,
    type_: str,
    company: str | None,
    not_before: str | None,
    expires: str | None,
    rate_limit: str | None,
    quota: str | None,
    concurrency: str | None,
    as_json: bool,
    config_path: str | None,
) -> None:
    """Create a token and print its secret, once.

    \b
    Examples:
      gateway tokens create reporting --permissions reports,leads:read --expires 90d
      gateway tokens create acme-cases --type external --company Acme --permissions cases:history --json
      gateway tokens create ops --all --type internal --rate-limit 600/minute
    """
    cfg = load_config(config_path, secrets=False)
    now = time.time()
    _check_name(name, "NAME", cfg)
    if all_ and permission_args:
        raise _usage("--all", "give either --permissions or --all, not both")
    permissions = ["*"] if all_ else _permissions(permission_args, "--permissions")
    if not permissions:
        raise _usage("--permissions", 'give the permissions (e.g. --permissions leads:read) or --all for "*"')
    if type_ == "external" and not company:
        raise _usage("--company", "external tokens need a company (--company NAME)")
    if type_ != "external" and company:
        raise _usage("--company", f"only external tokens carry a company, this one is {type_}")
    if company is not None and (not company.strip() or not company.isprintable()):
        raise _usage("--company", f"expected a printable company name, got {_printable(company)!r}")
    _check_permissions(permissions, "--permissions", cfg, type_, company)
    starts = parse_when(not_before, "--not-before", now) if not_before else None
    ends = parse_when(expires, "--expires", now) if expires else None
    if ends is not None and ends <= now:
        raise _usage("--expires", f"{_iso(ends)} is already past; a token must be usable for a while")
    _check_window(starts, ends)
    limits = _limits(rate_limit, quota, concurrency)
    secret = new_secret()

    async def work(store: Store) -> TokenView:
        try:
            record = await store.create_token(
                name=name,
                digest=digest_of(secret),
                type_=type_,
                company=company,
                permissions=permissions,
                not_before=starts,
                expires=ends,
                source="cli",
                **limits,
            )
        except StoreConflict as e:
            raise Failure(f"NAME: {e}") from None
        return await _find(store, record.id)

    view = _run(cfg, work)
    described = _describe(view, now)
    if as_json:
        _echo_json({**described, "secret": secret})
        return
    click.echo(f"Created token {_printable(name)!r} ({view.record.id}).")
    click.echo(_details(described))
    click.echo("\nIts secret, shown only this once (store it now; it cannot be shown again):")
    click.echo(secret)


@tokens.command("list", short_help="List tokens in creation order, a page at a time.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Page number.")
@click.option(
    "--page-size",
    type=click.IntRange(*PAGE_SIZES),
    default=PAGE_SIZES[0],
    show_default=True,
    help="Tokens per page, 10 to 100.",
)
@click.option("--status", type=click.Choice(STATUSES), help="Only tokens with this status.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def list_(page: int, page_size: int, status: str | None, as_json: bool, config_path: str | None) -> None:
    """List tokens in creation order, a page at a time.

    \b
    Examples:
      gateway tokens list
      gateway tokens list --status revoked --page 2 --page-size 50
    """
    cfg = load_config(config_path, secrets=False)
    now = time.time()
    total, views = _run(
        cfg,
        lambda store: store.list_views(
            status=status, now=now, offset=(page - 1) * page_size, limit=page_size
        ),
    )
    pages = max(1, -(-total // page_size))
    if as_json:
        _echo_json(
            {
                "page": page,
                "page_size": page_size,
                "pages": pages,
                "total": total,
                "status": status,
                "tokens": [_describe(v, now) for v in views],
            }
        )
        return
    kind = f"{status.replace('_', ' ')} tokens" if status else "tokens"
    if not views:
        if total:
            click.echo(
                f"No {kind} on page {page}: there {'is 1 page' if pages == 1 else f'are {pages} pages'}."
            )
        else:
            click.echo(f"No {kind}.")
        return
    rows = [
        [
            v.record.id,
            _printable(v.record.name),
            v.record.type,
            v.record.status(now),
            ", ".join(sorted(v.record.permissions)),
            _iso(v.record.created_at) or "",
            _iso(v.record.expires) or "never",
            _iso(v.record.last_used_at) or "never",
        ]
        for v in views
    ]
    click.echo(
        _table(["ID", "NAME", "TYPE", "STATUS", "PERMISSIONS", "CREATED", "EXPIRES", "LAST USED"], rows)
    )
    first = (page - 1) * page_size + 1
    click.echo(f"\n{kind.capitalize()} {first}-{first + len(views) - 1} of {total} (page {page} of {pages}).")


@tokens.command(short_help="Show a token (never its secret), with its last use.")
@click.argument("token", metavar="NAME|ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def show(token: str, as_json: bool, config_path: str | None) -> None:
    """Show everything about a token but its secret, including when it was last used.

    Last use is recorded by running gateways in batches (every few seconds), so it may lag a little.

    \b
    Examples:
      gateway tokens show reporting
      gateway tokens show tok_0123456789abcdef0123 --json
    """
    cfg = load_config(config_path, secrets=False)
    now = time.time()
    view = _run(cfg, lambda store: _find(store, token))
    described = _describe(view, now)
    if as_json:
        _echo_json(described)
    else:
        click.echo(_details(described))


@tokens.command(short_help="Rename, grant or remove permissions, change validity.")
@click.argument("token", metavar="NAME|ID")
@click.option("--rename", metavar="NEW", help="A new, unique name.")
@click.option(
    "--grant", multiple=True, metavar="P[,P...]", help="Add permissions; comma-separated or repeated."
)
@click.option("--remove", multiple=True, metavar="P[,P...]", help="Take permissions away.")
@click.option("--all", "all_", is_flag=True, help='Replace the permissions with "*" (every section).')
@click.option("--expires", metavar="WHEN", help=f"New expiry: {WHEN_HELP}; 'now' ends it, 'never' clears it.")
@click.option("--not-before", metavar="WHEN", help=f"New activation time: {WHEN_HELP}; 'never' clears it.")
@click.option("--rate-limit", metavar="N/UNIT", help="e.g. 60/minute; 'none' removes it.")
@click.option("--quota", metavar="N/UNIT", help="e.g. 10000/day; 'none' removes it.")
@click.option("--concurrency", metavar="N", help="Requests in flight at once; 'none' removes it.")
@click.option("--type", "type_", hidden=True)
@click.option("--company", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the token as JSON afterwards.")
@config_option
def edit(
    token: str,
    rename: str | None,
    grant: tuple[str, ...],
    remove: tuple[str, ...],
    all_: bool,
    expires: str | None,
    not_before: str | None,
    rate_limit: str | None,
    quota: str | None,
    concurrency: str | None,
    type_: str | None,
    company: str | None,
    as_json: bool,
    config_path: str | None,
) -> None:
    """Rename a token, grant or remove permissions, or change its validity and limits.

    A token's type and company never change: create a new token instead.

    \b
    Examples:
      gateway tokens edit reporting --grant leads:read --remove reports
      gateway tokens edit reporting --rename reporting-2026 --expires 2027-01-01
      gateway tokens edit reporting --rate-limit none
    """
    if type_ is not None or company is not None:
        option = "--type" if type_ is not None else "--company"
        raise _usage(option, "a token's type and company cannot change after creation; create a new token")
    cfg = load_config(config_path, secrets=False)
    now = time.time()
    if rename is not None:
        _check_name(rename, "--rename", cfg)
    if all_ and (grant or remove):
        raise _usage("--all", "give either --all or --grant/--remove, not both")
    granted = _permissions(grant, "--grant")
    removed = _permissions(remove, "--remove")
    if both := set(granted) & set(removed):
        raise _usage("--remove", f"{sorted(both)[0]!r} is also in --grant")
    changes: dict[str, Any] = _limits(rate_limit, quota, concurrency)
    if expires is not None:
        changes["expires"] = parse_when(expires, "--expires", now)
    if not_before is not None:
        changes["not_before"] = parse_when(not_before, "--not-before", now)
    if rename is None and not (granted or removed or all_ or changes):
        raise click.UsageError(
            "nothing to change: give --rename, --grant, --remove, --all, --expires, --not-before, "
            "--rate-limit, --quota or --concurrency"
        )

    async def work(store: Store) -> TokenView:
        view = await _find(store, token)
        record = view.record
        _not_seeded(record, "change")
        if all_ or granted:
            _check_permissions(
                ["*"] if all_ else granted, "--all" if all_ else "--grant", cfg, record.type, record.company
            )
        for p in removed:
            if p not in record.permissions:
                held = ", ".join(sorted(record.permissions)) or "nothing"
                raise Failure(f"--remove: token {record.name!r} does not hold {p!r} (it holds {held})")
        if all_ or granted or removed:
            permissions = {"*"} if all_ else (set(record.permissions) | set(granted)) - set(removed)
            if not permissions:
                raise Failure(f"--remove: token {record.name!r} would hold no permission; revoke it instead")
            if permissions != record.permissions:
                changes["permissions"] = permissions
        if rename is not None and rename != record.name:
            changes["name"] = rename
        _check_window(changes.get("not_before", record.not_before), changes.get("expires", record.expires))
        if changes:
            try:
                await store.update_token(record.id, **changes)
            except StoreConflict as e:
                raise Failure(f"--rename: {e}") from None
        return await _find(store, record.id)

    view = _run(cfg, work)
    described = _describe(view, now)
    if as_json:
        _echo_json(described)
        return
    click.echo(f"Updated token {_printable(view.record.name)!r} ({view.record.id}).")
    click.echo(_details(described))


@tokens.command(short_help="Revoke a token; its record stays.")
@click.argument("token", metavar="NAME|ID")
@config_option
def revoke(token: str, config_path: str | None) -> None:
    """Revoke a token: it stops working at once; its record stays (with when it was revoked).

    \b
    Example:
      gateway tokens revoke reporting
    """
    cfg = load_config(config_path, secrets=False)
    now = time.time()

    async def work(store: Store) -> tuple[TokenView, bool]:
        view = await _find(store, token)
        if view.record.revoked_at is not None:
            return view, False
        await store.update_token(view.record.id, revoked_at=now, revoked_by="admin")
        return await _find(store, view.record.id), True

    view, revoked = _run(cfg, work)
    r = view.record
    if revoked:
        click.echo(f"Revoked token {_printable(r.name)!r} ({r.id}) at {_iso(r.revoked_at)}.")
    else:
        click.echo(f"Token {_printable(r.name)!r} ({r.id}) was already revoked at {_iso(r.revoked_at)}.")


@tokens.command(short_help="Issue a new secret; --grace keeps the old one a while.")
@click.argument("token", metavar="NAME|ID")
@click.option(
    "--grace",
    metavar="DURATION",
    help="How long the old secret keeps working (e.g. 1h); without it, it stops at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the new secret is in its 'secret' field).")
@config_option
def rotate(token: str, grace: str | None, as_json: bool, config_path: str | None) -> None:
    """Give a token a new secret and print it, once.

    With --grace the old secret keeps working until the grace ends, then stops by itself, so callers can switch
    over without an outage. Rotating again ends an earlier grace at once.

    \b
    Examples:
      gateway tokens rotate reporting
      gateway tokens rotate reporting --grace 1h
    """
    cfg = load_config(config_path, secrets=False)
    grace_seconds = _config_value(config_mod.parse_duration, grace, "--grace") if grace else 0.0
    secret = new_secret()

    async def work(store: Store) -> TokenView:
        view = await _find(store, token)
        record = view.record
        _not_seeded(record, "rotate")
        if record.revoked_at is not None:
            raise Failure(f"token {record.name!r} is revoked; create a new token instead")
        now = time.time()
        try:
            await store.rotate_token(
                record.id, digest_of(secret), now + grace_seconds if grace_seconds else None
            )
        except StoreConflict as e:
            raise Failure(str(e)) from None
        return await _find(store, record.id)

    view = _run(cfg, work)
    r = view.record
    until = _iso(view.previous_secret_until)
    if as_json:
        _echo_json({"id": r.id, "name": r.name, "previous_secret_until": until, "secret": secret})
        return
    click.echo(f"Rotated token {_printable(r.name)!r} ({r.id}).")
    click.echo(f"The old secret works until {until}." if until else "The old secret no longer works.")
    click.echo("\nThe new secret, shown only this once (store it now; it cannot be shown again):")
    click.echo(secret)


@tokens.command(short_help="Delete a token and its record (needs --yes).")
@click.argument("token", metavar="NAME|ID")
@click.option("--yes", is_flag=True, help="Confirm: deleting cannot be undone.")
@config_option
def delete(token: str, yes: bool, config_path: str | None) -> None:
    """Delete a token and its record. Revoke keeps the record; delete does not.

    \b
    Example:
      gateway tokens delete old-reporting --yes
    """
    if not yes:
        raise _usage(
            "--yes",
            "deleting a token cannot be undone; add --yes to confirm (revoke keeps the token's record)",
        )
    cfg = load_config(config_path, secrets=False)

    async def work(store: Store) -> TokenRecord:
        record = (await _find(store, token)).record
        if record.source == "seed" and (
            record.revoked_at is None or record.name in {seed.name for seed in cfg.tokens}
        ):
            # Deleting a token the file still declares would let the next seeding create it afresh, active.
            _not_seeded(record, "remove")
        try:
            await store.delete_token(record.id)
        except StoreConflict as e:
            raise Failure(str(e)) from None
        return record

    record = _run(cfg, work)
    click.echo(f"Deleted token {_printable(record.name)!r} ({record.id}).")


@tokens.command(short_help="Export every token to xlsx or csv.")
@click.option(
    "--format",
    "format_",
    type=click.Choice(("xlsx", "csv")),
    help="File format (default: from FILE's extension).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    metavar="FILE",
    help="Where to write; '-' writes CSV to standard output.",
)
@config_option
def export(format_: str | None, output: str, config_path: str | None) -> None:
    """Export every token to a spreadsheet: one row each, never a secret or a digest.

    Columns: id, name, type, company, permissions, status, created, not_before, expires, last_used. Times are UTC
    (typed date cells in xlsx, ISO-8601 in csv).

    \b
    Examples:
      gateway tokens export --format xlsx -o tokens.xlsx
      gateway tokens export -o tokens.csv
    """
    if format_ is None and output == "-":
        format_ = "csv"
    if format_ is None:
        suffix = Path(output).suffix.lower().lstrip(".")
        if suffix not in ("xlsx", "csv"):
            raise _usage("--format", f"give xlsx or csv (cannot tell from the name {output!r})")
        format_ = suffix
    if output == "-" and format_ != "csv":
        raise _usage("--output", "only csv can be written to standard output")
    cfg = load_config(config_path, secrets=False)
    now = time.time()
    _, views = _run(cfg, lambda store: store.list_views(now=now))
    rows = [_export_row(v.record, now) for v in views]
    if output == "-":
        sys.stdout.write(_csv_text(rows))
        return
    _write_atomically(Path(output), _xlsx_bytes(rows) if format_ == "xlsx" else _csv_text(rows).encode())
    click.echo(f"Exported {len(rows)} token{'' if len(rows) == 1 else 's'} to {output}.")


def _export_row(r: TokenRecord, now: float) -> list[Any]:
    def when(ts: float | None) -> dt.datetime | None:
        if ts is None:
            return None
        # Spreadsheets have no time zones: naive UTC, whole seconds.
        return dt.datetime.fromtimestamp(int(ts), dt.UTC).replace(tzinfo=None)

    return [
        r.id,
        r.name,
        r.type,
        r.company,
        ", ".join(sorted(r.permissions)),
        r.status(now),
        when(r.created_at),
        when(r.not_before),
        when(r.expires),
        when(r.last_used_at),
    ]


# A cell starting with one of these is a formula to a spreadsheet program (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        cells = []
        for value in row:
            if value is None:
                cells.append("")
            elif isinstance(value, dt.datetime):
                cells.append(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
            elif isinstance(value, str) and value.startswith(_FORMULA_START):
                cells.append("'" + value)
            else:
                cells.append(value)
        writer.writerow(cells)
    return out.getvalue()


def _xlsx_bytes(rows: list[list[Any]]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    assert sheet is not None  # a new workbook always has its first sheet
    sheet.title = "tokens"
    sheet.append(EXPORT_COLUMNS)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append([ILLEGAL_CHARACTERS_RE.sub("?", v) if isinstance(v, str) else v for v in row])
        for cell in sheet[sheet.max_row]:
            if isinstance(cell.value, dt.datetime):
                cell.number_format = "yyyy-mm-dd hh:mm:ss"
            elif cell.data_type == "f":
                cell.data_type = "s"  # a name like "=HYPERLINK(...)" is text, never a formula
    sheet.freeze_panes = "A2"
    sheet.auto_filter.ref = sheet.dimensions
    for column, width in zip("ABCDEFGHIJ", (26, 24, 11, 16, 32, 15, 20, 20, 20, 20), strict=True):
        sheet.column_dimensions[column].width = width
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written export."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise Failure(f"--output: cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # like any file the operator writes, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise Failure(f"--output: cannot write {path}: {e.strerror}") from None
