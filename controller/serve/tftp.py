"""Boot files in a TFTP root: rendered menus and per-version links.

The loader files are controller.serve.loaders'; what an activation stages
here is composed in controller.serve.publish.

Every rendered file is replaced atomically (docs/design.md §5). The plan
is computed and checked in full before the first write, so a label without
boot files or a bad override renders nothing half-way. Menus are written
last: they are the switch point (controller.render.cmdline explains why each
menu names its version's own files). One flock per TFTP root serialises
renders of labels that share it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.config.models import TFTP_VERSIONS_DIR, Config
from controller.core.errors import StoreError
from controller.core.flock import file_lock
from controller.core.ids import LABEL_RE
from controller.core.log import get_logger
from controller.render import (
    BootTarget,
    boot_target,
    render_all,
    render_pxelinux,
)
from controller.render.cmdline import (
    INITRD_NAME,
    KERNEL_NAME,
    MAC_FILE_ID_PATTERN,
    TFTP_DIR,
    version_boot_dir,
)
from controller.render.grub import GRUB_DIR
from controller.render.ipxe import IPXE_DIR
from controller.render.pxelinux import PXELINUX_DIR
from controller.store import fsops
from controller.store import versions as store
from controller.store.activation import (
    Prepared,
    Step,
    publish_boot_files,
)
from controller.store.canary import read_pins
from controller.store.layout import TMP_MARK, LabelPaths, label_paths

log = get_logger("tftp")

DEFAULT_CHOICE = f"{TFTP_DIR}/.default-label"  # labels cannot start with "."
LOCK_NAME = f"{TFTP_DIR}/.render.lock"
# Files this module owns in the directories it renders into, beside the ones
# it renders now: anything matching and not rendered is stale and removed.
_MAC, _LABEL = MAC_FILE_ID_PATTERN, LABEL_RE.pattern
_OWNED = {
    PXELINUX_DIR: re.compile(rf"{_MAC}|netroot-{_LABEL}|default"),
    IPXE_DIR: re.compile(rf"{_MAC}\.ipxe|boot\.ipxe|default\.ipxe"),
    GRUB_DIR: re.compile(rf"grub\.cfg(-{_MAC})?"),
}


@dataclass(frozen=True)
class BootPlan:
    """Everything one TFTP root should hold, computed before anything is written."""

    files: dict[str, str]  # path relative to the TFTP root -> text
    links: dict[str, Path]  # netroot/_versions/<label>/<version>/ holds the files of boot/
    default: str
    skipped: tuple[str, ...] = ()  # why an override or label was left out


@dataclass
class Written:
    """What write_plan changed."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def label_menu_path(label: str) -> str:
    """The label's own one-entry pxelinux menu (also what activation re-renders)."""
    return f"{PXELINUX_DIR}/netroot-{label}"


def served_labels(config: Config, tftp_root: Path) -> list[str]:
    """Configured labels whose boot files live in this TFTP root."""
    return sorted(name for name in config.labels if config.label_tftp_root(name) == tftp_root)


def read_default_choice(tftp_root: Path) -> str | None:
    """The label `netroot install` last made the default of this TFTP root."""
    try:
        return (tftp_root / DEFAULT_CHOICE).read_text().strip() or None
    except FileNotFoundError:
        return None


def choose_default(labels: Iterable[str], choice: str | None) -> str:
    """The installed choice if it is served, else the first served label by name."""
    served = sorted(labels)
    if not served:
        raise StoreError("no label has a version to serve: build and activate one first")
    return choice if choice in served else served[0]


def check_boot_files(paths: LabelPaths, version: str) -> Path:
    """The version's boot/ directory; StoreError naming what is missing."""
    boot = paths.boot(version)
    for name in (KERNEL_NAME, INITRD_NAME):
        if not (boot / name).is_file():
            raise StoreError(
                f"{paths.label} {version}: boot file {boot / name} is missing;"
                f" rebuild the label (`netroot build {paths.label}`)"
            )
    return boot


def version_links(config: Config, labels: Iterable[str]) -> dict[str, Path]:
    """Boot files per version still in the store, so a node keeps the files of the menu it read."""
    links: dict[str, Path] = {}
    for label in labels:
        paths = label_paths(config, label)
        for version in store.version_ids(paths):
            links[version_boot_dir(label, version)] = paths.boot(version)
    return links


def plan_boot(
    targets: Iterable[BootTarget],
    links: Mapping[str, Path],
    *,
    default: str,
    macs: Mapping[str, str],
    skipped: Iterable[str] = (),
    pins: Mapping[str, BootTarget] | None = None,
) -> BootPlan:
    """Render the menus of the targets (pure apart from nothing: text in, text out)."""
    targets = tuple(targets)
    files = render_all(targets, default=default, macs=macs, pins=pins)
    for target in targets:
        # A one-entry menu per label, the form activation always kept up to date.
        files[label_menu_path(target.label)] = f"# netroot: {target.label} {target.version}\n" + (
            render_pxelinux([target], target.label)
        )
    return BootPlan(files, dict(links), default, tuple(skipped))


