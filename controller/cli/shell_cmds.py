"""shell: a shell inside a label's image (a new version on exit, or --live in place)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic.dataclasses import dataclass

from controller.build import shell
from controller.cli.canary_cmds import refuse_during_rollout
from controller.cli.options import OPTIONS, Common, add_commands, command, flag, load, opt, pos
from controller.cli.output import Progress, emit_json
from controller.cli.store_cmds import label_of, waiting
from controller.core.errors import NetrootError
from controller.serve import publish
from controller.store.locking import label_lock

REMOUNT_WARNING = (
    "netroot: warning: {label} {version} was changed in place while it is served; running "
    "nodes may hold stale file handles and need `mount -o remount /`"
)


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class ShellOptions(Common):
    """netroot shell."""

    label: str = pos()
    live: bool = flag(
        "edit the active, served tree in place (recorded; nodes may need to remount /)"
    )
    activate: bool = flag("activate the new version the session produced")
    command: str | None = opt(
        "-c", metavar="CMD", help="run CMD with /bin/sh -c instead of an interactive shell"
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the shell command."""
    add_commands(sub, common, cmd_shell)


@command(
    "shell",
    ShellOptions,
    help="a shell inside the active version; changes become a new version",
    description="Open a shell in a copy-on-write clone of the label's active version. "
    "On exit with changes, they become a new version (activated with --activate). "
    "--live edits the active version in place instead, as the original tool did.",
)
def cmd_shell(opts: ShellOptions) -> int:
    """Run the session under the label's lock and report what it did."""
    config = load(opts)
    paths = label_of(config, opts.label)
    if opts.live and opts.activate:
        raise NetrootError(
            "--activate makes a new version active; --live edits the active "
            "version in place: give one of them"
        )
    if opts.command is None and not sys.stdin.isatty():
        raise NetrootError("no terminal for an interactive shell; give --command CMD")
    progress = Progress(quiet=opts.json)
    with label_lock(paths, on_wait=lambda: waiting(opts.label)):
        publish.recover_label(config, opts.label)
        if opts.activate:  # refused before the session opens
            refuse_during_rollout(config, opts.label, "shell --activate")
        outcome = shell.open_shell(
            config, opts.label, live=opts.live, command=opts.command, progress=progress
        )
        activated = False
        if opts.activate and outcome.version is not None:
            # The session's new version, served as any activation is, under the same lock.
            publish.activate(config, paths, outcome.version)
            activated = True
    if opts.json:
        emit_json(
            {
                "label": outcome.label,
                "parent": outcome.parent,
                "live": outcome.live,
                "status": outcome.status,
                "changed": list(outcome.changed),
                "version": outcome.version,
                "activated": activated,
                "live_edits": outcome.live_edits,
                "stdout": outcome.stdout,
                "stderr": outcome.stderr,
            }
        )
    else:
        sys.stdout.write(outcome.stdout)
        sys.stderr.write(outcome.stderr)
        _report(outcome, activated=activated)
    if outcome.live and outcome.changed:
        print(REMOUNT_WARNING.format(label=outcome.label, version=outcome.parent), file=sys.stderr)
    return 0


def _report(outcome: shell.Outcome, *, activated: bool) -> None:
    shown = ", ".join(outcome.changed[:5]) + (" ..." if len(outcome.changed) > 5 else "")
    if not outcome.changed:
        print(f"{outcome.label}: no changes; {outcome.parent} stays as it was")
    elif outcome.live:
        print(
            f"{outcome.label} {outcome.parent}: {len(outcome.changed)} paths changed in place "
            f"({shown}); live edit #{outcome.live_edits} recorded"
        )
    else:
        print(
            f"{outcome.label}: new version {outcome.version} from {outcome.parent}, "
            f"{len(outcome.changed)} paths changed ({shown})"
        )
        if activated:
            print(f"activated {outcome.label} {outcome.version} (was {outcome.parent})")
