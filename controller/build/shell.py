"""`netroot shell LABEL`: a shell inside the active version, as the original tool offered.

Default: the shell runs in a fresh clone of the active version (hard links or
reflinks, so it costs seconds), seen through an overlay (the chroot helper's
copy-on-write run): nothing it writes goes through an inode that the clone
shares with older versions or the caches. On exit with changes, the upper
layer is merged into the clone by rename and the clone becomes a new version
through the build pipeline's own last steps (boot files, version stamp,
manifest, verify, then rename into place); the caller activates it when asked
(controller.serve.publish: building never serves).
Its tree is also kept as the base of overlay-only rebuilds, so an overlay edit
after a shell session keeps the session's changes; a rebuild from the recipe
starts again from the recipe.

--live changes the active tree itself, as the original tool did: the changes
land when the shell exits, by rename (older versions and caches sharing the
inodes stay intact), and the edit is recorded (controller.store.liveedits) because
running nodes may hold stale file handles and need `mount -o remount /`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.build import pipeline as build
from controller.build.builders import BuildRequest, Progress, chroot, cow
from controller.build.upper import meaningful_changes, update_index, upper_entries
from controller.config.models import Config
from controller.core import proc
from controller.core.errors import NetrootError, StoreError
from controller.core.log import get_logger
from controller.recipes import ImportRecipe, Recipe
from controller.store import fsops, liveedits, treeindex
from controller.store import versions as store
from controller.store.layout import LabelPaths, label_paths
from controller.store.manifest import Manifest

log = get_logger("shell")

# bash when the image has it, else sh; interactive either way
INTERACTIVE = ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -i; fi; exec /bin/sh -i"]
BUILDER_NAME = "shell"
_KERNEL_FROM_BOOT = "boot/vmlinuz-"


class ShellError(NetrootError):
    """The shell's command failed; nothing it changed was kept."""


@dataclass(frozen=True)
class Outcome:
    """What a shell session did."""

    label: str
    parent: str  # the active version it started from
    changed: tuple[str, ...]  # paths inside the image, '-' prefixed when removed
    live: bool
    status: int
    version: str | None = None  # the new version (not live, something changed)
    live_edits: int = 0  # the active version's count after a --live session
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Session:
    """A finished run: exit status, its output (commands only), what the upper layer holds."""

    status: int
    stdout: str
    stderr: str
    entries: list[tuple[str, str]]  # (path, kind) in the upper layer, parents first
    changed: list[str]


def shell_argv(command: str | None) -> list[str]:
    """What runs inside the image: the command with sh -c, or an interactive shell."""
    return ["/bin/sh", "-c", command] if command is not None else list(INTERACTIVE)


def shell_env(label: str, version: str, *, term: str | None) -> dict[str, str]:
    """The shell's environment: which image this is, no history file written into it."""
    env = {
        "NETROOT_LABEL": label,
        "NETROOT_VERSION": version,
        "HISTFILE": "",
        "PS1": f"(netroot {label}) # ",
    }
    if term:
        env["TERM"] = term
    return env


Runner = Callable[[list[str], Mapping[str, str]], proc.Completed]


def run_interactive(argv: list[str], env: Mapping[str, str]) -> proc.Completed:
    """Run argv on this terminal (the interactive shell)."""
    return proc.run_interactive(argv, env=env)


def run_captured(argv: list[str], env: Mapping[str, str]) -> proc.Completed:
    """Run argv through proc.run, output captured, any exit status returned."""
    return proc.run(argv, env=env, check=False)


