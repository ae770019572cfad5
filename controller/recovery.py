"""Start-up recovery: sweep what a crash left behind and make links agree with history."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import structlog

from controller import activation, fsops
from controller.config import Config
from controller.layout import label_paths
from controller.locking import label_lock

log = structlog.get_logger(component="recovery")


@dataclass
class Recovered:
    """What recovery found and fixed for one label."""

    label: str
    active: str | None = None
    removed: list[str] = field(default_factory=list)


def recover_label(config: Config, label: str, render: activation.BootRenderer) -> Recovered:
    """Sweep one label. Caller holds its lock (so no build of it is running)."""
    paths = label_paths(config, label)
    result = Recovered(label)
    if paths.staging.is_dir():
        for leftover in sorted(os.listdir(paths.staging)):
            fsops.remove_tree(paths.staging / leftover)
            result.removed.append(f"{paths.staging}/{leftover}")
    if paths.bases.is_dir():
        for name in os.listdir(paths.bases):
            if name.startswith("."):
                fsops.remove_tree(paths.bases / name)
                result.removed.append(str(paths.bases / name))
    result.active = activation.reconcile(paths, render)
    if result.removed:
        log.info("recovered", label=label, removed=result.removed, active=result.active)
    return result


def known_labels(config: Config) -> list[str]:
    """Configured labels plus any with images in the store."""
    images = config.state_dir / "images"
    on_disk = set(os.listdir(images)) if images.is_dir() else set()
    return sorted(set(config.labels) | {n for n in on_disk if not n.startswith(".")})


def recover(
    config: Config, render: activation.BootRenderer
) -> list[Recovered]:
    """Recover every label; each under its lock so a running build is left alone."""
    results = []
    for label in known_labels(config):
        with label_lock(label_paths(config, label)):
            results.append(recover_label(config, label, render))
    return results
