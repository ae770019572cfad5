"""validate, build."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pydantic.dataclasses import dataclass

from controller.build import nodeside
from controller.build.overlays import scan_overlays
from controller.build.pipeline import new_build_id, run_build
from controller.cli.canary_cmds import refuse_during_rollout
from controller.cli.options import OPTIONS, Common, add_commands, command, flag, load, opt, pos
from controller.cli.output import Progress, emit_json, human_size, table
from controller.cli.store_cmds import label_of, waiting
from controller.core.errors import BuildError
from controller.daemon.announce import Announcer
from controller.events.payloads import BuildKind
from controller.recipes import load_recipe
from controller.serve import publish
from controller.store import activation
from controller.store import versions as store
from controller.store.locking import label_lock

INSECURE_HELP = "accept plaintext root_password in recipes (throw-away VM tests only)"


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class ValidateOptions(Common):
    """netroot validate."""

    insecure_test_password: bool = flag(INSECURE_HELP)


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class BuildOptions(Common):
    """netroot build."""

    label: str = pos()
    activate: bool = flag("activate the version on success")
    rebuild: bool = flag("run the builder even if the cached base tree matches the inputs")
    insecure_test_password: bool = flag(INSECURE_HELP)
    overlays_only: bool = flag(
        "only overlays changed: reuse the active version's base without re-checking "
        "the recipe's inputs (what the daemon does for an overlay edit)"
    )
    force: bool = flag("make a new version even when it is identical to the active one")
    # Set by the daemon for its child builds: the build it queued (the id names the
    # log file and every event of the build).
    build_id: str | None = opt(help=argparse.SUPPRESS)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the build commands."""
    add_commands(sub, common, cmd_validate, cmd_build)


@command(
    "validate",
    ValidateOptions,
    help="check the config and every recipe it names",
    description="Loads the config and each label's recipe as a build would, and prints "
    "one line per problem naming the file and field; exit status 1 if there is any.",
)
def cmd_validate(opts: ValidateOptions) -> int:
    """Load the config, every recipe and every overlay; change nothing."""
    config = load(opts)
    publish.check_servable(config)  # what validate accepts can be activated
    rows, report = [], {}
    warned: dict[str, list[str]] = {}
    for name in sorted(config.labels):
        recipe = load_recipe(
            config.recipe_path(name), allow_plaintext_password=opts.insecure_test_password
        )
        overlays = [config.overlays_dir / o for o in config.overlay_names(name)]
        items = scan_overlays(overlays)
        warnings = warned[name] = nodeside.recipe_warnings(recipe, config.recipe_path(name))
        report[name] = {
            "warnings": warnings,
            "recipe": str(config.recipe_path(name)),
            "builder": recipe.builder,
            "overlay_entries": len(items),
        }
        rows.append([name, recipe.builder, str(config.recipe_path(name)), str(len(items))])
    if opts.json:
        emit_json({"config": config.source, "valid": True, "labels": report})
    else:
        print(f"{config.source}: valid, {len(config.labels)} label(s)")
        if rows:
            table(["LABEL", "BUILDER", "RECIPE", "OVERLAY ENTRIES"], rows)
    for name, warnings in warned.items():
        for warning in warnings:
            print(f"netroot: warning: {name}: {warning}", file=sys.stderr)
    return 0


def _build_reason(opts: BuildOptions) -> str:
    flags = {
        "activate": opts.activate,
        "rebuild": opts.rebuild,
        "overlays-only": opts.overlays_only,
    }
    return " ".join(["netroot build", *(f"--{flag}" for flag, given in flags.items() if given)])


@command(
    "build",
    BuildOptions,
    help="build a new version of a label",
    description="Builds the label's recipe in a staging directory, applies the overlays, "
    "makes the kernel and initramfs, verifies the tree against its index and renames it "
    "into the store as a new immutable version. Nothing served changes unless "
    "--activate is given. Unchanged inputs give no new version.",
)
def cmd_build(opts: BuildOptions) -> int:
    """Build (and optionally activate) a new version; each step is announced on the bus."""
    config = load(opts)
    paths = label_of(config, opts.label)
    # a bad recipe fails before anything is written
    load_recipe(
        config.recipe_path(opts.label), allow_plaintext_password=opts.insecure_test_password
    )
    scan_overlays([config.overlays_dir / o for o in config.overlay_names(opts.label)])
    publish.check_servable(config)  # a version that could not be served is not built
    progress = Progress(quiet=opts.json)
    kind: BuildKind = "overlay" if opts.overlays_only else "full"
    with Announcer(config) as announce, label_lock(paths, on_wait=lambda: waiting(opts.label)):
        publish.recover_label(config, opts.label)
        if opts.activate:  # refused before anything is built
            refuse_during_rollout(config, opts.label, "build --activate")
        row = announce.build_started(
            opts.label, opts.build_id or new_build_id(), kind, _build_reason(opts)
        )
        started = time.monotonic()
        try:
            manifest = run_build(
                config,
                opts.label,
                progress=progress,
                rebuild=opts.rebuild,
                overlays_only=opts.overlays_only,
                insecure_test_password=opts.insecure_test_password,
                build_id=row.build_id,
                force=opts.force,
            )
        except BuildError as exc:
            tail = exc.log_tail
            announce.build_failed(row, exc.step, str(exc), tail, time.monotonic() - started)
            raise
        except KeyboardInterrupt:
            announce.build_failed(row, "interrupted", "interrupted", "", time.monotonic() - started)
            raise
        announce.build_succeeded(row, manifest, time.monotonic() - started)
        done: activation.Activation | None = None
        unchanged = manifest.version == store.active_version(paths)
        if opts.activate and not unchanged:
            before = announce.history_length(paths)
            done = publish.activate(config, paths, manifest.version)
            announce.activation(paths, before, "cli")
    if opts.json:
        emit_json(
            {
                "version": manifest.model_dump(mode="json"),
                "activated": done is not None,
                "unchanged": unchanged,
            }
        )
    elif unchanged:
        print(
            f"unchanged: {opts.label} {manifest.version} (active) has the same content;"
            " no new version (--force makes one)"
        )
    else:
        print(
            f"built {opts.label} {manifest.version}: {manifest.file_count} entries, "
            f"{human_size(manifest.size_bytes)}, kernel {manifest.kernel_version},"
            f" initramfs {human_size(manifest.initrd.size)}"
        )
        if done:
            print(f"activated {opts.label} {done.version} (was {done.previous or 'none'})")
    return 0
