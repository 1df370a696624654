"""The `gateway` command line: serve, config check, tokens, logs.

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error, always with one line on stderr naming what is wrong.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from gateway import config as config_mod
from gateway.config import Config, ConfigError

CONFIG_HELP = "Config file (default: $GATEWAY_CONFIG, else config/gateway.toml)."


class Failure(click.ClickException):
    """A runtime failure: exit code 1."""

    exit_code = 1


def config_option(f: Any) -> Any:
    return click.option("--config", "config_path", metavar="PATH", default=None, help=CONFIG_HELP)(f)


def load_config(config_path: str | None, *, secrets: bool = True) -> Config:
    """The config, or exit 2 naming the bad key. `secrets=False`: for commands that never seed tokens."""
    try:
        return config_mod.load(config_path, secrets=secrets)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """An API gateway that guards existing HTTP APIs with tokens.

    \b
    Example:
      gateway serve --config config/gateway.toml
    """


@cli.command()
@config_option
def serve(config_path: str | None) -> None:
    """Start the gateway (and its workers) in the foreground.

    \b
    Example:
      GATEWAY_CONFIG=config/gateway.toml gateway serve
    """
    from gateway.server import StartupError
    from gateway.server import serve as run

    cfg = load_config(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run(cfg))
    except StartupError as e:
        raise Failure(str(e)) from None
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


@cli.group("config")
def config_group() -> None:
    """Check the configuration."""


@config_group.command("check")
@config_option
def config_check(config_path: str | None) -> None:
    """Parse and validate the config without starting anything.

    \b
    Example:
      gateway config check --config config/gateway.toml
    """
    cfg = load_config(config_path)
    click.echo(
        f"{cfg.source}: ok ({len(cfg.routes)} routes, {len(cfg.tokens)} seeded tokens, "
        f"upstream {cfg.upstream.url}, listening on {cfg.server.listen})"
    )


def _register_subcommands() -> None:
    # Each command group registers on its own: a module that is not there yet must not hide the others, and a
    # real import error inside one must not be swallowed.
    for module_name, command in (("gateway.cli_tokens", "tokens"), ("gateway.cli_logs", "logs")):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        cli.add_command(getattr(module, command))


def main(argv: list[str] | None = None) -> None:
    _register_subcommands()
    try:
        cli.main(args=argv, prog_name="gateway", standalone_mode=False)
    except click.UsageError as e:
        # One line, naming the bad key or argument; click's own output spans several.
        hint = (
            f" (see 'gateway {e.ctx.command_path.partition(' ')[2]} --help')"
            if e.ctx and e.ctx.parent
            else ""
        )
        click.echo(f"gateway: error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"gateway: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("gateway: aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
