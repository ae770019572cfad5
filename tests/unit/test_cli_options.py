"""Each command's options: one frozen dataclass, its parser built from its fields."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from controller.cli import build_parser
from controller.cli.build_cmds import BuildOptions
from controller.cli.options import Command, Common, option_values
from controller.cli.shell_cmds import ShellOptions


def _parsed(*argv: str) -> tuple[Command[Any], Common]:
    namespace = build_parser().parse_args(argv)
    handler = namespace.handler
    assert isinstance(handler, Command)
    return handler, handler.options(**option_values(namespace))


def test_the_parsed_options_are_the_command_dataclass() -> None:
    handler, opts = _parsed("--json", "build", "demo", "--overlays-only", "--build-id", "b1")
    assert handler.name == "build"
    assert opts == BuildOptions(
        config=None,
        json=True,
        verbose=False,
        label="demo",
        activate=False,
        rebuild=False,
        insecure_test_password=False,
        overlays_only=True,
        force=False,
        build_id="b1",
    )
    assert isinstance(opts, BuildOptions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.label = "other"  # type: ignore[misc]


def test_an_option_named_like_the_command_is_the_option() -> None:
    _, opts = _parsed("shell", "demo", "-c", "true", "--config", "x.toml")
    assert isinstance(opts, ShellOptions)
    assert (opts.command, opts.config, opts.live) == ("true", "x.toml", False)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update(_subparsers(sub))
    return found


def test_every_subcommand_has_exactly_its_dataclass_fields() -> None:
    commands = {
        name: sub
        for name, sub in _subparsers(build_parser()).items()
        if name not in ("hook", "node")  # only groups of subcommands
    }
    assert len(commands) == 21
    for name, subparser in commands.items():
        handler = subparser.get_default("handler")
        assert isinstance(handler, Command) and handler.name == name
        dests = {a.dest for a in subparser._actions if a.dest != "help"}
        assert dests == {f.name for f in dataclasses.fields(handler.options)}, name
        # Every default (and a value for each positional) has the field's type.
        positionals = [a for a in subparser._actions if not a.option_strings and a.nargs != "?"]
        argv = [str(next(iter(a.choices))) if a.choices else "x" for a in positionals]
        handler.options(**option_values(subparser.parse_args(argv)))


def test_a_value_of_the_wrong_type_or_an_unknown_option_is_refused() -> None:
    namespace = build_parser().parse_args(["gc", "demo"])
    with pytest.raises(ValidationError):
        namespace.handler.options(**{**option_values(namespace), "dry_run": "yes"})
    with pytest.raises(ValidationError):
        namespace.handler.options(**{**option_values(namespace), "surprise": 1})
