"""Activation: making a committed version the one new boots get.

The commit point is one durable line appended to the label's history; the
export and TFTP links are then swapped by rename(2). Recovery replays the
history and re-points any link that a crash left behind, so after a restart
both links and the boot menu always name the same complete version.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller import failpoints, fsops, store
from controller.errors import StoreError
from controller.history import Action, Entry
from controller.layout import TMP_MARK, LabelPaths

# Renders the label's boot files for a version; the boot issue plugs in the
# real pxelinux/iPXE/GRUB renderers. Must replace each file atomically.
BootRenderer = Callable[[LabelPaths, str], None]


@dataclass(frozen=True)
class Activation:
    """What an activation or rollback did."""

    label: str
    version: str
    previous: str | None
    action: Action


def placeholder_menu(paths: LabelPaths, version: str) -> None:
    """A minimal pxelinux entry naming the label's kernel and initramfs."""
    text = (
        f"# netroot: {paths.label} {version}\n"
        f"LABEL {paths.label}\n"
        f"  KERNEL netroot/{paths.label}/vmlinuz\n"
        f"  INITRD netroot/{paths.label}/initrd.img\n"
    )
    fsops.write_atomic(paths.menu, text.encode(), durable=False)


def _point(link: Path, target: Path) -> bool:
    """Make link point at target unless it already does; True when it changed."""
    try:
        if os.readlink(link) == os.fspath(target):
            return False
    except (FileNotFoundError, OSError):
        pass
    # Not fsynced: the history line is the durable commit; recovery re-points links.
    fsops.swap_symlink(link, target, durable=False)
    return True


def apply_links(paths: LabelPaths, version: str, render: BootRenderer) -> bool:
    """Point export and TFTP links at version and render its boot files."""
    # Failpoints fire only when something changed, so a no-op recovery passes none.
    export_changed = _point(paths.export_link, paths.rootfs(version))
    if export_changed:
        failpoints.hit("activate:export-swapped")
    tftp_changed = _point(paths.tftp_link, paths.boot(version))
    if tftp_changed:
        failpoints.hit("activate:tftp-swapped")
    render(paths, version)
    if export_changed or tftp_changed:
        failpoints.hit("activate:menu-rendered")
    return export_changed or tftp_changed


def _record(paths: LabelPaths, action: Action, version: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    failpoints.hit("activate:before-commit")
    fsops.append_durable(paths.history, Entry(stamp, action, version).line())
    failpoints.hit("activate:committed")


def activate(
    paths: LabelPaths, version: str | None, render: BootRenderer = placeholder_menu
) -> Activation:
    """Activate version (newest committed when None). Caller holds the label lock."""
    versions = store.version_ids(paths)
    if not versions:
        raise StoreError(f"{paths.label}: no version built yet; run `netroot build {paths.label}`")
    target = version or versions[-1]
    store.verify_version(paths, target, depth="activation")  # complete: verified at commit
    previous = store.active_version(paths)
    if previous != target:
        _record(paths, "activate", target)
    apply_links(paths, target, render)
    return Activation(paths.label, target, previous, "activate")


def rollback(paths: LabelPaths, render: BootRenderer = placeholder_menu) -> Activation:
    """Return to the version active before the current one. Caller holds the label lock."""
    stack = store.rollback_stack(paths)
    if len(stack) < 2:
        raise StoreError(f"{paths.label}: no earlier active version to roll back to")
    current, target = stack[-1], stack[-2]
    store.verify_version(paths, target, depth="activation")
    _record(paths, "rollback", target)
    apply_links(paths, target, render)
    return Activation(paths.label, target, current, "rollback")


def reconcile(paths: LabelPaths, render: BootRenderer = placeholder_menu) -> str | None:
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