def session(
    root: Path, scratch: chroot.Scratch, argv: list[str], env: Mapping[str, str], runner: Runner
) -> Session:
    """Run argv in root copy-on-write; the changes stay in scratch.upper, not merged yet."""
    for d in (scratch.upper, scratch.work, scratch.merged):
        d.mkdir(parents=True)
    # the helper makes missing mount points; they go again, so the tree keeps its index
    missing = [n for n in chroot.MOUNT_POINTS if not os.path.lexists(root / n)]
    try:
        with chroot.prepared(root) as resolv_conf:
            done = runner(
                chroot.chroot_argv(root, argv, resolv_conf=resolv_conf, scratch=scratch), env
            )
    finally:
        for name in missing:
            with contextlib.suppress(OSError):
                (root / name).rmdir()
    entries = upper_entries(scratch.upper)
    return Session(
        done.returncode,
        done.stdout,
        done.stderr,
        entries,
        meaningful_changes(entries, scratch.upper, root),
    )


class _ShellMark:
    """The manifest's builder for a version made by `netroot shell`."""

    name = BUILDER_NAME

    def input_key(self, recipe: Recipe, recipe_path: Path) -> str:
        """Never asked: a shell version has no recipe inputs."""
        raise NetrootError("a shell version is not rebuilt from inputs")

    def build(self, request: BuildRequest, progress: Progress) -> None:
        """Never asked: the tree comes from the session."""
        raise NetrootError("a shell version is not built by a builder")


def _boot_recipe(parent: Manifest, recipe_path: Path) -> ImportRecipe:
    """Where step_boot takes kernel and initramfs: the newest /boot kernel, as the parent
    did, or the same fixed paths when the parent's recipe named them."""
    if parent.kernel.source.startswith(_KERNEL_FROM_BOOT):
        return ImportRecipe(builder="import", source=recipe_path)
    return ImportRecipe(
        builder="import",
        source=recipe_path,
        kernel=parent.kernel.source,
        initrd=parent.initrd.source,
    )


def _keep_as_base(ctx: build.BuildContext, parent: Manifest) -> None:
    """The session's tree becomes a base (for overlay-only rebuilds), keyed by its content."""
    index_bytes = treeindex.render(ctx.index)
    ctx.base_digest = treeindex.digest(index_bytes)
    payload = json.dumps([BUILDER_NAME, parent.base_key, ctx.base_digest])
    ctx.base_key = hashlib.sha256(payload.encode()).hexdigest()
    target = ctx.paths.base(ctx.base_key)
    if (target / store.INDEX_NAME).is_file():
        return
    tmp = ctx.paths.staging / f"base-{ctx.build_id}"
    # An rw version is written by its node: the cache must not share its inodes.
    cow.version_tree(ctx.rootfs, tmp / "rootfs", rw=ctx.config.label(ctx.label).rw)
    (tmp / store.INDEX_NAME).write_bytes(index_bytes)
    fsops.remove_tree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, target)


def _commit(
    ctx: build.BuildContext, parent: Manifest, applied: Sequence[tuple[str, str]], parent_dir: Path
) -> Manifest:
    """The build pipeline's last steps over the session's tree."""
    if ctx.config.label(ctx.label).rw:
        # The rw parent's node may have written it since its commit: its index is
        # not the tree's content any more; the new version's index is, hashed.
        ctx.index = treeindex.scan(ctx.rootfs)
    else:
        ctx.index = treeindex.parse((parent_dir / store.INDEX_NAME).read_bytes())
        update_index(ctx.index, ctx.rootfs, applied)
    ctx.overlay_digest = parent.overlay_digest
    _keep_as_base(ctx, parent)
    ctx.recipe = _boot_recipe(parent, ctx.recipe_path)
    return build.finish_version(ctx)


def open_shell(
    config: Config,
    label: str,
    *,
    live: bool = False,
    command: str | None = None,
    progress: build.Progress,
    runner: Runner | None = None,
) -> Outcome:
    """A shell session on the label's active version. Caller holds the label lock."""
    paths = label_paths(config, label)
    parent_id = store.active_version(paths)
    if parent_id is None:
        raise StoreError(f"{label}: no active version; run `netroot build {label} --activate`")
    parent = store.read_manifest(paths, parent_id)
    run = runner or (run_captured if command is not None else run_interactive)
    env = shell_env(label, parent_id, term=os.environ.get("TERM"))
    if live:
        return _live(paths, parent_id, command=command, env=env, run=run, progress=progress)
    return _new_version(
        config,
        paths,
        parent,
        command=command,
        env=env,
        run=run,
        progress=progress,
    )


