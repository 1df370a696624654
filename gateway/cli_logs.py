"""`gateway logs`: search and follow the access log as the store keeps it (the file may be rotated at any time).

One readable line per request by default, or the file's JSON records with --json; newest last, like tail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sqlite3
import sys
import time
from typing import Any

import click
import orjson

from gateway.accesslog import iso
from gateway.cli import Failure, config_option, load_config
from gateway.config import ConfigError, parse_duration
from gateway.errors import REFUSALS
from gateway.store import LOG_FIELDS, Store

OUTCOMES = ("allowed", *sorted({refusal.outcome for refusal in REFUSALS.values()}))
FOLLOW_POLL = 0.25  # seconds between looks at the store for new records
FOLLOW_BATCH = 1000
_STATUS = re.compile(r"([1-5])(\d\d|xx)", re.IGNORECASE)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a path or name must not drive the operator's terminal


def _status(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    m = _STATUS.fullmatch(value.strip())
    if m is None:
        raise click.BadParameter(f"expected a status like 403 or a class like 4xx, got {value!r}")
    if m[2].lower() == "xx":
        low = int(m[1]) * 100
        return low, low + 99
    return int(value), int(value)


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A duration back from now ("10m", "7d") or an ISO time (UTC unless it carries an offset), as records store it."""
    if value is None:
        return None
    try:
        return iso(time.time() - parse_duration(value.strip(), "--since"))
    except ConfigError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f'expected a duration like "10m" or "7d", or an ISO time like 2026-05-01T10:00:00Z, got {value!r}'
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return iso(when.timestamp())


def readable(record: dict[str, Any]) -> str:
    """time, status, method, path, token name, outcome, duration."""
    duration = record["duration_ms"]
    fields = (
        record["ts"],
        str(record["status"]),
        f"{record['method'] or '-'} {record['path'] or '-'}",
        record["token_name"] or "-",
        record["outcome"],
        f"{duration:.1f}ms" if duration is not None else "-",
    )
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}", "  ".join(fields))


def as_json(record: dict[str, Any]) -> str:
    return orjson.dumps({field: record[field] for field in LOG_FIELDS}).decode()


@click.command()
@config_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records as they arrive (Ctrl-C stops).")
@click.option("--token", metavar="NAME", help="Only requests made with this token (name or id).")
@click.option("--status", metavar="CODE", callback=_status, help="Only this status (403) or class (4xx).")
@click.option(
    "--outcome",
    type=click.Choice(OUTCOMES),
    metavar="OUTCOME",
    help=f"Only this outcome: {', '.join(OUTCOMES)}.",
)
@click.option(
    "--since",
    metavar="WHEN",
    callback=_since,
    help='Only records newer than "10m", "2h", "7d" or an ISO time.',
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Show the newest N records that match (newest last).",
)
@click.option(
    "--json", "json_output", is_flag=True, help="Print the records as JSON lines, as in the log file."
)
def logs(
    config_path: str | None,
    follow: bool,
    token: str | None,
    status: tuple[int, int] | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    json_output: bool,
) -> None:
    """Show the newest access-log records from the store, newest last.

    Reads the store's copy of the log, not the file: --follow keeps going when the file is rotated, and sees the
    requests of every worker.

    \b
    Examples:
      gateway logs --token reporting --status 4xx --since 1h
      gateway logs --follow --outcome forbidden
      gateway logs --json --limit 1000 > recent.jsonl
    """
    cfg = load_config(config_path)
    database = cfg.store.database
    if not database.exists():
        raise Failure(
            f"no store at {database}: the gateway creates it when it first starts ([store] database)"
        )
    show = as_json if json_output else readable
    filters = {"token": token, "status": status, "outcome": outcome, "since": since}
    try:
        asyncio.run(_run(database, cfg.store.busy_timeout, filters, limit, follow, show))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends
    except BrokenPipeError:
        # The reader went away (`gateway logs | head`): stop quietly, without Python complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (sqlite3.Error, OSError) as e:
        raise Failure(f"cannot read the access log from the store {database}: {e}") from None


async def _run(
    database: Any, busy_timeout: float, filters: dict[str, Any], limit: int, follow: bool, show: Any
) -> None:
    store = await Store.open(database, busy_timeout)
    try:
        last = await store.last_log_id()
        if limit:
            for record in await store.search_log(**filters, up_to_id=last, limit=limit):
                click.echo(show(record))
        while follow:
            await asyncio.sleep(FOLLOW_POLL)
            newest = await store.last_log_id()
            if newest < last:
                last = 0  # pruning emptied the table, and SQLite numbers new records from 1 again
            while last < newest:
                batch = await store.search_log(
                    **filters, after_id=last, up_to_id=newest, limit=FOLLOW_BATCH, newest=False
                )
                for record in batch:
                    click.echo(show(record))
                last = batch[-1]["id"] if len(batch) == FOLLOW_BATCH else newest
    finally:
        await store.close()
