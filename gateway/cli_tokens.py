"""`gateway tokens ...`: create, list, show, edit, revoke, rotate, delete and export the tokens in the store.

A secret is printed once, by create or rotate, and never kept: the store holds its SHA-256 digest. Every write lands
in the store's change feed, which running gateways follow, so a change reaches every worker within a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
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
from gateway.store import Store
from gateway.token_export import csv_text, export_row, xlsx_bytes
from gateway.token_service import (
    Changes,
    Invalid,
    NewToken,
    NotFound,
    TokenError,
    TokenService,
    describe,
    iso,
    printable,
)
from gateway.vocabulary import STATUSES, TOKEN_TYPES

T = TypeVar("T")

PAGE_SIZES = (10, 100)
WHEN_HELP = "an ISO-8601 date or time (no offset = UTC), or a duration from now such as 30d or 12h"


# --- plumbing ----------------------------------------------------------------------------------------------------


def _run(
    cfg: Config, work: Callable[[TokenService], Awaitable[T]], options: dict[str, str] | None = None
) -> T:
    """Run `work` with the token service over the configured store; store trouble is a runtime failure (exit 1).

    The service's errors name fields; `options` says which command-line option (or argument) each field is.
    """

    async def run() -> T:
        try:
            # The CLI can afford to wait for a busy gateway longer than a request can.
            store = await Store.open(cfg.store.database, max(cfg.store.busy_timeout, 5.0))
        except (sqlite3.Error, OSError) as e:
            raise Failure(f"cannot open the store {cfg.store.database}: {e}") from None
        try:
            return await work(TokenService(store, cfg))
        except sqlite3.Error as e:
            raise Failure(f"the store {cfg.store.database} failed: {e}") from None
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except TokenError as e:
        raise _rendered(e, options or {}) from None


def _rendered(error: TokenError, options: dict[str, str]) -> click.ClickException:
    """A service error as the CLI says it: bad input is a usage error (exit 2), the store's state a failure (1)."""
    message = error.message
    if isinstance(error, NotFound):
        return Failure(f"{message}; 'gateway tokens list' shows them all")
    for field, option in options.items():
        if "_" in field:  # a field named in the message (`not_before`), said as the option that sets it
            message = message.replace(field, option)
    if error.field is not None:
        message = f"{options.get(error.field, error.field)}: {message}"
    return click.UsageError(message) if isinstance(error, Invalid) else Failure(message)


def _usage(option: str, problem: str) -> click.UsageError:
    return click.UsageError(f"{option}: {problem}")


def _config_value(parse: Callable[[Any, str], T], value: Any, option: str) -> T:
    try:
        return parse(value, option)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def _permissions(values: Iterable[str], option: str) -> list[str]:
    """`--grant a,b --grant c` -> ["a", "b", "c"], each checked for its form."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                out.append(_config_value(config_mod.parse_permission, part.strip(), option))
    return list(dict.fromkeys(out))


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


# --- output ------------------------------------------------------------------------------------------------------


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
        ("name", printable(d["name"])),
        ("type", d["type"]),
        ("company", printable(d["company"] or "-")),
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
    if all_ and permission_args:
        raise _usage("--all", "give either --permissions or --all, not both")
    permissions = ["*"] if all_ else _permissions(permission_args, "--permissions")
    if not permissions:
        raise _usage("--permissions", 'give the permissions (e.g. --permissions leads:read) or --all for "*"')
    new = NewToken(
        name=name,
        permissions=permissions,
        type=type_,
        company=company,
        not_before=parse_when(not_before, "--not-before", now) if not_before else None,
        expires=parse_when(expires, "--expires", now) if expires else None,
        limits=_limits(rate_limit, quota, concurrency),
    )
    options = {
        "name": "NAME",
        "permissions": "--permissions",
        "company": "--company",
        "expires": "--expires",
        "not_before": "--not-before",
    }
    view, secret = _run(cfg, lambda service: service.create(new), options)
    described = describe(view, now)
    if as_json:
        _echo_json({**described, "secret": secret})
        return
    click.echo(f"Created token {printable(name)!r} ({view.record.id}).")
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
    total, views = _run(cfg, lambda service: service.page(page=page, page_size=page_size, status=status))
    pages = max(1, -(-total // page_size))
    if as_json:
        _echo_json(
            {
                "page": page,
                "page_size": page_size,
                "pages": pages,
                "total": total,
                "status": status,
                "tokens": [describe(v, now) for v in views],
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
            printable(v.record.name),
            v.record.type,
            v.record.status(now),
            ", ".join(sorted(v.record.permissions)),
            iso(v.record.created_at) or "",
            iso(v.record.expires) or "never",
            iso(v.record.last_used_at) or "never",
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
    view = _run(cfg, lambda service: service.find(token))
    described = describe(view, now)
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
    validity: dict[str, float | None] = {}
    if expires is not None:
        validity["expires"] = parse_when(expires, "--expires", now)
    if not_before is not None:
        validity["not_before"] = parse_when(not_before, "--not-before", now)
    changes = Changes(
        rename=rename,
        grant=_permissions(grant, "--grant"),
        remove=_permissions(remove, "--remove"),
        all=all_,
        validity=validity,
        limits=_limits(rate_limit, quota, concurrency),
    )
    options = {
        "rename": "--rename",
        "all": "--all",
        "grant": "--grant",
        "remove": "--remove",
        "expires": "--expires",
    }
    view = _run(cfg, lambda service: service.edit(token, changes), options)
    described = describe(view, now)
    if as_json:
        _echo_json(described)
        return
    click.echo(f"Updated token {printable(view.record.name)!r} ({view.record.id}).")
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
    view, revoked = _run(cfg, lambda service: service.revoke(token))
    r = view.record
    if revoked:
        click.echo(f"Revoked token {printable(r.name)!r} ({r.id}) at {iso(r.revoked_at)}.")
    else:
        click.echo(f"Token {printable(r.name)!r} ({r.id}) was already revoked at {iso(r.revoked_at)}.")


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
    view, secret = _run(cfg, lambda service: service.rotate(token, grace_seconds))
    r = view.record
    until = iso(view.previous_secret_until)
    if as_json:
        _echo_json({"id": r.id, "name": r.name, "previous_secret_until": until, "secret": secret})
        return
    click.echo(f"Rotated token {printable(r.name)!r} ({r.id}).")
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

    record = _run(cfg, lambda service: service.delete(token))
    click.echo(f"Deleted token {printable(record.name)!r} ({record.id}).")


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
    views = _run(cfg, lambda service: service.everything())
    rows = [export_row(v.record, now) for v in views]
    if output == "-":
        sys.stdout.write(csv_text(rows))
        return
    _write_atomically(Path(output), xlsx_bytes(rows) if format_ == "xlsx" else csv_text(rows).encode())
    click.echo(f"Exported {len(rows)} token{'' if len(rows) == 1 else 's'} to {output}.")


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
