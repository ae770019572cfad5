"""Activation: making a committed version the one new boots get.

The commit point is one durable line appended to the label's history. Every
file and link the switch needs is written beside its final name first; after
the commit they are renamed into place (rename(2) needs no free space). Recovery replays the
history and re-points any link that a crash left behind, so after a restart
both links and the boot menu always name the same complete version.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from controller.core import failpoints
from controller.core.errors import StoreError
from controller.core.ids import is_store_version
from controller.store import fsops
from controller.store import versions as store
from controller.store.history import Action, Entry
from controller.store.layout import TMP_MARK, LabelPaths, tmp_name


@dataclass
class Step:
    """A file or link written beside its final name, waiting for its rename."""

    tmp: Path
    final: Path
    failpoint: str = ""  # hit after the rename (crash tests)

    def publish(self) -> None:
        """Rename it into place (needs no free space, unlike writing it)."""
        os.replace(self.tmp, self.final)
        if self.failpoint:
            failpoints.hit(self.failpoint)


@dataclass
class Prepared:
    """Everything a switch to a version writes, staged before the history line commits.

    On a full disk or a bad config the failure comes while preparing, so the
    history is untouched and the old version stays served; publishing is
    renames only, in the order nodes need them: exports (and the reload that
    makes the new export appear) before links, menus last (the switch point).
    Locks the renderer took stay held until publish or discard, so nothing
    rewrites the same files in between.
    """

    exports: list[Step] = field(default_factory=list)
    reload: list[Callable[[], None]] = field(default_factory=list)
    links: list[Step] = field(default_factory=list)
    menus: list[Step] = field(default_factory=list)
    sweep: list[Callable[[], None]] = field(default_factory=list)
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def steps(self) -> list[Step]:
        """Every staged file and link, in publishing order."""
        return [*self.exports, *self.links, *self.menus]

    def publish(self) -> bool:
        """Rename everything into place, reload servers, sweep; True when anything changed."""
        with self.held:
            for step in self.exports:
                step.publish()
            for action in self.reload:
                action()
            for step in self.links:
                step.publish()
            for step in self.menus:
                step.publish()
            if self.links or self.menus:
                failpoints.hit("activate:menu-rendered")
            for action in self.sweep:
                action()
        return bool(self.steps())

    def discard(self) -> None:
        """Remove everything staged; nothing was switched."""
        with self.held:
            for step in self.steps():
                step.tmp.unlink(missing_ok=True)


# Stages the label's boot files (menus, exports) as they are with version
# active: controller.serve.publish.renderer, which every caller goes through.
BootRenderer = Callable[[LabelPaths, str], Prepared]


@dataclass(frozen=True)
class Activation:
    """What an activation or rollback did."""

    label: str
    version: str
    previous: str | None
    action: Action


@contextlib.contextmanager
def _discard_on_error(prepared: Prepared) -> Iterator[None]:
    try:
        yield
    except BaseException:
        prepared.discard()
        raise


def check_link_slot(link: Path, field_name: str) -> None:
    """A path netroot swaps a link at must be a link or free: never a file or directory."""
    if link.is_symlink() or not os.path.lexists(link):
        return
    kind = "directory" if link.is_dir() else "file"
    raise StoreError(
        f"{link}: is a {kind}, not a link netroot manages ({field_name}); "
        "move it away or choose another path"
    )


def _stage_link(link: Path, target: Path, failpoint: str) -> Step | None:
    # Not fsynced: the history line is the durable commit; recovery re-points links.
    tmp = fsops.stage_symlink_if_changed(link, target)
    return None if tmp is None else Step(tmp, link, failpoint)


def publish_boot_files(boot: Path, dest: Path) -> bool:
    """A version's boot files (kernel, initramfs) at dest in a TFTP root; True if made.

    The store is private (0700): an unprivileged TFTP server (dnsmasq runs as
    its own user) cannot follow a symlink into it, so the files are hard links
    to the version's own (a copy, staged and renamed, on another filesystem).
    The directory appears whole, by rename, and never changes afterwards.
    """
    if dest.is_dir() and not dest.is_symlink():
        return False
    tmp = tmp_name(dest, uuid.uuid4().hex[:12])
    tmp.mkdir(mode=0o755, parents=True)
    try:
        tmp.chmod(0o755)
        for name in sorted(os.listdir(boot)):
            if (boot / name).is_file() and not (boot / name).is_symlink():
                fsops.link_or_copy(boot / name, tmp / name, copy_mode=0o644)
        if dest.is_symlink():  # the layout before hard links: a symlink into the store
            dest.unlink()
        os.rename(tmp, dest)
    except BaseException:
        fsops.remove_tree(tmp)
        raise
    return True


def prepare(paths: LabelPaths, version: str, render: BootRenderer) -> Prepared:
    """Stage the export and TFTP links and the boot files of version."""
    check_link_slot(paths.export_link, "export_path")
    check_link_slot(paths.tftp_link, "tftp_root")
    tftp_target = os.path.relpath(paths.tftp_version(version), paths.tftp_link.parent)
    prepared = render(paths, version)
    with _discard_on_error(prepared):
        # A new name nothing points at yet: made before the commit, harmless if it
        # fails (the real renderer made it already, under the TFTP root's lock).
        publish_boot_files(paths.boot(version), paths.tftp_version(version))
        for link, target, point in (
            (paths.export_link, paths.rootfs(version), "activate:export-swapped"),
            (paths.tftp_link, Path(tftp_target), "activate:tftp-swapped"),
        ):
            step = _stage_link(link, target, point)
            if step is not None:
                prepared.links.append(step)
    return prepared


def apply_links(paths: LabelPaths, version: str, render: BootRenderer) -> bool:
    """Point export and TFTP links at version and render its boot files."""
    return prepare(paths, version, render).publish()


def _record(paths: LabelPaths, action: Action, version: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    failpoints.hit("activate:before-commit")
    fsops.append_durable(paths.history, Entry(stamp, action, version).line())
    failpoints.hit("activate:committed")


def _switch(paths: LabelPaths, action: Action, version: str, render: BootRenderer) -> None:
    """Prepare, commit one history line, publish: the one commit point of a switch."""
    prepared = prepare(paths, version, render)
    with _discard_on_error(prepared):
        _record(paths, action, version)
    prepared.publish()


def check_version_id(paths: LabelPaths, version: str) -> str:
    """version if it names a committed version of the label, else a StoreError."""
    versions = store.version_ids(paths)
    if not is_store_version(version) or version not in versions:
        known = ", ".join(versions[-5:]) or "none built yet"
        raise StoreError(f"{paths.label}: no version {version!r} in the store (versions: {known})")
    return version


def activate(paths: LabelPaths, version: str | None, render: BootRenderer) -> Activation:
    """Activate version (newest committed when None). Caller holds the label lock."""
    versions = store.version_ids(paths)
    if not versions:
        raise StoreError(f"{paths.label}: no version built yet; run `netroot build {paths.label}`")
    target = versions[-1] if version is None else check_version_id(paths, version)
    store.verify_version(paths, target, depth="activation")  # complete: verified at commit
    previous = store.active_version(paths)
    if previous != target:
        _switch(paths, "activate", target, render)
    else:
        apply_links(paths, target, render)
    return Activation(paths.label, target, previous, "activate")


def rollback(paths: LabelPaths, render: BootRenderer) -> Activation:
    """Return to the version active before the current one. Caller holds the label lock."""
    stack = store.rollback_stack(paths)
    if len(stack) < 2:
        raise StoreError(f"{paths.label}: no earlier active version to roll back to")
    current, target = stack[-1], stack[-2]
    store.verify_version(paths, target, depth="activation")
    _switch(paths, "rollback", target, render)
    return Activation(paths.label, target, current, "rollback")


def reconcile(paths: LabelPaths, render: BootRenderer) -> str | None:
    """Make links and boot files agree with the history (start-up recovery)."""
    for link in (paths.export_link, paths.tftp_link):
        sweep_tmp_links(link.parent, link.name)
    sweep_tmp_links(paths.menu.parent, paths.menu.name)
    active = store.active_version(paths)
    if active is not None:
        apply_links(paths, active, render)
    return active


def sweep_tmp_links(directory: Path, name: str) -> list[Path]:
    """Remove `name.tmp-*` leftovers of an interrupted swap."""
    removed = []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.startswith(name + TMP_MARK):
            (directory / entry).unlink(missing_ok=True)
            removed.append(directory / entry)
    return removed