def _live(
    paths: LabelPaths,
    version: str,
    *,
    command: str | None,
    env: Mapping[str, str],
    run: Runner,
    progress: build.Progress,
) -> Outcome:
    """Edit the served tree: changes land by rename when the shell exits, and are recorded."""
    rootfs = paths.rootfs(version)
    scratch = chroot.Scratch(paths.staging / f"shell-{uuid.uuid4().hex[:12]}")
    progress("shell", f"{paths.label} {version} --live: changes reach the served tree on exit")
    try:
        done = session(rootfs, scratch, shell_argv(command), env, run)
        _check(done, command)
        count = liveedits.count(paths, version)
        if done.changed:
            cow.merge_upper(scratch.upper, rootfs)
            count = liveedits.record(
                paths,
                version,
                liveedits.LiveEdit(
                    time=datetime.now(UTC),
                    changed=len(done.changed),
                    paths=tuple(done.changed),
                    command=command,
                ),
            )
    finally:
        fsops.remove_tree(scratch.path)
    return Outcome(
        paths.label,
        version,
        tuple(done.changed),
        live=True,
        status=done.status,
        live_edits=count,
        stdout=done.stdout,
        stderr=done.stderr,
    )


def _new_version(
    config: Config,
    paths: LabelPaths,
    parent: Manifest,
    *,
    command: str | None,
    env: Mapping[str, str],
    run: Runner,
    progress: build.Progress,
) -> Outcome:
    """A session in a fresh clone; its changes become a new version (not activated)."""
    build_id = build.new_build_id()
    ctx = build.BuildContext(
        config=config,
        label=paths.label,
        paths=paths,
        build_id=build_id,
        rebuild=False,
        progress=progress,
        log_file=config.state_dir / "logs" / paths.label / f"{build_id}.log",
    )
    ctx.builder = _ShellMark()
    ctx.recipe_path = config.recipe_path(paths.label)
    scratch = chroot.Scratch(paths.staging / f"shell-{build_id}")
    ok = False
    try:
        ctx.log_file.parent.mkdir(parents=True, exist_ok=True)
        (ctx.staging / "boot").mkdir(parents=True)
        progress("shell", f"cloning {paths.label} {parent.version}")
        # rw: a private copy, never inodes shared with the parent its node writes.
        cow.version_tree(paths.rootfs(parent.version), ctx.rootfs, rw=config.label(paths.label).rw)
        done = session(ctx.rootfs, scratch, shell_argv(command), env, run)
        _check(done, command)
        outcome = Outcome(
            paths.label,
            parent.version,
            tuple(done.changed),
            live=False,
            status=done.status,
            stdout=done.stdout,
            stderr=done.stderr,
        )
        if not done.changed:
            progress("shell", "no changes: no new version")
            return outcome
        cow.merge_upper(scratch.upper, ctx.rootfs)
        progress("shell", f"{len(done.changed)} paths changed: committing a new version")
        manifest = _commit(ctx, parent, done.entries, paths.version(parent.version))
        ok = True
    finally:
        fsops.remove_tree(scratch.path)
        if not ok:
            fsops.remove_tree(ctx.staging)
            fsops.remove_tree(paths.staging / f"base-{build_id}")
    return dataclasses.replace(outcome, version=manifest.version)


def _check(done: Session, command: str | None) -> None:
    if command is not None and done.status != 0:
        raise ShellError(
            f"the command exited with status {done.status}; nothing it changed "
            f"was kept{': ' + proc.tail(done.stderr, 1) if done.stderr else ''}"
        )
