"""Typed options: each command's options are one frozen dataclass, its parser built from it.

A field declared with pos(), opt() or flag() is also the argparse argument of the
same name (add_argument's keywords as given, so --help reads as written). The
parsed Namespace becomes that dataclass, checked (strict, unknown keys refused),
before the handler sees it: mypy checks every option the handler reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from controller.config.load import load_config
from controller.config.models import ROLES, Config
from controller.daemon.lock import holder_about, lock_path

# What argparse adds to the Namespace that is not an option of the command.
PARSER_KEYS = frozenset({"handler", "subcommand", "hook", "node_command"})
_ARG = "argparse"  # field metadata: (positional, extra names, add_argument keywords)

# Strict: argparse already converted each value; a mismatch is a bug in the parser.
OPTIONS = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class Common:
    """The options every command takes (given before or after the command name)."""

    config: str | None = None
    json: bool = False
    verbose: bool = False

    def config_file(self) -> Path | None:
        """The config file named: --config, else $NETROOT_CONFIG (None: the built-in one)."""
        named = self.config or os.environ.get("NETROOT_CONFIG")
        return Path(named) if named else None


OptionsT = TypeVar("OptionsT", bound=Common)


def pos(**kwargs: Any) -> Any:
    """A positional argument named as the field."""
    return dataclasses.field(metadata={_ARG: (True, (), kwargs)})


def opt(*short: str, **kwargs: Any) -> Any:
    """An option --name-of-the-field (after the short names given)."""
    return dataclasses.field(metadata={_ARG: (False, short, kwargs)})


def flag(help: str) -> Any:
    """An on/off option --name-of-the-field."""
    return opt(action="store_true", help=help)


def option_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """The options in a parsed Namespace (without argparse's own keys)."""
    return {k: v for k, v in vars(namespace).items() if k not in PARSER_KEYS}


def common_options(namespace: argparse.Namespace) -> Common:
    """The common options alone (for main, before the command runs)."""
    values = option_values(namespace)
    return Common(**{k: values[k] for k in ("config", "json", "verbose") if k in values})


@dataclasses.dataclass(frozen=True)
class Command(Generic[OptionsT]):
    """A subcommand: its name, options, handler and help; called with the parsed Namespace."""

    name: str
    options: type[OptionsT]
    run: Callable[[OptionsT], int]
    help: str
    description: str | None

    def __call__(self, namespace: argparse.Namespace) -> int:
        return self.run(self.options(**option_values(namespace)))

    def add_to(self, sub: Any, common: argparse.ArgumentParser) -> None:
        """Add the subcommand, an argument for each declared field, in their order."""
        parser: argparse.ArgumentParser = sub.add_parser(
            self.name, parents=[common], help=self.help, description=self.description
        )
        for field in dataclasses.fields(self.options):
            if _ARG not in field.metadata:
                continue  # a common option
            positional, short, kwargs = field.metadata[_ARG]
            long = field.name if positional else "--" + field.name.replace("_", "-")
            parser.add_argument(*short, long, **kwargs)
        parser.set_defaults(handler=self)


def command(
    name: str,
    options: type[OptionsT],
    *,
    help: str,
    description: str | None = None,
) -> Callable[[Callable[[OptionsT], int]], Command[OptionsT]]:
    """Make a handler of these options the subcommand name."""

    def wrap(run: Callable[[OptionsT], int]) -> Command[OptionsT]:
        return Command(name, options, run, help, description)

    return wrap


def add_commands(sub: Any, common: argparse.ArgumentParser, *commands: Command[Any]) -> None:
    """Add the subcommands, in this order (the order of --help)."""
    for each in commands:
        each.add_to(sub, common)


def load(opts: Common) -> Config:
    """The config the command names (built-in defaults if none), in the role its
    running daemon serves: `netroot serve --role replica` is not in the file."""
    config = load_config(opts.config_file())
    serving = holder_about(lock_path(config.state_dir))
    if serving in ROLES and serving != config.replication.role:
        return load_config(opts.config_file(), serving=serving)
    return config
