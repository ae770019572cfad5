"""What an activation serves: the one place where a switch of version is composed.

An activation, a rollback, a gc and recovery each go through here, whoever
runs them (`netroot activate`, `rollback`, `build --activate`, `shell
--activate`, `gc`, `recover`, and the daemon at start-up):
controller.store.activation commits the history line and swaps the export
and TFTP links (the store's atomic primitive); the renderer given to it here
stages the NFS exports (with the reload that makes them appear) and the
label's TFTP root (per-version boot files, menus: controller.serve.tftp), so
all of it is staged before the commit and published in the order nodes need.

What follows a switch is not served, so it is not here: the CLI writes the
events into the outbox (controller.daemon.announce); the daemon hears of the
history line (controller.daemon.imagewatch) and applies it to the nodes
(controller.daemon.images, controller.daemon.nodebook).
"""

from __future__ import annotations

import os
from pathlib import Path

from controller.config.load import load_config
from controller.config.models import Config
from controller.core.errors import StoreError
from controller.render import ExportSpec, boot_target, export_specs, render_exports, render_ganesha
from controller.serve import nfs
from controller.serve.tftp import plan_tftp_root, stage_plan, tftp_lock
from controller.store import activation, holders, recovery
from controller.store import versions as store
from controller.store.activation import Activation, BootRenderer, Prepared, check_link_slot
from controller.store.canary import Pins, clear_pins, write_pins
from controller.store.layout import LabelPaths, label_paths

# The longest version id there is (ids have one fixed width): what validate renders.
SAMPLE_VERSION = "20991231T235959.999Z-ffffffff"


def check_servable(config: Config) -> None:
    """Render what an activation of each label would, so what validate accepts activates.

    Boot targets (host names, kernel arguments, the command line's length),
    the exports of both NFS servers and the paths the links go to; raises
    the ConfigError or StoreError an activation would, naming file and field.
    """
    labels = sorted(config.labels)
    specs = []
    for label in labels:
        boot_target(config, label, SAMPLE_VERSION)
        paths = label_paths(config, label)
        field = f"labels.{label}.export_path" if config.label(label).export_path else "export_root"
        check_link_slot(paths.export_link, field)
        field = f"labels.{label}.tftp_root" if config.label(label).tftp_root else "tftp_root"
        check_link_slot(paths.tftp_link, field)
        rootfs = Path(os.path.realpath(paths.images)) / SAMPLE_VERSION / "rootfs"
        specs.append(ExportSpec(label=label, path=str(rootfs), version=SAMPLE_VERSION))
    nfs_config = config.nfs
    render_exports(
        export_specs(config, labels), clients=nfs_config.clients, insecure=nfs_config.insecure
    )
    render_ganesha(
        specs,
        clients=nfs_config.clients,
        insecure=nfs_config.insecure,
        bind_addr=nfs.SYSTEM_BIND,
        port=nfs_config.port,
        recovery_root=nfs.SYSTEM_RECOVERY,
    )


def load_servable(path: Path | None) -> Config:
    """load_config, then check_servable: the config the daemon may switch to."""
    config = load_config(path)
    check_servable(config)
    return config


def prepare(config: Config, paths: LabelPaths, version: str | None) -> Prepared:
    """Stage NFS exports and the label's TFTP root as they are with version active.

    Nothing is switched until the result is published: a bad config or a
    full disk fails here, before an activation commits.
    """
    prepared = Prepared()
    pending = {paths.label: version} if version else {}
    try:
        # A node may read the new menu as soon as it is renamed into place:
        # its export is published (and reloaded) first.
        nfs.prepare(config, prepared, pending)
        prepared.held.enter_context(tftp_lock(paths.tftp_root))
        plan = plan_tftp_root(config, paths.tftp_root, require=False, pending=pending)
        stage_plan(paths.tftp_root, plan, prepared)
    except BaseException:
        prepared.discard()
        raise
    return prepared


def refresh(config: Config, paths: LabelPaths) -> None:
    """Re-apply NFS exports, then the label's TFTP root (after a gc)."""
    prepare(config, paths, None).publish()


def renderer(config: Config) -> BootRenderer:
    """The activation callback (activation.BootRenderer) with this config."""

    def render(paths: LabelPaths, version: str) -> Prepared:
        return prepare(config, paths, version)

    return render


def check_canary_servable(config: Config, label: str) -> None:
    """StoreError unless a canary's per-MAC menu can boot another version than the label's.

    The kernel NFS server exports only the label's link (the active version);
    Ganesha exports every version under its own path. An rw label has one node.
    """
    if config.label(label).rw:
        raise StoreError(f"label {label} is rw (one node writes its tree): no canary rollout")
    if config.nfs.server != "ganesha":
        raise StoreError(
            f"{config.source}: nfs.server: canary rollouts need every version exported"
            " (allowed: ganesha; the kernel server exports only the active version)"
        )


def pin_canaries(config: Config, paths: LabelPaths, pins: Pins) -> None:
    """Point the canaries' per-MAC menus at pins.version (caller holds the label lock)."""
    check_canary_servable(config, paths.label)
    activation.check_version_id(paths, pins.version)
    write_pins(paths, pins)
    try:
        refresh(config, paths)
    except BaseException:
        clear_pins(paths)
        raise


def unpin_canaries(config: Config, paths: LabelPaths) -> None:
    """The canaries' menus follow the label's active version again (label lock held)."""
    clear_pins(paths)
    refresh(config, paths)


def activate(config: Config, paths: LabelPaths, version: str | None) -> Activation:
    """Activate version (newest committed when None) and serve it. Caller holds the label lock.

    On a primary with `replicas_required`, only a version enough replicas hold
    (docs/design.md §17): a node booted from a replica must find it there too.
    """
    required = config.replication.replicas_required
    if config.replication.role == "primary" and required:
        wanted = version or next(reversed(store.version_ids(paths)), None)
        if wanted is not None:  # none built: activation says so
            holders.check_required(paths, wanted, required)
    return activation.activate(paths, version, renderer(config))


def rollback(config: Config, paths: LabelPaths) -> Activation:
    """Return to the version active before the current one. Caller holds the label lock."""
    return activation.rollback(paths, renderer(config))


def recover_label(config: Config, label: str, *, strict: bool = True) -> recovery.Recovered:
    """Sweep one label, links and served files made to agree with its history (label lock held)."""
    return recovery.recover_label(config, label, renderer(config), strict=strict)


def recover(config: Config) -> list[recovery.Recovered]:
    """Recover every label, each under its lock (what the daemon does when it starts)."""
    return recovery.recover(config, renderer(config))
