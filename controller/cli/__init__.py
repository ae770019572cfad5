"""netroot command line: argument parsing, output and exit codes (the only place that exits)."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from controller import __version__
from controller.cli import (
    boot_cmds,
    build_cmds,
    daemon_cmds,
    hosts_cmds,
    node_cmds,
    output,
    shell_cmds,
    store_cmds,
    up_cmds,
)
from controller.cli.options import Command, common_options
from controller.core import log as logsetup
from controller.core.errors import NetrootError, describe

# Each command module adds its subcommands; handlers return an exit status.
COMMAND_MODULES = [
    build_cmds,
    store_cmds,
    daemon_cmds,
    node_cmds,
    boot_cmds,
    shell_cmds,
    up_cmds,
    hosts_cmds,
]


class Parser(argparse.ArgumentParser):
    """argparse; with --json a usage error is the failure report too (exit status 2)."""

    json_errors = False  # main sets it when the command line has --json

    def error(self, message: str) -> NoReturn:
        """The usage and the error on stderr, or with --json the report on stdout."""
        if not Parser.json_errors:
            super().error(message)
        output.failed("usage", f"{self.prog}: {message}", as_json=True)
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (docs/design.md §15)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $NETROOT_CONFIG, else built-in defaults)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable output on stdout",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging on stderr",
    )
    parser = Parser(
        prog="netroot",
        parents=[common],
        description="Build, version, serve and track root filesystems for diskless nodes.",
        epilog="Exit status 0 on success; otherwise a one-line reason on stderr.",
    )
    parser.add_argument("--version", action="version", version=f"netroot {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `netroot` console script."""
    given = sys.argv[1:] if argv is None else list(argv)
    Parser.json_errors = "--json" in given
    args = build_parser().parse_args(given)
    common = common_options(args)
    # Commands print their own progress; the structured log is for -v and the daemon.
    level = logging.DEBUG if common.verbose else logging.WARNING
    logsetup.configure(json=common.json, level=level)
    handler: Command[Any] = args.handler
    try:
        return handler(args)
    except NetrootError as exc:
        output.error(exc, as_json=common.json)
        return 1
    except sqlite3.DatabaseError as exc:
        # A corrupt or full state database (the db layer names the file when it can).
        output.failed("database", f"state database: {describe(exc)}", as_json=common.json)
        return 1
    except BrokenPipeError:
        # `netroot versions | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A full disk, a permission or a vanished file: one line naming the file.
        output.failed("os", describe(exc), as_json=common.json)
        return 1
    except KeyboardInterrupt:
        if common.json:
            output.failed("interrupted", "interrupted", as_json=True)
        else:
            print("netroot: interrupted", file=sys.stderr)
        return 130
