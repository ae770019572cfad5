"""Start-up recovery: sweep what a crash left behind and make links agree with history."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import structlog

from controller.config.models import Config
from controller.core.errors import NetrootError, describe
from controller.store import activation, fsops
from controller.store import versions as store
from controller.store.layout import label_paths
from controller.store.locking import label_lock

log = structlog.get_logger(component="recovery")

# Image trees (with their setuid binaries), cached bases, build logs: root only.
# Boot files reach the TFTP server as hard links in its root, never through these.
PRIVATE_DIRS = ("images", "cache", "logs")


@dataclass
class Recovered:
    """What recovery found and fixed for one label."""

    label: str
    active: str | None = None
    removed: list[str] = field(default_factory=list)
    problem: str | None = None  # why links could not be re-pointed (strict=False)


def recover_label(
    config: Config, label: str, render: activation.BootRenderer, *, strict: bool = True
) -> Recovered:
    """Sweep one label. Caller holds its lock (so no build of it is running).

    strict=False (gc, `netroot recover`): links that cannot be re-pointed (a
    full disk) are reported in `problem` instead of raised, so what frees
    space still runs; the history stays the truth and the next recovery
    re-points them.
    """
    paths = label_paths(config, label)
    result = Recovered(label)
    for private in PRIVATE_DIRS:
        fsops.private_dir(config.state_dir / private)
    if paths.staging.is_dir():
        for leftover in sorted(os.listdir(paths.staging)):
            fsops.remove_tree(paths.staging / leftover)
            result.removed.append(f"{paths.staging}/{leftover}")
    if paths.bases.is_dir():
        for name in os.listdir(paths.bases):
            if name.startswith("."):
                fsops.remove_tree(paths.bases / name)
                result.removed.append(str(paths.bases / name))
    if strict:
        result.active = activation.reconcile(paths, render)
    else:
        try:
            result.active = activation.reconcile(paths, render)
        except (OSError, NetrootError) as exc:
            result.active = store.active_version(paths)
            result.problem = describe(exc)
            log.warning("links not re-pointed", label=label, problem=result.problem)
    if result.removed:
        log.info("recovered", label=label, removed=result.removed, active=result.active)
    return result


def known_labels(config: Config) -> list[str]:
    """Configured labels plus any with images in the store."""
    images = config.state_dir / "images"
    on_disk = set(os.listdir(images)) if images.is_dir() else set()
    return sorted(set(config.labels) | {n for n in on_disk if not n.startswith(".")})


def recover(config: Config, render: activation.BootRenderer) -> list[Recovered]:
    """Recover every label; each under its lock so a running build is left alone."""
    results = []
    for label in known_labels(config):
        with label_lock(label_paths(config, label)):
            results.append(recover_label(config, label, render))
    return results