def plan_tftp_root(
    config: Config,
    tftp_root: Path,
    *,
    require: bool = True,
    default: str | None = None,
    pending: Mapping[str, str] | None = None,
) -> BootPlan:
    """The plan for a TFTP root from the store: each served label's active version.

    default overrides the installed choice of default label. require=True
    (install, render) raises for a label whose boot files are missing and
    when nothing is served. require=False (activation) leaves such a label
    out, so one broken label never blocks another's activation, and with
    nothing to serve the plan is empty: writing it removes the menus.
    pending names versions about to become active (an activation plans
    before its commit).
    """
    targets: list[BootTarget] = []
    skipped: list[str] = []
    labels = served_labels(config, tftp_root)
    for label in labels:
        paths = label_paths(config, label)
        active = (pending or {}).get(label) or store.active_version(paths)
        if active is None:
            continue
        try:
            check_boot_files(paths, active)
        except StoreError as exc:
            if require:
                raise
            skipped.append(str(exc))
            continue
        targets.append(boot_target(config, label, active))
    served = {target.label for target in targets}
    macs: dict[str, str] = {}
    for mac, node in sorted(config.nodes.items()):
        if config.label_tftp_root(node.label) != tftp_root:
            continue
        if node.label in served:
            macs[mac] = node.label
        else:
            skipped.append(f"node {mac}: label {node.label} has no active version yet")
    if not served and not require:
        return BootPlan({}, version_links(config, labels), "", tuple(skipped))
    if default is not None and default not in served:
        raise StoreError(f"label {default!r} has no version to serve: build and activate one first")
    default = choose_default(served, default or read_default_choice(tftp_root))
    pins = canary_targets(config, [t.label for t in targets], skipped)
    return plan_boot(
        targets,
        version_links(config, labels),
        default=default,
        macs=macs,
        skipped=skipped,
        pins=pins,
    )


def canary_targets(
    config: Config, labels: Iterable[str], skipped: list[str]
) -> dict[str, BootTarget]:
    """MAC -> the version a canary rollout pins it to (controller.store.canary), per served label.

    A pin whose version lost its boot files is skipped (the node then boots
    the label's active version) rather than blocking every render.
    """
    pins: dict[str, BootTarget] = {}
    for label in labels:
        paths = label_paths(config, label)
        pinned = read_pins(paths)
        if pinned is None:
            continue
        try:
            check_boot_files(paths, pinned.version)
        except StoreError as exc:
            skipped.append(f"canaries of {label}: {exc}")
            continue
        target = boot_target(config, label, pinned.version)
        pins.update(dict.fromkeys(pinned.macs, target))
    return pins


def tftp_lock(tftp_root: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the TFTP root's render lock (taken after any label lock, never before)."""
    return file_lock(tftp_root / LOCK_NAME, mode=0o644)


def _sweep(directory: Path, keep: set[str], owned: re.Pattern[str] | None) -> list[str]:
    removed = []
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in entries:
        stale = TMP_MARK in name or (
            owned is not None and owned.fullmatch(name) is not None and name not in keep
        )
        if stale:
            (directory / name).unlink(missing_ok=True)
            removed.append(str(directory / name))
    return removed


def _prune_links(root: Path, links: Mapping[str, Path]) -> list[str]:
    removed: list[str] = []
    versions_dir = root / TFTP_VERSIONS_DIR
    if not versions_dir.is_dir():
        return removed
    for label in sorted(os.listdir(versions_dir)):
        label_dir = versions_dir / label
        if label_dir.is_symlink() or not label_dir.is_dir():
            continue
        for name in sorted(os.listdir(label_dir)):
            rel = f"{TFTP_VERSIONS_DIR}/{label}/{name}"
            if rel not in links:
                fsops.remove_tree(label_dir / name)
                removed.append(rel)
        with contextlib.suppress(OSError):
            label_dir.rmdir()  # only when empty
    return removed


def stage_plan(tftp_root: Path, plan: BootPlan, prepared: Prepared) -> Written:
    """Stage the plan into prepared: links first, menus last (the switch point).

    Caller holds the TFTP root's lock until prepared is published or
    discarded. Written fills in as prepared publishes.
    """
    done = Written()
    for directory in _OWNED:
        # Leftover temporaries of an interrupted render go before anything is staged.
        done.removed += _sweep(tftp_root / directory, set(), None)
    for rel, boot in sorted(plan.links.items()):
        # New names for committed versions, whole by rename: nothing names them
        # before the menus do.
        if publish_boot_files(boot, tftp_root / rel):
            done.written.append(rel)
    for rel, text in sorted(plan.files.items()):
        path = tftp_root / rel
        # Not fsynced: recovery renders every menu again after a crash.
        tmp = fsops.stage_file_if_changed(path, text.encode(), durable=False)
        if tmp is not None:
            prepared.menus.append(Step(tmp, path))
            done.written.append(rel)

    def sweep() -> None:
        for directory, owned in _OWNED.items():
            keep = {Path(r).name for r in plan.files if Path(r).parent.as_posix() == directory}
            done.removed += _sweep(tftp_root / directory, keep, owned)
        done.removed += _prune_links(tftp_root, plan.links)
        for reason in plan.skipped:
            log.warning("boot override skipped", tftp_root=str(tftp_root), reason=reason)

    prepared.sweep.append(sweep)
    return done


def write_plan(tftp_root: Path, plan: BootPlan) -> Written:
    """Links first, menus last (the switch point); stale overrides and links removed."""
    prepared = Prepared()
    try:
        done = stage_plan(tftp_root, plan, prepared)
    except BaseException:
        prepared.discard()
        raise
    prepared.publish()
    return done


def set_default_choice(tftp_root: Path, label: str) -> None:
    """Make label the default boot of this TFTP root (what `netroot install` does)."""
    fsops.write_atomic(tftp_root / DEFAULT_CHOICE, f"{label}\n".encode())
