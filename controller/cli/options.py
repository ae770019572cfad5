"""Typed options: each command's argparse result becomes a frozen dataclass mypy checks.

A command declares its options as a subclass of Common (one field per argparse
dest) and registers with add_command; the parsed Namespace is checked against
the dataclass (an unknown or missing option, or one of the wrong type, fails
loudly) before the handler sees it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass as std_dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from controller.config.models import Config, load_config

# What argparse adds to the Namespace that is not an option of the command.
PARSER_KEYS = frozenset({"handler", "subcommand", "hook"})

# Strict: argparse already converted each value; a mismatch is a bug in the parser.
OPTIONS = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class Common:
    """The options every command takes (given before or after the command name)."""

    config: str | None = None
    json: bool = False
    verbose: bool = False


OptionsT = TypeVar("OptionsT", bound=Common)


def option_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """The options in a parsed Namespace (without argparse's own keys)."""
    return {k: v for k, v in vars(namespace).items() if k not in PARSER_KEYS}


def common_options(namespace: argparse.Namespace) -> Common:
    """The common options alone (for main, before the command runs)."""
    values = option_values(namespace)
    return Common(**{k: values[k] for k in ("config", "json", "verbose") if k in values})


@std_dataclass(frozen=True)
class Handler(Generic[OptionsT]):
    """A command's handler with the type of its options: mypy checks that they match."""

    options: type[OptionsT]
    run: Callable[[OptionsT], int]

    def __call__(self, namespace: argparse.Namespace) -> int:
        return self.run(self.options(**option_values(namespace)))


def add_command(
    sub: Any,
    common: argparse.ArgumentParser,
    name: str,
    handler: Handler[OptionsT],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand taking the common options, run by handler."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[common], help=help, description=description
    )
    parser.set_defaults(handler=handler)
    return parser


def config_file(opts: Common) -> Path | None:
    """The config file the command names: --config, else $NETROOT_CONFIG (None: built-in)."""
    named = opts.config or os.environ.get("NETROOT_CONFIG")
    return Path(named) if named else None


def load(opts: Common) -> Config:
    """The config the command names (built-in defaults if none)."""
    return load_config(config_file(opts))
